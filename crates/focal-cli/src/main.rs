//! `focal`: the command-line front end of the Focal attention engine.

use clap::{Parser, Subcommand};

mod bench;
mod bench_attention;
mod bench_kv;
mod serve;

#[derive(Parser)]
#[command(
    name = "focal",
    version,
    about = "A wgpu compute engine for transformer attention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the adapter, backend, device type, driver, the features Focal uses and the
    /// key limits.
    Info,
    /// Run the benchmarks and print a table of results.
    Bench(bench::BenchArgs),
    /// Serve the browser demo (the page folder and the model file) on 127.0.0.1.
    Serve(serve::ServeArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
        Command::Bench(args) => bench::run(&args),
        Command::Serve(args) => serve::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn info() -> focal::Result<()> {
    let ctx = focal::Context::new_blocking()?;
    print!("{}", ctx.describe());
    let tiles = focal::kernels::matmul_tiles(ctx.limits());
    println!(
        "matmul tile:    {}x{}x{} ({} invocations, {} B shared memory)",
        tiles.m,
        tiles.n,
        tiles.k,
        tiles.invocations(),
        tiles.workgroup_bytes()
    );
    Ok(())
}
