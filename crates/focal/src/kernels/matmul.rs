use bytemuck::{Pod, Zeroable};

use super::{same_dtype, to_u32};
use crate::shader::{dispatch, Variant};
use crate::{Context, Error, Result, Tensor};

/// Tile sizes of the matrix product: a workgroup computes `m x n` outputs, stepping
/// through K `k` at a time; each invocation computes a `thread_m x thread_n` block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulTiles {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub thread_m: u32,
    pub thread_n: u32,
}

impl MatmulTiles {
    /// Invocations per workgroup.
    pub fn invocations(self) -> u32 {
        (self.m / self.thread_m) * (self.n / self.thread_n)
    }

    /// Workgroup memory in bytes: two f32 tiles.
    pub fn workgroup_bytes(self) -> u32 {
        (self.m + self.n) * self.k * 4
    }
}

/// Chooses the largest tile that fits the granted workgroup memory and invocation limits.
///
/// 8 x 8 outputs per invocation with a K step of 32 measured fastest on lavapipe among
/// 4 x 4 and 8 x 8 blocks with K steps of 8, 16 and 32 (CPU time of `focal bench matmul`).
pub fn matmul_tiles(limits: &wgpu::Limits) -> MatmulTiles {
    let tile = |m, n, k, thread_m, thread_n| MatmulTiles {
        m,
        n,
        k,
        thread_m,
        thread_n,
    };
    let candidates = [
        tile(64, 64, 32, 8, 8),
        tile(64, 64, 16, 8, 8),
        tile(32, 64, 16, 4, 8),
        tile(32, 32, 16, 4, 4),
        tile(16, 16, 8, 4, 4),
    ];
    candidates
        .into_iter()
        .find(|t| {
            t.invocations() <= limits.max_compute_invocations_per_workgroup
                && t.n / t.thread_n <= limits.max_compute_workgroup_size_x
                && t.m / t.thread_m <= limits.max_compute_workgroup_size_y
                && t.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
        })
        .unwrap_or(tile(4, 4, 4, 4, 4))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    _pad: u32,
}

/// Splits a 2-D or 3-D shape into (batch, rows, cols).
fn as_batched(op: &'static str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((1, r, c)),
        [b, r, c] => Ok((b, r, c)),
        _ => Err(Error::ShapeMismatch {
            op,
            detail: format!("expected a 2-D or 3-D tensor, found shape {:?}", t.shape()),
        }),
    }
}

/// Returns the output shape of `matmul(a, b, transpose_b)` after checking the inputs.
fn output_shape(a: &Tensor, b: &Tensor, transpose_b: bool) -> Result<Vec<usize>> {
    let (batch_a, m, k) = as_batched("matmul", a)?;
    let (batch_b, rows_b, cols_b) = as_batched("matmul", b)?;
    let (k_b, n) = if transpose_b {
        (cols_b, rows_b)
    } else {
        (rows_b, cols_b)
    };
    if k != k_b {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            detail: format!(
                "inner dimensions differ: a {:?} has K = {k}, b {:?}{} has K = {k_b}",
                a.shape(),
                b.shape(),
                if transpose_b { " (transposed)" } else { "" }
            ),
        });
    }
    if batch_b != 1 && batch_b != batch_a {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            detail: format!("batch of b ({batch_b}) is neither 1 nor the batch of a ({batch_a})"),
        });
    }
    Ok(if a.shape().len() == 3 {
        vec![batch_a, m, n]
    } else {
        vec![m, n]
    })
}

/// Records `out = a * b` (or `a * b^T` when `transpose_b`).
///
/// Shapes: `a` is `[M, K]` or `[B, M, K]`, and `out` is `[M, N]` or `[B, M, N]`.
/// `b` is `[K, N]` (`[N, K]` when transposed), optionally with a batch of `B`, or of 1
/// to broadcast it. All three share a dtype.
pub fn matmul_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    a: &Tensor,
    b: &Tensor,
    transpose_b: bool,
    out: &Tensor,
) -> Result<()> {
    same_dtype("matmul", &[a, b, out])?;
    let expected = output_shape(a, b, transpose_b)?;
    if out.shape() != expected.as_slice() {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            detail: format!("output has shape {:?}, expected {expected:?}", out.shape()),
        });
    }
    let (batch, m, k) = as_batched("matmul", a)?;
    let (batch_b, rows_b, cols_b) = as_batched("matmul", b)?;
    let n = if transpose_b { rows_b } else { cols_b };
    let tiles = matmul_tiles(ctx.limits());
    let variant = Variant::new(a.dtype())
        .define_u32("TILE_M", tiles.m)
        .define_u32("TILE_N", tiles.n)
        .define_u32("TILE_K", tiles.k)
        .define_u32("THREAD_M", tiles.thread_m)
        .define_u32("THREAD_N", tiles.thread_n)
        .flag("TRANSPOSE_B", transpose_b);
    let pipeline = ctx.pipeline("matmul.wgsl", "matmul", &variant)?;
    let params = Params {
        m: to_u32("M", m)?,
        n: to_u32("N", n)?,
        k: to_u32("K", k)?,
        batch: to_u32("batch", batch)?,
        stride_a: to_u32("M * K", m * k)?,
        stride_b: if batch_b == 1 {
            0
        } else {
            to_u32("K * N", k * n)?
        },
        stride_c: to_u32("M * N", m * n)?,
        _pad: 0,
    };
    let groups = [
        to_u32("N", n.div_ceil(tiles.n as usize))?,
        to_u32("M", m.div_ceil(tiles.m as usize))?,
        to_u32("batch", batch)?,
    ];
    dispatch(
        ctx,
        encoder,
        "matmul",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &[(1, a.buffer()), (2, b.buffer()), (3, out.buffer())],
        groups,
    )
}

/// Computes `a * b` (or `a * b^T`) into a new tensor and submits it. Shapes as in
/// [`matmul_into`].
pub fn matmul(ctx: &Context, a: &Tensor, b: &Tensor, transpose_b: bool) -> Result<Tensor> {
    same_dtype("matmul", &[a, b])?;
    let shape = output_shape(a, b, transpose_b)?;
    let out = Tensor::zeros(ctx, &shape, a.dtype())?;
    let mut encoder = ctx.encoder();
    matmul_into(ctx, &mut encoder, a, b, transpose_b, &out)?;
    ctx.submit(encoder);
    Ok(out)
}
