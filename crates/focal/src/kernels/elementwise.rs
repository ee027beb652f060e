//! Elementwise kernels: add, mul, SiLU and the SwiGLU gate.

use bytemuck::{Pod, Zeroable};

use super::{row_workgroup, same_dtype, to_u32};
use crate::shader::{dispatch, grid_2d, Variant};
use crate::{Context, Error, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    len_b: u32,
    _pad: [u32; 2],
}

fn record(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    entry: &'static str,
    a: &Tensor,
    b: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    let mut all = vec![a, out];
    all.extend(b);
    same_dtype(entry, &all)?;
    if a.shape() != out.shape() {
        return Err(Error::ShapeMismatch {
            op: entry,
            detail: format!("input {:?} and output {:?} differ", a.shape(), out.shape()),
        });
    }
    let len_b = match b {
        Some(b) if b.is_empty() || !a.len().is_multiple_of(b.len()) => {
            return Err(Error::ShapeMismatch {
                op: entry,
                detail: format!(
                    "b {:?} ({} elements) does not broadcast over a {:?} ({} elements)",
                    b.shape(),
                    b.len(),
                    a.shape(),
                    a.len()
                ),
            })
        }
        Some(b) => b.len(),
        None => 1,
    };
    let wg = row_workgroup(ctx);
    let variant = Variant::new(a.dtype()).define_u32("WG", wg);
    let pipeline = ctx.pipeline("elementwise.wgsl", entry, &variant)?;
    let params = Params {
        len: to_u32("len", a.len())?,
        len_b: to_u32("len_b", len_b)?,
        _pad: [0; 2],
    };
    let mut buffers = vec![(1, a.buffer()), (3, out.buffer())];
    if let Some(b) = b {
        buffers.push((2, b.buffer()));
    }
    dispatch(
        ctx,
        encoder,
        entry,
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &buffers,
        grid_2d(ctx, params.len.div_ceil(wg)),
    )
}

fn run(ctx: &Context, entry: &'static str, a: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, a.shape(), a.dtype())?;
    let mut encoder = ctx.encoder();
    record(ctx, &mut encoder, entry, a, b, &out)?;
    ctx.submit(encoder);
    Ok(out)
}

/// Records `out = a + b`, with `b` repeated cyclically when it is shorter
/// (its length must divide `a`'s).
pub fn add_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    a: &Tensor,
    b: &Tensor,
    out: &Tensor,
) -> Result<()> {
    record(ctx, encoder, "add", a, Some(b), out)
}

/// Records `out = a * b`, broadcasting `b` as in [`add_into`].
pub fn mul_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    a: &Tensor,
    b: &Tensor,
    out: &Tensor,
) -> Result<()> {
    record(ctx, encoder, "mul", a, Some(b), out)
}

/// Records `out = silu(a) * b`, the SwiGLU gate, broadcasting `b` as in [`add_into`].
pub fn silu_mul_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    a: &Tensor,
    b: &Tensor,
    out: &Tensor,
) -> Result<()> {
    record(ctx, encoder, "silu_mul", a, Some(b), out)
}

/// Records `out = silu(a) = a * sigmoid(a)`.
pub fn silu_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    a: &Tensor,
    out: &Tensor,
) -> Result<()> {
    record(ctx, encoder, "silu", a, None, out)
}

/// Computes `a + b` into a new tensor.
pub fn add(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    run(ctx, "add", a, Some(b))
}

/// Computes `a * b` into a new tensor.
pub fn mul(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    run(ctx, "mul", a, Some(b))
}

/// Computes `silu(a) * b` into a new tensor.
pub fn silu_mul(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    run(ctx, "silu_mul", a, Some(b))
}

/// Computes `silu(a)` into a new tensor.
pub fn silu(ctx: &Context, a: &Tensor) -> Result<Tensor> {
    run(ctx, "silu", a, None)
}
