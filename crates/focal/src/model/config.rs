//! Hyperparameters of a Llama-family decoder, read from GGUF metadata or a Hugging Face
//! `config.json`.

use serde::Deserialize;

use super::gguf::Gguf;
use crate::{Error, Result};

/// Largest head size the attention kernels keep in registers.
pub const MAX_HEAD_DIM: usize = 256;

/// Shape and constants of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key and value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the SwiGLU MLP.
    pub ffn: usize,
    pub vocab: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// Maximum sequence length the model was trained for, in tokens.
    pub context_length: usize,
}

fn format_error(format: &'static str, field: &str, detail: impl Into<String>) -> Error {
    Error::Format {
        format,
        field: field.to_string(),
        detail: detail.into(),
    }
}

#[derive(Deserialize)]
struct HfConfig {
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_size: usize,
    intermediate_size: usize,
    vocab_size: usize,
    rope_theta: Option<f32>,
    rms_norm_eps: Option<f32>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    rope_scaling: Option<serde_json::Value>,
}

impl LlamaConfig {
    /// Reads the `{arch}.*` hyperparameters of a GGUF file whose architecture is `llama`.
    pub fn from_gguf(gguf: &Gguf<'_>) -> Result<Self> {
        let arch = gguf.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(format_error(
                "GGUF",
                "general.architecture",
                format!("architecture {arch:?} is not supported (expected \"llama\")"),
            ));
        }
        let int = |key: &str| -> Result<usize> {
            let value = gguf.require_u64(&format!("llama.{key}"))?;
            usize::try_from(value)
                .map_err(|_| format_error("GGUF", key, format!("{value} does not fit usize")))
        };
        let float = |key: &str, default: f32| -> f32 {
            gguf.get(&format!("llama.{key}"))
                .and_then(|v| v.as_f64())
                .map_or(default, |v| v as f32)
        };
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let kv_heads = match gguf.get("llama.attention.head_count_kv") {
            Some(_) => int("attention.head_count_kv")?,
            None => heads,
        };
        let head_dim = match gguf.get("llama.attention.key_length") {
            Some(_) => int("attention.key_length")?,
            None => hidden.checked_div(heads).unwrap_or(0),
        };
        let vocab = match gguf.get("llama.vocab_size") {
            Some(_) => int("vocab_size")?,
            None => gguf
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map_or(0, |a| a.len()),
        };
        let config = Self {
            layers: int("block_count")?,
            heads,
            kv_heads,
            head_dim,
            hidden,
            ffn: int("feed_forward_length")?,
            vocab,
            rope_theta: float("rope.freq_base", 10_000.0),
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            context_length: int("context_length")?,
        };
        config.validate("GGUF")?;
        Ok(config)
    }

    /// Parses a Hugging Face `config.json` of a `LlamaForCausalLM` model.
    pub fn from_hf_json(bytes: &[u8]) -> Result<Self> {
        let hf: HfConfig = serde_json::from_slice(bytes)
            .map_err(|e| format_error("config.json", "(root)", e.to_string()))?;
        if let Some(act) = hf.hidden_act.as_deref() {
            if act != "silu" {
                return Err(format_error(
                    "config.json",
                    "hidden_act",
                    format!("activation {act:?} is not supported (expected \"silu\")"),
                ));
            }
        }
        if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(format_error(
                "config.json",
                "rope_scaling",
                "RoPE scaling is not supported",
            ));
        }
        let config = Self {
            layers: hf.num_hidden_layers,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            hidden: hf.hidden_size,
            ffn: hf.intermediate_size,
            vocab: hf.vocab_size,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rms_eps: hf.rms_norm_eps.unwrap_or(1e-5),
            context_length: hf.max_position_embeddings.unwrap_or(2048),
        };
        config.validate("config.json")?;
        Ok(config)
    }

    /// Checks the constraints the kernels rely on; tensor shapes are checked on load.
    fn validate(&self, format: &'static str) -> Result<()> {
        let fail = |field: &str, detail: String| Err(format_error(format, field, detail));
        if self.layers == 0 || self.heads == 0 || self.kv_heads == 0 || self.vocab == 0 {
            return fail(
                "layers/heads/vocab",
                format!("zero in {self:?}: every count must be positive"),
            );
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return fail(
                "head_count_kv",
                format!(
                    "{} query heads are not a multiple of {} KV heads",
                    self.heads, self.kv_heads
                ),
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(4) || self.head_dim > MAX_HEAD_DIM {
            return fail(
                "head_dim",
                format!(
                    "{} must be a positive multiple of 4 up to {MAX_HEAD_DIM}",
                    self.head_dim
                ),
            );
        }
        for (field, value) in [
            ("embedding_length", self.hidden),
            ("feed_forward_length", self.ffn),
        ] {
            if value == 0 || !value.is_multiple_of(4) {
                return fail(field, format!("{value} must be a positive multiple of 4"));
            }
        }
        if self.context_length == 0 {
            return fail("context_length", "must be positive".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return fail(
                "rope.freq_base",
                format!("{} must be positive", self.rope_theta),
            );
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return fail(
                "layer_norm_rms_epsilon",
                format!("{} must be non-negative", self.rms_eps),
            );
        }
        Ok(())
    }

    /// Width of the fused Q, K and V projection output.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}
