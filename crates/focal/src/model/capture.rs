//! Attention capture: probabilities of any layer and head recomputed after the fact as
//! `exp(q . k * scale - lse)` from the queries and log-sum-exps that every forward pass
//! stores anyway and the keys in the model's KV cache, so generation pays nothing when
//! no capture is requested.

use std::ops::Range;

use super::sequence::{lock, Sequence};
use super::Model;
use crate::attention::{attention_probs_into, AttentionOptions, Mask};
use crate::kv::KvPart;
use crate::tensor::submit_and_read;
use crate::{DType, Error, Result, Tensor};

/// Contiguous attention inputs of one layer of a sequence of `len` tokens, in the
/// layouts that [`attention_probs_into`] reads.
struct LayerInputs {
    /// `[1, heads, len, head_dim]`, rotated.
    q: Tensor,
    /// `[1, kv_heads, len, head_dim]`, rotated.
    k: Tensor,
    /// `[1, heads, len]`.
    lse: Tensor,
}

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

    /// Records copies of one layer's queries, log-sum-exps and keys of `seq` into
    /// contiguous tensors.
    fn record_inputs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        seq: &Sequence,
        layer: usize,
    ) -> Result<LayerInputs> {
        let ctx = self.context();
        let c = self.config();
        let (len, d) = (seq.len(), c.head_dim);
        let inputs = LayerInputs {
            q: Tensor::zeros(ctx, &[1, c.heads, len, d], DType::F32)?,
            k: Tensor::zeros(ctx, &[1, c.kv_heads, len, d], DType::F32)?,
            lse: Tensor::zeros(ctx, &[1, c.heads, len], DType::F32)?,
        };
        let store = &seq.layers[layer];
        for (from, to, row_bytes) in [
            (&store.q, inputs.q.buffer(), d as u64 * 4),
            (&store.lse, inputs.lse.buffer(), 4),
        ] {
            for head in 0..c.heads as u64 {
                encoder.copy_buffer_to_buffer(
                    from,
                    head * seq.capacity as u64 * row_bytes,
                    to,
                    head * len as u64 * row_bytes,
                    len as u64 * row_bytes,
                );
            }
        }
        let kv = lock(&self.inner.kv)?;
        let key_rows = Tensor::zeros(ctx, &[len, d], DType::F32)?;
        for kv_head in 0..c.kv_heads {
            kv.rows_into(
                encoder,
                seq.id,
                layer,
                kv_head,
                0..len,
                KvPart::Keys,
                &key_rows,
            )?;
            encoder.copy_buffer_to_buffer(
                key_rows.buffer(),
                0,
                inputs.k.buffer(),
                (kv_head * len * d) as u64 * 4,
                key_rows.size_bytes(),
            );
        }
        Ok(inputs)
    }

    /// Records the probabilities of `head` for query `rows` into `probs`
    /// (`[rows.len(), len]` f32), then a copy of them into `out` from element `offset` on.
    #[allow(clippy::too_many_arguments)]
    fn record_probs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &LayerInputs,
        head: usize,
        rows: &Range<usize>,
        probs: &Tensor,
        out: &wgpu::Buffer,
        offset: usize,
    ) -> Result<()> {
        let ctx = self.context();
        attention_probs_into(
            ctx,
            encoder,
            &inputs.q,
            &inputs.k,
            &inputs.lse,
            &AttentionOptions::with_mask(Mask::causal()),
            0,
            head,
            rows.clone(),
            probs,
        )?;
        encoder.copy_buffer_to_buffer(
            probs.buffer(),
            0,
            out,
            offset as u64 * 4,
            probs.size_bytes(),
        );
        Ok(())
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
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
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
        let inputs = self.record_inputs(&mut encoder, seq, layer)?;
        let probs = Tensor::zeros(self.context(), &[rows.len(), seq.len()], DType::F32)?;
        self.record_probs(&mut encoder, &inputs, head, &rows, &probs, &out, 0)?;
        let bytes = submit_and_read(self.context(), encoder, &out, 0, elements as u64 * 4).await?;
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
        // One probabilities tensor serves every map, since each copy out of it is
        // recorded before the next map overwrites it.
        let probs = Tensor::zeros(self.context(), &[n, n], DType::F32)?;
        for layer in 0..c.layers {
            let inputs = self.record_inputs(&mut encoder, seq, layer)?;
            for head in 0..c.heads {
                let offset = (layer * c.heads + head) * per_map;
                self.record_probs(&mut encoder, &inputs, head, &rows, &probs, &out, offset)?;
            }
        }
        let bytes = submit_and_read(self.context(), encoder, &out, 0, total as u64 * 4).await?;
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
