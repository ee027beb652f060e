//! Head roles: scores every attention head on a few well-known behaviours and labels
//! it with the strongest.
//!
//! Scores, each a mean over query rows 1.. of the prompt (row 0 has one key only):
//! - previous token: probability on the key just before the query;
//! - sink: probability on the first token and on delimiter tokens (punctuation,
//!   whitespace, special tokens);
//! - local: probability within 4 positions back, not counting the previous token;
//! - broad: row entropy divided by the entropy of uniform attention over the row;
//! - induction: on a random token sequence repeated twice, probability that queries in
//!   the second copy put on the key right after the same token's first occurrence.

use super::capture::AttentionMap;
use super::Model;
use crate::{Error, Result};

/// Keys back from the query that count as local.
pub const LOCAL_WINDOW: usize = 4;

/// A behaviour that a head is scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    PreviousToken,
    Sink,
    Local,
    Broad,
    Induction,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::PreviousToken,
        Role::Sink,
        Role::Local,
        Role::Broad,
        Role::Induction,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::PreviousToken => "previous-token",
            Role::Sink => "sink",
            Role::Local => "local",
            Role::Broad => "broad",
            Role::Induction => "induction",
        }
    }
}

/// Scores of every head, each `[layers * heads]` in layer-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadScores {
    pub layers: usize,
    pub heads: usize,
    pub previous_token: Vec<f32>,
    pub sink: Vec<f32>,
    pub local: Vec<f32>,
    pub broad: Vec<f32>,
    pub induction: Vec<f32>,
}

/// A head with its strongest role.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadRole {
    pub layer: usize,
    pub head: usize,
    pub role: Role,
    pub score: f32,
}

impl HeadScores {
    /// Returns the scores of `role`, `[layers * heads]`.
    pub fn scores(&self, role: Role) -> &[f32] {
        match role {
            Role::PreviousToken => &self.previous_token,
            Role::Sink => &self.sink,
            Role::Local => &self.local,
            Role::Broad => &self.broad,
            Role::Induction => &self.induction,
        }
    }

    /// Labels every head with its strongest role.
    ///
    /// Raw scores of different roles have different scales (most heads put much weight
    /// on the first token), so each score is first placed between that role's median
    /// (0) and maximum (1) over all heads, and the head takes the role where its placement is
    /// highest. The reported score is the raw one.
    pub fn roles(&self) -> Vec<HeadRole> {
        let ranges: Vec<(f32, f32)> = Role::ALL
            .iter()
            .map(|&role| {
                let mut sorted = self.scores(role).to_vec();
                sorted.sort_by(f32::total_cmp);
                let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
                let max = sorted.last().copied().unwrap_or(0.0);
                (median, (max - median).max(f32::EPSILON))
            })
            .collect();
        (0..self.layers * self.heads)
            .map(|i| {
                let (role, _) = Role::ALL
                    .iter()
                    .zip(&ranges)
                    .map(|(&role, &(median, spread))| {
                        (role, (self.scores(role)[i] - median) / spread)
                    })
                    .fold((Role::Broad, f32::NEG_INFINITY), |best, next| {
                        if next.1 > best.1 {
                            next
                        } else {
                            best
                        }
                    });
                HeadRole {
                    layer: i / self.heads,
                    head: i % self.heads,
                    role,
                    score: self.scores(role)[i],
                }
            })
            .collect()
    }

    /// Returns the head with the highest score for `role` as (layer, head, score).
    pub fn best(&self, role: Role) -> (usize, usize, f32) {
        let (i, score) = self.scores(role).iter().copied().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |best, next| {
                if next.1 > best.1 {
                    next
                } else {
                    best
                }
            },
        );
        (i / self.heads, i % self.heads, score)
    }
}

fn mean(values: impl Iterator<Item = f32>) -> f32 {
    let (sum, count) = values.fold((0.0f64, 0usize), |(s, n), v| (s + v as f64, n + 1));
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

/// Per-head prompt scores: (previous token, sink, local, broad).
fn prompt_scores(map: &AttentionMap, delimiters: &[bool]) -> (f32, f32, f32, f32) {
    let n = map.cols;
    let rows = 1..n;
    let previous = mean(rows.clone().map(|i| map.row(i)[i - 1]));
    let sink = mean(rows.clone().map(|i| {
        let row = map.row(i);
        row[0]
            + (1..=i)
                .filter(|&j| delimiters[j])
                .map(|j| row[j])
                .sum::<f32>()
    }));
    let local = mean(rows.clone().map(|i| {
        let row = map.row(i);
        let from = i.saturating_sub(LOCAL_WINDOW);
        (from..=i)
            .filter(|&j| j + 1 != i)
            .map(|j| row[j])
            .sum::<f32>()
    }));
    let broad = mean(rows.map(|i| {
        let entropy: f32 = map.row(i)[..=i]
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| -p * p.ln())
            .sum();
        entropy / ((i + 1) as f32).ln()
    }));
    (previous, sink, local, broad)
}

/// Induction score of one head on a sequence made of a `period`-token block repeated:
/// the mean probability that query `i` in the second copy puts on key `i - period + 1`.
fn induction_score(map: &AttentionMap, period: usize) -> f32 {
    mean((period..map.cols).map(|i| map.row(i)[i + 1 - period]))
}

/// Returns `count` pseudo-random ordinary token ids from `seed`, avoiding the special
/// tokens at the start of the vocabulary and the rarely trained ones at its end.
pub fn random_tokens(vocab: usize, count: usize, seed: u64) -> Vec<u32> {
    let low = 1000.min(vocab / 4);
    let high = (vocab * 3 / 4).max(low + 1);
    let mut state = seed ^ 0x5851_f42d_4c95_7f2d;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (low + (state >> 33) as usize % (high - low)) as u32
        })
        .collect()
}

impl Model {
    /// Scores every head on `prompt` (previous token, sink, local, broad) and on a
    /// random block of `period` tokens repeated twice (induction), with `seed` choosing
    /// the tokens. Runs two forward passes and two captures.
    ///
    /// Errors when the prompt has fewer than 2 tokens or `period` is below 2.
    pub async fn score_heads(
        &self,
        prompt: &[u32],
        period: usize,
        seed: u64,
    ) -> Result<HeadScores> {
        if prompt.len() < 2 {
            return Err(Error::Generation(format!(
                "head roles need a prompt of at least 2 tokens, found {}",
                prompt.len()
            )));
        }
        if period < 2 {
            crate::bail_arg!(
                "period",
                period,
                "the repeated block needs at least 2 tokens"
            );
        }
        let c = self.config();
        let tokenizer = self.tokenizer();
        let delimiters: Vec<bool> = prompt
            .iter()
            .map(|&t| {
                let text = tokenizer.decode(&[t], true).unwrap_or_default();
                let trimmed = text.trim();
                trimmed.is_empty() || trimmed.chars().all(|ch| ch.is_ascii_punctuation())
            })
            .collect();

        let mut seq = self.new_sequence()?;
        self.forward(&mut seq, prompt).await?;
        let maps = self.attention_all(&seq).await?;
        let mut scores = HeadScores {
            layers: c.layers,
            heads: c.heads,
            previous_token: Vec::with_capacity(maps.len()),
            sink: Vec::with_capacity(maps.len()),
            local: Vec::with_capacity(maps.len()),
            broad: Vec::with_capacity(maps.len()),
            induction: Vec::with_capacity(maps.len()),
        };
        for map in &maps {
            let (previous, sink, local, broad) = prompt_scores(map, &delimiters);
            scores.previous_token.push(previous);
            scores.sink.push(sink);
            scores.local.push(local);
            scores.broad.push(broad);
        }
        drop(maps);

        let block = random_tokens(c.vocab, period, seed);
        let repeated: Vec<u32> = block.iter().chain(&block).copied().collect();
        let mut seq = self.new_sequence()?;
        self.forward(&mut seq, &repeated).await?;
        for map in self.attention_all(&seq).await? {
            scores.induction.push(induction_score(&map, period));
        }
        Ok(scores)
    }

    /// Blocking form of [`Model::score_heads`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn score_heads_blocking(
        &self,
        prompt: &[u32],
        period: usize,
        seed: u64,
    ) -> Result<HeadScores> {
        pollster::block_on(self.score_heads(prompt, period, seed))
    }
}
