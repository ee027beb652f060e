//! WebAssembly front end of the Focal engine: the API that the demo page calls.
//!
//! An [`Engine`] opens the browser's WebGPU adapter and downloads and loads a GGUF model
//! with progress. It generates text one step per call, so the page streams tokens and can
//! stop between them, and it reads attention probabilities of any layer and head for the
//! heatmaps. The page runs it in a worker, so long loads never freeze the UI.
//!
//! Async methods return promises. Each one takes the engine state out of its slot for its
//! whole run and puts it back at the end, so a call made while another is still running
//! is rejected with a "busy" message. [`Engine::stop`] only sets a flag, so it works at
//! any time.

mod download;
mod js;
mod session;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use focal::model::{GenerateOptions, Model};
use js_sys::{Array, Float32Array, Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

pub use download::describe_js_error;
pub use session::encode_prompt;
use session::{PromptOptions, Session};

/// Installs the panic hook and the console logger. Runs once when the module loads.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    let _ = console_log::init_with_level(log::Level::Info);
}

#[derive(Default)]
struct State {
    model: Option<Model>,
    session: Option<Session>,
    max_tokens: usize,
}

impl State {
    /// Returns the session of the last generation, or an error when none has run.
    fn last_session(&self) -> Result<&Session, JsValue> {
        self.session
            .as_ref()
            .ok_or_else(|| error_value("no generation has run yet"))
    }
}

/// The engine on one WebGPU device, with at most one model and one generation.
#[wasm_bindgen]
pub struct Engine {
    ctx: focal::Context,
    /// The state, or `None` while an async call has taken it.
    state: Rc<RefCell<Option<State>>>,
    cancel: Rc<Cell<bool>>,
}

fn error_value(message: impl std::fmt::Display) -> JsValue {
    JsError::new(&message.to_string()).into()
}

/// Runs `body` on the engine state, taken out of `slot` until `body` hands it back.
/// Rejects when another call has the state.
fn with_state<F, Fut>(slot: &Rc<RefCell<Option<State>>>, body: F) -> Promise
where
    F: FnOnce(State) -> Fut + 'static,
    Fut: std::future::Future<Output = (State, Result<JsValue, JsValue>)> + 'static,
{
    let slot = slot.clone();
    future_to_promise(async move {
        let Some(state) = slot.borrow_mut().take() else {
            return Err(error_value(
                "the engine is busy with another request: wait for it to finish",
            ));
        };
        let (state, result) = body(state).await;
        *slot.borrow_mut() = Some(state);
        result
    })
}

#[wasm_bindgen]
impl Engine {
    /// Opens the browser's WebGPU adapter and device.
    ///
    /// Rejects with a message naming what is missing when the browser has no WebGPU
    /// adapter.
    pub async fn open() -> Result<Engine, JsError> {
        let ctx = focal::Context::new()
            .await
            .map_err(|e| JsError::new(&e.to_string()))?;
        Ok(Engine {
            ctx,
            state: Rc::new(RefCell::new(Some(State::default()))),
            cancel: Rc::default(),
        })
    }

    /// Returns the adapter description printed by `focal info`.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> String {
        self.ctx.describe()
    }

    /// Returns one line naming the adapter and the features that select kernel variants.
    #[wasm_bindgen(js_name = adapterSummary)]
    pub fn adapter_summary(&self) -> String {
        let info = self.ctx.adapter_info();
        let caps = self.ctx.capabilities();
        let name = if info.name.is_empty() {
            "unnamed adapter"
        } else {
            info.name.as_str()
        };
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        format!(
            "{name} ({:?}); shader-f16 {}, subgroups {}",
            info.backend,
            yes_no(caps.shader_f16),
            yes_no(caps.subgroups)
        )
    }

    /// Runs every attention kernel (naive, flash with each mask type, split-K decode,
    /// probabilities from the log-sum-exp, paged decode after a fork) on small random
    /// inputs and compares each with attention computed on the CPU. Resolves to an
    /// array of `{ kernel, case, dtype, maxError, tolerance, passed }`; rejects when a
    /// kernel cannot run on this adapter at all.
    #[wasm_bindgen(js_name = checkKernels)]
    pub fn check_kernels(&self) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let checks = focal::check::attention_kernels(&ctx)
                .await
                .map_err(error_value)?;
            let rows = Array::new();
            for check in checks {
                rows.push(&js::object(&[
                    ("kernel", check.kernel.into()),
                    ("case", check.case.into()),
                    ("dtype", check.dtype.to_string().into()),
                    ("maxError", check.max_error.into()),
                    ("tolerance", check.tolerance.into()),
                    ("passed", check.passed.into()),
                ]));
            }
            Ok(rows.into())
        })
    }

    /// Downloads a GGUF model from `url` and uploads it to the GPU, calling
    /// `on_progress(phase, done, total)` with phase `"download"` (bytes) and then
    /// `"upload"` (tensors). Resolves to the model's shape:
    /// `{ name, layers, heads, kvHeads, headDim, context, vocab, weights, bytes }`.
    ///
    /// Rejects with a message for a network failure, an HTTP error, an HTML page, a
    /// truncated download or an invalid GGUF file. A failed load leaves no model loaded.
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(&self, url: String, on_progress: Function) -> Promise {
        let ctx = self.ctx.clone();
        with_state(&self.state, move |mut state| async move {
            let result: Result<JsValue, JsValue> = async {
                let state = &mut state;
                state.session = None;
                state.model = None;
                let report = |phase: &str, done: usize, total: usize| {
                    let _ = on_progress.call3(
                        &JsValue::NULL,
                        &phase.into(),
                        &(done as f64).into(),
                        &(total as f64).into(),
                    );
                };
                let bytes = download::download_gguf(&url, &mut |done, total| {
                    report("download", done, total)
                })
                .await
                .map_err(error_value)?;
                let model = Model::from_gguf(&ctx, &bytes, &mut |done, total| {
                    report("upload", done, total)
                })
                .map_err(|e| error_value(format!("loading {url} failed: {e}")))?;
                let info = model_info(&model, bytes.len());
                state.model = Some(model);
                Ok(info)
            }
            .await;
            (state, result)
        })
    }

    /// Tokenises `prompt` (through the chat template when `options.chat` is true) and runs
    /// it through the model. `options`: `{ chat, temperature, topK, topP, maxTokens, seed }`;
    /// temperature 0 decodes greedily. Resolves to `{ labels, rows, notice }`, where
    /// `labels` names every prompt token and `rows` is the number of attention rows.
    ///
    /// Rejects when no model is loaded, an option is invalid, or the prompt does not fit
    /// the context.
    #[wasm_bindgen(js_name = startGeneration)]
    pub fn start_generation(&self, prompt: String, options: JsValue) -> Promise {
        let cancel = self.cancel.clone();
        with_state(&self.state, move |mut state| async move {
            let result: Result<JsValue, JsValue> = async {
                let state = &mut state;
                state.session = None;
                let model = state
                    .model
                    .clone()
                    .ok_or_else(|| error_value("no model is loaded: load one first"))?;
                let options = prompt_options(&options).map_err(error_value)?;
                cancel.set(false);
                state.max_tokens = options.sampling.max_tokens;
                let (session, started) = Session::start(&model, &prompt, options)
                    .await
                    .map_err(error_value)?;
                state.max_tokens = state.max_tokens.min(session_limit(&model, started.rows));
                state.session = Some(session);
                let labels: Array = started
                    .labels
                    .iter()
                    .map(|l| JsValue::from_str(l))
                    .collect();
                Ok(js::object(&[
                    ("labels", labels.into()),
                    ("rows", (started.rows as f64).into()),
                    ("notice", started.notice.map_or(JsValue::NULL, |n| n.into())),
                ]))
            }
            .await;
            (state, result)
        })
    }

    /// Generates one token. Resolves to `{ done, reason, text, token, label, rows }`:
    /// `text` is the newly completed generated text (possibly empty), `label` is null for a
    /// token that ended the answer without entering the sequence, and `reason` says why
    /// generation ended once `done` is true.
    pub fn step(&self) -> Promise {
        let cancel = self.cancel.clone();
        with_state(&self.state, move |mut state| async move {
            let result: Result<JsValue, JsValue> = async {
                let state = &mut state;
                let max_tokens = state.max_tokens;
                let session = state
                    .session
                    .as_mut()
                    .ok_or_else(|| error_value("no generation is running: start one first"))?;
                let output = session.step(cancel.get()).await.map_err(error_value)?;
                let reason =
                    session::describe_stop(session.stop_reason(), session.generated(), max_tokens);
                let Some(output) = output else {
                    return Ok(js::object(&[
                        ("done", true.into()),
                        ("reason", reason.into()),
                        ("text", "".into()),
                        ("label", JsValue::NULL),
                    ]));
                };
                let done = output.stop.is_some();
                Ok(js::object(&[
                    ("done", done.into()),
                    ("reason", if done { reason.into() } else { JsValue::NULL }),
                    ("text", output.text.into()),
                    ("token", output.token.into()),
                    ("label", output.label.map_or(JsValue::NULL, JsValue::from)),
                    ("rows", (output.rows as f64).into()),
                ]))
            }
            .await;
            (state, result)
        })
    }

    /// Asks the running generation to end before its next token. Takes effect at the
    /// next [`Engine::step`], which then resolves with `done` set.
    pub fn stop(&self) {
        self.cancel.set(true);
    }

    /// Resolves to the attention probabilities of (`layer`, `head`) for query rows
    /// `row_start .. row_end`, as a `Float32Array` of `[rows, row_end]` (row-major, zero
    /// past each row's own position).
    pub fn attention(
        &self,
        layer: usize,
        head: usize,
        row_start: usize,
        row_end: usize,
    ) -> Promise {
        with_state(&self.state, move |state| async move {
            let result: Result<JsValue, JsValue> = async {
                let state = &state;
                let session = state.last_session()?;
                let probs = session
                    .attention(layer, head, row_start..row_end)
                    .await
                    .map_err(error_value)?;
                Ok(Float32Array::from(probs.as_slice()).into())
            }
            .await;
            (state, result)
        })
    }

    /// Resolves to the attention probabilities of every layer and head for the listed
    /// query rows (ascending), as a `Float32Array` of `[layers, heads, rows, last + 1]`.
    #[wasm_bindgen(js_name = attentionAllHeads)]
    pub fn attention_all_heads(&self, rows: Vec<u32>) -> Promise {
        with_state(&self.state, move |state| async move {
            let result: Result<JsValue, JsValue> = async {
                let state = &state;
                let session = state.last_session()?;
                let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
                let probs = session
                    .attention_all_heads(&rows)
                    .await
                    .map_err(error_value)?;
                Ok(Float32Array::from(probs.as_slice()).into())
            }
            .await;
            (state, result)
        })
    }

    /// Scores every head on the current sequence and resolves to an array of
    /// `{ layer, head, role, score, scores }`, where `role` is one of previous-token, sink,
    /// local, broad and induction, and `scores` maps each role to its score.
    #[wasm_bindgen(js_name = headRoles)]
    pub fn head_roles(&self) -> Promise {
        with_state(&self.state, move |state| async move {
            let result: Result<JsValue, JsValue> = async {
                let state = &state;
                let session = state.last_session()?;
                let roles = session.head_roles().await.map_err(error_value)?;
                let array: Array = roles
                    .into_iter()
                    .map(|role| {
                        let scores: Vec<(&str, JsValue)> = role
                            .scores
                            .iter()
                            .map(|&(name, score)| (name, f64::from(score).into()))
                            .collect();
                        js::object(&[
                            ("layer", (role.layer as f64).into()),
                            ("head", (role.head as f64).into()),
                            ("role", role.role.into()),
                            ("score", f64::from(role.score).into()),
                            ("scores", js::object(&scores)),
                        ])
                    })
                    .collect();
                Ok(array.into())
            }
            .await;
            (state, result)
        })
    }
}

fn session_limit(model: &Model, prompt_rows: usize) -> usize {
    model.config().context_length.saturating_sub(prompt_rows)
}

fn model_info(model: &Model, bytes: usize) -> JsValue {
    let config = model.config();
    js::object(&[
        ("name", model.name().into()),
        ("layers", (config.layers as f64).into()),
        ("heads", (config.heads as f64).into()),
        ("kvHeads", (config.kv_heads as f64).into()),
        ("headDim", (config.head_dim as f64).into()),
        ("context", (config.context_length as f64).into()),
        ("vocab", (config.vocab as f64).into()),
        ("weights", model.weight_dtype().to_string().into()),
        ("bytes", (bytes as f64).into()),
    ])
}

/// Reads the page's generation options; absent fields take the engine's defaults.
fn prompt_options(options: &JsValue) -> Result<PromptOptions, String> {
    let mut sampling = GenerateOptions::default();
    if let Some(t) = js::number(options, "temperature")? {
        sampling.temperature = t as f32;
    }
    if let Some(k) = js::whole_number(options, "topK", u32::MAX as f64)? {
        sampling.top_k = k as usize;
    }
    if let Some(p) = js::number(options, "topP")? {
        sampling.top_p = p as f32;
    }
    if let Some(n) = js::whole_number(options, "maxTokens", u32::MAX as f64)? {
        if n == 0 {
            return Err("option maxTokens must be at least 1".into());
        }
        sampling.max_tokens = n as usize;
    }
    if let Some(seed) = js::whole_number(options, "seed", u32::MAX as f64)? {
        sampling.seed = seed;
    }
    sampling.validate().map_err(|e| e.to_string())?;
    Ok(PromptOptions {
        chat: js::boolean(options, "chat", true),
        sampling,
    })
}
