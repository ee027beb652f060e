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
