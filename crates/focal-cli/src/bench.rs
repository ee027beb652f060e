//! `focal bench`: timed runs of the engine's kernels, printed as a table.

use std::time::Instant;

use focal::{kernels, Context, DType, Tensor};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub device: crate::DeviceArgs,
    /// Benchmark to run: matmul, attention, window, sparse, decode or all.
    #[arg(default_value = "all")]
    pub which: String,
    /// Timed repetitions per case, after one warm-up run.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Run the small sizes only (attention benchmarks), for a run of about a minute.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: &BenchArgs) -> focal::Result<()> {
    let ctx = args.device.context()?;
    let info = ctx.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    match args.which.as_str() {
        "matmul" => matmul(&ctx, args.reps),
        "attention" | "window" | "sparse" | "decode" => {
            attention_bench(args).run(&ctx, &args.which)
        }
        "all" => {
            matmul(&ctx, args.reps)?;
            attention_bench(args).run(&ctx, "all")
        }
        "kv" => crate::bench_kv::run(&ctx, args.reps),
        "model" => crate::bench_model::run(&ctx, args.reps),
        other => Err(focal::Error::InvalidArgument {
            name: "benchmark",
            value: other.to_string(),
            reason: "expected one of: matmul, attention, window, sparse, decode, kv, all".into(),
        }),
    }
}

/// Returns the median of `reps` timed runs of `f` in milliseconds, after one warm-up.
pub fn time_ms(
    ctx: &Context,
    reps: usize,
    mut f: impl FnMut() -> focal::Result<()>,
) -> focal::Result<f64> {
    f()?;
    ctx.wait_idle()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        ctx.wait_idle()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn matmul(ctx: &Context, reps: usize) -> focal::Result<()> {
    println!("\n| matmul | dtype | ms | GFLOP/s |\n|---|---|---|---|");
    for dtype in [DType::F32, DType::F16] {
        if dtype == DType::F16 && !ctx.capabilities().shader_f16 {
            println!("| (f16 skipped: adapter has no shader-f16) | | | |");
            continue;
        }
        for n in [256usize, 512, 1024] {
            let data: Vec<f32> = (0..n * n).map(|i| ((i % 13) as f32 - 6.0) / 7.0).collect();
            let a = Tensor::from_f32(ctx, &data, &[n, n], dtype)?;
            let b = Tensor::from_f32(ctx, &data, &[n, n], dtype)?;
            let out = Tensor::zeros(ctx, &[n, n], dtype)?;
            let ms = time_ms(ctx, reps, || {
                let mut encoder = ctx.encoder();
                kernels::matmul_into(ctx, &mut encoder, &a, &b, false, &out)?;
                ctx.submit(encoder);
                Ok(())
            })?;
            let gflops = 2.0 * (n * n * n) as f64 / (ms * 1e6);
            println!("| {n}x{n}x{n} | {dtype} | {ms:.2} | {gflops:.2} |");
        }
    }
    Ok(())
}

fn attention_bench(args: &BenchArgs) -> crate::bench_attention::AttentionBench {
    crate::bench_attention::AttentionBench {
        reps: args.reps,
        quick: args.quick,
    }
}
