//! Attention kernels: naive reference, flash prefill, split-K decode and probabilities
//! recomputed from the log-sum-exp.
//!
//! # Shapes
//!
//! - `q`: `[batch, q_heads, q_len, head_dim]`
//! - `k`, `v`: `[batch, kv_heads, kv_len, head_dim]`
//! - output: `[batch, q_heads, q_len, head_dim]`, the dtype of `q`
//! - log-sum-exp (`lse`): `[batch, q_heads, q_len]`, always f32
//!
//! `q`, `k` and `v` share one dtype (f32, or f16 where the adapter has shader-f16);
//! arithmetic is f32 throughout. `q_heads` must be a multiple of `kv_heads`: query head
//! `h` reads key/value head `h / (q_heads / kv_heads)`, which covers multi-head
//! (equal counts), grouped-query and multi-query (one KV head) attention. `head_dim`
//! is one of [`SUPPORTED_HEAD_DIMS`].
//!
//! # Mask semantics
//!
//! Query row `i` sits at position `p = i + kv_len - q_len`, so the last query row is
//! aligned with the last key (bottom-right alignment, as in chunked prefill and
//! decode). Key `j` is visible to row `i` when all of these hold:
//!
//! - causal (when [`Mask::causal`] is set): `j <= p`;
//! - window (when [`Mask::window`] is set to `Window { left, right }`):
//!   `p - left <= j <= p + right`, unless `j < sinks`, because the first
//!   [`Mask::sinks`] keys are attention sinks that every row sees regardless of the
//!   window (the causal rule still applies to them);
//! - block-sparse (when [`Mask::block_sparse`] is set): the layout lists key block
//!   `j / block_size` for query block `i / block_size`.
//!
//! A row with no visible key produces zeros and a log-sum-exp of `-inf`.
//!
//! # Variants
//!
//! Every kernel compiles for f32 and f16 and runs without subgroups, as the browser
//! build needs. Split-K decode and the naive kernel's row softmax use subgroup
//! reductions when the context has the SUBGROUP feature. Flash prefill gives each
//! query row its own invocation, so it has no cross-invocation reduction that
//! subgroups would speed up.

mod decode;
mod flash;
mod layout;
mod naive;
mod probs;
mod validate;

pub use decode::{decode_attention, decode_attention_into, decode_splits};
pub use flash::{
    flash_attention, flash_attention_into, flash_attention_with_lse, flash_tiles, FlashTiles,
};
pub use layout::BlockSparseLayout;
pub use naive::{naive_attention, naive_attention_into, NaiveAttention};
pub use probs::{attention_probs, attention_probs_into};
pub use validate::AttentionShape;

use std::sync::Arc;

use crate::{Context, Result, Tensor};

/// Head sizes the kernels are compiled for.
pub const SUPPORTED_HEAD_DIMS: &[usize] = &[32, 64, 80, 96, 128];

/// A sliding window around each query position: the row at position `p` attends to keys
/// `p - left ..= p + right`. With a causal mask, `right` has no effect, and a window
/// of `W` keys including the row's own is `Window { left: W - 1, right: 0 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub left: usize,
    pub right: usize,
}

/// Rule for which keys each query row attends to; the module documentation states it
/// exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mask {
    /// Hide keys after the row's position (bottom-right aligned).
    pub causal: bool,
    /// Hide keys outside a window around the row's position.
    pub window: Option<Window>,
    /// Number of leading keys that stay visible outside the window. Only meaningful
    /// together with a window.
    pub sinks: usize,
    /// Hide key blocks that the layout does not list for the row's query block.
    pub block_sparse: Option<Arc<BlockSparseLayout>>,
}

impl Mask {
    /// Returns a mask under which every key is visible.
    pub fn none() -> Self {
        Self::default()
    }

    /// Returns the causal mask, bottom-right aligned.
    pub fn causal() -> Self {
        Self {
            causal: true,
            ..Self::default()
        }
    }

    /// Causal sliding window of `size` keys, the row's own key included
    /// (`Window { left: size - 1, right: 0 }`); a `size` of 0 is treated as 1.
    pub fn causal_window(size: usize) -> Self {
        Self {
            causal: true,
            window: Some(Window {
                left: size.saturating_sub(1),
                right: 0,
            }),
            ..Self::default()
        }
    }

    /// Two-sided sliding window without the causal rule.
    pub fn window(left: usize, right: usize) -> Self {
        Self {
            window: Some(Window { left, right }),
            ..Self::default()
        }
    }

    /// Returns this mask with `sinks` leading keys kept visible outside the window.
    pub fn with_sinks(mut self, sinks: usize) -> Self {
        self.sinks = sinks;
        self
    }

    /// Returns this mask restricted to the key blocks that `layout` lists.
    pub fn with_block_sparse(mut self, layout: BlockSparseLayout) -> Self {
        self.block_sparse = Some(Arc::new(layout));
        self
    }

    /// Returns true when key `j` is visible to query row `i`, by the rules in the module
    /// documentation. The kernels apply the same rules; tests and CPU code use this one.
    pub fn is_visible(&self, i: usize, j: usize, q_len: usize, kv_len: usize) -> bool {
        let p = i as i64 + kv_len as i64 - q_len as i64;
        let j_pos = j as i64;
        if self.causal && j_pos > p {
            return false;
        }
        if let Some(w) = self.window {
            let inside = j_pos >= p - w.left as i64 && j_pos <= p + w.right as i64;
            if !inside && j >= self.sinks {
                return false;
            }
        }
        if let Some(layout) = &self.block_sparse {
            let size = layout.block_size();
            return layout.key_blocks(i / size).contains(&((j / size) as u32));
        }
        true
    }
}

/// Options shared by every attention kernel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionOptions {
    /// Factor applied to `q . k`; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Visibility rule for keys.
    pub mask: Mask,
    /// Number of KV chunks that split-K decode processes in parallel; `None` picks one
    /// from the lengths (see [`decode_splits`]). Ignored by the other kernels.
    pub kv_splits: Option<usize>,
}

impl AttentionOptions {
    /// Options with `mask` and the default scale.
    pub fn with_mask(mask: Mask) -> Self {
        Self {
            mask,
            ..Self::default()
        }
    }

    /// Returns the scale used for `head_dim`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.scale
            .unwrap_or_else(|| 1.0 / (head_dim.max(1) as f32).sqrt())
    }
}

/// Computes attention with the kernel that suits the shape: split-K decode for up to
/// [`DECODE_MAX_Q_LEN`] query rows, flash prefill otherwise. Shapes as in the module
/// documentation.
pub fn attention(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
) -> Result<Tensor> {
    let shape = AttentionShape::of(q, k, v)?;
    if shape.q_len <= DECODE_MAX_Q_LEN {
        decode_attention(ctx, q, k, v, options)
    } else {
        flash_attention(ctx, q, k, v, options)
    }
}

/// Largest query length for which [`attention`] picks split-K decode.
pub const DECODE_MAX_Q_LEN: usize = 4;
