//! WebAssembly front end: opens the engine on the browser's WebGPU adapter and reports it
//! to the page.

use wasm_bindgen::prelude::*;

/// Installs the panic hook and the console logger. Runs once when the module loads.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    let _ = console_log::init_with_level(log::Level::Info);
}

/// Opens the WebGPU adapter and returns the same description as `focal info`.
///
/// Rejects with a message naming what is missing when the browser has no WebGPU.
#[wasm_bindgen(js_name = adapterInfo)]
pub async fn adapter_info() -> Result<String, JsError> {
    let ctx = focal::Context::new()
        .await
        .map_err(|e| JsError::new(&e.to_string()))?;
    Ok(ctx.describe())
}
