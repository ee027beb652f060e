//! CPU reference implementations in f64.

/// `a [m, k] * b [k, n]`, or `a * b^T` with `b [n, k]` when `transpose_b`.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, transpose_b: bool) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f64;
            for p in 0..k {
                let bv = if transpose_b {
                    b[j * k + p]
                } else {
                    b[p * n + j]
                };
                sum += a[i * k + p] as f64 * bv as f64;
            }
            c[i * n + j] = sum;
        }
    }
    c
}

/// Softmax of `scale * x` along rows of length `cols`; entries at or below -1e30 are
/// masked and fully masked rows are zeros.
pub fn softmax(x: &[f32], cols: usize, scale: f64) -> Vec<f64> {
    let mut out = vec![0.0f64; x.len()];
    for (row_in, row_out) in x.chunks(cols).zip(out.chunks_mut(cols)) {
        let scaled: Vec<f64> = row_in.iter().map(|&v| v as f64 * scale).collect();
        let max = scaled
            .iter()
            .copied()
            .filter(|&v| v > -1e30)
            .fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            continue;
        }
        let sum: f64 = scaled
            .iter()
            .filter(|&&v| v > -1e30)
            .map(|&v| (v - max).exp())
            .sum();
        for (o, &v) in row_out.iter_mut().zip(&scaled) {
            *o = if v > -1e30 {
                (v - max).exp() / sum
            } else {
                0.0
            };
        }
    }
    out
}

/// RMSNorm along rows of length `cols`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f64) -> Vec<f64> {
    let cols = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let mean_sq = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        out.extend(
            row.iter()
                .zip(weight)
                .map(|(&v, &w)| v as f64 * inv * w as f64),
        );
    }
    out
}

/// SiLU: `x * sigmoid(x)`.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Sizes of an attention problem: `q [batch, q_heads, q_len, head_dim]`, `k` and `v`
/// `[batch, kv_heads, kv_len, head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

/// Attention computed in f64: output `[batch, q_heads, q_len, head_dim]`, per-row
/// log-sum-exp `[batch, q_heads, q_len]` (-inf for rows that see no key) and
/// probabilities `[batch, q_heads, q_len, kv_len]`.
pub struct AttentionReference {
    pub output: Vec<f64>,
    pub lse: Vec<f64>,
    pub probs: Vec<f64>,
}

/// Computes attention on the CPU with the mask rules of `focal::attention::Mask`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: AttentionDims,
    mask: &focal::attention::Mask,
    scale: f64,
) -> AttentionReference {
    let AttentionDims {
        batch,
        q_heads,
        kv_heads,
        q_len,
        kv_len,
        head_dim: d,
    } = dims;
    let group = q_heads / kv_heads;
    let rows = batch * q_heads * q_len;
    let mut output = vec![0.0f64; rows * d];
    let mut lse = vec![f64::NEG_INFINITY; rows];
    let mut probs = vec![0.0f64; rows * kv_len];
    let mut scores = vec![0.0f64; kv_len];
    for b in 0..batch {
        for h in 0..q_heads {
            let kv_base = (b * kv_heads + h / group) * kv_len * d;
            for i in 0..q_len {
                let row = (b * q_heads + h) * q_len + i;
                let q_row = &q[row * d..][..d];
                let mut max = f64::NEG_INFINITY;
                for (j, score) in scores.iter_mut().enumerate() {
                    *score = f64::NEG_INFINITY;
                    if mask.is_visible(i, j, q_len, kv_len) {
                        let k_row = &k[kv_base + j * d..][..d];
                        let dot: f64 = q_row
                            .iter()
                            .zip(k_row)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                        *score = dot * scale;
                        max = max.max(*score);
                    }
                }
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let sum: f64 = scores.iter().map(|&s| (s - max).exp()).sum();
                lse[row] = max + sum.ln();
                for (j, &s) in scores.iter().enumerate() {
                    let p = (s - max).exp() / sum;
                    probs[row * kv_len + j] = p;
                    let v_row = &v[kv_base + j * d..][..d];
                    for (o, &x) in output[row * d..][..d].iter_mut().zip(v_row) {
                        *o += p * x as f64;
                    }
                }
            }
        }
    }
    AttentionReference { output, lse, probs }
}
