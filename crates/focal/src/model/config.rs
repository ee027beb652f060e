//! Hyperparameters of a Llama-family decoder, read from GGUF metadata or a Hugging Face
//! `config.json`.

use serde::Deserialize;
use serde_json::Value;

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

/// Facts from a Hugging Face `config.json` beyond the hyperparameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HfModelInfo {
    /// `_name_or_path` when it is not blank, else the first non-blank `architectures` entry.
    pub name: Option<String>,
    /// `tie_word_embeddings`, or `None` when the key is absent or null.
    pub tie_word_embeddings: Option<bool>,
}

impl HfModelInfo {
    /// Returns whether the LM head reuses the embedding matrix. An absent
    /// `tie_word_embeddings` means false, the default of transformers' `LlamaConfig`.
    pub fn ties_word_embeddings(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(false)
    }

    fn from_json(root: &Value) -> Result<Self> {
        let tie_word_embeddings = match root.get("tie_word_embeddings") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(tie)) => Some(*tie),
            Some(other) => {
                return Err(format_error(
                    "config.json",
                    "tie_word_embeddings",
                    format!("expected true or false, found {other}"),
                ))
            }
        };
        Ok(Self {
            name: read_model_name(root)?,
            tie_word_embeddings,
        })
    }
}

/// Reads the model name from `_name_or_path`, falling back to the first non-blank
/// `architectures` entry. An empty or blank `_name_or_path` counts as absent.
fn read_model_name(root: &Value) -> Result<Option<String>> {
    match root.get("_name_or_path") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) if !name.trim().is_empty() => {
            return Ok(Some(name.trim().to_string()))
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(format_error(
                "config.json",
                "_name_or_path",
                format!("expected a string, found {other}"),
            ))
        }
    }
    let architectures = match root.get("architectures") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format_error(
                "config.json",
                "architectures",
                format!("expected a list of class names, found {other}"),
            ))
        }
    };
    let mut names = Vec::with_capacity(architectures.len());
    for (index, item) in architectures.iter().enumerate() {
        let name = item.as_str().ok_or_else(|| {
            format_error(
                "config.json",
                "architectures",
                format!("item {index} is not a string: {item}"),
            )
        })?;
        names.push(name);
    }
    Ok(names
        .into_iter()
        .find(|name| !name.trim().is_empty())
        .map(|name| name.trim().to_string()))
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
        Ok(Self::from_hf_json_with_info(bytes)?.0)
    }

    /// Parses a Hugging Face `config.json` into the hyperparameters and the model's name
    /// and embedding tying. Errors name the field that is missing or invalid.
    pub(crate) fn from_hf_json_with_info(bytes: &[u8]) -> Result<(Self, HfModelInfo)> {
        // Parsing from bytes, not from a `Value`, keeps the line and column in errors.
        let hf: HfConfig = serde_json::from_slice(bytes)
            .map_err(|e| format_error("config.json", "(root)", e.to_string()))?;
        let root: Value = serde_json::from_slice(bytes)
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
        Ok((config, HfModelInfo::from_json(&root)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a valid `config.json` of a tiny model with `extra` fields added.
    fn config_json(extra: &str) -> Vec<u8> {
        let mut text = r#"{"num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "hidden_size": 8, "intermediate_size": 8,
            "vocab_size": 4, "hidden_act": "silu""#
            .to_string();
        if !extra.is_empty() {
            text.push_str(", ");
            text.push_str(extra);
        }
        text.push('}');
        text.into_bytes()
    }

    fn info(extra: &str) -> Result<HfModelInfo> {
        LlamaConfig::from_hf_json_with_info(&config_json(extra)).map(|(_, info)| info)
    }

    fn assert_field_error(result: Result<HfModelInfo>, want_field: &str) {
        match result {
            Err(Error::Format { format, field, .. }) => {
                assert_eq!(format, "config.json");
                assert_eq!(field, want_field);
            }
            other => panic!("expected a format error naming {want_field}, found {other:?}"),
        }
    }

    #[test]
    fn hf_name_prefers_name_or_path() {
        let both = r#""_name_or_path": "org/tiny-llama", "architectures": ["LlamaForCausalLM"]"#;
        assert_eq!(info(both).unwrap().name.as_deref(), Some("org/tiny-llama"));
        let only_class = r#""architectures": ["LlamaForCausalLM"]"#;
        assert_eq!(
            info(only_class).unwrap().name.as_deref(),
            Some("LlamaForCausalLM")
        );
        let blank_path = r#""_name_or_path": " ", "architectures": ["LlamaForCausalLM"]"#;
        assert_eq!(
            info(blank_path).unwrap().name.as_deref(),
            Some("LlamaForCausalLM")
        );
        let null_path = r#""_name_or_path": null, "architectures": ["", "LlamaModel"]"#;
        assert_eq!(info(null_path).unwrap().name.as_deref(), Some("LlamaModel"));
        assert_eq!(info("").unwrap().name, None);
        assert_eq!(info(r#""architectures": []"#).unwrap().name, None);
    }

    #[test]
    fn hf_name_rejects_wrong_types() {
        assert_field_error(info(r#""_name_or_path": 7"#), "_name_or_path");
        assert_field_error(
            info(r#""architectures": "LlamaForCausalLM""#),
            "architectures",
        );
        assert_field_error(
            info(r#""architectures": ["LlamaForCausalLM", 3]"#),
            "architectures",
        );
    }

    #[test]
    fn tie_word_embeddings_defaults_to_false() {
        let absent = info("").unwrap();
        assert_eq!(absent.tie_word_embeddings, None);
        assert!(!absent.ties_word_embeddings());
        let null = info(r#""tie_word_embeddings": null"#).unwrap();
        assert!(!null.ties_word_embeddings());
        let tied = info(r#""tie_word_embeddings": true"#).unwrap();
        assert_eq!(tied.tie_word_embeddings, Some(true));
        assert!(tied.ties_word_embeddings());
        let untied = info(r#""tie_word_embeddings": false"#).unwrap();
        assert_eq!(untied.tie_word_embeddings, Some(false));
        assert!(!untied.ties_word_embeddings());
        assert_field_error(
            info(r#""tie_word_embeddings": "true""#),
            "tie_word_embeddings",
        );
    }

    #[test]
    fn hf_json_keeps_hyperparameters() {
        let bytes = config_json(r#""tie_word_embeddings": true"#);
        let (config, _) = LlamaConfig::from_hf_json_with_info(&bytes).unwrap();
        assert_eq!(config, LlamaConfig::from_hf_json(&bytes).unwrap());
        assert_eq!(config.head_dim, 4);
        assert_eq!(config.kv_heads, 1);
    }
}
