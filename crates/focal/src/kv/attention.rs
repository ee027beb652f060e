//! Paged attention: split-K attention that reads K and V through a sequence's block
//! table (`shaders/paged_attention.wgsl`).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::allocator::SequenceId;
use super::cache::KvCache;
use crate::kernels::to_u32;
use crate::shader::{dispatch, grid_2d, Variant};
use crate::{Context, DType, Error, Result, Tensor};

/// Block-table entry of an evicted block; the kernel never reads through it.
pub(crate) const EVICTED: u32 = u32::MAX;

/// Invocations per workgroup of the paged kernels, unless the device grants fewer.
const WORKGROUP: u32 = 64;

/// Largest number of query rows one workgroup of the partial pass handles.
const MAX_ROWS: u32 = 8;

/// Tile sizes of the partial pass for one head size and query-row count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedTiles {
    /// Query rows per workgroup: all rows of one KV head's GQA group, up to 8.
    pub rows: u32,
    /// Keys per shared-memory tile.
    pub tile_keys: u32,
    /// Invocations per workgroup.
    pub workgroup: u32,
}

impl PagedTiles {
    /// Workgroup memory in bytes: query rows, K and V tiles and scores, all f32.
    pub fn workgroup_bytes(self, head_dim: usize) -> u32 {
        let d = head_dim as u32;
        4 * (self.rows * d + 2 * self.tile_keys * d + self.rows * self.tile_keys)
    }
}

/// Chooses the partial pass's tiles: the rows of one KV head (up to 8, rounded up to a
/// power of two) and the largest key tile of 32, 16, 8 or 4 that fits the granted
/// workgroup memory.
///
/// Errors with [`Error::WorkgroupMemory`] when even 4 keys do not fit.
pub fn paged_tiles(
    limits: &wgpu::Limits,
    head_dim: usize,
    rows_per_kv_head: usize,
) -> Result<PagedTiles> {
    let workgroup = WORKGROUP.min(limits.max_compute_invocations_per_workgroup.max(1));
    // Round the workgroup down to a power of two so that it divides evenly into rows.
    let workgroup = 1 << (31 - workgroup.leading_zeros());
    let rows = (rows_per_kv_head.max(1) as u32)
        .next_power_of_two()
        .min(MAX_ROWS)
        .min(workgroup);
    let limit = limits.max_compute_workgroup_storage_size;
    for tile_keys in [32, 16, 8, 4] {
        let tiles = PagedTiles {
            rows,
            tile_keys,
            workgroup,
        };
        if tiles.workgroup_bytes(head_dim) <= limit {
            return Ok(tiles);
        }
    }
    let smallest = PagedTiles {
        rows,
        tile_keys: 4,
        workgroup,
    };
    Err(Error::WorkgroupMemory {
        kernel: "paged_partial",
        bytes: smallest.workgroup_bytes(head_dim),
        limit,
    })
}

/// Settings of one paged attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PagedAttentionOptions {
    /// Factor applied to `q . k`.
    pub scale: f32,
    /// Use the subgroup variant (needs the adapter's SUBGROUP feature).
    pub subgroups: bool,
    /// Keys per split-K chunk; `None` picks one from the sequence length. Rounded up to a
    /// multiple of the key tile.
    pub chunk_keys: Option<usize>,
}

impl PagedAttentionOptions {
    /// Options with scale `1 / sqrt(head_dim)` and subgroups where the adapter has them.
    pub fn new(ctx: &Context, head_dim: usize) -> Self {
        Self {
            scale: 1.0 / (head_dim.max(1) as f32).sqrt(),
            subgroups: ctx.capabilities().subgroup_attention,
            chunk_keys: None,
        }
    }
}

/// Workgroups that the default chunking aims for across all chunks, KV heads and row
/// tiles, so that a GPU has enough independent work during decode.
// NOTE: on lavapipe the subgroup variant of paged decode measured 17% to 63% slower
// than contiguous decode at 1K and 4K tokens, while the plain variant, the default
// there, stayed within 14% (see BENCHMARKS.md). The cause was not profiled.
const TARGET_WORKGROUPS: usize = 256;

/// Minimum keys per chunk that the default chunking uses.
const MIN_CHUNK_KEYS: usize = 256;

/// Returns the default keys per chunk: enough chunks for about [`TARGET_WORKGROUPS`]
/// workgroups when `other_groups` workgroups (KV heads times row tiles) share each
/// chunk, each chunk covering at least [`MIN_CHUNK_KEYS`] keys.
fn default_chunk_keys(seq_len: usize, other_groups: usize) -> usize {
    let chunks = (TARGET_WORKGROUPS / other_groups.max(1))
        .min(seq_len.div_ceil(MIN_CHUNK_KEYS))
        .max(1);
    seq_len.div_ceil(chunks)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    q_heads: u32,
    kv_heads: u32,
    q_len: u32,
    seq_len: u32,
    block_size: u32,
    chunk_keys: u32,
    num_chunks: u32,
    row_tiles: u32,
    sinks: u32,
    window: u32,
    scale: f32,
    _pad: u32,
}

/// Splits `q` into (q_heads, q_len) after checking it is `[1, q_heads, q_len, head_dim]`
/// or `[q_heads, q_len, head_dim]`.
fn query_shape(q: &Tensor, kv_heads: usize, head_dim: usize) -> Result<(usize, usize)> {
    let (heads, q_len, dim) = match *q.shape() {
        [1, h, n, d] => (h, n, d),
        [h, n, d] => (h, n, d),
        _ => (0, 0, 0),
    };
    if heads == 0 || q_len == 0 || dim != head_dim {
        return Err(Error::ShapeMismatch {
            op: "paged attention",
            detail: format!(
                "q has shape {:?}, expected [1, q_heads, q_len, {head_dim}] or \
                 [q_heads, q_len, {head_dim}] with q_heads and q_len at least 1",
                q.shape()
            ),
        });
    }
    if !heads.is_multiple_of(kv_heads) {
        return Err(Error::ShapeMismatch {
            op: "paged attention",
            detail: format!(
                "q_heads {heads} is not a multiple of kv_heads {kv_heads}, as GQA requires"
            ),
        });
    }
    Ok((heads, q_len))
}

impl KvCache {
    /// Returns the default attention options for this cache's head size.
    pub fn attention_options(&self) -> PagedAttentionOptions {
        PagedAttentionOptions::new(&self.ctx, self.config.head_dim)
    }

    /// Records paged attention of `q` against one layer of a sequence.
    ///
    /// `q` is `[1, q_heads, q_len, head_dim]` (or without the leading 1) in the cache's
    /// dtype, `q_heads` a multiple of `kv_heads`. Query row `i` sits at position
    /// `len - q_len + i` and attends to the keys up to its own (causal, bottom-right
    /// aligned), limited to sinks plus window for a windowed sequence. `out` has `q`'s shape and
    /// dtype; `lse` is f32 `[q_heads, q_len]` or `[1, q_heads, q_len]` and receives each
    /// row's log-sum-exp of the scaled scores, so that a probability is
    /// `exp(q . k * scale - lse)`.
    ///
    /// The rows of the positions being attended must have been written for this layer
    /// (by [`KvCache::write_into`] earlier in the same or a previous submission).
    // NOTE: a row that sees no key gets lse = -1e30 here, while the flash and decode
    // kernels write -inf. A caller that recomputes probabilities must mask that row.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_into(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        id: SequenceId,
        layer: usize,
        q: &Tensor,
        options: &PagedAttentionOptions,
        out: &Tensor,
        lse: &Tensor,
    ) -> Result<()> {
        self.check_layer(layer)?;
        let config = &self.config;
        let seq_len = self.allocator.len(id)?;
        let window = self.allocator.window(id)?;
        let (q_heads, q_len) = query_shape(q, config.kv_heads, config.head_dim)?;
        for (name, t) in [("q", q), ("out", out)] {
            if t.dtype() != config.dtype {
                return Err(Error::DTypeMismatch {
                    op: "paged attention",
                    expected: config.dtype,
                    found: t.dtype(),
                });
            }
            if t.shape() != q.shape() {
                return Err(Error::ShapeMismatch {
                    op: "paged attention",
                    detail: format!("{name} has shape {:?}, q has {:?}", t.shape(), q.shape()),
                });
            }
        }
        if lse.dtype() != DType::F32 || lse.len() != q_heads * q_len || lse.shape().len() > 3 {
            return Err(Error::ShapeMismatch {
                op: "paged attention",
                detail: format!(
                    "lse is {:?} {}, expected [{q_heads}, {q_len}] f32",
                    lse.shape(),
                    lse.dtype()
                ),
            });
        }
        if q_len > seq_len {
            crate::bail_arg!(
                "q_len",
                q_len,
                "sequence {id} holds only {seq_len} tokens: reserve and write the new rows first"
            );
        }
        self.check_resident(id, seq_len, q_len)?;
        if options.subgroups && !self.ctx.capabilities().subgroups {
            crate::bail_arg!(
                "options.subgroups",
                true,
                "the adapter has no SUBGROUP feature"
            );
        }

        let group = q_heads / config.kv_heads;
        let tiles = paged_tiles(self.ctx.limits(), config.head_dim, group * q_len)?;
        let tile_keys = tiles.tile_keys as usize;
        let row_tiles = (group * q_len).div_ceil(tiles.rows as usize);
        let chunk_keys = options
            .chunk_keys
            .unwrap_or_else(|| default_chunk_keys(seq_len, config.kv_heads * row_tiles))
            .max(1)
            .next_multiple_of(tile_keys);
        let num_chunks = seq_len.div_ceil(chunk_keys);
        let rows_total = q_heads * q_len;
        let (acc, stats) = self.scratch(num_chunks * rows_total)?;

        let variant = Variant::new(config.dtype)
            .with_subgroups(options.subgroups)
            .define_u32("HEAD_DIM", to_u32("head_dim", config.head_dim)?)
            .define_u32("ROWS", tiles.rows)
            .define_u32("TILE_KEYS", tiles.tile_keys)
            .define_u32("WG", tiles.workgroup)
            .define_u32("BLOCK_SIZE", to_u32("block_size", config.block_size)?);
        let (sinks, window_size) = window.map_or((0, 0), |w| (w.sinks, w.size));
        let params = Params {
            q_heads: to_u32("q_heads", q_heads)?,
            kv_heads: to_u32("kv_heads", config.kv_heads)?,
            q_len: to_u32("q_len", q_len)?,
            seq_len: to_u32("seq_len", seq_len)?,
            block_size: to_u32("block_size", config.block_size)?,
            chunk_keys: to_u32("chunk_keys", chunk_keys)?,
            num_chunks: to_u32("num_chunks", num_chunks)?,
            row_tiles: to_u32("row_tiles", row_tiles)?,
            sinks: to_u32("window.sinks", sinks.min(seq_len))?,
            window: to_u32("window.size", window_size.min(seq_len + 1))?,
            scale: options.scale,
            _pad: 0,
        };
        let table = self.table_buffer(id)?;

        let partial = self
            .ctx
            .pipeline("paged_attention.wgsl", "paged_partial", &variant)?;
        dispatch(
            &self.ctx,
            encoder,
            "paged_partial",
            &partial,
            Some(bytemuck::bytes_of(&params)),
            &[
                (1, q.buffer()),
                (2, &self.keys[layer]),
                (3, &self.values[layer]),
                (4, &table),
                (5, &acc),
                (6, &stats),
            ],
            [
                to_u32("num_chunks", num_chunks)?,
                to_u32("kv_heads * row_tiles", config.kv_heads * row_tiles)?,
                1,
            ],
        )?;

        // The merge pass never uses subgroups; one pipeline serves both variants.
        let merge = self.ctx.pipeline(
            "paged_attention.wgsl",
            "paged_merge",
            &variant.clone().with_subgroups(false),
        )?;
        dispatch(
            &self.ctx,
            encoder,
            "paged_merge",
            &merge,
            Some(bytemuck::bytes_of(&params)),
            &[(5, &acc), (6, &stats), (7, out.buffer()), (8, lse.buffer())],
            grid_2d(&self.ctx, to_u32("q_heads * q_len", rows_total)?),
        )
    }

    /// Computes paged attention into new `out` and `lse` tensors and submits. Shapes as
    /// in [`KvCache::attention_into`].
    pub fn attention(
        &self,
        id: SequenceId,
        layer: usize,
        q: &Tensor,
        options: &PagedAttentionOptions,
    ) -> Result<(Tensor, Tensor)> {
        let (q_heads, q_len) = query_shape(q, self.config.kv_heads, self.config.head_dim)?;
        let out = Tensor::zeros(&self.ctx, q.shape(), q.dtype())?;
        let lse = Tensor::zeros(&self.ctx, &[q_heads, q_len], DType::F32)?;
        let mut encoder = self.ctx.encoder();
        self.attention_into(&mut encoder, id, layer, q, options, &out, &lse)?;
        self.ctx.submit(encoder);
        Ok((out, lse))
    }

    /// Errors unless every key that the last `q_len` queries of a windowed sequence can
    /// see is still stored.
    fn check_resident(&self, id: SequenceId, seq_len: usize, q_len: usize) -> Result<()> {
        let Some(window) = self.allocator.window(id)? else {
            return Ok(());
        };
        let first_query = seq_len - q_len;
        let first_key = (first_query + 1).saturating_sub(window.size);
        let sinks = window.sinks.min(seq_len);
        for position in (0..sinks).chain(first_key..seq_len) {
            if self.allocator.slot(id, position)?.is_none() {
                crate::bail_arg!(
                    "q_len",
                    q_len,
                    "query {first_query} of sequence {id} needs key {position}, which its \
                     window evicted"
                );
            }
        }
        Ok(())
    }

    /// Returns scratch buffers for `rows` partial rows (accumulators and statistics),
    /// growing the cached pair when it is too small.
    fn scratch(&self, rows: usize) -> Result<(Arc<wgpu::Buffer>, Arc<wgpu::Buffer>)> {
        let acc_bytes = (rows * self.config.head_dim * 4) as u64;
        let stats_bytes = (rows * 8) as u64;
        let mut cached = self
            .scratch
            .lock()
            .map_err(|_| Error::Device("the KV scratch lock was poisoned".into()))?;
        if let Some((acc, stats)) = cached.as_ref() {
            if acc.size() >= acc_bytes && stats.size() >= stats_bytes {
                return Ok((acc.clone(), stats.clone()));
            }
        }
        self.ctx
            .check_binding_size("paged attention partial results", acc_bytes)?;
        let make = |label: &str, size: u64| {
            Arc::new(self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }))
        };
        let pair = (
            make("focal paged partial acc", acc_bytes),
            make("focal paged partial stats", stats_bytes),
        );
        *cached = Some(pair.clone());
        Ok(pair)
    }
}
