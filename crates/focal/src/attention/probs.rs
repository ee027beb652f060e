//! Attention probabilities recomputed from the log-sum-exp of the fused kernels, for
//! heatmaps that never materialise the whole score matrix.

use std::ops::Range;

use super::flash::upload_u32;
use super::validate::{AttentionShape, Params};
use super::AttentionOptions;
use crate::kernels::to_u32;
use crate::shader::{dispatch, Variant};
use crate::{Context, DType, Error, Result, Tensor};

/// Returns an error unless `batch`, `head` and `rows` lie inside `shape`.
fn check_selection(
    shape: &AttentionShape,
    batch: usize,
    head: usize,
    rows: &Range<usize>,
) -> Result<()> {
    if batch >= shape.batch {
        crate::bail_arg!(
            "batch",
            batch,
            "must be below the batch size {}",
            shape.batch
        );
    }
    if head >= shape.q_heads {
        crate::bail_arg!("head", head, "must be below q_heads {}", shape.q_heads);
    }
    if rows.start > rows.end || rows.end > shape.q_len {
        crate::bail_arg!(
            "rows",
            format!("{rows:?}"),
            "must be an increasing range within q_len {}",
            shape.q_len
        );
    }
    Ok(())
}

/// Records `out[r, j] = exp(scale * q[batch, head, rows.start + r] . k[batch, kv_head, j]
/// - lse[batch, head, rows.start + r])` for visible keys and 0 for hidden ones.
///
/// `q` and `k` are the tensors the fused kernel saw (`[batch, heads, len, head_dim]`),
/// `lse` is the f32 `[batch, q_heads, q_len]` log-sum-exp it wrote, `options` must be
/// the same, and `out` is f32 `[rows.len(), kv_len]`. The result equals the naive
/// kernel's probabilities for those rows, and each row sums to 1 (0 for a row that
/// sees no key).
#[allow(clippy::too_many_arguments)]
pub fn attention_probs_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    q: &Tensor,
    k: &Tensor,
    lse: &Tensor,
    options: &AttentionOptions,
    batch: usize,
    head: usize,
    rows: Range<usize>,
    out: &Tensor,
) -> Result<()> {
    let shape = AttentionShape::of_qk("attention_probs", q, k)?;
    shape.check_lse("attention_probs", lse)?;
    shape.check_mask(options)?;
    check_selection(&shape, batch, head, &rows)?;
    let expected = [rows.len(), shape.kv_len];
    if out.shape() != expected || out.dtype() != DType::F32 {
        return Err(Error::ShapeMismatch {
            op: "attention_probs",
            detail: format!(
                "output is {:?} {}, expected {expected:?} f32",
                out.shape(),
                out.dtype()
            ),
        });
    }
    let mut params = Params::new(&shape, options)?;
    params.row_start = to_u32("rows.start", rows.start)?;
    params.row_count = to_u32("rows.len()", rows.len())?;
    params.head = to_u32("head", head)?;
    params.batch_index = to_u32("batch", batch)?;

    let layout = options.mask.block_sparse.as_ref();
    let variant = Variant::new(q.dtype())
        .define_u32("HEAD_DIM", shape.head_dim as u32)
        .flag("SPARSE", layout.is_some());
    let pipeline = ctx.pipeline("attention_probs.wgsl", "recompute_probs", &variant)?;
    let block_visible = match layout {
        Some(layout) => Some(upload_u32(ctx, &layout.dense_words())?),
        None => None,
    };
    let mut buffers = vec![
        (1, q.buffer()),
        (2, k.buffer()),
        (3, lse.buffer()),
        (4, out.buffer()),
    ];
    if let Some(words) = &block_visible {
        buffers.push((5, words.buffer()));
    }
    let groups = [
        to_u32("kv_len", shape.kv_len.div_ceil(64))?,
        params.row_count,
        1,
    ];
    dispatch(
        ctx,
        encoder,
        "recompute_probs",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &buffers,
        groups,
    )
}

/// Recomputes the probabilities of `rows` of one (`batch`, `head`) into a new f32
/// `[rows.len(), kv_len]` tensor and submits it. Arguments as in
/// [`attention_probs_into`].
#[allow(clippy::too_many_arguments)]
pub fn attention_probs(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    lse: &Tensor,
    options: &AttentionOptions,
    batch: usize,
    head: usize,
    rows: Range<usize>,
) -> Result<Tensor> {
    let shape = AttentionShape::of_qk("attention_probs", q, k)?;
    check_selection(&shape, batch, head, &rows)?;
    let out = Tensor::zeros(ctx, &[rows.len(), shape.kv_len], DType::F32)?;
    let mut encoder = ctx.encoder();
    attention_probs_into(
        ctx,
        &mut encoder,
        q,
        k,
        lse,
        options,
        batch,
        head,
        rows,
        &out,
    )?;
    ctx.submit(encoder);
    Ok(out)
}
