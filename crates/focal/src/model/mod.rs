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
    pub fn from_hf(
        ctx: &Context,
        config_json: &[u8],
        safetensors: &[u8],
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let config = LlamaConfig::from_hf_json(config_json)?;
        let tokenizer = Tokenizer::from_json(tokenizer_json, tokenizer_config)?;
        let source = weights::HfSafetensors::parse(safetensors, &config)?;
        let weights = weights::load(ctx, &config, &source, progress)?;
        Self::assemble(ctx, config, weights, tokenizer, "llama".into())
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

    /// Model name from the file's metadata.
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
