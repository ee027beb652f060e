//! The GPU side of the paged KV cache: per-layer K and V pools, block tables on the GPU,
//! row writes, copy-on-write copies, readback and accounting.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::allocator::{BlockAllocator, BlockCopy, Reservation, SequenceId, Window};
use super::DEFAULT_BLOCK_SIZE;
use crate::kernels::to_u32;
use crate::shader::{dispatch, grid_2d, Variant};
use crate::{Context, DType, Error, Result, Tensor};

/// How much GPU memory the pool may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBudget {
    /// Total bytes of the K and V buffers of all layers.
    Bytes(u64),
    /// Tokens of K and V rows per layer.
    Tokens(usize),
}

/// Shape of a KV cache: what one token stores per layer, and how many tokens fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub layers: usize,
    pub kv_heads: usize,
    /// Elements per head; a multiple of 4 from 4 to 256.
    pub head_dim: usize,
    /// Tokens per block ([`DEFAULT_BLOCK_SIZE`] unless set).
    pub block_size: usize,
    pub dtype: DType,
    pub budget: KvBudget,
}

impl KvCacheConfig {
    /// Creates a config with the default block size.
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        budget: KvBudget,
    ) -> Self {
        Self {
            layers,
            kv_heads,
            head_dim,
            block_size: DEFAULT_BLOCK_SIZE,
            dtype,
            budget,
        }
    }

    /// Sets the number of tokens per block.
    pub fn with_block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }

    /// Bytes of one block in one layer's K (or V) buffer.
    pub fn block_bytes(&self) -> u64 {
        (self.kv_heads * self.block_size * self.head_dim * self.dtype.size()) as u64
    }

    /// Returns the number of blocks the budget pays for, after checking the shape.
    ///
    /// Errors name the bad value: a zero layer or head count, a head size that is not a
    /// multiple of 4 in 4..=256, a block size of 0, or a budget smaller than one block.
    pub fn num_blocks(&self) -> Result<usize> {
        if self.layers == 0 {
            crate::bail_arg!("layers", self.layers, "the cache needs at least one layer");
        }
        if self.kv_heads == 0 {
            crate::bail_arg!(
                "kv_heads",
                self.kv_heads,
                "the cache needs at least one head"
            );
        }
        if self.head_dim == 0 || self.head_dim > 256 || !self.head_dim.is_multiple_of(4) {
            crate::bail_arg!(
                "head_dim",
                self.head_dim,
                "must be a multiple of 4 from 4 to 256, as the paged kernels move vec4 rows"
            );
        }
        if self.block_size == 0 {
            crate::bail_arg!("block_size", 0, "a block must hold at least one token");
        }
        let blocks = match self.budget {
            KvBudget::Tokens(tokens) => tokens / self.block_size,
            KvBudget::Bytes(bytes) => {
                let per_block = self.block_bytes() * 2 * self.layers as u64;
                (bytes / per_block) as usize
            }
        };
        if blocks == 0 {
            crate::bail_arg!(
                "block_size",
                self.block_size,
                "one block is larger than the budget {:?}",
                self.budget
            );
        }
        Ok(blocks)
    }
}

/// Accounting of a KV cache at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStats {
    pub blocks_total: usize,
    pub blocks_used: usize,
    pub blocks_free: usize,
    /// Blocks referenced by more than one sequence (forks, shared prefixes).
    pub blocks_shared: usize,
    /// Full blocks registered for prefix sharing.
    pub blocks_prefix: usize,
    pub block_size: usize,
    pub sequences: usize,
    /// Tokens appended per sequence, evicted ones included, by sequence id.
    pub tokens: Vec<(SequenceId, usize)>,
    /// Tokens whose rows are still stored, summed over sequences (shared rows count once
    /// per sequence).
    pub resident_tokens: usize,
    /// Bytes of all K and V buffers on the GPU.
    pub bytes_total: u64,
    /// Bytes of the blocks in use, over all layers.
    pub bytes_used: u64,
}

impl fmt::Display for KvStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "blocks: {} used, {} free, {} shared, {} prefix-indexed, {} total ({} tokens each)",
            self.blocks_used,
            self.blocks_free,
            self.blocks_shared,
            self.blocks_prefix,
            self.blocks_total,
            self.block_size
        )?;
        writeln!(
            f,
            "GPU memory: {:.2} MiB used of {:.2} MiB",
            mib(self.bytes_used),
            mib(self.bytes_total)
        )?;
        write!(
            f,
            "sequences: {} ({} resident tokens)",
            self.sequences, self.resident_tokens
        )?;
        for (id, tokens) in &self.tokens {
            write!(f, "\n  sequence {id}: {tokens} tokens")?;
        }
        Ok(())
    }
}

/// Half of the cache that a row read copies from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPart {
    Keys,
    Values,
}

/// GPU state of one sequence.
struct SequenceBuffers {
    /// Block table as u32, with [`super::attention::EVICTED`] for evicted blocks.
    table: Arc<wgpu::Buffer>,
    /// Slots of the rows reserved last, which `write_into` fills.
    pending: Option<(Arc<wgpu::Buffer>, usize)>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct WriteParams {
    kv_heads: u32,
    rows: u32,
    block_size: u32,
    head_vec4s: u32,
}

/// A paged KV cache on the GPU: one K and one V buffer per layer, each laid out as
/// `[num_blocks, kv_heads, block_size, head_dim]`, shared by all sequences.
pub struct KvCache {
    pub(super) ctx: Context,
    pub(super) config: KvCacheConfig,
    pub(super) allocator: BlockAllocator,
    pub(super) keys: Vec<wgpu::Buffer>,
    pub(super) values: Vec<wgpu::Buffer>,
    buffers: HashMap<SequenceId, SequenceBuffers>,
    /// Partial results of split-K attention, grown on demand and reused across calls.
    pub(super) scratch: Mutex<Option<(Arc<wgpu::Buffer>, Arc<wgpu::Buffer>)>>,
}

impl fmt::Debug for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache")
            .field("config", &self.config)
            .field("num_blocks", &self.allocator.num_blocks())
            .finish()
    }
}

impl KvCache {
    /// Allocates the pool: `config.num_blocks()` blocks in each layer's K and V buffer.
    ///
    /// Errors when the config is invalid (see [`KvCacheConfig::num_blocks`]), when the
    /// dtype is f16 on an adapter without shader-f16, or when one layer's buffer exceeds
    /// the device's buffer or storage-binding size limit.
    pub fn new(ctx: &Context, config: KvCacheConfig) -> Result<Self> {
        let num_blocks = config.num_blocks()?;
        if config.dtype == DType::F16 && !ctx.capabilities().shader_f16 {
            return Err(Error::UnsupportedDType { dtype: DType::F16 });
        }
        // NOTE: each layer's K (and V) buffer must fit one storage binding. A larger pool
        // would need its blocks split over several buffers, which is not implemented.
        let layer_bytes = config.block_bytes() * num_blocks as u64;
        ctx.check_binding_size(
            &format!(
                "KV cache layer buffer ({num_blocks} blocks of {} tokens)",
                config.block_size
            ),
            layer_bytes,
        )?;
        let allocator = BlockAllocator::new(num_blocks, config.block_size)?;
        let make = |label: &str| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: layer_bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let keys = (0..config.layers).map(|_| make("focal kv keys")).collect();
        let values = (0..config.layers)
            .map(|_| make("focal kv values"))
            .collect();
        log::info!(
            "KV cache: {num_blocks} blocks of {} tokens, {} layers, {:.1} MiB",
            config.block_size,
            config.layers,
            (layer_bytes * 2 * config.layers as u64) as f64 / (1024.0 * 1024.0)
        );
        Ok(Self {
            ctx: ctx.clone(),
            config,
            allocator,
            keys,
            values,
            buffers: HashMap::new(),
            scratch: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &KvCacheConfig {
        &self.config
    }

    /// Returns the CPU-side block tables and reference counts.
    pub fn allocator(&self) -> &BlockAllocator {
        &self.allocator
    }

    /// Number of tokens appended to the sequence, evicted ones included.
    pub fn len(&self, id: SequenceId) -> Result<usize> {
        self.allocator.len(id)
    }

    /// Returns the current accounting of blocks, tokens and bytes.
    pub fn stats(&self) -> KvStats {
        let a = &self.allocator;
        let per_block = self.config.block_bytes() * 2 * self.config.layers as u64;
        KvStats {
            blocks_total: a.num_blocks(),
            blocks_used: a.used_blocks(),
            blocks_free: a.free_blocks(),
            blocks_shared: a.shared_blocks(),
            blocks_prefix: a.prefix_blocks(),
            block_size: a.block_size(),
            sequences: a.sequence_ids().count(),
            tokens: a
                .sequence_ids()
                .map(|id| (id, a.len(id).unwrap_or(0)))
                .collect(),
            resident_tokens: a.resident_tokens(),
            bytes_total: per_block * a.num_blocks() as u64,
            bytes_used: per_block * a.used_blocks() as u64,
        }
    }

    /// Creates an empty sequence, windowed when `window` is given.
    pub fn create(&mut self, window: Option<Window>) -> Result<SequenceId> {
        let id = self.allocator.create(window)?;
        self.upload_table(id)?;
        Ok(id)
    }

    /// Creates a sequence that shares the cached blocks of the longest stored prefix of
    /// `tokens`; returns the id and the number of tokens already cached. See
    /// [`BlockAllocator::create_with_prefix`].
    pub fn create_with_prefix(
        &mut self,
        tokens: &[u32],
        window: Option<Window>,
    ) -> Result<(SequenceId, usize)> {
        let (id, cached) = self.allocator.create_with_prefix(tokens, window)?;
        self.upload_table(id)?;
        Ok((id, cached))
    }

    /// Creates a sequence that shares every block of `parent`. Costs no K/V copy: only
    /// the block table is duplicated.
    pub fn fork(&mut self, parent: SequenceId) -> Result<SequenceId> {
        let id = self.allocator.fork(parent)?;
        self.upload_table(id)?;
        Ok(id)
    }

    /// Frees a sequence; its blocks return to the pool once no other sequence uses them.
    pub fn free(&mut self, id: SequenceId) -> Result<()> {
        self.allocator.free(id)?;
        self.buffers.remove(&id);
        Ok(())
    }

    /// Reserves slots for `n` new tokens of a sequence and records the copy-on-write
    /// copies this needs into `encoder`. Then call [`KvCache::write_into`] once per layer
    /// with the new rows.
    ///
    /// Errors with [`Error::PoolExhausted`] when the pool is full even after window
    /// eviction; the cache and every sequence are then unchanged.
    pub fn reserve(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        id: SequenceId,
        n: usize,
    ) -> Result<Reservation> {
        self.reserve_with(encoder, id, n, None)
    }

    /// Like [`KvCache::reserve`] for the tokens `tokens`, whose filled blocks become
    /// shareable by [`KvCache::create_with_prefix`].
    pub fn reserve_tokens(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        id: SequenceId,
        tokens: &[u32],
    ) -> Result<Reservation> {
        self.reserve_with(encoder, id, tokens.len(), Some(tokens))
    }

    fn reserve_with(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        id: SequenceId,
        n: usize,
        tokens: Option<&[u32]>,
    ) -> Result<Reservation> {
        let reservation = self.allocator.reserve(id, n, tokens)?;
        self.record_copies(encoder, &reservation.copies);
        self.upload_table(id)?;
        let slots = self.upload_u32("focal kv slots", &reservation.slots);
        if let Some(buffers) = self.buffers.get_mut(&id) {
            buffers.pending = (n > 0).then_some((slots, n));
        }
        Ok(reservation)
    }

    /// Records the copy-on-write block copies in every layer's K and V buffer.
    fn record_copies(&self, encoder: &mut wgpu::CommandEncoder, copies: &[BlockCopy]) {
        if copies.is_empty() {
            return;
        }
        // WebGPU rejects a copy whose source and destination are the same buffer, so the
        // blocks go through a staging buffer: all reads first, then all writes.
        let block_bytes = self.config.block_bytes();
        let buffers: Vec<&wgpu::Buffer> = self.keys.iter().chain(&self.values).collect();
        let staging = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("focal kv copy-on-write"),
            size: block_bytes * (copies.len() * buffers.len()) as u64,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let staged = |index: usize| index as u64 * block_bytes;
        let pairs = copies
            .iter()
            .flat_map(|c| buffers.iter().map(move |b| (c, *b)));
        for (index, (copy, pool)) in pairs.clone().enumerate() {
            let src = copy.src as u64 * block_bytes;
            encoder.copy_buffer_to_buffer(pool, src, &staging, staged(index), block_bytes);
        }
        for (index, (copy, pool)) in pairs.enumerate() {
            let dst = copy.dst as u64 * block_bytes;
            encoder.copy_buffer_to_buffer(&staging, staged(index), pool, dst, block_bytes);
        }
    }

    fn upload_u32(&self, label: &str, data: &[u32]) -> Arc<wgpu::Buffer> {
        // Storage bindings may not be empty, so an empty list uploads one unused word.
        let contents: &[u32] = if data.is_empty() { &[0] } else { data };
        Arc::new(
            self.ctx
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytemuck::cast_slice(contents),
                    usage: wgpu::BufferUsages::STORAGE,
                }),
        )
    }

    /// Uploads the sequence's block table into a fresh buffer, so that kernels already
    /// recorded with the previous table keep reading it.
    fn upload_table(&mut self, id: SequenceId) -> Result<()> {
        let table: Vec<u32> = self
            .allocator
            .block_table(id)?
            .iter()
            .map(|block| block.unwrap_or(super::attention::EVICTED))
            .collect();
        let buffer = self.upload_u32("focal kv block table", &table);
        self.buffers
            .entry(id)
            .and_modify(|b| b.table = buffer.clone())
            .or_insert(SequenceBuffers {
                table: buffer,
                pending: None,
            });
        Ok(())
    }

    pub(super) fn table_buffer(&self, id: SequenceId) -> Result<Arc<wgpu::Buffer>> {
        self.buffers
            .get(&id)
            .map(|b| b.table.clone())
            .ok_or(Error::UnknownSequence(id.0))
    }

    pub(super) fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.config.layers {
            crate::bail_arg!(
                "layer",
                layer,
                "the cache has {} layers",
                self.config.layers
            );
        }
        Ok(())
    }

    /// Checks that `t` is `[kv_heads, rows, head_dim]` or `[1, kv_heads, rows, head_dim]`
    /// in the cache's dtype and returns `rows`.
    fn kv_rows(&self, name: &'static str, t: &Tensor) -> Result<usize> {
        if t.dtype() != self.config.dtype {
            return Err(Error::DTypeMismatch {
                op: "kv write",
                expected: self.config.dtype,
                found: t.dtype(),
            });
        }
        let (heads, rows, dim) = match *t.shape() {
            [h, r, d] => (h, r, d),
            [1, h, r, d] => (h, r, d),
            _ => (0, 0, 0),
        };
        if heads != self.config.kv_heads || dim != self.config.head_dim || rows == 0 {
            return Err(Error::ShapeMismatch {
                op: "kv write",
                detail: format!(
                    "{name} has shape {:?}, expected [{}, rows, {}] or [1, {}, rows, {}] \
                     (kv_heads, rows, head_dim)",
                    t.shape(),
                    self.config.kv_heads,
                    self.config.head_dim,
                    self.config.kv_heads,
                    self.config.head_dim
                ),
            });
        }
        Ok(rows)
    }

    /// Records the write of one layer's new K and V rows into the slots that the last
    /// [`KvCache::reserve`] of the sequence set aside.
    ///
    /// `keys` and `values` are `[kv_heads, n, head_dim]` or `[1, kv_heads, n, head_dim]`
    /// in the cache's dtype, with `n` the reserved token count. Errors name the shape,
    /// dtype, layer or sequence that does not match.
    pub fn write_into(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        id: SequenceId,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<()> {
        self.check_layer(layer)?;
        let buffers = self.buffers.get(&id).ok_or(Error::UnknownSequence(id.0))?;
        let Some((slots, pending)) = &buffers.pending else {
            crate::bail_arg!(
                "sequence",
                id,
                "no rows are reserved: call reserve before write_into"
            );
        };
        let rows = self.kv_rows("keys", keys)?;
        let value_rows = self.kv_rows("values", values)?;
        if rows != *pending || value_rows != *pending {
            return Err(Error::ShapeMismatch {
                op: "kv write",
                detail: format!(
                    "keys hold {rows} rows and values {value_rows}, but {pending} were reserved"
                ),
            });
        }
        let wg = 64.min(self.ctx.limits().max_compute_invocations_per_workgroup);
        let variant = Variant::new(self.config.dtype).define_u32("WG", wg);
        let pipeline = self
            .ctx
            .pipeline("paged_write.wgsl", "write_rows", &variant)?;
        let params = WriteParams {
            kv_heads: to_u32("kv_heads", self.config.kv_heads)?,
            rows: to_u32("rows", rows)?,
            block_size: to_u32("block_size", self.config.block_size)?,
            head_vec4s: to_u32("head_dim", self.config.head_dim / 4)?,
        };
        let total = to_u32("kv write elements", keys.len() / 4)?;
        dispatch(
            &self.ctx,
            encoder,
            "paged_write",
            &pipeline,
            Some(bytemuck::bytes_of(&params)),
            &[
                (1, keys.buffer()),
                (2, values.buffer()),
                (3, slots),
                (4, &self.keys[layer]),
                (5, &self.values[layer]),
            ],
            grid_2d(&self.ctx, total.div_ceil(wg)),
        )
    }

    /// Appends tokens to a sequence and submits: reserves `n` slots, then writes
    /// `keys[layer]` and `values[layer]` (each `[kv_heads, n, head_dim]`) for every layer.
    pub fn append(&mut self, id: SequenceId, keys: &[Tensor], values: &[Tensor]) -> Result<()> {
        if keys.len() != self.config.layers || values.len() != self.config.layers {
            return Err(Error::ShapeMismatch {
                op: "kv append",
                detail: format!(
                    "got {} key and {} value tensors for {} layers",
                    keys.len(),
                    values.len(),
                    self.config.layers
                ),
            });
        }
        let n = self.kv_rows("keys", &keys[0])?;
        for (k, v) in keys.iter().zip(values) {
            let (kn, vn) = (self.kv_rows("keys", k)?, self.kv_rows("values", v)?);
            if kn != n || vn != n {
                return Err(Error::ShapeMismatch {
                    op: "kv append",
                    detail: format!("layers hold different row counts: {n}, {kn} and {vn}"),
                });
            }
        }
        let mut encoder = self.ctx.encoder();
        self.reserve(&mut encoder, id, n)?;
        for (layer, (k, v)) in keys.iter().zip(values).enumerate() {
            self.write_into(&mut encoder, id, layer, k, v)?;
        }
        self.ctx.submit(encoder);
        Ok(())
    }

    /// Records copies of the K or V rows at `positions` of one layer and KV head into
    /// `out`, a `[positions.len(), head_dim]` tensor of the cache's dtype, so that
    /// attention probabilities can be recomputed from the keys. Errors for an evicted or
    /// out-of-range position.
    #[allow(clippy::too_many_arguments)]
    pub fn rows_into(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        id: SequenceId,
        layer: usize,
        kv_head: usize,
        positions: Range<usize>,
        part: KvPart,
        out: &Tensor,
    ) -> Result<()> {
        self.check_layer(layer)?;
        if kv_head >= self.config.kv_heads {
            crate::bail_arg!(
                "kv_head",
                kv_head,
                "the cache has {} KV heads",
                self.config.kv_heads
            );
        }
        let len = self.allocator.len(id)?;
        if positions.start > positions.end || positions.end > len {
            crate::bail_arg!(
                "positions",
                format!("{positions:?}"),
                "sequence {id} holds {len} tokens"
            );
        }
        let expected = [positions.len(), self.config.head_dim];
        if out.shape() != expected || out.dtype() != self.config.dtype {
            return Err(Error::ShapeMismatch {
                op: "kv read",
                detail: format!(
                    "out is {:?} {}, expected {expected:?} {}",
                    out.shape(),
                    out.dtype(),
                    self.config.dtype
                ),
            });
        }
        let pool = match part {
            KvPart::Keys => &self.keys[layer],
            KvPart::Values => &self.values[layer],
        };
        let bs = self.config.block_size;
        let row_bytes = (self.config.head_dim * self.config.dtype.size()) as u64;
        let mut position = positions.start;
        while position < positions.end {
            // Copy the run of rows that stays inside one block.
            let run = (bs - position % bs).min(positions.end - position);
            let Some(slot) = self.allocator.slot(id, position)? else {
                crate::bail_arg!(
                    "positions",
                    format!("{positions:?}"),
                    "position {position} of sequence {id} was evicted by its window"
                );
            };
            let (block, offset) = (slot as usize / bs, slot as usize % bs);
            let row = (block * self.config.kv_heads + kv_head) * bs + offset;
            encoder.copy_buffer_to_buffer(
                pool,
                row as u64 * row_bytes,
                out.buffer(),
                (position - positions.start) as u64 * row_bytes,
                run as u64 * row_bytes,
            );
            position += run;
        }
        Ok(())
    }

    /// Copies K or V rows of one layer and KV head back to the CPU as f32,
    /// `[positions.len(), head_dim]` row-major. See [`KvCache::rows_into`].
    pub async fn read_rows(
        &self,
        id: SequenceId,
        layer: usize,
        kv_head: usize,
        positions: Range<usize>,
        part: KvPart,
    ) -> Result<Vec<f32>> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let out = Tensor::zeros(
            &self.ctx,
            &[positions.len(), self.config.head_dim],
            self.config.dtype,
        )?;
        let mut encoder = self.ctx.encoder();
        self.rows_into(&mut encoder, id, layer, kv_head, positions, part, &out)?;
        self.ctx.submit(encoder);
        out.to_vec(&self.ctx).await
    }

    /// Blocking form of [`KvCache::read_rows`] for keys (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_keys_blocking(
        &self,
        id: SequenceId,
        layer: usize,
        kv_head: usize,
        positions: Range<usize>,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.read_rows(id, layer, kv_head, positions, KvPart::Keys))
    }

    /// Blocking form of [`KvCache::read_rows`] for values (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_values_blocking(
        &self,
        id: SequenceId,
        layer: usize,
        kv_head: usize,
        positions: Range<usize>,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.read_rows(id, layer, kv_head, positions, KvPart::Values))
    }
}
