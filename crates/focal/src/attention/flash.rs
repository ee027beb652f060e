//! Flash attention prefill: tiles of queries in workgroup memory, an online softmax
//! over key tiles, and tiles that the mask hides skipped entirely.

use super::validate::{AttentionShape, Params};
use super::AttentionOptions;
use crate::kernels::to_u32;
use crate::shader::{dispatch, Variant};
use crate::{Context, DType, Error, Result, Tensor};

/// Tile sizes of the flash kernel: `block_q` query rows per workgroup (one invocation
/// each) and `block_k` keys per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashTiles {
    pub block_q: u32,
    pub block_k: u32,
}

impl FlashTiles {
    /// Workgroup memory in bytes: the query tile and the key and value tiles, in f32.
    pub fn workgroup_bytes(self, head_dim: usize) -> u32 {
        (self.block_q + 2 * self.block_k) * head_dim as u32 * 4
    }
}

/// Chooses the largest flash tiles whose workgroup memory and invocation count fit the
/// granted `limits` for `head_dim`.
///
/// Errors with [`Error::WorkgroupMemory`] when even the smallest tile does not fit.
pub fn flash_tiles(limits: &wgpu::Limits, head_dim: usize) -> Result<FlashTiles> {
    const CANDIDATES: [(u32, u32); 7] = [
        (64, 32),
        (32, 32),
        (32, 16),
        (16, 16),
        (16, 8),
        (8, 8),
        (8, 4),
    ];
    let fits = |t: &FlashTiles| {
        t.block_q <= limits.max_compute_invocations_per_workgroup
            && t.block_q <= limits.max_compute_workgroup_size_x
            && t.workgroup_bytes(head_dim) <= limits.max_compute_workgroup_storage_size
    };
    let smallest = FlashTiles {
        block_q: 8,
        block_k: 4,
    };
    CANDIDATES
        .iter()
        .map(|&(block_q, block_k)| FlashTiles { block_q, block_k })
        .find(fits)
        .ok_or(Error::WorkgroupMemory {
            kernel: "flash_prefill",
            bytes: smallest.workgroup_bytes(head_dim),
            limit: limits.max_compute_workgroup_storage_size,
        })
}

/// Records flash attention into `out`, and the per-row log-sum-exp into `lse` when given.
///
/// Shapes: `q [batch, q_heads, q_len, head_dim]`, `k` and `v`
/// `[batch, kv_heads, kv_len, head_dim]`, `out` like `q` and of its dtype, `lse`
/// `[batch, q_heads, q_len]` in f32 (natural log; `-inf` for rows that see no key).
/// Masks, GQA and the scale follow the [module documentation](super).
///
/// Errors on mismatched shapes or dtypes, an unsupported head size, a mask that does not
/// fit the lengths, and sizes beyond the device limits.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_into(
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
    shape.check_output("flash_attention", out, q.dtype())?;
    if let Some(lse) = lse {
        shape.check_lse("flash_attention", lse)?;
    }
    shape.check_mask(options)?;
    let params = Params::new(&shape, options)?;

    let mut tiles = flash_tiles(ctx.limits(), shape.head_dim)?;
    let sparse = options.mask.block_sparse.as_ref();
    if let Some(layout) = sparse {
        // A query tile must not straddle two query blocks of the layout.
        while layout.block_size() % tiles.block_q as usize != 0 {
            tiles.block_q /= 2;
        }
    }
    let variant = Variant::new(q.dtype())
        .define_u32("HEAD_DIM", shape.head_dim as u32)
        .define_u32("BLOCK_Q", tiles.block_q)
        .define_u32("BLOCK_K", tiles.block_k)
        .flag("WRITE_LSE", lse.is_some())
        .flag("SPARSE", sparse.is_some());
    let pipeline = ctx.pipeline("attention_flash.wgsl", "flash_prefill", &variant)?;

    let layout_buffers = match sparse {
        Some(layout) => Some((
            upload_u32(ctx, layout.offsets())?,
            upload_u32(ctx, layout.indices())?,
        )),
        None => None,
    };
    let mut buffers = vec![
        (1, q.buffer()),
        (2, k.buffer()),
        (3, v.buffer()),
        (4, out.buffer()),
    ];
    if let Some(lse) = lse {
        buffers.push((5, lse.buffer()));
    }
    if let Some((offsets, indices)) = &layout_buffers {
        buffers.push((6, offsets.buffer()));
        buffers.push((7, indices.buffer()));
    }
    let groups = [
        to_u32("q_len", shape.q_len.div_ceil(tiles.block_q as usize))?,
        to_u32("q_heads", shape.q_heads)?,
        to_u32("batch", shape.batch)?,
    ];
    dispatch(
        ctx,
        encoder,
        "flash_prefill",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &buffers,
        groups,
    )
}

/// Uploads `words` as a u32 storage buffer (stored in an f32-typed tensor, same bytes).
/// An empty list still gets one word, since WGSL arrays cannot bind zero bytes.
pub(crate) fn upload_u32(ctx: &Context, words: &[u32]) -> Result<Tensor> {
    let padded: Vec<u32> = if words.is_empty() {
        vec![0]
    } else {
        words.to_vec()
    };
    Tensor::upload_bytes(
        ctx,
        bytemuck::cast_slice(&padded),
        &[padded.len()],
        DType::F32,
    )
}

/// Computes flash attention into a new tensor and submits it. Shapes as in
/// [`flash_attention_into`].
pub fn flash_attention(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
) -> Result<Tensor> {
    let shape = AttentionShape::of(q, k, v)?;
    let out = Tensor::zeros(ctx, &shape.output_shape(), q.dtype())?;
    let mut encoder = ctx.encoder();
    flash_attention_into(ctx, &mut encoder, q, k, v, options, &out, None)?;
    ctx.submit(encoder);
    Ok(out)
}

/// Computes flash attention and the per-row log-sum-exp (`[batch, q_heads, q_len]`,
/// f32) into new tensors and submits them. Shapes as in [`flash_attention_into`].
pub fn flash_attention_with_lse(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
) -> Result<(Tensor, Tensor)> {
    let shape = AttentionShape::of(q, k, v)?;
    let out = Tensor::zeros(ctx, &shape.output_shape(), q.dtype())?;
    let lse = Tensor::zeros(ctx, &shape.lse_shape(), DType::F32)?;
    let mut encoder = ctx.encoder();
    flash_attention_into(ctx, &mut encoder, q, k, v, options, &out, Some(&lse))?;
    ctx.submit(encoder);
    Ok((out, lse))
}
