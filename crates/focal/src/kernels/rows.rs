//! Kernels that reduce along the last axis: row softmax and RMSNorm.

use bytemuck::{Pod, Zeroable};

use super::{row_workgroup, same_dtype, to_u32};
use crate::shader::{dispatch, grid_2d, Variant};
use crate::{Context, Error, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    value: f32,
    _pad: u32,
}

/// Splits a shape into (rows, cols), the last axis being cols.
fn rows_cols(t: &Tensor) -> (usize, usize) {
    let cols = t.shape().last().copied().unwrap_or(1);
    let rows = t.len().checked_div(cols).unwrap_or(0);
    (rows, cols)
}

fn variant(ctx: &Context, t: &Tensor) -> Variant {
    Variant::new(t.dtype())
        .define_u32("WG", row_workgroup(ctx))
        .with_subgroups(ctx.capabilities().subgroups)
}

fn same_shape(op: &'static str, x: &Tensor, out: &Tensor) -> Result<()> {
    if x.shape() != out.shape() {
        return Err(Error::ShapeMismatch {
            op,
            detail: format!("input {:?} and output {:?} differ", x.shape(), out.shape()),
        });
    }
    Ok(())
}

/// Records `out = softmax(scale * x)` along the last axis. `x` and `out` share any
/// shape. Entries at or below -1e30 count as masked; fully masked rows become zeros.
pub fn softmax_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    x: &Tensor,
    scale: f32,
    out: &Tensor,
) -> Result<()> {
    same_dtype("softmax", &[x, out])?;
    same_shape("softmax", x, out)?;
    let (rows, cols) = rows_cols(x);
    let pipeline = ctx.pipeline("softmax.wgsl", "softmax", &variant(ctx, x))?;
    let params = Params {
        rows: to_u32("rows", rows)?,
        cols: to_u32("cols", cols)?,
        value: scale,
        _pad: 0,
    };
    dispatch(
        ctx,
        encoder,
        "softmax",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &[(1, x.buffer()), (2, out.buffer())],
        grid_2d(ctx, params.rows),
    )
}

/// Computes the softmax of `scale * x` along the last axis into a new tensor.
pub fn softmax(ctx: &Context, x: &Tensor, scale: f32) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    let mut encoder = ctx.encoder();
    softmax_into(ctx, &mut encoder, x, scale, &out)?;
    ctx.submit(encoder);
    Ok(out)
}

/// Records RMSNorm along the last axis: `out = x / sqrt(mean(x^2) + eps) * weight`.
/// `weight` has shape `[cols]`; `x` and `out` share any shape ending in `cols`.
pub fn rmsnorm_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    out: &Tensor,
) -> Result<()> {
    same_dtype("rmsnorm", &[x, weight, out])?;
    same_shape("rmsnorm", x, out)?;
    let (rows, cols) = rows_cols(x);
    if weight.shape() != [cols] {
        return Err(Error::ShapeMismatch {
            op: "rmsnorm",
            detail: format!("weight has shape {:?}, expected [{cols}]", weight.shape()),
        });
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        crate::bail_arg!("eps", eps, "must be finite and non-negative");
    }
    let pipeline = ctx.pipeline("rmsnorm.wgsl", "rmsnorm", &variant(ctx, x))?;
    let params = Params {
        rows: to_u32("rows", rows)?,
        cols: to_u32("cols", cols)?,
        value: eps,
        _pad: 0,
    };
    dispatch(
        ctx,
        encoder,
        "rmsnorm",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &[(1, x.buffer()), (2, weight.buffer()), (3, out.buffer())],
        grid_2d(ctx, params.rows),
    )
}

/// Computes RMSNorm along the last axis into a new tensor.
pub fn rmsnorm(ctx: &Context, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    let mut encoder = ctx.encoder();
    rmsnorm_into(ctx, &mut encoder, x, weight, eps, &out)?;
    ctx.submit(encoder);
    Ok(out)
}
