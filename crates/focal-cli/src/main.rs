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
    Info(DeviceArgs),
    /// Run every attention kernel on small inputs and compare it with attention on the
    /// CPU; exits with an error when one differs.
    Check(DeviceArgs),
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

/// Optional adapter features that the engine may use. Both are on by default.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Run every kernel in f32 even when the adapter has shader-f16.
    #[arg(long)]
    pub no_f16: bool,
    /// Use the plain kernels even when the adapter has subgroups (as in the browser).
    #[arg(long)]
    pub no_subgroups: bool,
    /// Run the decode and paged attention kernels in their subgroup variants (true) or
    /// plain ones (false); by default, subgroup variants except on CPU adapters.
    #[arg(long, value_name = "BOOL")]
    pub subgroup_attention: Option<bool>,
}

impl DeviceArgs {
    /// Opens the default adapter with the features these flags allow.
    pub fn context(&self) -> focal::Result<focal::Context> {
        let options = focal::ContextOptions {
            shader_f16: !self.no_f16,
            subgroups: !self.no_subgroups,
            subgroup_attention: self.subgroup_attention,
            ..focal::ContextOptions::default()
        };
        focal::Context::with_options_blocking(&options)
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info(&args),
        Command::Check(args) => check(&args),
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

fn info(args: &DeviceArgs) -> focal::Result<()> {
    let ctx = args.context()?;
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

fn check(args: &DeviceArgs) -> focal::Result<()> {
    let ctx = args.context()?;
    let info = ctx.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    let checks = pollster::block_on(focal::check::attention_kernels(&ctx))?;
    for check in &checks {
        println!("{check}");
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    if failed > 0 {
        return Err(focal::Error::Device(format!(
            "{failed} of {} kernel checks differ from the CPU reference",
            checks.len()
        )));
    }
    println!("all {} kernel checks match the CPU reference", checks.len());
    Ok(())
}
