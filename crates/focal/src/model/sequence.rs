//! Per-sequence attention state on the GPU: keys, values, rotated queries and the
//! log-sum-exp of every attention row, for every layer.
//!
//! Queries and log-sum-exps are kept so that attention probabilities of any past row
//! can be recomputed later without rerunning the model. Buffers are position-major, so
//! growing a sequence copies one prefix per buffer.

use super::config::LlamaConfig;
use crate::{Context, Error, Result};

/// Positions allocated for a new sequence before the first growth.
const INITIAL_CAPACITY: usize = 64;

pub(crate) struct LayerCache {
    /// `[capacity, heads, head_dim]` f32, rotated.
    pub q: wgpu::Buffer,
    /// `[capacity, kv_heads, head_dim]` f32, rotated.
    pub k: wgpu::Buffer,
    /// `[capacity, kv_heads, head_dim]` f32.
    pub v: wgpu::Buffer,
    /// `[capacity, heads]` f32: log sum exp of the scaled scores of each row.
    pub lse: wgpu::Buffer,
}

/// One sequence's tokens and cached attention state.
///
/// Created by [`Model::new_sequence`](super::Model::new_sequence) and advanced by the
/// model's forward calls. A failed forward call leaves it unchanged.
pub struct Sequence {
    pub(crate) tokens: Vec<u32>,
    pub(crate) capacity: usize,
    pub(crate) layers: Vec<LayerCache>,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("len", &self.tokens.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Bytes per position of each buffer: (q, k, v, lse).
fn row_bytes(config: &LlamaConfig) -> [u64; 4] {
    let d = config.head_dim as u64;
    [
        config.heads as u64 * d * 4,
        config.kv_heads as u64 * d * 4,
        config.kv_heads as u64 * d * 4,
        config.heads as u64 * 4,
    ]
}

fn allocate(ctx: &Context, config: &LlamaConfig, capacity: usize) -> Result<Vec<LayerCache>> {
    let rows = row_bytes(config);
    for (name, bytes) in ["query cache", "key cache", "value cache", "lse cache"]
        .iter()
        .zip(rows)
    {
        ctx.check_binding_size(name, bytes * capacity as u64)?;
    }
    let buffer = |label: &str, bytes: u64| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes * capacity as u64).max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    Ok((0..config.layers)
        .map(|_| LayerCache {
            q: buffer("query cache", rows[0]),
            k: buffer("key cache", rows[1]),
            v: buffer("value cache", rows[2]),
            lse: buffer("lse cache", rows[3]),
        })
        .collect())
}

/// Records copies of the first `positions` rows of every buffer from `from` into `to`.
fn copy_prefix(
    encoder: &mut wgpu::CommandEncoder,
    config: &LlamaConfig,
    from: &[LayerCache],
    to: &[LayerCache],
    positions: usize,
) {
    let rows = row_bytes(config);
    for (src, dst) in from.iter().zip(to) {
        let pairs = [
            (&src.q, &dst.q),
            (&src.k, &dst.k),
            (&src.v, &dst.v),
            (&src.lse, &dst.lse),
        ];
        for ((a, b), bytes) in pairs.into_iter().zip(rows) {
            let size = bytes * positions as u64;
            if size > 0 {
                encoder.copy_buffer_to_buffer(a, 0, b, 0, size);
            }
        }
    }
}

impl Sequence {
    pub(crate) fn new(ctx: &Context, config: &LlamaConfig) -> Result<Self> {
        let capacity = INITIAL_CAPACITY.min(config.context_length);
        Ok(Self {
            tokens: Vec::new(),
            capacity,
            layers: allocate(ctx, config, capacity)?,
        })
    }

    /// Number of tokens processed so far.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Token ids processed so far, prompt first.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Makes room for `needed` positions, doubling the capacity up to the model's context
    /// length. Errors with [`Error::ContextOverflow`] past the context length.
    pub(crate) fn reserve(
        &mut self,
        ctx: &Context,
        config: &LlamaConfig,
        needed: usize,
    ) -> Result<()> {
        if needed > config.context_length {
            return Err(Error::ContextOverflow {
                tokens: needed,
                limit: config.context_length,
            });
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.max(self.capacity * 2).min(config.context_length);
        let layers = allocate(ctx, config, capacity)?;
        let mut encoder = ctx.encoder();
        copy_prefix(&mut encoder, config, &self.layers, &layers, self.len());
        ctx.submit(encoder);
        self.layers = layers;
        self.capacity = capacity;
        Ok(())
    }

    /// Returns an independent copy that continues from the same tokens.
    pub(crate) fn fork(&self, ctx: &Context, config: &LlamaConfig) -> Result<Self> {
        let layers = allocate(ctx, config, self.capacity)?;
        let mut encoder = ctx.encoder();
        copy_prefix(&mut encoder, config, &self.layers, &layers, self.len());
        ctx.submit(encoder);
        Ok(Self {
            tokens: self.tokens.clone(),
            capacity: self.capacity,
            layers,
        })
    }
}
