//! Model download: `fetch` with streamed progress and checks that turn the usual mistakes
//! (a 404, an HTML page instead of the file, a cut-off transfer) into clear messages.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// Bytes between two progress reports, so a 100 MB download sends about 100 reports.
const PROGRESS_INTERVAL: usize = 1 << 20;

#[wasm_bindgen]
extern "C" {
    /// Calls the global `fetch`, which windows and workers both have.
    #[wasm_bindgen(js_name = fetch, catch)]
    fn global_fetch(url: &str) -> Result<js_sys::Promise, JsValue>;
}

/// Describes a thrown JS value: the message of an `Error`, else its string form.
pub fn describe_js_error(value: &JsValue) -> String {
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// Downloads `url`, calling `progress(received, total)` about once per MiB and at the end
/// (`total` is 0 when the server sends no `Content-Length`).
///
/// Errors name the URL and the cause: a network failure, an HTTP status other than 2xx,
/// an HTML page, a body shorter than its `Content-Length`, or a body that does not start
/// with the GGUF magic bytes.
pub async fn download_gguf(
    url: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<u8>, String> {
    let promise =
        global_fetch(url).map_err(|e| format!("fetch({url}) failed: {}", describe_js_error(&e)))?;
    let response: web_sys::Response = JsFuture::from(promise)
        .await
        .map_err(|e| {
            format!(
                "downloading {url} failed: {} (is `focal serve` running, and is the URL right?)",
                describe_js_error(&e)
            )
        })?
        .unchecked_into();

    if !response.ok() {
        let status = response.status();
        let hint = if status == 404 {
            " The server has no file at that URL: check the URL, or run `just fetch-model` \
             before `focal serve`."
        } else {
            ""
        };
        return Err(format!(
            "downloading {url} failed with HTTP {status} {}.{hint}",
            response.status_text()
        ));
    }
    let headers = response.headers();
    let content_type = headers
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    if content_type.starts_with("text/html") {
        return Err(format!(
            "{url} returned an HTML page (Content-Type {content_type}), not a GGUF model file: \
             check the URL"
        ));
    }
    let total = headers
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|length| length.parse::<usize>().ok())
        .unwrap_or(0);

    let bytes = read_body(url, &response, total, progress).await?;
    if total > 0 && bytes.len() != total {
        return Err(format!(
            "the download of {url} is truncated: received {} of {total} bytes. Reload to try again",
            bytes.len()
        ));
    }
    check_magic(url, &bytes)?;
    Ok(bytes)
}

async fn read_body(
    url: &str,
    response: &web_sys::Response,
    total: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<u8>, String> {
    let body = response
        .body()
        .ok_or_else(|| format!("the response for {url} has no body"))?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    // NOTE: the reservation trusts Content-Length up to 2 GiB; a larger file grows the
    // buffer as chunks arrive and may exhaust wasm32's 4 GiB memory.
    let mut bytes = Vec::with_capacity(total.min(2 << 30));
    let mut reported = 0;
    progress(0, total);
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(|e| {
            format!(
                "the download of {url} broke off after {} bytes: {}",
                bytes.len(),
                describe_js_error(&e)
            )
        })?;
        let done = Reflect::get(&chunk, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true);
        if done {
            break;
        }
        let value = Reflect::get(&chunk, &"value".into())
            .map_err(|e| describe_js_error(&e))?
            .unchecked_into::<Uint8Array>();
        let start = bytes.len();
        bytes.resize(start + value.length() as usize, 0);
        value.copy_to(&mut bytes[start..]);
        if bytes.len() - reported >= PROGRESS_INTERVAL {
            reported = bytes.len();
            progress(reported, total);
        }
    }
    progress(bytes.len(), total);
    Ok(bytes)
}

/// Checks the GGUF magic bytes, recognising HTML sent with a non-HTML content type.
fn check_magic(url: &str, bytes: &[u8]) -> Result<(), String> {
    if bytes.starts_with(b"GGUF") {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).to_ascii_lowercase();
    let text = head.trim_start();
    if text.starts_with("<!doctype html") || text.starts_with("<html") || text.starts_with('<') {
        return Err(format!(
            "{url} returned an HTML page, not a GGUF model file: check the URL"
        ));
    }
    if bytes.is_empty() {
        return Err(format!("{url} returned an empty file, not a GGUF model"));
    }
    let shown: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "{url} is not a GGUF file: it starts with bytes {} instead of \"GGUF\"",
        shown.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_accepts_gguf() {
        assert!(check_magic("m", b"GGUF\x03\x00\x00\x00").is_ok());
    }

    #[test]
    fn magic_names_html_and_bytes() {
        let html = check_magic("m", b"  <!DOCTYPE html><p>").unwrap_err();
        assert!(html.contains("HTML page"), "{html}");
        let binary = check_magic("m", &[0x7f, b'E', b'L', b'F', 0]).unwrap_err();
        assert!(binary.contains("7f 45 4c 46"), "{binary}");
        let empty = check_magic("m", b"").unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
    }
}
