//! Shape and mask checks shared by the attention kernels, and the uniform block they
//! all bind at binding 0.

use bytemuck::{Pod, Zeroable};

use super::{AttentionOptions, SUPPORTED_HEAD_DIMS};
use crate::kernels::to_u32;
use crate::{DType, Error, Result, Tensor};

/// Sizes of one attention call, read from the `q`, `k` and `v` shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

fn four_d(op: &'static str, name: &str, t: &Tensor) -> Result<[usize; 4]> {
    match *t.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(Error::ShapeMismatch {
            op,
            detail: format!(
                "{name} has shape {:?}, expected 4 axes [batch, heads, len, head_dim]",
                t.shape()
            ),
        }),
    }
}

impl AttentionShape {
    /// Reads the sizes from `q [batch, q_heads, q_len, head_dim]` and
    /// `k`, `v [batch, kv_heads, kv_len, head_dim]`, checking that they agree.
    pub fn of(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Self> {
        Self::of_qk("attention", q, k).and_then(|shape| {
            if v.shape() != k.shape() {
                return Err(Error::ShapeMismatch {
                    op: "attention",
                    detail: format!("v {:?} differs from k {:?}", v.shape(), k.shape()),
                });
            }
            if v.dtype() != q.dtype() {
                return Err(Error::DTypeMismatch {
                    op: "attention",
                    expected: q.dtype(),
                    found: v.dtype(),
                });
            }
            Ok(shape)
        })
    }

    /// Reads the sizes from `q` and `k` alone, as probability recomputation needs.
    pub fn of_qk(op: &'static str, q: &Tensor, k: &Tensor) -> Result<Self> {
        let [batch, q_heads, q_len, head_dim] = four_d(op, "q", q)?;
        let [k_batch, kv_heads, kv_len, k_dim] = four_d(op, "k", k)?;
        if k.dtype() != q.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                expected: q.dtype(),
                found: k.dtype(),
            });
        }
        if k_batch != batch {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!("q has batch {batch}, k has batch {k_batch}"),
            });
        }
        if k_dim != head_dim {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!("q has head_dim {head_dim}, k has head_dim {k_dim}"),
            });
        }
        if !SUPPORTED_HEAD_DIMS.contains(&head_dim) {
            return Err(Error::UnsupportedHeadDim {
                head_dim,
                supported: SUPPORTED_HEAD_DIMS,
            });
        }
        if kv_heads == 0 || q_heads % kv_heads != 0 {
            return Err(Error::HeadGrouping { q_heads, kv_heads });
        }
        Ok(Self {
            batch,
            q_heads,
            kv_heads,
            q_len,
            kv_len,
            head_dim,
        })
    }

    /// Shape of the attention output.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.q_heads, self.q_len, self.head_dim]
    }

    /// Shape of the per-row log-sum-exp.
    pub fn lse_shape(&self) -> [usize; 3] {
        [self.batch, self.q_heads, self.q_len]
    }

    /// Returns an error unless `out` has the output shape and dtype.
    pub(crate) fn check_output(&self, op: &'static str, out: &Tensor, dtype: DType) -> Result<()> {
        if out.shape() != self.output_shape() {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!(
                    "output has shape {:?}, expected {:?}",
                    out.shape(),
                    self.output_shape()
                ),
            });
        }
        if out.dtype() != dtype {
            return Err(Error::DTypeMismatch {
                op,
                expected: dtype,
                found: out.dtype(),
            });
        }
        Ok(())
    }

    /// Returns an error unless `lse` is an f32 tensor of the log-sum-exp shape.
    pub(crate) fn check_lse(&self, op: &'static str, lse: &Tensor) -> Result<()> {
        if lse.shape() != self.lse_shape() {
            return Err(Error::ShapeMismatch {
                op,
                detail: format!(
                    "lse has shape {:?}, expected {:?}",
                    lse.shape(),
                    self.lse_shape()
                ),
            });
        }
        if lse.dtype() != DType::F32 {
            return Err(Error::DTypeMismatch {
                op,
                expected: DType::F32,
                found: lse.dtype(),
            });
        }
        Ok(())
    }

    /// Returns an error unless the mask in `options` fits these lengths.
    pub(crate) fn check_mask(&self, options: &AttentionOptions) -> Result<()> {
        let mask = &options.mask;
        if mask.sinks > 0 && mask.window.is_none() {
            return Err(Error::MaskMismatch {
                mask: "sinks",
                detail: format!(
                    "{} sinks were requested without a window; sinks only widen a window",
                    mask.sinks
                ),
            });
        }
        if mask.sinks > self.kv_len {
            return Err(Error::MaskMismatch {
                mask: "sinks",
                detail: format!("{} sinks exceed kv_len {}", mask.sinks, self.kv_len),
            });
        }
        if let Some(layout) = &mask.block_sparse {
            layout.check_fits(self.q_len, self.kv_len)?;
        }
        let scale = options.scale_for(self.head_dim);
        if !scale.is_finite() {
            crate::bail_arg!("scale", scale, "must be finite");
        }
        Ok(())
    }

    /// Number of rows `batch * q_heads * q_len`.
    pub fn rows(&self) -> usize {
        self.batch * self.q_heads * self.q_len
    }
}

/// Window bound that stands for "unbounded": larger than any position difference the
/// kernels see, and small enough that `position +- bound` stays within i32.
const UNBOUNDED: u32 = 1 << 30;

/// Uniform block bound at binding 0 by every attention shader (`AttentionParams` there).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub batch: u32,
    pub q_heads: u32,
    pub kv_heads: u32,
    pub q_len: u32,
    pub kv_len: u32,
    /// Position of query row 0: `kv_len - q_len`.
    pub offset: i32,
    pub scale: f32,
    pub causal: u32,
    pub window_left: u32,
    pub window_right: u32,
    pub sinks: u32,
    pub block_size: u32,
    pub k_blocks: u32,
    /// First query row (probability recomputation).
    pub row_start: u32,
    /// Number of query rows (probability recomputation).
    pub row_count: u32,
    /// Query head (probability recomputation).
    pub head: u32,
    /// Batch index (probability recomputation).
    pub batch_index: u32,
    /// Number of KV chunks (decode).
    pub splits: u32,
    /// Keys per KV chunk (decode).
    pub chunk_len: u32,
    pub _pad: u32,
}

impl Params {
    /// Builds the uniform block for `shape` and `options`, with the per-kernel fields zero.
    pub(crate) fn new(shape: &AttentionShape, options: &AttentionOptions) -> Result<Self> {
        let mask = &options.mask;
        let positions = shape.q_len.max(shape.kv_len);
        if positions >= UNBOUNDED as usize {
            return Err(Error::InvalidArgument {
                name: "kv_len",
                value: positions.to_string(),
                reason: format!("lengths must stay below {UNBOUNDED}, the kernels' i32 range"),
            });
        }
        let clamp = |w: usize| w.min(UNBOUNDED as usize) as u32;
        let (window_left, window_right) = match mask.window {
            Some(w) => (clamp(w.left), clamp(w.right)),
            None => (UNBOUNDED, UNBOUNDED),
        };
        let (block_size, k_blocks) = match &mask.block_sparse {
            Some(layout) => (
                to_u32("block_size", layout.block_size())?,
                to_u32("k_blocks", layout.k_blocks())?,
            ),
            None => (0, 0),
        };
        Ok(Self {
            batch: to_u32("batch", shape.batch)?,
            q_heads: to_u32("q_heads", shape.q_heads)?,
            kv_heads: to_u32("kv_heads", shape.kv_heads)?,
            q_len: to_u32("q_len", shape.q_len)?,
            kv_len: to_u32("kv_len", shape.kv_len)?,
            offset: shape.kv_len as i32 - shape.q_len as i32,
            scale: options.scale_for(shape.head_dim),
            causal: mask.causal as u32,
            window_left,
            window_right,
            sinks: to_u32("sinks", mask.sinks)?,
            block_size,
            k_blocks,
            row_start: 0,
            row_count: 0,
            head: 0,
            batch_index: 0,
            splits: 0,
            chunk_len: 0,
            _pad: 0,
        })
    }
}
