//! Matmul, softmax, RMSNorm and elementwise kernels against the f64 CPU reference,
//! in f32 and (where the adapter has shader-f16) f16.
//!
//! Tolerances: f32 results are within 1e-4 relative plus a small absolute term scaled
//! by the reduction length. f16 results are within 1e-2 relative, because inputs and
//! outputs are rounded to 11-bit mantissas while accumulation stays f32.

use focal::kernels;
use focal::{DType, Error, Tensor};
use focal_tests::{assert_close, gpu, random_vec, reference};

fn dtypes(ctx: &focal::Context) -> Vec<DType> {
    if ctx.capabilities().shader_f16 {
        vec![DType::F32, DType::F16]
    } else {
        eprintln!("adapter has no shader-f16: f16 cases are not run");
        vec![DType::F32]
    }
}

/// Rounds data through the dtype, as uploading does, so the reference sees the same inputs.
fn rounded(data: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => data.to_vec(),
        DType::F16 => data
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect(),
    }
}

fn tolerance(dtype: DType, reduction: usize) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-4, 1e-6 * (reduction as f64).sqrt()),
        DType::F16 => (1e-2, 2e-3 * (reduction as f64).sqrt()),
    }
}

#[test]
fn matmul_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let shapes = [
        (1, 1, 1),
        (1, 7, 5),
        (3, 1, 9),
        (17, 33, 65),
        (64, 64, 64),
        (65, 63, 31),
        (1, 576, 1536),
        (128, 100, 1000),
        (1000, 37, 3),
    ];
    for dtype in dtypes(&ctx) {
        for (index, &(m, k, n)) in shapes.iter().enumerate() {
            for transpose_b in [false, true] {
                let a = rounded(&random_vec(m * k, index as u64), dtype);
                let b = rounded(&random_vec(k * n, 100 + index as u64), dtype);
                let b_shape = if transpose_b { [n, k] } else { [k, n] };
                let ta = Tensor::from_f32(&ctx, &a, &[m, k], dtype).unwrap();
                let tb = Tensor::from_f32(&ctx, &b, &b_shape, dtype).unwrap();
                let out = kernels::matmul(&ctx, &ta, &tb, transpose_b).unwrap();
                assert_eq!(out.shape(), [m, n]);
                let got = out.to_vec_blocking(&ctx).unwrap();
                let want = reference::matmul(&a, &b, m, k, n, transpose_b);
                let (rtol, atol) = tolerance(dtype, k);
                let label = format!("matmul {m}x{k}x{n} {dtype} transpose_b={transpose_b}");
                assert_close(&label, &got, &want, rtol, atol);
            }
        }
    }
}

#[test]
fn matmul_batched_and_broadcast() {
    let Some(ctx) = gpu() else { return };
    let (batch, m, k, n) = (3, 5, 19, 7);
    let a = random_vec(batch * m * k, 1);
    let b = random_vec(batch * k * n, 2);
    let ta = Tensor::from_f32(&ctx, &a, &[batch, m, k], DType::F32).unwrap();
    let tb = Tensor::from_f32(&ctx, &b, &[batch, k, n], DType::F32).unwrap();
    let got = kernels::matmul(&ctx, &ta, &tb, false)
        .unwrap()
        .to_vec_blocking(&ctx)
        .unwrap();
    for i in 0..batch {
        let want = reference::matmul(
            &a[i * m * k..][..m * k],
            &b[i * k * n..][..k * n],
            m,
            k,
            n,
            false,
        );
        assert_close(
            &format!("batch {i}"),
            &got[i * m * n..][..m * n],
            &want,
            1e-4,
            1e-5,
        );
    }

    // A single b is shared by every batch entry.
    let tb1 = Tensor::from_f32(&ctx, &b[..k * n], &[k, n], DType::F32).unwrap();
    let got = kernels::matmul(&ctx, &ta, &tb1, false)
        .unwrap()
        .to_vec_blocking(&ctx)
        .unwrap();
    for i in 0..batch {
        let want = reference::matmul(&a[i * m * k..][..m * k], &b[..k * n], m, k, n, false);
        assert_close(
            &format!("broadcast {i}"),
            &got[i * m * n..][..m * n],
            &want,
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn matmul_rejects_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let a = Tensor::zeros(&ctx, &[4, 5], DType::F32).unwrap();
    let b = Tensor::zeros(&ctx, &[6, 3], DType::F32).unwrap();
    let err = kernels::matmul(&ctx, &a, &b, false).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("K = 5") && err.to_string().contains("K = 6"),
        "{err}"
    );

    let out = Tensor::zeros(&ctx, &[4, 4], DType::F32).unwrap();
    let b = Tensor::zeros(&ctx, &[5, 3], DType::F32).unwrap();
    let mut encoder = ctx.encoder();
    let err = kernels::matmul_into(&ctx, &mut encoder, &a, &b, false, &out).unwrap_err();
    assert!(err.to_string().contains("[4, 4]"), "{err}");

    let vector = Tensor::zeros(&ctx, &[5], DType::F32).unwrap();
    assert!(matches!(
        kernels::matmul(&ctx, &vector, &b, false),
        Err(Error::ShapeMismatch { .. })
    ));

    if ctx.capabilities().shader_f16 {
        let half = Tensor::zeros(&ctx, &[5, 3], DType::F16).unwrap();
        let err = kernels::matmul(&ctx, &a, &half, false).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
    }
}

#[test]
fn softmax_matches_reference() {
    let Some(ctx) = gpu() else { return };
    for dtype in dtypes(&ctx) {
        for &(rows, cols) in &[(1, 1), (3, 7), (5, 256), (2, 257), (7, 1000), (300, 33)] {
            let x: Vec<f32> = random_vec(rows * cols, cols as u64)
                .iter()
                .map(|v| v * 8.0)
                .collect();
            let x = rounded(&x, dtype);
            let t = Tensor::from_f32(&ctx, &x, &[rows, cols], dtype).unwrap();
            let got = kernels::softmax(&ctx, &t, 0.5)
                .unwrap()
                .to_vec_blocking(&ctx)
                .unwrap();
            let want = reference::softmax(&x, cols, 0.5);
            let (rtol, _) = tolerance(dtype, cols);
            assert_close(
                &format!("softmax {rows}x{cols} {dtype}"),
                &got,
                &want,
                rtol,
                1e-6,
            );
        }
    }
}

#[test]
fn softmax_masked_and_extreme_rows() {
    let Some(ctx) = gpu() else { return };
    let cols = 9;
    let mut x = vec![-1e31f32; cols]; // a fully masked row
    x.extend([1e4, -1e4, 1e4, 0.0, -1e31, 3.0, 1e4, -5.0, 2.0]); // large logits
    let t = Tensor::from_f32(&ctx, &x, &[2, cols], DType::F32).unwrap();
    let got = kernels::softmax(&ctx, &t, 1.0)
        .unwrap()
        .to_vec_blocking(&ctx)
        .unwrap();
    assert!(
        got.iter().all(|v| v.is_finite()),
        "non-finite output: {got:?}"
    );
    assert!(
        got[..cols].iter().all(|&v| v == 0.0),
        "masked row: {:?}",
        &got[..cols]
    );
    let want = reference::softmax(&x, cols, 1.0);
    assert_close("extreme row", &got[cols..], &want[cols..], 1e-5, 1e-7);
}

#[test]
fn rmsnorm_matches_reference() {
    let Some(ctx) = gpu() else { return };
    for dtype in dtypes(&ctx) {
        for &(rows, cols) in &[(1, 1), (1, 576), (3, 63), (37, 576), (2, 1000)] {
            let x = rounded(&random_vec(rows * cols, 7), dtype);
            let w = rounded(&random_vec(cols, 8), dtype);
            let tx = Tensor::from_f32(&ctx, &x, &[rows, cols], dtype).unwrap();
            let tw = Tensor::from_f32(&ctx, &w, &[cols], dtype).unwrap();
            let got = kernels::rmsnorm(&ctx, &tx, &tw, 1e-5)
                .unwrap()
                .to_vec_blocking(&ctx)
                .unwrap();
            let want = reference::rmsnorm(&x, &w, 1e-5);
            let (rtol, atol) = tolerance(dtype, cols);
            assert_close(
                &format!("rmsnorm {rows}x{cols} {dtype}"),
                &got,
                &want,
                rtol,
                atol,
            );
        }
    }
}

#[test]
fn rmsnorm_rejects_bad_weight() {
    let Some(ctx) = gpu() else { return };
    let x = Tensor::zeros(&ctx, &[2, 8], DType::F32).unwrap();
    let w = Tensor::zeros(&ctx, &[7], DType::F32).unwrap();
    let err = kernels::rmsnorm(&ctx, &x, &w, 1e-5).unwrap_err();
    assert!(err.to_string().contains("expected [8]"), "{err}");
    let w = Tensor::zeros(&ctx, &[8], DType::F32).unwrap();
    let err = kernels::rmsnorm(&ctx, &x, &w, -1.0).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "eps", .. }),
        "{err}"
    );
}

type BinaryOp = dyn Fn(f64, f64) -> f64;

#[test]
fn elementwise_matches_reference() {
    let Some(ctx) = gpu() else { return };
    for dtype in dtypes(&ctx) {
        for &(len, len_b) in &[
            (1, 1),
            (1000, 1000),
            (1001, 7),
            (4096 * 3, 4096),
            (70_000, 1),
        ] {
            let a = rounded(&random_vec(len, 11), dtype);
            let b = rounded(&random_vec(len_b, 12), dtype);
            let ta = Tensor::from_f32(&ctx, &a, &[len], dtype).unwrap();
            let tb = Tensor::from_f32(&ctx, &b, &[len_b], dtype).unwrap();
            let (rtol, atol) = tolerance(dtype, 1);
            let cases: [(&str, Tensor, Box<BinaryOp>); 4] = [
                (
                    "add",
                    kernels::add(&ctx, &ta, &tb).unwrap(),
                    Box::new(|x, y| x + y),
                ),
                (
                    "mul",
                    kernels::mul(&ctx, &ta, &tb).unwrap(),
                    Box::new(|x, y| x * y),
                ),
                (
                    "silu_mul",
                    kernels::silu_mul(&ctx, &ta, &tb).unwrap(),
                    Box::new(|x, y| reference::silu(x) * y),
                ),
                (
                    "silu",
                    kernels::silu(&ctx, &ta).unwrap(),
                    Box::new(|x, _| reference::silu(x)),
                ),
            ];
            for (name, out, op) in cases {
                let got = out.to_vec_blocking(&ctx).unwrap();
                let want: Vec<f64> = (0..len)
                    .map(|i| op(a[i] as f64, b[i % len_b] as f64))
                    .collect();
                assert_close(
                    &format!("{name} len {len} {dtype}"),
                    &got,
                    &want,
                    rtol,
                    atol,
                );
            }
        }
    }
}

#[test]
fn elementwise_rejects_bad_broadcast() {
    let Some(ctx) = gpu() else { return };
    let a = Tensor::zeros(&ctx, &[10], DType::F32).unwrap();
    let b = Tensor::zeros(&ctx, &[3], DType::F32).unwrap();
    let err = kernels::add(&ctx, &a, &b).unwrap_err();
    assert!(err.to_string().contains("does not broadcast"), "{err}");
}

#[test]
fn tensor_limits_and_lengths() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx.limits().max_storage_buffer_binding_size as usize;
    let err = Tensor::zeros(&ctx, &[limit / 4 + 1], DType::F32).unwrap_err();
    assert!(matches!(err, Error::BufferTooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&limit.to_string()), "{err}");

    let err = Tensor::from_f32(&ctx, &[1.0, 2.0], &[3], DType::F32).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DataLength {
                len: 2,
                expected: 3,
                ..
            }
        ),
        "{err}"
    );

    let err = Tensor::zeros(&ctx, &[usize::MAX, 2], DType::F32).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    let t = Tensor::from_f32(&ctx, &[1.0, 2.0, 3.0], &[3], DType::F32).unwrap();
    assert!(t.reshape(&[2, 2]).is_err());
    assert_eq!(t.reshape(&[1, 3]).unwrap().strides(), [3, 1]);
}

#[test]
fn f16_round_trip_odd_length() {
    let Some(ctx) = gpu() else { return };
    if !ctx.capabilities().shader_f16 {
        let err = Tensor::zeros(&ctx, &[3], DType::F16).unwrap_err();
        assert!(matches!(err, Error::UnsupportedDType { .. }), "{err}");
        return;
    }
    let data = [0.5f32, -1.25, 3.0];
    let t = Tensor::from_f32(&ctx, &data, &[3], DType::F16).unwrap();
    assert_eq!(t.to_vec_blocking(&ctx).unwrap(), data);
}

#[test]
fn pipelines_are_cached() {
    let Some(ctx) = gpu() else { return };
    let a = Tensor::from_f32(&ctx, &[1.0; 6], &[2, 3], DType::F32).unwrap();
    let b = Tensor::from_f32(&ctx, &[1.0; 6], &[3, 2], DType::F32).unwrap();
    kernels::matmul(&ctx, &a, &b, false).unwrap();
    let before = ctx.pipeline_count();
    for _ in 0..5 {
        kernels::matmul(&ctx, &a, &b, false).unwrap();
    }
    assert_eq!(ctx.pipeline_count(), before);
}

#[test]
fn device_errors_fail_the_next_readback() {
    // A context of its own: an error raised here must not reach other tests' readbacks.
    if gpu().is_none() {
        return;
    }
    let ctx = focal::Context::new_blocking().unwrap();
    let data = [1.0f32, 2.0, 3.0, 4.0];
    let tensor = Tensor::from_f32(&ctx, &data, &[4], DType::F32).unwrap();
    assert!(
        ctx.take_device_error().is_ok(),
        "a fresh device has no error"
    );

    // Mapping for reading is not allowed together with storage use: wgpu reports the
    // invalid buffer to its error callback, not to this call.
    let _invalid = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid on purpose"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    match tensor.to_vec_blocking(&ctx) {
        Err(Error::Device(message)) => {
            assert!(message.contains("invalid on purpose"), "{message}");
        }
        other => panic!("expected the buffer's validation error, found {other:?}"),
    }
    // The error is reported once; the device and the tensor are still usable.
    assert_eq!(tensor.to_vec_blocking(&ctx).unwrap(), data);
}
