//! Per-sequence attention state: the sequence's id in the model's shared paged KV cache,
//! plus the rotated queries and the log-sum-exp of every attention row of every layer.
//!
//! Queries and log-sum-exps are kept so that attention probabilities of any past row
//! can be recomputed later without rerunning the model. Both are head-major
//! (`[heads, capacity, ...]`), so growing a sequence copies one prefix per head.

use std::sync::{Arc, Mutex};

use super::config::LlamaConfig;
use crate::kv::{KvCache, SequenceId};
use crate::{Context, Error, Result};

/// Positions allocated for a new sequence before the first growth.
const INITIAL_CAPACITY: usize = 64;

pub(crate) struct LayerCapture {
    /// `[heads, capacity, head_dim]` f32, rotated.
    pub q: wgpu::Buffer,
    /// `[heads, capacity]` f32: log sum exp of the scaled scores of each row.
    pub lse: wgpu::Buffer,
}

/// One sequence's tokens and cached attention state.
///
/// Created by [`Model::new_sequence`](super::Model::new_sequence) and advanced by the
/// model's forward calls. A failed forward call leaves its tokens unchanged. Dropping it
/// frees its blocks in the model's KV cache.
pub struct Sequence {
    pub(crate) tokens: Vec<u32>,
    pub(crate) capacity: usize,
    pub(crate) layers: Vec<LayerCapture>,
    pub(crate) id: SequenceId,
    pub(crate) kv: Arc<Mutex<KvCache>>,
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("id", &self.id)
            .field("len", &self.tokens.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        if let Ok(mut kv) = self.kv.lock() {
            if let Err(error) = kv.free(self.id) {
                log::warn!("failed to free KV cache sequence {}: {error}", self.id);
            }
        }
    }
}

/// Locks the model's KV cache, mapping a poisoned lock to an error.
pub(crate) fn lock(kv: &Mutex<KvCache>) -> Result<std::sync::MutexGuard<'_, KvCache>> {
    kv.lock()
        .map_err(|_| Error::Generation("the KV cache lock is poisoned".into()))
}

/// Bytes per position and head of each buffer: (q, lse).
fn row_bytes(config: &LlamaConfig) -> [u64; 2] {
    [config.head_dim as u64 * 4, 4]
}

fn allocate(ctx: &Context, config: &LlamaConfig, capacity: usize) -> Result<Vec<LayerCapture>> {
    let rows = row_bytes(config);
    let heads = config.heads as u64;
    for (name, bytes) in ["query store", "lse store"].iter().zip(rows) {
        ctx.check_binding_size(name, bytes * heads * capacity as u64)?;
    }
    let buffer = |label: &str, bytes: u64| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes * heads * capacity as u64).max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    Ok((0..config.layers)
        .map(|_| LayerCapture {
            q: buffer("query store", rows[0]),
            lse: buffer("lse store", rows[1]),
        })
        .collect())
}

/// Records copies of the first `positions` rows of every head from buffers with room for
/// `from_capacity` positions per head into buffers with room for `to_capacity`.
fn copy_prefix(
    encoder: &mut wgpu::CommandEncoder,
    config: &LlamaConfig,
    (from, from_capacity): (&[LayerCapture], usize),
    (to, to_capacity): (&[LayerCapture], usize),
    positions: usize,
) {
    let rows = row_bytes(config);
    for (src, dst) in from.iter().zip(to) {
        for ((a, b), bytes) in [(&src.q, &dst.q), (&src.lse, &dst.lse)]
            .into_iter()
            .zip(rows)
        {
            let size = bytes * positions as u64;
            if size == 0 {
                continue;
            }
            for head in 0..config.heads as u64 {
                encoder.copy_buffer_to_buffer(
                    a,
                    head * from_capacity as u64 * bytes,
                    b,
                    head * to_capacity as u64 * bytes,
                    size,
                );
            }
        }
    }
}

impl Sequence {
    pub(crate) fn new(
        ctx: &Context,
        config: &LlamaConfig,
        kv: &Arc<Mutex<KvCache>>,
    ) -> Result<Self> {
        let capacity = INITIAL_CAPACITY.min(config.context_length);
        let layers = allocate(ctx, config, capacity)?;
        let id = lock(kv)?.create(None)?;
        Ok(Self {
            tokens: Vec::new(),
            capacity,
            layers,
            id,
            kv: kv.clone(),
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

    /// Makes room for `needed` positions in the query and log-sum-exp stores, doubling
    /// the capacity up to the model's context length. Errors with
    /// [`Error::ContextOverflow`] past the context length.
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
        copy_prefix(
            &mut encoder,
            config,
            (&self.layers, self.capacity),
            (&layers, capacity),
            self.len(),
        );
        ctx.submit(encoder);
        self.layers = layers;
        self.capacity = capacity;
        Ok(())
    }

    /// Returns a copy that continues from the same tokens. The KV rows are shared with
    /// `self` copy-on-write; the query and log-sum-exp stores are copied.
    pub(crate) fn fork(&self, ctx: &Context, config: &LlamaConfig) -> Result<Self> {
        let layers = allocate(ctx, config, self.capacity)?;
        let id = lock(&self.kv)?.fork(self.id)?;
        let mut encoder = ctx.encoder();
        copy_prefix(
            &mut encoder,
            config,
            (&self.layers, self.capacity),
            (&layers, self.capacity),
            self.len(),
        );
        ctx.submit(encoder);
        Ok(Self {
            tokens: self.tokens.clone(),
            capacity: self.capacity,
            layers,
            id,
            kv: self.kv.clone(),
        })
    }
}
