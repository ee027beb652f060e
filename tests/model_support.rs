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
