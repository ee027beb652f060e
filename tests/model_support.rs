//! Loading the real SmolLM2-135M-Instruct GGUF model for the model tests.
//!
//! `just fetch-model` downloads it into models/. Without the file, tests fail with a clear
//! message under `CI=true` and are skipped with a printed reason elsewhere.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use focal::model::Model;

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Returns the path of the fetched model file.
pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join(MODEL_FILE)
}

fn skip_or_fail(message: String) -> Option<Model> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the model test cannot run: {message}");
    }
    let _ = writeln!(std::io::stderr(), "skipping model test: {message}");
    None
}

/// Returns the bytes of the model file, or `None` (after printing why) when it is
/// missing outside CI.
pub fn model_bytes() -> Option<&'static [u8]> {
    static BYTES: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    let read = BYTES.get_or_init(|| {
        let path = model_path();
        std::fs::read(&path).map_err(|e| {
            format!(
                "reading {} failed: {e}. Run `just fetch-model` to download it",
                path.display()
            )
        })
    });
    match read {
        Ok(bytes) => Some(bytes),
        Err(message) => {
            skip_or_fail(message.clone());
            None
        }
    }
}

/// Returns the model loaded once on the shared GPU context.
pub fn model() -> Option<Model> {
    static MODEL: OnceLock<Result<Model, String>> = OnceLock::new();
    let ctx = focal_tests::gpu()?;
    let bytes = model_bytes()?;
    let loaded = MODEL.get_or_init(|| {
        Model::from_gguf(&ctx, bytes, &mut |_, _| {}).map_err(|e| format!("loading failed: {e}"))
    });
    match loaded {
        Ok(model) => Some(model.clone()),
        Err(message) => panic!("{message}"),
    }
}

/// One prompt of the reference fixture written by `tests/reference_logits.py`.
pub struct ReferencePrompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// The 20 largest logits of the last position as (token id, logit), largest first.
    pub top: Vec<(u32, f32)>,
    /// Logits of tokens 0, stride, 2 * stride, ...
    pub stride: usize,
    pub strided_logits: Vec<f32>,
}

/// The reference fixture: token ids of sample texts and last-position logits of prompts.
pub struct Reference {
    pub tokenizer: Vec<(String, Vec<u32>)>,
    pub prompts: Vec<ReferencePrompt>,
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("ids array")
        .iter()
        .map(|v| v.as_u64().expect("token id") as u32)
        .collect()
}

/// Parses tests/fixtures/smollm2_reference.json.
pub fn reference() -> Reference {
    let text = include_str!("fixtures/smollm2_reference.json");
    let json: serde_json::Value = serde_json::from_str(text).expect("fixture is valid JSON");
    let tokenizer = json["tokenizer"]
        .as_array()
        .expect("tokenizer cases")
        .iter()
        .map(|case| {
            (
                case["text"].as_str().unwrap().to_string(),
                ids(&case["ids"]),
            )
        })
        .collect();
    let prompts = json["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| ReferencePrompt {
            text: p["text"].as_str().unwrap().to_string(),
            ids: ids(&p["ids"]),
            top: p["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| {
                    (
                        pair[0].as_u64().unwrap() as u32,
                        pair[1].as_f64().unwrap() as f32,
                    )
                })
                .collect(),
            stride: p["stride"].as_u64().unwrap() as usize,
            strided_logits: p["strided_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect();
    Reference { tokenizer, prompts }
}

/// Returns the largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Returns the indices of the `k` largest values, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    order.sort_by(|&a, &b| values[b as usize].total_cmp(&values[a as usize]));
    order.truncate(k);
    order
}
