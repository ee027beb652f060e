//! Step-wise text generation: sampling (greedy, temperature, top-k, top-p, repetition
//! penalty, seed), stop conditions and incremental text for streaming.
//!
//! [`Generator::prefill`] runs the prompt, and each [`Generator::step`] returns one token
//! and its text. A browser drives generation from its event loop this way, and a caller
//! cancels by not requesting the next step.

use super::sequence::Sequence;
use super::Model;
use crate::{Error, Result};

/// Sampling and stopping settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens before sampling; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already in the
    /// sequence by this factor; 1 disables it.
    pub repetition_penalty: f32,
    /// Seed of the sampling random number generator.
    pub seed: u64,
    /// Generation ends when the text contains one of these; it is not emitted.
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.0,
            seed: 0,
            stop_strings: Vec::new(),
        }
    }
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            ..Self::default()
        }
    }

    /// Errors with [`Error::InvalidArgument`] on a setting outside its range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            crate::bail_arg!("temperature", self.temperature, "must be finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            crate::bail_arg!("top_p", self.top_p, "must be in (0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            crate::bail_arg!(
                "repetition_penalty",
                self.repetition_penalty,
                "must be finite and > 0"
            );
        }
        if self.stop_strings.iter().any(String::is_empty) {
            crate::bail_arg!(
                "stop_strings",
                "\"\"",
                "an empty stop string would stop at once"
            );
        }
        Ok(())
    }

    /// Converts stop strings given as bytes, erroring on invalid UTF-8 with the
    /// offending string's index.
    pub fn stop_strings_from_bytes(strings: &[Vec<u8>]) -> Result<Vec<String>> {
        strings
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                String::from_utf8(bytes.clone()).map_err(|e| Error::InvalidArgument {
                    name: "stop_strings",
                    value: format!("string {i} ({bytes:02x?})"),
                    reason: format!("is not valid UTF-8: {e}"),
                })
            })
            .collect()
    }

    fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }
}

/// Reason generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-sequence or end-of-turn token.
    EndOfSequence,
    /// The text contains a stop string.
    StopString,
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The caller cancelled between tokens.
    Cancelled,
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub token: u32,
    /// Text completed by this token. Empty while a multi-byte character or a possible
    /// stop string is still incomplete.
    pub text: String,
    /// Set on the last step.
    pub stop: Option<StopReason>,
}

/// A seeded SplitMix64 generator: small, portable and identical on every platform.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Picks tokens from logits with the settings of [`GenerateOptions`].
#[derive(Clone, Debug)]
pub struct Sampler {
    options: GenerateOptions,
    rng: Rng,
}

impl Sampler {
    pub fn new(options: &GenerateOptions) -> Self {
        Self {
            options: options.clone(),
            rng: Rng(options.seed),
        }
    }

    /// Returns the next token for `logits`, given the tokens `history` already in the
    /// sequence (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let o = &self.options;
        let mut scores = logits.to_vec();
        if o.repetition_penalty != 1.0 {
            for &id in history {
                if let Some(s) = scores.get_mut(id as usize) {
                    *s = if *s > 0.0 {
                        *s / o.repetition_penalty
                    } else {
                        *s * o.repetition_penalty
                    };
                }
            }
        }
        let argmax = || {
            scores
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &s)| {
                    if s > best.1 {
                        (i, s)
                    } else {
                        best
                    }
                })
                .0 as u32
        };
        if o.temperature == 0.0 {
            return argmax();
        }

        let mut candidates: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_finite())
            .map(|(i, &s)| (i as u32, s / o.temperature))
            .collect();
        if candidates.is_empty() {
            return argmax();
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if o.top_k > 0 {
            candidates.truncate(o.top_k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if o.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    cumulative += p;
                    cumulative >= o.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let kept: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= kept);
        }
        let mut target = self.rng.next_f32();
        for (i, &p) in probs.iter().enumerate() {
            if target < p {
                return candidates[i].0;
            }
            target -= p;
        }
        candidates[probs.len() - 1].0
    }
}

/// Output of the last forward call, consumed by the next step.
enum Next {
    None,
    Logits(Vec<f32>),
    Token(u32),
}

/// Generates text from a prompt one token at a time.
pub struct Generator {
    model: Model,
    seq: Sequence,
    prompt: Vec<u32>,
    options: GenerateOptions,
    sampler: Sampler,
    generated: Vec<u32>,
    /// Generated text emitted so far, in bytes of the decoded text.
    emitted: usize,
    next: Next,
    stopped: Option<StopReason>,
}

impl Generator {
    /// Prepares generation from the token ids of `prompt` on a fresh sequence.
    ///
    /// Errors on an empty prompt, a prompt longer than the context, or invalid options.
    pub fn new(model: &Model, prompt: &[u32], options: GenerateOptions) -> Result<Self> {
        let seq = model.new_sequence()?;
        Self::with_sequence(model, seq, prompt, options)
    }

    /// Prepares generation that continues `seq` (for example a fork of another
    /// sequence) with the extra tokens `prompt`, which must not be empty.
    pub fn with_sequence(
        model: &Model,
        seq: Sequence,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<Self> {
        options.validate()?;
        if prompt.is_empty() {
            return Err(Error::Generation(
                "the prompt is empty: it needs at least one token".into(),
            ));
        }
        let limit = model.config().context_length;
        let needed = seq.len() + prompt.len();
        if needed > limit {
            return Err(Error::ContextOverflow {
                tokens: needed,
                limit,
            });
        }
        Ok(Self {
            model: model.clone(),
            seq,
            prompt: prompt.to_vec(),
            sampler: Sampler::new(&options),
            options,
            generated: Vec::new(),
            emitted: 0,
            next: Next::None,
            stopped: None,
        })
    }

    /// Returns the sequence being generated, for attention capture and forks.
    pub fn sequence(&self) -> &Sequence {
        &self.seq
    }

    /// Token ids generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Returns the reason generation ended, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stopped
    }

    /// Ends generation between tokens; later steps return `None`. The sequence contains
    /// every token emitted so far.
    pub fn cancel(&mut self) {
        self.stopped.get_or_insert(StopReason::Cancelled);
    }

    async fn run(&mut self, tokens: &[u32]) -> Result<()> {
        self.next = if self.options.is_greedy() {
            Next::Token(self.model.forward_greedy(&mut self.seq, tokens).await?)
        } else {
            Next::Logits(self.model.forward(&mut self.seq, tokens).await?)
        };
        Ok(())
    }

    /// Runs the prompt through the model. Calling it again does nothing.
    pub async fn prefill(&mut self) -> Result<()> {
        if !matches!(self.next, Next::None) {
            return Ok(());
        }
        let prompt = std::mem::take(&mut self.prompt);
        self.run(&prompt).await
    }

    /// Generates one token: picks it, feeds it to the model (so its attention row exists
    /// for capture) and returns it with its text. Returns `None` once generation ended.
    pub async fn step(&mut self) -> Result<Option<Step>> {
        if self.stopped.is_some() {
            return Ok(None);
        }
        if matches!(self.next, Next::None) {
            self.prefill().await?;
        }
        if self.generated.len() >= self.options.max_tokens {
            self.stopped = Some(StopReason::MaxTokens);
            return Ok(None);
        }
        let token = match &self.next {
            Next::Token(t) => *t,
            Next::Logits(logits) => self.sampler.sample(logits, self.seq.tokens()),
            Next::None => unreachable_next()?,
        };
        let tokenizer = self.model.tokenizer();
        if tokenizer.is_stop_token(token) {
            self.stopped = Some(StopReason::EndOfSequence);
            return Ok(Some(Step {
                token,
                text: self.flush()?,
                stop: self.stopped,
            }));
        }
        self.generated.push(token);
        let (text, hit_stop) = self.take_text()?;
        let mut stop = None;
        if hit_stop {
            stop = Some(StopReason::StopString);
        } else if self.generated.len() >= self.options.max_tokens
            || self.seq.len() + 1 >= self.model.config().context_length
        {
            stop = Some(StopReason::MaxTokens);
        }
        if self.seq.len() < self.model.config().context_length {
            self.run(&[token]).await?;
        }
        let text = match stop {
            Some(StopReason::MaxTokens) => text + &self.flush()?,
            _ => text,
        };
        self.stopped = stop;
        Ok(Some(Step { token, text, stop }))
    }

    fn decoded(&self) -> Result<String> {
        self.model.tokenizer().decode(&self.generated, true)
    }

    /// Returns the newly completed text and whether it reached a stop string. Text that
    /// could be the start of a stop string or of a multi-byte character is held back.
    fn take_text(&mut self) -> Result<(String, bool)> {
        let text = self.decoded()?;
        for stop in &self.options.stop_strings {
            if let Some(at) = text[self.emitted.min(text.len())..].find(stop.as_str()) {
                let end = self.emitted + at;
                let piece = text[self.emitted..end].to_string();
                self.emitted = end;
                return Ok((piece, true));
            }
        }
        let mut end = text.len();
        if text.ends_with('\u{fffd}') {
            end -= '\u{fffd}'.len_utf8();
        }
        for stop in &self.options.stop_strings {
            for (i, _) in stop.char_indices().skip(1) {
                if text[..end].ends_with(&stop[..i]) {
                    end = end.min(text.len() - i);
                }
            }
        }
        let end = end.max(self.emitted);
        let piece = text[self.emitted..end].to_string();
        self.emitted = end;
        Ok((piece, false))
    }

    /// Returns whatever text is still held back.
    fn flush(&mut self) -> Result<String> {
        let text = self.decoded()?;
        let piece = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = text.len();
        Ok(piece)
    }

    /// Runs the whole generation, calling `on_step` after each token; returning `false`
    /// from it cancels before the next token. Returns why generation ended.
    pub async fn run_to_end(
        &mut self,
        mut on_step: impl FnMut(&Step) -> bool,
    ) -> Result<StopReason> {
        self.prefill().await?;
        while let Some(step) = self.step().await? {
            if !on_step(&step) {
                self.cancel();
            }
        }
        Ok(self.stopped.unwrap_or(StopReason::MaxTokens))
    }

    /// Blocking form of [`Generator::run_to_end`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_blocking(&mut self, on_step: impl FnMut(&Step) -> bool) -> Result<StopReason> {
        pollster::block_on(self.run_to_end(on_step))
    }

    /// Takes the sequence back, for example to fork it or capture attention after
    /// generation.
    pub fn into_sequence(self) -> Sequence {
        self.seq
    }
}

fn unreachable_next() -> Result<u32> {
    Err(Error::Generation(
        "internal error: no logits after prefill".into(),
    ))
}
