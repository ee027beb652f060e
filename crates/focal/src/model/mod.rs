//! Running a pretrained Llama-family language model: file readers, tokenizer and chat
//! template, the forward pass, generation, attention capture and head roles.
//!
//! Everything loads from bytes in memory (no file system, memory mapping or threads),
//! so the browser build uses the same code as the native one:
//!
//! ```no_run
//! # async fn run(ctx: focal::Context, bytes: Vec<u8>) -> focal::Result<()> {
//! use focal::model::{GenerateOptions, Generator, Model};
//! let model = Model::from_gguf(&ctx, &bytes, &mut |_done, _total| {})?;
//! let prompt = model.tokenizer().encode("The capital of France is")?;
//! let mut generator = Generator::new(&model, &prompt, GenerateOptions::greedy(8))?;
//! generator.prefill().await?;
//! while let Some(step) = generator.step().await? {
//!     print!("{}", step.text);
//! }
//! # Ok(()) }
//! ```

mod capture;
mod config;
mod generate;
pub mod gguf;
mod llama;
pub mod roles;
mod sequence;
mod tokenizer;
mod weights;

use std::sync::{Arc, Mutex};

pub use capture::AttentionMap;
pub use config::LlamaConfig;
pub use generate::{GenerateOptions, Generator, Sampler, Step, StopReason};
pub use sequence::Sequence;
pub use tokenizer::{ChatMessage, Tokenizer};

use crate::kv::{KvBudget, KvCache, KvCacheConfig};
use crate::{Context, DType, Result};

/// Contents of the files of a Hugging Face model folder, for [`Model::from_hf_files`].
#[derive(Clone, Copy)]
pub struct HfFiles<'a> {
    /// `config.json`.
    pub config_json: &'a [u8],
    /// `model.safetensors`.
    pub safetensors: &'a [u8],
    /// `tokenizer.json`.
    pub tokenizer_json: &'a [u8],
    /// `tokenizer_config.json`, with the special tokens and usually the chat template.
    pub tokenizer_config: Option<&'a [u8]>,
    /// `chat_template.jinja`, which replaces the template in `tokenizer_config.json`.
    pub chat_template: Option<&'a [u8]>,
    /// Model name, for example the folder's name, in place of the one in `config.json`.
    pub name: Option<&'a str>,
}

impl<'a> HfFiles<'a> {
    /// Returns the three required files, without the optional ones or a name.
    pub fn new(config_json: &'a [u8], safetensors: &'a [u8], tokenizer_json: &'a [u8]) -> Self {
        Self {
            config_json,
            safetensors,
            tokenizer_json,
            tokenizer_config: None,
            chat_template: None,
            name: None,
        }
    }
}

/// Returns the first non-blank name of `requested` and `from_config`, else "llama".
fn hf_model_name(requested: Option<&str>, from_config: Option<&str>) -> String {
    [requested, from_config]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|name| !name.is_empty())
        .unwrap_or("llama")
        .to_string()
}

/// A loaded model: configuration, GPU weights, tokenizer and the paged KV cache that its
/// sequences share. Cloning is cheap and shares the cache.
#[derive(Clone)]
pub struct Model {
    pub(crate) inner: Arc<ModelInner>,
}

pub(crate) struct ModelInner {
    pub ctx: Context,
    pub config: LlamaConfig,
    pub weights: weights::Weights,
    pub tokenizer: Tokenizer,
    pub name: String,
    /// K and V rows of every sequence, sized for `config.context_length` tokens in all.
    pub kv: Arc<Mutex<KvCache>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Model {
    /// Loads a Llama-family model from the bytes of a GGUF file, calling
    /// `progress(done, total)` after each tensor is uploaded.
    ///
    /// Weights are dequantised to f16 where the adapter has shader-f16 and to f32
    /// otherwise. Errors: [`Error::Format`](crate::Error::Format) for a corrupt file or
    /// metadata, [`Error::MissingTensor`](crate::Error::MissingTensor),
    /// [`Error::UnsupportedTensorType`](crate::Error::UnsupportedTensorType), and device
    /// limit errors when a tensor does not fit one buffer.
    pub fn from_gguf(
        ctx: &Context,
        bytes: &[u8],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let file = gguf::Gguf::parse(bytes)?;
        let config = LlamaConfig::from_gguf(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let weights = weights::load(ctx, &config, &file, progress)?;
        let name = file
            .get("general.name")
            .and_then(gguf::Value::as_str)
            .unwrap_or("llama")
            .to_string();
        Self::assemble(ctx, config, weights, tokenizer, name)
    }

    /// Loads a model in the Hugging Face layout from the contents of `config.json`,
    /// `model.safetensors`, `tokenizer.json` and, when present, `tokenizer_config.json`
    /// (which contains the chat template).
    ///
    /// Calls [`Model::from_hf_files`] with no `chat_template.jinja` and no given name.
    pub fn from_hf(
        ctx: &Context,
        config_json: &[u8],
        safetensors: &[u8],
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let files = HfFiles {
            tokenizer_config,
            ..HfFiles::new(config_json, safetensors, tokenizer_json)
        };
        Self::from_hf_files(ctx, &files, progress)
    }

    /// Loads a model in the Hugging Face layout from the contents of its files, calling
    /// `progress(done, total)` after each tensor is uploaded.
    ///
    /// The chat template comes from `chat_template.jinja` when given, else from
    /// `tokenizer_config.json` (see [`Tokenizer::from_hf`]). The name is `files.name`,
    /// else `_name_or_path` or the first `architectures` entry of `config.json`, else
    /// "llama". Errors: [`Error::Format`](crate::Error::Format) naming the file and field,
    /// [`Error::MissingTensor`](crate::Error::MissingTensor) (also for `lm_head.weight`
    /// when `tie_word_embeddings` is false or absent, the transformers default for Llama),
    /// [`Error::UnsupportedTensorType`](crate::Error::UnsupportedTensorType) and device
    /// limit errors when a tensor does not fit one buffer.
    pub fn from_hf_files(
        ctx: &Context,
        files: &HfFiles<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let (config, info) = LlamaConfig::from_hf_json_with_info(files.config_json)?;
        let tokenizer = Tokenizer::from_hf(
            files.tokenizer_json,
            files.tokenizer_config,
            files.chat_template,
        )?;
        let source =
            weights::HfSafetensors::parse(files.safetensors, &config, info.ties_word_embeddings())?;
        let weights = weights::load(ctx, &config, &source, progress)?;
        let name = hf_model_name(files.name, info.name.as_deref());
        Self::assemble(ctx, config, weights, tokenizer, name)
    }

    fn assemble(
        ctx: &Context,
        config: LlamaConfig,
        weights: weights::Weights,
        tokenizer: Tokenizer,
        name: String,
    ) -> Result<Self> {
        // NOTE: all live sequences share this budget, so several long sequences that
        // share no blocks can exhaust it before one reaches the context length. Forward
        // calls then fail with `Error::PoolExhausted`.
        let kv = KvCache::new(
            ctx,
            KvCacheConfig::new(
                config.layers,
                config.kv_heads,
                config.head_dim,
                DType::F32,
                KvBudget::Tokens(config.context_length),
            ),
        )?;
        log::info!(
            "loaded {name}: {} layers, {} heads ({} KV), hidden {}, vocab {}, weights {}",
            config.layers,
            config.heads,
            config.kv_heads,
            config.hidden,
            config.vocab,
            weights.embedding.dtype()
        );
        Ok(Self {
            inner: Arc::new(ModelInner {
                ctx: ctx.clone(),
                config,
                weights,
                tokenizer,
                name,
                kv: Arc::new(Mutex::new(kv)),
            }),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.inner.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// Model name: `general.name` of a GGUF file, or for a Hugging Face model the name
    /// chosen by [`Model::from_hf_files`]. It is "llama" when the files name none.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Element type of the projection weights on the GPU.
    pub fn weight_dtype(&self) -> crate::DType {
        self.inner.weights.embedding.dtype()
    }

    /// Creates an empty sequence in the model's KV cache.
    pub fn new_sequence(&self) -> Result<Sequence> {
        Sequence::new(&self.inner.ctx, &self.inner.config, &self.inner.kv)
    }

    /// Returns an independent copy of `seq` that continues from the same tokens, sharing
    /// its cached K and V blocks copy-on-write.
    pub fn fork(&self, seq: &Sequence) -> Result<Sequence> {
        seq.fork(&self.inner.ctx, &self.inner.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_name_order() {
        assert_eq!(hf_model_name(Some("smol"), Some("org/model")), "smol");
        assert_eq!(hf_model_name(None, Some("org/model")), "org/model");
        assert_eq!(hf_model_name(Some("  "), Some("org/model")), "org/model");
        assert_eq!(hf_model_name(Some(" smol "), None), "smol");
        assert_eq!(hf_model_name(None, None), "llama");
        assert_eq!(hf_model_name(Some(""), Some("")), "llama");
    }
}
