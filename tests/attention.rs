//! Attention kernels (naive, flash prefill, split-K decode and probabilities recomputed
//! from the log-sum-exp) against the f64 CPU reference, on the real adapter.
//!
//! Tolerances: f32 outputs within 1e-4 relative plus 2e-5 absolute; f16 outputs within
//! 1e-2 relative plus 4e-3 absolute, because inputs and outputs are rounded to 11-bit
//! mantissas while the arithmetic stays f32. The reference sees the rounded inputs.

use std::sync::OnceLock;

use focal::attention::{
    self, AttentionOptions, BlockSparseLayout, Mask, Window, SUPPORTED_HEAD_DIMS,
};
use focal::{Context, ContextOptions, DType, Error, Tensor};
use focal_tests::reference::{self, AttentionDims};
use focal_tests::{assert_close, gpu, random_vec};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Naive,
    Flash,
    Decode,
}

fn dims(
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
) -> AttentionDims {
    AttentionDims {
        batch: 1,
        q_heads,
        kv_heads,
        q_len,
        kv_len,
        head_dim,
    }
}

fn rounded(data: Vec<f32>, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => data,
        DType::F16 => data
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect(),
    }
}

fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-4, 2e-5),
        DType::F16 => (1e-2, 4e-3),
    }
}

/// Returns a context opened without the SUBGROUP feature, so kernels pick their plain
/// variants as they do in the browser.
fn plain_gpu() -> Option<Context> {
    gpu()?;
    static PLAIN: OnceLock<Context> = OnceLock::new();
    let ctx = PLAIN.get_or_init(|| {
        Context::with_options_blocking(&ContextOptions {
            subgroups: false,
            ..ContextOptions::default()
        })
        .expect("the adapter opened once already")
    });
    assert!(!ctx.capabilities().subgroups);
    Some(ctx.clone())
}

/// Returns true when the adapter has shader-f16, printing why f16 cases are skipped
/// otherwise.
fn has_f16(ctx: &Context) -> bool {
    let ok = ctx.capabilities().shader_f16;
    if !ok {
        eprintln!("adapter has no shader-f16: f16 cases are not run");
    }
    ok
}

/// Inputs of one case: q, k and v already rounded through the dtype.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn inputs(d: AttentionDims, dtype: DType, seed: u64) -> Inputs {
    let q_count = d.batch * d.q_heads * d.q_len * d.head_dim;
    let kv_count = d.batch * d.kv_heads * d.kv_len * d.head_dim;
    // Doubling q sharpens the softmax, so a wrong mask or max shows up clearly.
    let q = random_vec(q_count, seed).iter().map(|x| x * 2.0).collect();
    Inputs {
        q: rounded(q, dtype),
        k: rounded(random_vec(kv_count, seed + 1), dtype),
        v: rounded(random_vec(kv_count, seed + 2), dtype),
    }
}

fn upload(ctx: &Context, x: &Inputs, d: AttentionDims, dtype: DType) -> [Tensor; 3] {
    let q_shape = [d.batch, d.q_heads, d.q_len, d.head_dim];
    let kv_shape = [d.batch, d.kv_heads, d.kv_len, d.head_dim];
    [
        Tensor::from_f32(ctx, &x.q, &q_shape, dtype).unwrap(),
        Tensor::from_f32(ctx, &x.k, &kv_shape, dtype).unwrap(),
        Tensor::from_f32(ctx, &x.v, &kv_shape, dtype).unwrap(),
    ]
}

/// Runs `kernel` and returns its output and log-sum-exp (the naive kernel returns its
/// probabilities in place of the log-sum-exp).
fn run(
    ctx: &Context,
    kernel: Kernel,
    tensors: &[Tensor; 3],
    options: &AttentionOptions,
) -> (Vec<f32>, Vec<f32>) {
    let [q, k, v] = tensors;
    let (out, second) = match kernel {
        Kernel::Naive => {
            let naive = attention::naive_attention(ctx, q, k, v, options).unwrap();
            (naive.output, naive.probs)
        }
        Kernel::Flash => attention::flash_attention_with_lse(ctx, q, k, v, options).unwrap(),
        Kernel::Decode => {
            let shape = attention::AttentionShape::of(q, k, v).unwrap();
            let out = Tensor::zeros(ctx, &shape.output_shape(), q.dtype()).unwrap();
            let lse = Tensor::zeros(ctx, &shape.lse_shape(), DType::F32).unwrap();
            let mut encoder = ctx.encoder();
            attention::decode_attention_into(ctx, &mut encoder, q, k, v, options, &out, Some(&lse))
                .unwrap();
            ctx.submit(encoder);
            (out, lse)
        }
    };
    (
        out.to_vec_blocking(ctx).unwrap(),
        second.to_vec_blocking(ctx).unwrap(),
    )
}

/// Checks `kernel` against the reference for one case.
fn check(ctx: &Context, kernel: Kernel, d: AttentionDims, mask: &Mask, dtype: DType, seed: u64) {
    let x = inputs(d, dtype, seed);
    let tensors = upload(ctx, &x, d, dtype);
    let options = AttentionOptions::with_mask(mask.clone());
    let scale = options.scale_for(d.head_dim) as f64;
    let want = reference::attention(&x.q, &x.k, &x.v, d, mask, scale);
    let (out, second) = run(ctx, kernel, &tensors, &options);
    let label = format!("{kernel:?} {dtype} {d:?} {mask:?}");
    let (rtol, atol) = tolerance(dtype);
    assert_close(&format!("{label} output"), &out, &want.output, rtol, atol);
    match kernel {
        Kernel::Naive => {
            assert_close(&format!("{label} probs"), &second, &want.probs, 1e-4, 1e-6);
        }
        Kernel::Flash | Kernel::Decode => check_lse(&label, &second, &want.lse),
    }
}

/// Compares log-sum-exps, requiring -inf exactly where the reference has it.
#[track_caller]
fn check_lse(label: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{label}: lse length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w == f64::NEG_INFINITY {
            assert_eq!(
                g,
                f32::NEG_INFINITY,
                "{label}: lse {i} of a fully masked row"
            );
        } else {
            let err = (g as f64 - w).abs();
            assert!(
                err <= 1e-4 * (1.0 + w.abs()),
                "{label}: lse {i} is {g}, expected {w}"
            );
        }
    }
}

/// Shapes every kernel must handle: q_len 1, lengths that are not tile multiples,
/// kv_len > q_len, every supported head size and the GQA ratios 1, 3, 8 and MQA.
fn shape_table() -> Vec<(AttentionDims, Mask)> {
    vec![
        (dims(2, 2, 1, 1, 64), Mask::none()),
        (dims(2, 2, 1, 37, 32), Mask::causal()),
        (dims(3, 1, 19, 19, 80), Mask::causal()),
        (dims(6, 2, 33, 70, 96), Mask::causal()),
        (dims(2, 2, 70, 70, 128), Mask::none()),
        (dims(8, 1, 5, 40, 64), Mask::none()),
        (dims(16, 2, 3, 65, 64), Mask::causal()),
        (dims(4, 4, 45, 130, 64), Mask::causal()),
        (
            AttentionDims {
                batch: 2,
                ..dims(3, 3, 17, 23, 32)
            },
            Mask::causal(),
        ),
    ]
}

/// Masks on one shape with kv_len > q_len: window, two-sided window, sinks and two
/// block-sparse layouts.
fn mask_table() -> Vec<(AttentionDims, Mask)> {
    let d = dims(2, 1, 40, 72, 64);
    let bigbird = BlockSparseLayout::local_global_random(8, 40, 72, 1, 1, 1, 7).unwrap();
    let mut user = vec![false; 5 * 9];
    for (b, c) in [(0, 0), (0, 4), (1, 8), (2, 2), (2, 3), (4, 0), (4, 8)] {
        user[b * 9 + c] = true;
    }
    let user = BlockSparseLayout::from_block_mask(8, 5, 9, &user).unwrap();
    vec![
        (d, Mask::causal_window(9)),
        (d, Mask::window(6, 3)),
        (d, Mask::causal_window(5).with_sinks(3)),
        (d, Mask::causal().with_block_sparse(bigbird)),
        (d, Mask::none().with_block_sparse(user)),
    ]
}

fn check_table(ctx: &Context, kernel: Kernel, table: &[(AttentionDims, Mask)], dtype: DType) {
    for (index, (d, mask)) in table.iter().enumerate() {
        check(ctx, kernel, *d, mask, dtype, 10 * index as u64);
    }
}

#[test]
fn flash_f32_shape_table() {
    let Some(ctx) = gpu() else { return };
    check_table(&ctx, Kernel::Flash, &shape_table(), DType::F32);
}

#[test]
fn flash_f16_shape_table() {
    let Some(ctx) = gpu() else { return };
    if has_f16(&ctx) {
        check_table(&ctx, Kernel::Flash, &shape_table(), DType::F16);
    }
}

#[test]
fn flash_f32_masks() {
    let Some(ctx) = gpu() else { return };
    check_table(&ctx, Kernel::Flash, &mask_table(), DType::F32);
}

#[test]
fn flash_f16_masks() {
    let Some(ctx) = gpu() else { return };
    if has_f16(&ctx) {
        check_table(&ctx, Kernel::Flash, &mask_table(), DType::F16);
    }
}

#[test]
fn flash_every_head_dim() {
    let Some(ctx) = gpu() else { return };
    for &head_dim in SUPPORTED_HEAD_DIMS {
        check(
            &ctx,
            Kernel::Flash,
            dims(2, 1, 20, 29, head_dim),
            &Mask::causal(),
            DType::F32,
            3,
        );
    }
}

#[test]
fn flash_gqa_ratios() {
    let Some(ctx) = gpu() else { return };
    for (q_heads, kv_heads) in [(2, 2), (6, 2), (16, 2), (5, 1)] {
        let d = dims(q_heads, kv_heads, 9, 21, 32);
        check(&ctx, Kernel::Flash, d, &Mask::causal(), DType::F32, 4);
    }
}

#[test]
fn flash_long_window_skips_tiles() {
    let Some(ctx) = gpu() else { return };
    // A window much shorter than the sequence, with sinks: tiles between the sinks and
    // the window are skipped, and the result must not change.
    let d = dims(1, 1, 200, 200, 32);
    check(
        &ctx,
        Kernel::Flash,
        d,
        &Mask::causal_window(20).with_sinks(5),
        DType::F32,
        5,
    );
}

#[test]
fn decode_f32_plain_shape_table() {
    let Some(ctx) = plain_gpu() else { return };
    check_table(&ctx, Kernel::Decode, &decode_table(), DType::F32);
}

#[test]
fn decode_f32_subgroup_shape_table() {
    let Some(ctx) = gpu() else { return };
    if !ctx.capabilities().subgroups {
        eprintln!("adapter has no subgroups: the subgroup decode variant is not run");
        return;
    }
    check_table(&ctx, Kernel::Decode, &decode_table(), DType::F32);
}

#[test]
fn decode_f16_shape_table() {
    let Some(ctx) = gpu() else { return };
    if has_f16(&ctx) {
        check_table(&ctx, Kernel::Decode, &decode_table(), DType::F16);
    }
}

#[test]
fn decode_f16_plain_shape_table() {
    let Some(ctx) = plain_gpu() else { return };
    if has_f16(&ctx) {
        check_table(&ctx, Kernel::Decode, &decode_table(), DType::F16);
    }
}

#[test]
fn decode_f32_masks() {
    let Some(ctx) = gpu() else { return };
    check_table(&ctx, Kernel::Decode, &mask_table(), DType::F32);
}

#[test]
fn decode_f32_plain_masks() {
    let Some(ctx) = plain_gpu() else { return };
    check_table(&ctx, Kernel::Decode, &mask_table(), DType::F32);
}

/// Decode shapes: one to three query rows over contexts longer than one chunk.
fn decode_table() -> Vec<(AttentionDims, Mask)> {
    vec![
        (dims(2, 2, 1, 1, 64), Mask::none()),
        (dims(3, 1, 1, 300, 64), Mask::causal()),
        (dims(8, 1, 1, 700, 32), Mask::causal()),
        (dims(6, 2, 2, 517, 80), Mask::causal()),
        (dims(2, 2, 3, 260, 96), Mask::causal()),
        (dims(2, 1, 1, 130, 128), Mask::none()),
        (
            dims(2, 2, 1, 600, 64),
            Mask::causal_window(100).with_sinks(4),
        ),
    ]
}

#[test]
fn decode_explicit_splits_agree() {
    let Some(ctx) = gpu() else { return };
    let d = dims(3, 1, 1, 333, 64);
    let x = inputs(d, DType::F32, 11);
    let tensors = upload(&ctx, &x, d, DType::F32);
    let want = reference::attention(&x.q, &x.k, &x.v, d, &Mask::causal(), 0.125);
    for splits in [1, 2, 5, 333, 1000] {
        let options = AttentionOptions {
            kv_splits: Some(splits),
            ..AttentionOptions::with_mask(Mask::causal())
        };
        let (out, lse) = run(&ctx, Kernel::Decode, &tensors, &options);
        assert_close(&format!("{splits} splits"), &out, &want.output, 1e-4, 2e-5);
        check_lse(&format!("{splits} splits"), &lse, &want.lse);
    }
}

#[test]
fn naive_f32_shape_table() {
    let Some(ctx) = gpu() else { return };
    check_table(&ctx, Kernel::Naive, &shape_table(), DType::F32);
}

#[test]
fn naive_f16_shape_table() {
    let Some(ctx) = gpu() else { return };
    if has_f16(&ctx) {
        check_table(&ctx, Kernel::Naive, &shape_table(), DType::F16);
    }
}

#[test]
fn naive_f32_masks() {
    let Some(ctx) = gpu() else { return };
    check_table(&ctx, Kernel::Naive, &mask_table(), DType::F32);
}

#[test]
fn naive_plain_softmax_variant() {
    let Some(ctx) = plain_gpu() else { return };
    check_table(&ctx, Kernel::Naive, &mask_table()[..2], DType::F32);
}

#[test]
fn kernels_agree_with_each_other() {
    let Some(ctx) = gpu() else { return };
    for (d, mask) in [
        (dims(4, 2, 2, 90, 64), Mask::causal()),
        (dims(3, 3, 1, 50, 32), Mask::causal_window(12).with_sinks(2)),
    ] {
        let x = inputs(d, DType::F32, 21);
        let tensors = upload(&ctx, &x, d, DType::F32);
        let options = AttentionOptions::with_mask(mask);
        let (naive, _) = run(&ctx, Kernel::Naive, &tensors, &options);
        let (flash, flash_lse) = run(&ctx, Kernel::Flash, &tensors, &options);
        let (decode, decode_lse) = run(&ctx, Kernel::Decode, &tensors, &options);
        let naive: Vec<f64> = naive.iter().map(|&x| x as f64).collect();
        assert_close("flash vs naive", &flash, &naive, 1e-4, 2e-5);
        assert_close("decode vs naive", &decode, &naive, 1e-4, 2e-5);
        let flash_lse: Vec<f64> = flash_lse.iter().map(|&x| x as f64).collect();
        assert_close(
            "decode lse vs flash lse",
            &decode_lse,
            &flash_lse,
            1e-5,
            1e-5,
        );
    }
}

/// Recomputes probabilities from the flash log-sum-exp and compares them with the
/// naive kernel's and with the reference, row sums included.
fn check_probs(ctx: &Context, d: AttentionDims, mask: Mask, dtype: DType) {
    let x = inputs(d, dtype, 31);
    let tensors = upload(ctx, &x, d, dtype);
    let [q, k, v] = &tensors;
    let options = AttentionOptions::with_mask(mask.clone());
    let (_, lse) = attention::flash_attention_with_lse(ctx, q, k, v, &options).unwrap();
    let naive = attention::naive_attention(ctx, q, k, v, &options).unwrap();
    let naive_probs = naive.probs.to_vec_blocking(ctx).unwrap();
    let scale = options.scale_for(d.head_dim) as f64;
    let want = reference::attention(&x.q, &x.k, &x.v, d, &mask, scale);
    let (head, rows) = (d.q_heads - 1, 1..d.q_len);
    let got = attention::attention_probs(ctx, q, k, &lse, &options, 0, head, rows.clone())
        .unwrap()
        .to_vec_blocking(ctx)
        .unwrap();
    let first = (head * d.q_len + rows.start) * d.kv_len;
    let span = first..first + rows.len() * d.kv_len;
    let label = format!("probs {dtype} {d:?} {mask:?}");
    let naive_rows: Vec<f64> = naive_probs[span.clone()]
        .iter()
        .map(|&p| p as f64)
        .collect();
    assert_close(&format!("{label} vs naive"), &got, &naive_rows, 1e-4, 1e-6);
    assert_close(
        &format!("{label} vs reference"),
        &got,
        &want.probs[span],
        1e-4,
        1e-6,
    );
    for (r, row) in got.chunks(d.kv_len).enumerate() {
        let sum: f64 = row.iter().map(|&p| p as f64).sum();
        let expected = if want.lse[head * d.q_len + rows.start + r].is_finite() {
            1.0
        } else {
            0.0
        };
        assert!(
            (sum - expected).abs() < 1e-4,
            "{label}: row {r} sums to {sum}"
        );
    }
}

#[test]
fn probs_from_lse_f32() {
    let Some(ctx) = gpu() else { return };
    check_probs(&ctx, dims(3, 1, 24, 40, 64), Mask::causal(), DType::F32);
    check_probs(&ctx, dims(2, 2, 12, 12, 128), Mask::none(), DType::F32);
}

#[test]
fn probs_from_lse_f16() {
    let Some(ctx) = gpu() else { return };
    if has_f16(&ctx) {
        check_probs(&ctx, dims(3, 1, 24, 40, 64), Mask::causal(), DType::F16);
    }
}

#[test]
fn probs_from_lse_masks() {
    let Some(ctx) = gpu() else { return };
    for (d, mask) in mask_table() {
        check_probs(&ctx, d, mask, DType::F32);
    }
}

#[test]
fn fully_masked_rows_are_zero() {
    let Some(ctx) = gpu() else { return };
    // With q_len > kv_len and a causal mask, the first rows sit before key 0.
    check(
        &ctx,
        Kernel::Flash,
        dims(2, 1, 20, 6, 32),
        &Mask::causal(),
        DType::F32,
        41,
    );
    check(
        &ctx,
        Kernel::Decode,
        dims(2, 1, 3, 1, 32),
        &Mask::causal(),
        DType::F32,
        41,
    );
    check(
        &ctx,
        Kernel::Naive,
        dims(2, 1, 20, 6, 32),
        &Mask::causal(),
        DType::F32,
        41,
    );
    // A block-sparse layout whose first query block lists no key block.
    let layout = BlockSparseLayout::from_lists(8, 2, &[vec![], vec![0, 1]]).unwrap();
    let mask = Mask::none().with_block_sparse(layout);
    for kernel in [Kernel::Flash, Kernel::Decode, Kernel::Naive] {
        check(&ctx, kernel, dims(1, 1, 16, 16, 64), &mask, DType::F32, 42);
    }
}

#[test]
fn extreme_logits_stay_finite() {
    let Some(ctx) = gpu() else { return };
    // Scores of +-1e4: one key per row dominates, so each output row is that key's value.
    let d = dims(1, 1, 4, 8, 32);
    let mut q = vec![0.0f32; 4 * 32];
    let mut k = vec![0.0f32; 8 * 32];
    let v: Vec<f32> = (0..8 * 32).map(|i| (i / 32) as f32).collect();
    for i in 0..4 {
        q[i * 32] = 100.0;
        q[i * 32 + 1] = -100.0;
    }
    for j in 0..8 {
        // Key 2 scores +1e4 for every row, the others -1e4 or 0.
        k[j * 32] = if j == 2 {
            100.0
        } else {
            -100.0 * (j % 2) as f32
        };
    }
    let x = Inputs { q, k, v };
    let tensors = upload(&ctx, &x, d, DType::F32);
    let options = AttentionOptions {
        scale: Some(1.0),
        ..AttentionOptions::default()
    };
    for kernel in [Kernel::Naive, Kernel::Flash, Kernel::Decode] {
        let (out, _) = run(&ctx, kernel, &tensors, &options);
        assert!(out.iter().all(|x| x.is_finite()), "{kernel:?}: {out:?}");
        assert!(out.iter().all(|&x| x == 2.0), "{kernel:?}: {out:?}");
    }
}

fn zeros(ctx: &Context, shape: &[usize]) -> Tensor {
    Tensor::zeros(ctx, shape, DType::F32).unwrap()
}

#[test]
fn rejects_mismatched_shapes() {
    let Some(ctx) = gpu() else { return };
    let q = zeros(&ctx, &[1, 4, 8, 64]);
    let k = zeros(&ctx, &[1, 2, 8, 64]);
    let options = AttentionOptions::default();

    let v_short = zeros(&ctx, &[1, 2, 7, 64]);
    let err = attention::flash_attention(&ctx, &q, &k, &v_short, &options).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("[1, 2, 7, 64]"), "{err}");

    let k_wide = zeros(&ctx, &[1, 2, 8, 32]);
    let err = attention::flash_attention(&ctx, &q, &k_wide, &k_wide, &options).unwrap_err();
    assert!(err.to_string().contains("head_dim 64"), "{err}");

    let k_batch = zeros(&ctx, &[2, 2, 8, 64]);
    let err = attention::decode_attention(&ctx, &q, &k_batch, &k_batch, &options).unwrap_err();
    assert!(err.to_string().contains("batch 2"), "{err}");

    let three_axes = zeros(&ctx, &[4, 8, 64]);
    let err = attention::naive_attention(&ctx, &three_axes, &k, &k, &options).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");

    let out = zeros(&ctx, &[1, 4, 8, 32]);
    let mut encoder = ctx.encoder();
    let err = attention::flash_attention_into(&ctx, &mut encoder, &q, &k, &k, &options, &out, None)
        .unwrap_err();
    assert!(err.to_string().contains("expected [1, 4, 8, 64]"), "{err}");

    let out = zeros(&ctx, &[1, 4, 8, 64]);
    let lse = zeros(&ctx, &[1, 4, 9]);
    let err = attention::decode_attention_into(
        &ctx,
        &mut encoder,
        &q,
        &k,
        &k,
        &options,
        &out,
        Some(&lse),
    )
    .unwrap_err();
    assert!(err.to_string().contains("expected [1, 4, 8]"), "{err}");
}

#[test]
fn rejects_dtype_mismatch() {
    let Some(ctx) = gpu() else { return };
    if !has_f16(&ctx) {
        return;
    }
    let q = zeros(&ctx, &[1, 1, 4, 32]);
    let k = Tensor::zeros(&ctx, &[1, 1, 4, 32], DType::F16).unwrap();
    let err =
        attention::flash_attention(&ctx, &q, &k, &k, &AttentionOptions::default()).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
}

#[test]
fn rejects_bad_head_grouping() {
    let Some(ctx) = gpu() else { return };
    let q = zeros(&ctx, &[1, 5, 4, 32]);
    let k = zeros(&ctx, &[1, 2, 4, 32]);
    let err =
        attention::flash_attention(&ctx, &q, &k, &k, &AttentionOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::HeadGrouping {
                q_heads: 5,
                kv_heads: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_unsupported_head_dim() {
    let Some(ctx) = gpu() else { return };
    let q = zeros(&ctx, &[1, 1, 4, 48]);
    for result in [
        attention::flash_attention(&ctx, &q, &q, &q, &AttentionOptions::default()).map(|_| ()),
        attention::decode_attention(&ctx, &q, &q, &q, &AttentionOptions::default()).map(|_| ()),
        attention::naive_attention(&ctx, &q, &q, &q, &AttentionOptions::default()).map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedHeadDim { head_dim: 48, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("[32, 64, 80, 96, 128]"), "{err}");
    }
}

#[test]
fn rejects_masks_that_do_not_fit() {
    let Some(ctx) = gpu() else { return };
    let q = zeros(&ctx, &[1, 1, 20, 32]);
    let k = zeros(&ctx, &[1, 1, 30, 32]);

    // The layout is built for 16 x 24 tokens, not 20 x 30.
    let layout = BlockSparseLayout::local_global(8, 16, 24, 1, 0).unwrap();
    let options = AttentionOptions::with_mask(Mask::causal().with_block_sparse(layout));
    let err = attention::flash_attention(&ctx, &q, &k, &k, &options).unwrap_err();
    assert!(matches!(err, Error::MaskMismatch { .. }), "{err}");
    assert!(err.to_string().contains("need 3 x 4"), "{err}");

    let options = AttentionOptions::with_mask(Mask::causal().with_sinks(4));
    let err = attention::decode_attention(&ctx, &q, &k, &k, &options).unwrap_err();
    assert!(err.to_string().contains("without a window"), "{err}");

    let options = AttentionOptions::with_mask(Mask::causal_window(4).with_sinks(31));
    let err = attention::flash_attention(&ctx, &q, &k, &k, &options).unwrap_err();
    assert!(err.to_string().contains("exceed kv_len 30"), "{err}");

    let err = BlockSparseLayout::from_lists(12, 2, &[vec![0]]).unwrap_err();
    assert!(err.to_string().contains("block_size 12"), "{err}");
    let err = BlockSparseLayout::from_lists(8, 2, &[vec![2]]).unwrap_err();
    assert!(err.to_string().contains("key block 2"), "{err}");
    let err = BlockSparseLayout::from_block_mask(8, 2, 2, &[true; 3]).unwrap_err();
    assert!(err.to_string().contains("3 entries"), "{err}");

    let options = AttentionOptions {
        kv_splits: Some(0),
        ..AttentionOptions::default()
    };
    let err = attention::decode_attention(&ctx, &q, &k, &k, &options).unwrap_err();
    assert!(err.to_string().contains("kv_splits"), "{err}");
}

#[test]
fn naive_rejects_oversized_scores() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx.limits().max_storage_buffer_binding_size;
    // q_heads * q_len * kv_len * 4 bytes just above the limit, with tiny q and k.
    let kv_len = 256usize;
    let q_len = (limit / (4 * kv_len as u64) + 1) as usize;
    let q = zeros(&ctx, &[1, 1, q_len.min(1 << 20), 32]);
    let k = zeros(&ctx, &[1, 1, kv_len, 32]);
    if q.shape()[2] != q_len {
        eprintln!("binding limit {limit} is too large to exceed cheaply; case not run");
        return;
    }
    let err =
        attention::naive_attention(&ctx, &q, &k, &k, &AttentionOptions::default()).unwrap_err();
    assert!(matches!(err, Error::BufferTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("score matrix"), "{err}");
    assert!(err.to_string().contains(&limit.to_string()), "{err}");
}

#[test]
fn rejects_bad_probability_rows() {
    let Some(ctx) = gpu() else { return };
    let q = zeros(&ctx, &[1, 2, 8, 32]);
    let lse = zeros(&ctx, &[1, 2, 8]);
    let options = AttentionOptions::default();
    let err = attention::attention_probs(&ctx, &q, &q, &lse, &options, 0, 2, 0..1).unwrap_err();
    assert!(err.to_string().contains("q_heads 2"), "{err}");
    let err = attention::attention_probs(&ctx, &q, &q, &lse, &options, 0, 0, 4..9).unwrap_err();
    assert!(err.to_string().contains("q_len 8"), "{err}");
    let err = attention::attention_probs(&ctx, &q, &q, &lse, &options, 1, 0, 0..1).unwrap_err();
    assert!(err.to_string().contains("batch size 1"), "{err}");
}

#[test]
fn flash_tiles_follow_limits() {
    let mut limits = wgpu::Limits::downlevel_defaults();
    for &head_dim in SUPPORTED_HEAD_DIMS {
        let tiles = attention::flash_tiles(&limits, head_dim).unwrap();
        assert!(tiles.workgroup_bytes(head_dim) <= limits.max_compute_workgroup_storage_size);
        assert!(tiles.block_q <= limits.max_compute_invocations_per_workgroup);
    }
    limits.max_compute_workgroup_storage_size = 1024;
    let err = attention::flash_tiles(&limits, 128).unwrap_err();
    assert!(
        matches!(err, Error::WorkgroupMemory { limit: 1024, .. }),
        "{err}"
    );
}

#[test]
fn mask_window_semantics() {
    // Bottom-right alignment: with q_len 2 and kv_len 5, row 0 sits at position 3.
    let causal = Mask::causal();
    assert!(causal.is_visible(0, 3, 2, 5));
    assert!(!causal.is_visible(0, 4, 2, 5));
    let window = Mask::causal_window(2).with_sinks(1);
    let visible: Vec<usize> = (0..5).filter(|&j| window.is_visible(1, j, 2, 5)).collect();
    assert_eq!(visible, [0, 3, 4]);
    assert_eq!(
        Mask::window(1, 2).window,
        Some(Window { left: 1, right: 2 })
    );
}

#[test]
fn self_check_passes_on_this_adapter() {
    let Some(ctx) = gpu() else { return };
    let checks = pollster::block_on(focal::check::attention_kernels(&ctx)).unwrap();
    let kernels: std::collections::BTreeSet<&str> = checks.iter().map(|c| c.kernel).collect();
    let expected = ["decode", "flash", "naive", "paged", "probs"];
    assert_eq!(kernels.into_iter().collect::<Vec<_>>(), expected);
    for check in &checks {
        assert!(check.passed, "{check}");
    }
}
