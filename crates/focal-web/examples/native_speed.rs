//! Times the demo's workload natively: model load, the chat prompt of the browser tests
//! and greedy decoding, once with the f32 no-subgroup kernels that Chromium's WebGPU
//! selects and once with every feature the adapter offers. BENCHMARKS.md puts these
//! numbers beside the browser's.
//!
//! Usage: `native_speed MODEL.gguf [TOKENS]` (TOKENS defaults to 8).

use std::time::Instant;

use focal::model::{GenerateOptions, Generator, Model};
use focal::{Context, ContextOptions};

const QUESTION: &str = "What is the capital of France?";

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model_path) = args.first() else {
        return Err("usage: native_speed MODEL.gguf [TOKENS]".into());
    };
    let tokens: usize = match args.get(1) {
        Some(text) => text
            .parse()
            .map_err(|e| format!("invalid TOKENS {text:?}: {e}"))?,
        None => 8,
    };
    let bytes =
        std::fs::read(model_path).map_err(|e| format!("reading {model_path} failed: {e}"))?;

    let plain = ContextOptions {
        shader_f16: false,
        subgroups: false,
        ..ContextOptions::default()
    };
    println!(
        "| kernels | adapter | load s | prompt tokens | prompt s | decode tokens/s | answer |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, options) in [
        ("f32, no subgroups", plain),
        ("all features", ContextOptions::default()),
    ] {
        let ctx = Context::with_options_blocking(&options).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let model = Model::from_gguf(&ctx, &bytes, &mut |_, _| {}).map_err(|e| e.to_string())?;
        ctx.wait_idle().map_err(|e| e.to_string())?;
        let load = started.elapsed().as_secs_f64();

        let ids = focal_web::encode_prompt(&model, QUESTION, true).map_err(|e| e.to_string())?;
        let mut generator = Generator::new(&model, &ids, GenerateOptions::greedy(tokens))
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        pollster::block_on(generator.prefill()).map_err(|e| e.to_string())?;
        let prompt = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let mut answer = String::new();
        let mut generated = 0;
        while let Some(step) = pollster::block_on(generator.step()).map_err(|e| e.to_string())? {
            answer += &step.text;
            if step.stop != Some(focal::model::StopReason::EndOfSequence) {
                generated += 1;
            }
        }
        let decode = generated as f64 / started.elapsed().as_secs_f64();
        println!(
            "| {name} | {} | {load:.2} | {} | {prompt:.2} | {decode:.2} | {answer:?} |",
            ctx.adapter_info().name,
            ids.len()
        );
    }
    Ok(())
}
