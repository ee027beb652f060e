//! Basic kernels: matrix product, row softmax, RMSNorm and elementwise operations.
//!
//! Each kernel has a recording form (`*_into`) that appends a dispatch to a caller's
//! command encoder, so a model can record a whole forward pass before one submit,
//! and a convenience form that allocates the output and submits at once.

mod elementwise;
mod matmul;
mod rows;

pub use elementwise::{add, add_into, mul, mul_into, silu, silu_into, silu_mul, silu_mul_into};
pub use matmul::{matmul, matmul_into, matmul_tiles, MatmulTiles};
pub use rows::{rmsnorm, rmsnorm_into, softmax, softmax_into};

use crate::{Error, Result, Tensor};

/// Returns an error unless every tensor has the dtype of the first.
pub(crate) fn same_dtype(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    let expected = tensors[0].dtype();
    for t in &tensors[1..] {
        if t.dtype() != expected {
            return Err(Error::DTypeMismatch {
                op,
                expected,
                found: t.dtype(),
            });
        }
    }
    Ok(())
}

/// Converts a size to `u32` for a kernel parameter, or errors naming it.
pub(crate) fn to_u32(name: &'static str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::InvalidArgument {
        name,
        value: value.to_string(),
        reason: format!("exceeds the kernel's 32-bit index limit of {}", u32::MAX),
    })
}

/// Workgroup width for the row and elementwise kernels: 256, or less when the device
/// grants fewer invocations.
pub(crate) fn row_workgroup(ctx: &crate::Context) -> u32 {
    let max = ctx.limits().max_compute_invocations_per_workgroup.min(256);
    // Round down to a power of two, as the tree reductions need.
    1 << (31 - max.max(1).leading_zeros())
}
