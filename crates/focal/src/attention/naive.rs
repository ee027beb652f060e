//! Naive attention: materialises the scores and probabilities. It is the reference for
//! tests and the source of small heatmaps.

use super::flash::upload_u32;
use super::validate::{AttentionShape, Params};
use super::AttentionOptions;
use crate::kernels::{softmax_into, to_u32};
use crate::shader::{dispatch, grid_2d, Variant};
use crate::{Context, DType, Error, Result, Tensor};

/// Output of [`naive_attention`].
#[derive(Debug)]
pub struct NaiveAttention {
    /// `[batch, q_heads, q_len, head_dim]`, the dtype of `q`.
    pub output: Tensor,
    /// Probabilities, f32 `[batch, q_heads, q_len, kv_len]`; hidden keys are 0 and rows
    /// that see no key are all 0.
    pub probs: Tensor,
}

fn probs_shape(shape: &AttentionShape) -> [usize; 4] {
    [shape.batch, shape.q_heads, shape.q_len, shape.kv_len]
}

/// Returns an error unless an f32 score matrix for `shape` fits one storage binding.
fn check_score_matrix(ctx: &Context, shape: &AttentionShape) -> Result<()> {
    let bytes = (shape.rows() as u64).saturating_mul(shape.kv_len as u64 * 4);
    ctx.check_binding_size(
        &format!("naive attention score matrix {:?} f32", probs_shape(shape)),
        bytes,
    )
}

/// Records naive attention: scores, a row softmax into `probs`, then `out = probs * V`.
///
/// Shapes as in [`super::flash_attention_into`]; `probs` is f32
/// `[batch, q_heads, q_len, kv_len]`. A scratch score matrix of the same size is
/// allocated.
///
/// Errors with [`Error::BufferTooLarge`] when the score matrix exceeds the device's
/// binding limit, and as the flash kernel does on bad shapes or masks.
#[allow(clippy::too_many_arguments)]
pub fn naive_attention_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
    out: &Tensor,
    probs: &Tensor,
) -> Result<()> {
    let shape = AttentionShape::of(q, k, v)?;
    shape.check_output("naive_attention", out, q.dtype())?;
    if probs.shape() != probs_shape(&shape) || probs.dtype() != DType::F32 {
        return Err(Error::ShapeMismatch {
            op: "naive_attention",
            detail: format!(
                "probs is {:?} {}, expected {:?} f32",
                probs.shape(),
                probs.dtype(),
                probs_shape(&shape)
            ),
        });
    }
    shape.check_mask(options)?;
    check_score_matrix(ctx, &shape)?;
    let params = Params::new(&shape, options)?;
    let layout = options.mask.block_sparse.as_ref();
    let variant = Variant::new(q.dtype())
        .define_u32("HEAD_DIM", shape.head_dim as u32)
        .flag("SPARSE", layout.is_some());
    let block_visible = match layout {
        Some(layout) => Some(upload_u32(ctx, &layout.dense_words())?),
        None => None,
    };

    let scores = Tensor::zeros(ctx, &probs_shape(&shape), DType::F32)?;
    let pipeline = ctx.pipeline("attention_naive.wgsl", "scores", &variant)?;
    let mut buffers = vec![(1, q.buffer()), (2, k.buffer()), (4, scores.buffer())];
    if let Some(words) = &block_visible {
        buffers.push((7, words.buffer()));
    }
    let groups = [
        to_u32("kv_len", shape.kv_len.div_ceil(16))?,
        to_u32("q_len", shape.q_len.div_ceil(16))?,
        to_u32("batch * q_heads", shape.batch * shape.q_heads)?,
    ];
    dispatch(
        ctx,
        encoder,
        "attention_scores",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &buffers,
        groups,
    )?;

    softmax_into(ctx, encoder, &scores, 1.0, probs)?;

    let pipeline = ctx.pipeline("attention_naive.wgsl", "weighted_sum", &variant)?;
    let columns = shape.rows() * shape.head_dim / 4;
    dispatch(
        ctx,
        encoder,
        "attention_weighted_sum",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &[(3, v.buffer()), (5, probs.buffer()), (6, out.buffer())],
        grid_2d(ctx, to_u32("output columns", columns.div_ceil(64))?),
    )
}

/// Computes naive attention into new tensors and submits it. Shapes and errors as in
/// [`naive_attention_into`].
pub fn naive_attention(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
) -> Result<NaiveAttention> {
    let shape = AttentionShape::of(q, k, v)?;
    check_score_matrix(ctx, &shape)?;
    let output = Tensor::zeros(ctx, &shape.output_shape(), q.dtype())?;
    let probs = Tensor::zeros(ctx, &probs_shape(&shape), DType::F32)?;
    let mut encoder = ctx.encoder();
    naive_attention_into(ctx, &mut encoder, q, k, v, options, &output, &probs)?;
    ctx.submit(encoder);
    Ok(NaiveAttention { output, probs })
}
