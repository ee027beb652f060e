//! `focal bench model`: load time, prefill and decode speed of the fetched SmolLM2 model.

use std::time::Instant;

use focal::model::{roles::random_tokens, ChatMessage, GenerateOptions, Generator, Model};
use focal::{Context, Result};

use crate::generate::load_model;

/// Prompt length of the prefill case.
const PREFILL_TOKENS: usize = 128;
/// Tokens generated in the decode case.
const DECODE_TOKENS: usize = 128;

fn seconds(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Returns the median of `reps` runs of `f` in seconds, after one warm-up run.
fn median_seconds(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(seconds(start));
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn decode_rate(model: &Model, prompt: &[u32], options: GenerateOptions) -> Result<f64> {
    let mut generator = Generator::new(model, prompt, options)?;
    pollster::block_on(generator.prefill())?;
    let start = Instant::now();
    generator.run_blocking(|_| true)?;
    Ok(generator.generated().len() as f64 / seconds(start))
}

pub fn run(ctx: &Context, reps: usize) -> Result<()> {
    let start = Instant::now();
    let model = load_model(ctx, None)?;
    let loaded = seconds(start);
    let chat = model.tokenizer().apply_chat_template(
        &[ChatMessage::new("user", "What is the capital of France?")],
        true,
    )?;
    let chat = model.tokenizer().encode(&chat)?;
    let mut seq = model.new_sequence()?;
    pollster::block_on(model.forward_greedy(&mut seq, &chat))?;
    let first_token = seconds(start);

    let prompt = random_tokens(model.config().vocab, PREFILL_TOKENS, 1);
    let prefill = median_seconds(reps, || {
        let mut seq = model.new_sequence()?;
        pollster::block_on(model.forward_greedy(&mut seq, &prompt))?;
        Ok(())
    })?;

    // No stop token can end these runs early: EOS is only a stop for real generation.
    let greedy = GenerateOptions {
        stop_strings: Vec::new(),
        ..GenerateOptions::greedy(DECODE_TOKENS)
    };
    let sampled = GenerateOptions {
        max_tokens: DECODE_TOKENS,
        ..GenerateOptions::default()
    };
    let short = &prompt[..16];
    let greedy_rate = decode_rate(&model, short, greedy)?;
    let sampled_rate = decode_rate(&model, short, sampled)?;

    println!(
        "\nmodel: {} ({} layers, weights {}), {} reps\n",
        model.name(),
        model.config().layers,
        model.weight_dtype(),
        reps
    );
    println!("| model case | result |\n|---|---|");
    println!("| load GGUF (read + dequantise + upload) | {loaded:.2} s |");
    println!(
        "| load to first token ({}-token chat prompt) | {first_token:.2} s |",
        chat.len()
    );
    println!(
        "| prefill {PREFILL_TOKENS} tokens | {:.1} ms, {:.1} tokens/s |",
        prefill * 1e3,
        PREFILL_TOKENS as f64 / prefill
    );
    println!("| decode up to {DECODE_TOKENS} tokens, greedy (argmax on GPU) | {greedy_rate:.1} tokens/s |");
    println!(
        "| decode up to {DECODE_TOKENS} tokens, sampled (logits read back) | {sampled_rate:.1} tokens/s |"
    );
    Ok(())
}
