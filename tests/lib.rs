//! Shared helpers for Focal's GPU integration tests: the test context, CPU reference
//! implementations in f64 and tolerance checks.

use std::io::Write;
use std::sync::OnceLock;

use focal::{Context, ContextOptions};
use rand::{Rng, SeedableRng};

pub mod reference;

/// Returns the shared GPU context, printing the adapter once.
///
/// When no adapter exists, panics with a clear message under `CI=true` (so CI never
/// passes without a GPU) and otherwise prints why the test is skipped and returns `None`.
pub fn gpu() -> Option<Context> {
    static CONTEXT: OnceLock<Result<Context, String>> = OnceLock::new();
    let opened = CONTEXT.get_or_init(|| {
        // Subgroup attention variants on, even on CPU adapters, so the tests cover them.
        let options = ContextOptions {
            subgroup_attention: Some(true),
            ..ContextOptions::default()
        };
        match Context::with_options_blocking(&options) {
            Ok(ctx) => {
                let info = ctx.adapter_info();
                // Written to stderr directly: the test harness captures eprintln!.
                let _ = writeln!(
                    std::io::stderr(),
                    "GPU tests run on adapter {:?} ({:?}, {:?})",
                    info.name,
                    info.backend,
                    info.device_type
                );
                Ok(ctx)
            }
            Err(e) => Err(e.to_string()),
        }
    });
    match opened {
        Ok(ctx) => Some(ctx.clone()),
        Err(message) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but no GPU adapter could be opened: {message}")
        }
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "skipping GPU test: {message}");
            None
        }
    }
}

/// Returns `count` values drawn uniformly from [-1, 1) with a fixed seed.
pub fn random_vec(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Asserts that `got` matches `want` elementwise within `atol + rtol * |want|`, naming
/// the first bad index and the worst error.
#[track_caller]
pub fn assert_close(label: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: length differs");
    let mut worst = (0usize, 0.0f64);
    let mut bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        assert!(g.is_finite(), "{label}: element {i} is {g}, expected {w}");
        let err = (g - w).abs();
        if err > worst.1 {
            worst = (i, err);
        }
        if err > atol + rtol * w.abs() && bad.is_none() {
            bad = Some((i, g, w));
        }
    }
    if let Some((i, g, w)) = bad {
        panic!(
            "{label}: element {i} is {g}, expected {w} (rtol {rtol}, atol {atol}); \
             worst error {} at element {}",
            worst.1, worst.0
        );
    }
}
