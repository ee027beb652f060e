//! Prints, as JSON, the attention probabilities that the native engine computes for a
//! prompt, encoded exactly as the browser demo encodes it. The browser tests compare the
//! demo's head-view pixels against this output.
//!
//! Usage: `native_attention MODEL.gguf LAYER HEAD [--raw] PROMPT`. The prompt goes through
//! the chat template unless `--raw` is given. Kernels run in their f32, no-subgroup
//! variants, the ones Chromium's WebGPU selects.

use focal::model::Model;
use focal::{Context, ContextOptions};

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let raw = args.iter().any(|a| a == "--raw");
    let positional: Vec<&String> = args.iter().filter(|a| *a != "--raw").collect();
    let [model_path, layer, head, prompt] = positional[..] else {
        return Err("usage: native_attention MODEL.gguf LAYER HEAD [--raw] PROMPT".into());
    };
    let layer: usize = layer
        .parse()
        .map_err(|e| format!("invalid LAYER {layer:?}: {e}"))?;
    let head: usize = head
        .parse()
        .map_err(|e| format!("invalid HEAD {head:?}: {e}"))?;

    let options = ContextOptions {
        shader_f16: false,
        subgroups: false,
        ..ContextOptions::default()
    };
    let ctx = Context::with_options_blocking(&options).map_err(|e| e.to_string())?;
    let bytes =
        std::fs::read(model_path).map_err(|e| format!("reading {model_path} failed: {e}"))?;
    let model = Model::from_gguf(&ctx, &bytes, &mut |_, _| {}).map_err(|e| e.to_string())?;

    let ids = focal_web::encode_prompt(&model, prompt, !raw).map_err(|e| e.to_string())?;
    let mut seq = model.new_sequence().map_err(|e| e.to_string())?;
    model
        .forward_blocking(&mut seq, &ids)
        .map_err(|e| e.to_string())?;
    let map = model
        .attention_probs_blocking(&seq, layer, head, 0..ids.len())
        .map_err(|e| e.to_string())?;
    let labels: Vec<String> = ids
        .iter()
        .map(|&id| model.tokenizer().token_label(id))
        .collect();
    let json = serde_json::json!({
        "layer": layer,
        "head": head,
        "rows": map.rows.len(),
        "cols": map.cols,
        "labels": labels,
        "probs": map.probs,
    });
    println!("{json}");
    Ok(())
}
