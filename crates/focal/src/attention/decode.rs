//! Split-K decode attention (flash-decoding): the keys are cut into chunks that
//! workgroups process in parallel, and a merge pass combines the partial results.

use super::flash::upload_u32;
use super::validate::{AttentionShape, Params};
use super::AttentionOptions;
use crate::kernels::to_u32;
use crate::shader::{dispatch, grid_2d, Variant};
use crate::{Context, DType, Result, Tensor};

/// Fewest keys per chunk that [`decode_splits`] chooses: smaller chunks cost more in
/// merging and per-workgroup setup than they gain in parallelism.
const MIN_CHUNK: usize = 256;

/// Workgroups that [`decode_splits`] aims for across all rows and chunks.
const TARGET_WORKGROUPS: usize = 256;

/// Returns the number of KV chunks that split-K decode uses by default for `kv_len`
/// keys and `rows = batch * q_heads * q_len` query rows: enough chunks for about 256
/// workgroups in all, each of at least 256 keys.
pub fn decode_splits(kv_len: usize, rows: usize) -> usize {
    let per_row = TARGET_WORKGROUPS.div_ceil(rows.max(1));
    per_row.min(kv_len.div_ceil(MIN_CHUNK)).max(1)
}

/// Workgroup size of the decode kernels: 64, or the largest power of two the device
/// allows, and never below the subgroup size that the subgroup reductions assume.
fn decode_workgroup(ctx: &Context) -> u32 {
    let max = ctx.limits().max_compute_invocations_per_workgroup.min(64);
    let size = 1u32 << (31 - max.max(1).leading_zeros());
    size.max(ctx.capabilities().subgroup_max_size.min(64))
}

/// Records split-K decode attention into `out`, and the log-sum-exp into `lse` when
/// given. Meant for `q_len` of 1 or a few rows; larger `q_len` is correct but the
/// flash kernel is faster.
///
/// Shapes, masks and errors as in [`super::flash_attention_into`]. Scratch space of
/// `rows * splits * (head_dim + 2)` f32 values is allocated, where `splits` is
/// `options.kv_splits` or [`decode_splits`].
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
    out: &Tensor,
    lse: Option<&Tensor>,
) -> Result<()> {
    let shape = AttentionShape::of(q, k, v)?;
    shape.check_output("decode_attention", out, q.dtype())?;
    if let Some(lse) = lse {
        shape.check_lse("decode_attention", lse)?;
    }
    shape.check_mask(options)?;
    if let Some(0) = options.kv_splits {
        crate::bail_arg!("kv_splits", 0, "must be at least 1");
    }
    let rows = shape.rows();
    if rows == 0 {
        return Ok(());
    }
    let requested = options
        .kv_splits
        .unwrap_or_else(|| decode_splits(shape.kv_len, rows));
    let chunk_len = shape.kv_len.div_ceil(requested).max(1);
    let splits = shape.kv_len.div_ceil(chunk_len).max(1);

    let mut params = Params::new(&shape, options)?;
    params.splits = to_u32("kv_splits", splits)?;
    params.chunk_len = to_u32("chunk_len", chunk_len)?;

    let wg = decode_workgroup(ctx);
    let layout = options.mask.block_sparse.as_ref();
    let variant = Variant::new(q.dtype())
        .define_u32("HEAD_DIM", shape.head_dim as u32)
        .define_u32("WG", wg)
        .flag("WRITE_LSE", lse.is_some())
        .flag("SPARSE", layout.is_some())
        .with_subgroups(ctx.capabilities().subgroup_attention);
    let block_visible = match layout {
        Some(layout) => Some(upload_u32(ctx, &layout.dense_words())?),
        None => None,
    };
    let partial = Tensor::zeros(ctx, &[rows, splits, shape.head_dim + 2], DType::F32)?;

    let pipeline = ctx.pipeline("attention_decode.wgsl", "decode_partial", &variant)?;
    let mut buffers = vec![
        (1, q.buffer()),
        (2, k.buffer()),
        (3, v.buffer()),
        (4, partial.buffer()),
    ];
    if let Some(words) = &block_visible {
        buffers.push((7, words.buffer()));
    }
    let groups = [
        params.splits,
        params.q_len,
        to_u32("batch * q_heads", shape.batch * shape.q_heads)?,
    ];
    dispatch(
        ctx,
        encoder,
        "decode_partial",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &buffers,
        groups,
    )?;

    let pipeline = ctx.pipeline("attention_decode.wgsl", "decode_merge", &variant)?;
    let mut buffers = vec![(4, partial.buffer()), (5, out.buffer())];
    if let Some(lse) = lse {
        buffers.push((6, lse.buffer()));
    }
    dispatch(
        ctx,
        encoder,
        "decode_merge",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &buffers,
        grid_2d(ctx, to_u32("rows", rows)?),
    )
}

/// Computes split-K decode attention into a new tensor and submits it. Shapes as in
/// [`decode_attention_into`].
pub fn decode_attention(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
) -> Result<Tensor> {
    let shape = AttentionShape::of(q, k, v)?;
    let out = Tensor::zeros(ctx, &shape.output_shape(), q.dtype())?;
    let mut encoder = ctx.encoder();
    decode_attention_into(ctx, &mut encoder, q, k, v, options, &out, None)?;
    ctx.submit(encoder);
    Ok(out)
}
