//! One generation on a loaded model: prompt preparation, stepping, attention reads and
//! head roles, in Rust types. `lib.rs` turns these into JS values.

use std::ops::Range;

use focal::model::{ChatMessage, GenerateOptions, Generator, Model, StopReason};

/// Upper bound on the values one all-heads read may fetch with a full capture of every
/// map (`layers * heads * len * len`); longer sequences read head by head.
const FULL_CAPTURE_VALUES: usize = 16 << 20;

/// Period of the random repeated block that scores induction heads.
const INDUCTION_PERIOD: usize = 24;

/// Settings read from the page: sampling plus the chat-template switch.
#[derive(Clone, Debug)]
pub struct PromptOptions {
    pub chat: bool,
    pub sampling: GenerateOptions,
}

/// Outcome of running the prompt, as the page needs it.
pub struct Started {
    /// Token labels of the prompt, one per attention row.
    pub labels: Vec<String>,
    /// Attention rows available (the prompt length).
    pub rows: usize,
    /// A note for the page, such as a lowered token limit.
    pub notice: Option<String>,
}

/// One generated token as the page shows it.
pub struct StepOutput {
    pub token: u32,
    pub text: String,
    /// Label of the token when it entered the sequence (it has an attention row).
    pub label: Option<String>,
    pub rows: usize,
    pub stop: Option<StopReason>,
}

/// A generation in progress or finished, with the model that runs it.
pub struct Session {
    model: Model,
    generator: Generator,
}

/// Returns the prompt's token ids, rendered through the chat template when `chat` is set.
pub fn encode_prompt(model: &Model, prompt: &str, chat: bool) -> focal::Result<Vec<u32>> {
    let tokenizer = model.tokenizer();
    if chat {
        let text = tokenizer.apply_chat_template(&[ChatMessage::new("user", prompt)], true)?;
        tokenizer.encode(&text)
    } else {
        tokenizer.encode(prompt)
    }
}

impl Session {
    /// Tokenises the prompt, checks it against the context and runs it through the model.
    ///
    /// Errors with a message naming both lengths when the prompt does not fit the context.
    pub async fn start(
        model: &Model,
        prompt: &str,
        options: PromptOptions,
    ) -> Result<(Self, Started), String> {
        let ids = encode_prompt(model, prompt, options.chat).map_err(|e| e.to_string())?;
        let context = model.config().context_length;
        if ids.len() >= context {
            return Err(format!(
                "the prompt is {} tokens long, but the model's context holds {context} tokens \
                 including the answer: shorten the prompt",
                ids.len()
            ));
        }
        let mut sampling = options.sampling;
        let mut notice = None;
        let room = context - ids.len();
        if sampling.max_tokens > room {
            notice = Some(format!(
                "The prompt is {} tokens, so the answer is limited to {room} tokens (context {context}).",
                ids.len()
            ));
            sampling.max_tokens = room;
        }

        let mut generator = Generator::new(model, &ids, sampling).map_err(|e| e.to_string())?;
        generator.prefill().await.map_err(|e| e.to_string())?;
        let tokenizer = model.tokenizer();
        let labels = ids.iter().map(|&id| tokenizer.token_label(id)).collect();
        let started = Started {
            labels,
            rows: generator.sequence().len(),
            notice,
        };
        let session = Self {
            model: model.clone(),
            generator,
        };
        Ok((session, started))
    }

    /// Generates one token, or returns `None` once generation has ended.
    pub async fn step(&mut self, cancel: bool) -> focal::Result<Option<StepOutput>> {
        if cancel {
            self.generator.cancel();
        }
        let before = self.generator.sequence().len();
        let Some(step) = self.generator.step().await? else {
            return Ok(None);
        };
        let rows = self.generator.sequence().len();
        let label = (rows > before).then(|| self.model.tokenizer().token_label(step.token));
        Ok(Some(StepOutput {
            token: step.token,
            text: step.text,
            label,
            rows,
            stop: step.stop,
        }))
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.generator.stop_reason()
    }

    pub fn generated(&self) -> usize {
        self.generator.generated().len()
    }

    /// Returns `[rows.len(), rows.end]` probabilities of (`layer`, `head`) for query `rows`.
    pub async fn attention(
        &self,
        layer: usize,
        head: usize,
        rows: Range<usize>,
    ) -> focal::Result<Vec<f32>> {
        let keys = rows.end;
        let seq = self.generator.sequence();
        let map = self.model.attention_probs(seq, layer, head, rows).await?;
        Ok(trim_columns(&map.probs, map.cols, keys))
    }

    /// Returns `[layers, heads, rows.len(), keys]` probabilities for the listed query rows
    /// (ascending), where `keys` is the last listed row plus one.
    pub async fn attention_all_heads(&self, rows: &[usize]) -> focal::Result<Vec<f32>> {
        let seq = self.generator.sequence();
        let config = self.model.config();
        let len = seq.len();
        let Some(&last) = rows.last() else {
            return Ok(Vec::new());
        };
        if last >= len || rows.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(focal::Error::InvalidArgument {
                name: "rows",
                value: format!("{} rows ending at {last}", rows.len()),
                reason: format!("must be ascending positions below the sequence length {len}"),
            });
        }

        let keys = last + 1;
        let cells = config.layers * config.heads;
        let mut out = Vec::with_capacity(cells * rows.len() * keys);
        if cells * len * len <= FULL_CAPTURE_VALUES {
            for map in self.model.attention_all(seq).await? {
                for &row in rows {
                    out.extend_from_slice(&map.row(row)[..keys]);
                }
            }
            return Ok(out);
        }

        // NOTE: past the full-capture size this costs one readback per head and row span,
        // which dominates a decode step at long contexts.
        let span = rows[0]..last + 1;
        for layer in 0..config.layers {
            for head in 0..config.heads {
                let map = self
                    .model
                    .attention_probs(seq, layer, head, span.clone())
                    .await?;
                for &row in rows {
                    out.extend_from_slice(&map.row(row)[..keys]);
                }
            }
        }
        Ok(out)
    }

    /// Scores every head on the current sequence plus a repeated random block, and
    /// returns each head's strongest role with all its scores.
    pub async fn head_roles(&self) -> focal::Result<Vec<HeadRoleScores>> {
        let tokens = self.generator.sequence().tokens().to_vec();
        let scores = self.model.score_heads(&tokens, INDUCTION_PERIOD, 1).await?;
        let roles = scores.roles();
        Ok(roles
            .into_iter()
            .enumerate()
            .map(|(index, role)| HeadRoleScores {
                layer: role.layer,
                head: role.head,
                role: role.role.name(),
                score: role.score,
                scores: focal::model::roles::Role::ALL
                    .iter()
                    .map(|&r| (r.name(), scores.scores(r)[index]))
                    .collect(),
            })
            .collect())
    }
}

/// A head's strongest role and its score for every role.
pub struct HeadRoleScores {
    pub layer: usize,
    pub head: usize,
    pub role: &'static str,
    pub score: f32,
    pub scores: Vec<(&'static str, f32)>,
}

/// Copies the first `keys` columns of each `cols`-wide row.
fn trim_columns(probs: &[f32], cols: usize, keys: usize) -> Vec<f32> {
    if cols == keys {
        return probs.to_vec();
    }
    probs
        .chunks(cols.max(1))
        .flat_map(|row| row[..keys.min(row.len())].iter().copied())
        .collect()
}

/// Returns the sentence the page shows when generation ends.
pub fn describe_stop(reason: Option<StopReason>, generated: usize, max_tokens: usize) -> String {
    match reason {
        Some(StopReason::EndOfSequence) => {
            format!("Done: the model ended its answer after {generated} tokens.")
        }
        Some(StopReason::StopString) => {
            format!("Done: a stop string ended the answer after {generated} tokens.")
        }
        Some(StopReason::MaxTokens) | None => {
            format!("Done: reached the limit of {max_tokens} tokens.")
        }
        Some(StopReason::Cancelled) => format!("Stopped after {generated} tokens."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_columns_keeps_prefix() {
        let probs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(trim_columns(&probs, 3, 2), vec![1.0, 2.0, 4.0, 5.0]);
        assert_eq!(trim_columns(&probs, 3, 3), probs.to_vec());
    }

    #[test]
    fn stop_messages_name_counts() {
        let cancelled = describe_stop(Some(StopReason::Cancelled), 3, 8);
        assert_eq!(cancelled, "Stopped after 3 tokens.");
        let limit = describe_stop(Some(StopReason::MaxTokens), 8, 8);
        assert!(limit.contains("limit of 8 tokens"), "{limit}");
    }
}
