//! `focal`: the command-line front end of the Focal attention engine.

use clap::{Parser, Subcommand};

mod bench;
mod bench_attention;
mod bench_kv;
mod bench_model;
mod generate;
mod heatmap;
mod roles;
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
    /// Generate text with a language model, streaming it and printing tokens/s.
    Generate(generate::GenerateArgs),
    /// Draw attention probabilities of one head, or of every layer and head, as a PNG.
    Heatmap(heatmap::HeatmapArgs),
    /// Score every attention head on known roles and print a table.
    Roles(roles::RolesArgs),
    /// Serve the browser demo (the page folder and the model file) on 127.0.0.1.
    Serve(serve::ServeArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
        Command::Bench(args) => bench::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Heatmap(args) => heatmap::run(&args),
        Command::Roles(args) => roles::run(&args),
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
