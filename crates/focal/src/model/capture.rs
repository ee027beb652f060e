//! Attention capture: probabilities of any layer and head recomputed after the fact as
//! `exp(q . k * scale - lse)` from the queries, keys and log-sum-exps that every forward
//! pass stores anyway, so generation pays nothing when no capture is requested.

use std::ops::Range;

use super::llama::{submit_and_read, AttentionParams};
use super::sequence::Sequence;
use super::Model;
use crate::kernels::to_u32;
use crate::shader::{dispatch, grid_2d};
use crate::{Error, Result};

/// Attention probabilities of one head for a range of query rows.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMap {
    pub layer: usize,
    pub head: usize,
    /// Query positions, one row each.
    pub rows: Range<usize>,
    /// Key positions per row: the sequence length at capture time.
    pub cols: usize,
    /// `[rows.len(), cols]` row-major; entries past a row's own position are 0.
    pub probs: Vec<f32>,
}

impl AttentionMap {
    /// Returns the probabilities of query position `row` (which must lie in `rows`).
    pub fn row(&self, row: usize) -> &[f32] {
        let start = (row - self.rows.start) * self.cols;
        &self.probs[start..start + self.cols]
    }
}

impl Model {
    fn check_capture(
        &self,
        seq: &Sequence,
        layer: usize,
        head: usize,
        rows: &Range<usize>,
    ) -> Result<()> {
        let c = self.config();
        if layer >= c.layers {
            crate::bail_arg!("layer", layer, "the model has {} layers", c.layers);
        }
        if head >= c.heads {
            crate::bail_arg!("head", head, "the model has {} heads", c.heads);
        }
        if rows.start >= rows.end || rows.end > seq.len() {
            crate::bail_arg!(
                "rows",
                format!("{rows:?}"),
                "must be a non-empty range within the sequence's {} positions",
                seq.len()
            );
        }
        Ok(())
    }

    /// Records the probabilities of (`layer`, `head`) for query `rows` into `out` from
    /// element `offset` on.
    #[allow(clippy::too_many_arguments)]
    fn record_probs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        seq: &Sequence,
        layer: usize,
        head: usize,
        rows: &Range<usize>,
        out: &wgpu::Buffer,
        offset: usize,
    ) -> Result<()> {
        let ctx = self.context();
        let c = self.config();
        let cache = &seq.layers[layer];
        let params = AttentionParams {
            tokens: to_u32("rows", rows.len())?,
            start: to_u32("rows", rows.start)?,
            heads: c.heads as u32,
            kv_heads: c.kv_heads as u32,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            head: head as u32,
            row_len: to_u32("sequence length", seq.len())?,
            out_offset: to_u32("capture offset", offset)?,
        };
        let variant = self.attention_variant();
        let wg = super::llama::attention_workgroup(ctx.limits(), c.head_dim) as usize;
        let pipeline = ctx.pipeline("cached_attention.wgsl", "probabilities", &variant)?;
        let count = to_u32("capture size", (rows.len() * seq.len()).div_ceil(wg))?;
        dispatch(
            ctx,
            encoder,
            "probabilities",
            &pipeline,
            Some(bytemuck::bytes_of(&params)),
            &[(1, &cache.q), (2, &cache.k), (5, &cache.lse), (6, out)],
            grid_2d(ctx, count),
        )
    }

    fn capture_buffer(&self, elements: usize) -> Result<wgpu::Buffer> {
        let size = (elements as u64 * 4).max(4);
        self.context()
            .check_binding_size("attention capture", size)?;
        Ok(self
            .context()
            .device()
            .create_buffer(&wgpu::BufferDescriptor {
                label: Some("attention capture"),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }))
    }

    /// Returns the attention probabilities of (`layer`, `head`) for the query positions
    /// `rows` of `seq`, against every position of `seq`.
    ///
    /// Errors with [`Error::InvalidArgument`] on a layer, head or row range outside the
    /// model or sequence, and with a limit error when the map exceeds one buffer.
    pub async fn attention_probs(
        &self,
        seq: &Sequence,
        layer: usize,
        head: usize,
        rows: Range<usize>,
    ) -> Result<AttentionMap> {
        self.check_capture(seq, layer, head, &rows)?;
        let elements = rows.len() * seq.len();
        let out = self.capture_buffer(elements)?;
        let mut encoder = self.context().encoder();
        self.record_probs(&mut encoder, seq, layer, head, &rows, &out, 0)?;
        let bytes = submit_and_read(self.context(), encoder, &out, elements as u64 * 4).await?;
        Ok(AttentionMap {
            layer,
            head,
            rows,
            cols: seq.len(),
            probs: bytemuck::pod_collect_to_vec(&bytes),
        })
    }

    /// Returns the full `[len, len]` attention map of every layer and head of `seq`,
    /// layer-major, with one submit and one readback.
    pub async fn attention_all(&self, seq: &Sequence) -> Result<Vec<AttentionMap>> {
        let c = self.config();
        let n = seq.len();
        let rows = 0..n;
        self.check_capture(seq, 0, 0, &rows)?;
        let per_map = n * n;
        let total = per_map
            .checked_mul(c.layers * c.heads)
            .ok_or_else(|| Error::Generation("attention capture size overflows".into()))?;
        let out = self.capture_buffer(total)?;
        let mut encoder = self.context().encoder();
        for layer in 0..c.layers {
            for head in 0..c.heads {
                let offset = (layer * c.heads + head) * per_map;
                self.record_probs(&mut encoder, seq, layer, head, &rows, &out, offset)?;
            }
        }
        let bytes = submit_and_read(self.context(), encoder, &out, total as u64 * 4).await?;
        let all: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(all
            .chunks(per_map.max(1))
            .enumerate()
            .map(|(i, probs)| AttentionMap {
                layer: i / c.heads,
                head: i % c.heads,
                rows: rows.clone(),
                cols: n,
                probs: probs.to_vec(),
            })
            .collect())
    }

    /// Blocking form of [`Model::attention_probs`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn attention_probs_blocking(
        &self,
        seq: &Sequence,
        layer: usize,
        head: usize,
        rows: Range<usize>,
    ) -> Result<AttentionMap> {
        pollster::block_on(self.attention_probs(seq, layer, head, rows))
    }
}
