//! A self-check of the attention kernels on the device at hand.
//!
//! [`attention_kernels`] runs every attention kernel (naive, flash with each mask type,
//! split-K decode, probabilities from the log-sum-exp, paged decode through the KV cache)
//! on small random inputs, in f32 and, where the adapter has shader-f16, in f16. It
//! compares each result with attention computed in f64 on the CPU. Drivers and browser
//! shader compilers differ, and a kernel that validates in naga can still be rejected or
//! miscompiled by one of them. One call of this check shows whether Focal computes
//! correct attention on this GPU, natively (`focal check`) and in the browser.
//!
//! The CPU attention here is deliberately plain: one row at a time, scores, softmax,
//! weighted sum, with the visibility rule of [`Mask::is_visible`].

use std::fmt;

use crate::attention::{
    attention_probs, decode_attention, flash_attention, flash_attention_with_lse, naive_attention,
    AttentionOptions, BlockSparseLayout, Mask,
};
use crate::kv::{KvBudget, KvCache, KvCacheConfig};
use crate::{Context, DType, Result, Tensor};

/// The outcome of one kernel on one shape and dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCheck {
    /// The kernel: `naive`, `flash`, `decode`, `probs` or `paged`.
    pub kernel: &'static str,
    /// The shape and mask, for example `q 6x70 kv 2x70 d64 causal`.
    pub case: String,
    pub dtype: DType,
    /// Largest `|gpu - cpu|` over the output.
    pub max_error: f64,
    /// Largest error allowed: `atol + rtol * |cpu|`, reported at `|cpu| = 1`.
    pub tolerance: f64,
    /// Whether every element was within `atol + rtol * |cpu|`.
    pub passed: bool,
}

impl fmt::Display for KernelCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<6} {:<4} {:<58} max error {:.2e} (allowed {:.0e}) {}",
            self.kernel,
            self.dtype,
            self.case,
            self.max_error,
            self.tolerance,
            if self.passed { "ok" } else { "FAILED" }
        )
    }
}

/// Sizes of one case: `q [1, q_heads, q_len, head_dim]`, K and V
/// `[1, kv_heads, kv_len, head_dim]`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
}

impl Dims {
    fn describe(&self, mask: &str) -> String {
        format!(
            "q {}x{} kv {}x{} d{} {mask}",
            self.q_heads, self.q_len, self.kv_heads, self.kv_len, self.head_dim
        )
    }
}

/// Inputs of one case, already rounded through the dtype as the upload rounds them.
struct Inputs {
    dims: Dims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Inputs {
    fn random(dims: Dims, dtype: DType, seed: u64) -> Self {
        let q_count = dims.q_heads * dims.q_len * dims.head_dim;
        let kv_count = dims.kv_heads * dims.kv_len * dims.head_dim;
        let mut rng = Lcg(seed);
        let mut draw =
            |count: usize| -> Vec<f32> { (0..count).map(|_| dtype.round(rng.uniform())).collect() };
        let q = draw(q_count);
        let k = draw(kv_count);
        let v = draw(kv_count);
        Self { dims, q, k, v }
    }

    fn upload(&self, ctx: &Context, dtype: DType) -> Result<(Tensor, Tensor, Tensor)> {
        let d = self.dims;
        let q = Tensor::from_f32(ctx, &self.q, &[1, d.q_heads, d.q_len, d.head_dim], dtype)?;
        let kv_shape = [1, d.kv_heads, d.kv_len, d.head_dim];
        let k = Tensor::from_f32(ctx, &self.k, &kv_shape, dtype)?;
        let v = Tensor::from_f32(ctx, &self.v, &kv_shape, dtype)?;
        Ok((q, k, v))
    }
}

/// Attention in f64: output `[q_heads, q_len, head_dim]`, per-row log-sum-exp and
/// probabilities `[q_heads, q_len, kv_len]`. Rows that see no key stay zero.
struct Reference {
    output: Vec<f64>,
    probs: Vec<f64>,
}

fn reference(inputs: &Inputs, mask: &Mask, scale: f64) -> Reference {
    let Dims {
        q_heads,
        kv_heads,
        q_len,
        kv_len,
        head_dim: d,
    } = inputs.dims;
    let group = q_heads / kv_heads;
    let mut output = vec![0.0; q_heads * q_len * d];
    let mut probs = vec![0.0; q_heads * q_len * kv_len];
    for h in 0..q_heads {
        let kv_base = (h / group) * kv_len * d;
        for i in 0..q_len {
            let row = h * q_len + i;
            let q_row = &inputs.q[row * d..][..d];
            let scores: Vec<Option<f64>> = (0..kv_len)
                .map(|j| {
                    mask.is_visible(i, j, q_len, kv_len).then(|| {
                        let k_row = &inputs.k[kv_base + j * d..][..d];
                        let dot: f64 = q_row
                            .iter()
                            .zip(k_row)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                        dot * scale
                    })
                })
                .collect();
            let max = scores
                .iter()
                .flatten()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                continue;
            }
            let sum: f64 = scores.iter().flatten().map(|s| (s - max).exp()).sum();
            for (j, score) in scores.iter().enumerate() {
                let Some(s) = score else { continue };
                let p = (s - max).exp() / sum;
                probs[row * kv_len + j] = p;
                let v_row = &inputs.v[kv_base + j * d..][..d];
                for (o, &x) in output[row * d..][..d].iter_mut().zip(v_row) {
                    *o += p * x as f64;
                }
            }
        }
    }
    Reference { output, probs }
}

/// Returns the relative and absolute tolerance of a dtype. f32 sums in another order
/// than the f64 reference. f16 rounds the output to an 11-bit mantissa, and the paged
/// and decode kernels round some intermediate values too.
fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-4, 1e-4),
        DType::F16 => (1e-2, 5e-3),
    }
}

fn compare(
    kernel: &'static str,
    case: String,
    dtype: DType,
    got: &[f32],
    want: &[f64],
) -> KernelCheck {
    let (rtol, atol) = tolerance(dtype);
    let mut max_error = if got.len() == want.len() {
        0.0
    } else {
        f64::INFINITY
    };
    let mut passed = got.len() == want.len();
    for (&g, &w) in got.iter().zip(want) {
        let error = (g as f64 - w).abs();
        // A NaN error fails too, and shows as the error.
        if error.is_nan() || error > atol + rtol * w.abs() {
            passed = false;
        }
        if error.is_nan() || error > max_error {
            max_error = error;
        }
    }
    KernelCheck {
        kernel,
        case,
        dtype,
        max_error,
        tolerance: atol + rtol,
        passed,
    }
}

/// One flash, naive or decode case: the kernel, the sizes and the mask.
struct Case {
    kernel: &'static str,
    dims: Dims,
    mask: Mask,
    mask_name: &'static str,
}

fn dims(q_heads: usize, kv_heads: usize, q_len: usize, kv_len: usize, head_dim: usize) -> Dims {
    Dims {
        q_heads,
        kv_heads,
        q_len,
        kv_len,
        head_dim,
    }
}

/// Returns the table of cases: every kernel, mask type and head size, GQA ratios 1, 3
/// and 8 (MQA), and lengths that are not tile multiples.
fn cases() -> Result<Vec<Case>> {
    let sparse = BlockSparseLayout::local_global_random(16, 96, 96, 1, 1, 1, 7)?;
    let case = |kernel, dims, mask, mask_name| Case {
        kernel,
        dims,
        mask,
        mask_name,
    };
    Ok(vec![
        case("naive", dims(2, 2, 37, 37, 64), Mask::causal(), "causal"),
        case("flash", dims(2, 2, 45, 70, 32), Mask::none(), "none"),
        case("flash", dims(6, 2, 70, 70, 64), Mask::causal(), "causal"),
        case(
            "flash",
            dims(8, 1, 20, 90, 80),
            Mask::causal(),
            "causal, kv > q",
        ),
        case(
            "flash",
            dims(3, 1, 100, 100, 96),
            Mask::causal_window(16).with_sinks(4),
            "window 16 + 4 sinks",
        ),
        case(
            "flash",
            dims(2, 2, 96, 96, 128),
            Mask::none().with_block_sparse(sparse),
            "block-sparse",
        ),
        case("decode", dims(8, 1, 1, 300, 64), Mask::causal(), "causal"),
        case(
            "decode",
            dims(6, 2, 3, 200, 32),
            Mask::causal_window(50),
            "window 50",
        ),
    ])
}

/// Runs every attention kernel on small random inputs and compares each result with
/// attention computed in f64 on the CPU. Returns one entry per kernel, case and dtype;
/// an `Err` means a kernel could not run at all (for example, the driver rejected it).
pub async fn attention_kernels(ctx: &Context) -> Result<Vec<KernelCheck>> {
    let mut dtypes = vec![DType::F32];
    if ctx.capabilities().shader_f16 {
        dtypes.push(DType::F16);
    }
    let mut checks = Vec::new();
    for dtype in dtypes {
        for (seed, case) in cases()?.into_iter().enumerate() {
            let inputs = Inputs::random(case.dims, dtype, seed as u64 + 1);
            let (q, k, v) = inputs.upload(ctx, dtype)?;
            let options = AttentionOptions::with_mask(case.mask.clone());
            let scale = options.scale_for(case.dims.head_dim) as f64;
            let want = reference(&inputs, &case.mask, scale);
            let out = match case.kernel {
                "naive" => naive_attention(ctx, &q, &k, &v, &options)?.output,
                "decode" => decode_attention(ctx, &q, &k, &v, &options)?,
                _ => flash_attention(ctx, &q, &k, &v, &options)?,
            };
            let got = out.to_vec(ctx).await?;
            let name = case.dims.describe(case.mask_name);
            checks.push(compare(case.kernel, name, dtype, &got, &want.output));
        }
        checks.push(probs_check(ctx, dtype).await?);
        checks.push(paged_check(ctx, dtype).await?);
    }
    Ok(checks)
}

/// Checks the probabilities recomputed for one head from the log-sum-exp that flash
/// attention writes against the softmax of the reference.
async fn probs_check(ctx: &Context, dtype: DType) -> Result<KernelCheck> {
    let dims = dims(4, 2, 50, 50, 64);
    let mask = Mask::causal();
    let inputs = Inputs::random(dims, dtype, 101);
    let (q, k, v) = inputs.upload(ctx, dtype)?;
    let options = AttentionOptions::with_mask(mask.clone());
    let (_, lse) = flash_attention_with_lse(ctx, &q, &k, &v, &options)?;
    let head = 3;
    let probs = attention_probs(ctx, &q, &k, &lse, &options, 0, head, 0..dims.q_len)?;
    let got = probs.to_vec(ctx).await?;
    let scale = options.scale_for(dims.head_dim) as f64;
    let want = reference(&inputs, &mask, scale).probs;
    let head_size = dims.q_len * dims.kv_len;
    let case = dims.describe("causal, head 3 from log-sum-exp");
    Ok(compare(
        "probs",
        case,
        dtype,
        &got,
        &want[head * head_size..][..head_size],
    ))
}

/// Checks paged decode through the KV cache, after a fork and a copy-on-write append,
/// against the reference over the child's keys.
async fn paged_check(ctx: &Context, dtype: DType) -> Result<KernelCheck> {
    let (kv_heads, head_dim, block_size) = (2, 64, 16);
    let (parent_len, child_extra, q_heads, q_len) = (150, 10, 6, 2);
    let total = parent_len + child_extra;
    let full = Inputs::random(dims(q_heads, kv_heads, q_len, total, head_dim), dtype, 202);

    let config = KvCacheConfig::new(1, kv_heads, head_dim, dtype, KvBudget::Tokens(512))
        .with_block_size(block_size);
    let mut cache = KvCache::new(ctx, config)?;
    let rows = |data: &[f32], range: std::ops::Range<usize>| -> Result<Tensor> {
        let mut part = Vec::with_capacity(kv_heads * range.len() * head_dim);
        for h in 0..kv_heads {
            part.extend_from_slice(
                &data[(h * total + range.start) * head_dim..][..range.len() * head_dim],
            );
        }
        Tensor::from_f32(ctx, &part, &[kv_heads, range.len(), head_dim], dtype)
    };
    let parent = cache.create(None)?;
    cache.append(
        parent,
        &[rows(&full.k, 0..parent_len)?],
        &[rows(&full.v, 0..parent_len)?],
    )?;
    let child = cache.fork(parent)?;
    // The child's first append lands in the parent's last, shared, partial block.
    cache.append(
        child,
        &[rows(&full.k, parent_len..total)?],
        &[rows(&full.v, parent_len..total)?],
    )?;
    // The parent then writes different rows into its own copy of that block.
    let other = Inputs::random(dims(1, kv_heads, 1, child_extra, head_dim), dtype, 203);
    let other_rows = Tensor::from_f32(ctx, &other.k, &[kv_heads, child_extra, head_dim], dtype)?;
    cache.append(
        parent,
        std::slice::from_ref(&other_rows),
        std::slice::from_ref(&other_rows),
    )?;

    let q = Tensor::from_f32(ctx, &full.q, &[1, q_heads, q_len, head_dim], dtype)?;
    let options = cache.attention_options();
    let (out, _) = cache.attention(child, 0, &q, &options)?;
    let got = out.to_vec(ctx).await?;
    let want = reference(&full, &Mask::causal(), options.scale as f64);
    let case = format!(
        "q {q_heads}x{q_len} kv {kv_heads}x{total} d{head_dim} causal, blocks of {block_size}, forked"
    );
    Ok(compare("paged", case, dtype, &got, &want.output))
}

/// A small linear congruential generator, so that every run and platform draws the same
/// inputs without a random-number dependency.
struct Lcg(u64);

impl Lcg {
    /// Returns a value uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_accepts_small_errors_and_rejects_large_ones() {
        let want = [1.0, -2.0, 0.5];
        let close = compare(
            "flash",
            "case".into(),
            DType::F32,
            &[1.00005, -2.0001, 0.5],
            &want,
        );
        assert!(close.passed, "{close}");
        let far = compare(
            "flash",
            "case".into(),
            DType::F32,
            &[1.0, -2.01, 0.5],
            &want,
        );
        assert!(!far.passed, "{far}");
        assert!((far.max_error - 0.01).abs() < 1e-6, "{far}");
    }

    #[test]
    fn compare_rejects_nan_and_wrong_lengths() {
        let nan = compare(
            "decode",
            "case".into(),
            DType::F16,
            &[f32::NAN, 0.0],
            &[0.0, 0.0],
        );
        assert!(!nan.passed);
        assert!(nan.max_error.is_nan());
        let short = compare("decode", "case".into(), DType::F16, &[0.0], &[0.0, 0.0]);
        assert!(!short.passed);
    }

    #[test]
    fn reference_rows_follow_the_mask() {
        let dims = dims(2, 1, 4, 6, 8);
        let inputs = Inputs::random(dims, DType::F32, 5);
        let causal_probs = reference(&inputs, &Mask::causal(), 0.35).probs;
        for row in causal_probs.chunks(6) {
            let sum: f64 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-12, "row sums to {sum}");
        }
        let windowed = reference(&inputs, &Mask::window(0, 0), 0.35);
        // A window of width 0 shows each row only the key at its own position, which is
        // the row index plus kv_len - q_len under bottom-right alignment.
        for (r, row) in windowed.probs.chunks(6).enumerate() {
            let position = r % 4 + 2;
            assert_eq!(row[position], 1.0, "row {r}");
        }
    }
}
