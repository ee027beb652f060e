// The demo page: checks for WebGPU, loads the model with progress, streams generated
// tokens and feeds attention rows to the heatmaps. The engine runs in a worker
// (worker.js). Engine calls are serialised through `engineQueue`, because the engine
// rejects a call that arrives while another is running.

import { EngineClient } from "./engine-client.js";
import { HeadView, ModelView } from "./heatmap.js";

const $ = (id) => document.getElementById(id);

const ui = {
  adapter: $("adapter"),
  noWebGpu: $("no-webgpu"),
  noWebGpuReason: $("no-webgpu-reason"),
  modelForm: $("model-form"),
  modelUrl: $("model-url"),
  load: $("load"),
  downloadProgress: $("download-progress"),
  downloadText: $("download-text"),
  uploadProgress: $("upload-progress"),
  uploadText: $("upload-text"),
  modelStatus: $("model-status"),
  prompt: $("prompt"),
  chat: $("chat"),
  temperature: $("temperature"),
  topK: $("top-k"),
  topP: $("top-p"),
  maxTokens: $("max-tokens"),
  seed: $("seed"),
  generate: $("generate"),
  stop: $("stop"),
  speed: $("speed"),
  generateStatus: $("generate-status"),
  answer: $("answer"),
  layer: $("layer"),
  head: $("head"),
  scale: $("scale"),
  headTitle: $("head-title"),
};

/** Rows of the model view fetched at once, so one readback stays near 16 MiB. */
const GRID_VALUES_PER_READ = 4 * 1024 * 1024;
/** Prompt rows sampled for the model view; longer prompts are strided. */
const GRID_PROMPT_ROWS = 256;

const state = {
  engine: null,
  model: null,
  roles: null, // head roles of the loaded model, scored after its first generation
  // starting | no-webgpu | idle | loading | ready | generating | failed
  phase: "starting",
  stopRequested: false,
  rows: 0, // attention rows (processed positions) of the current sequence
  selected: { layer: 0, head: 0 },
  headSwitches: 0,
};

let engineQueue = Promise.resolve();

/** Runs `task` after every engine call queued before it and returns its result. */
function withEngine(task) {
  const result = engineQueue.then(task);
  engineQueue = result.catch(() => {});
  return result;
}

const headView = new HeadView($("head-view"), $("legend"), $("head-tooltip"));
const modelView = new ModelView($("model-view"), $("model-tooltip"), (layer, head) =>
  selectHead(layer, head),
);
headView.setHover(null);
modelView.updateTooltip();

function setPhase(phase) {
  state.phase = phase;
  document.body.dataset.phase = phase;
  const busy = phase === "loading" || phase === "generating";
  ui.load.disabled = phase === "no-webgpu" || phase === "starting" || busy;
  ui.generate.disabled = phase !== "ready";
  ui.stop.disabled = phase !== "generating";
}

function setStatus(element, message, isError = false) {
  element.textContent = message;
  element.classList.toggle("error", isError);
}

function errorMessage(error) {
  if (error instanceof Error) return error.message;
  return String(error);
}

function formatMegabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** Returns null when WebGPU has an adapter, else what is missing. */
async function missingWebGpu() {
  if (!window.isSecureContext) {
    return `This page is not a secure context (${location.origin}), so the browser hides WebGPU.`;
  }
  if (!("gpu" in navigator)) {
    return "navigator.gpu is missing: this browser has no WebGPU, or it is switched off.";
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (error) {
    return `navigator.gpu.requestAdapter() failed: ${errorMessage(error)}.`;
  }
  if (!adapter) {
    return "navigator.gpu exists, but requestAdapter() returned no adapter: the GPU is " +
      "blocklisted or WebGPU is disabled in this browser.";
  }
  return null;
}

function showNoWebGpu(reason) {
  ui.noWebGpuReason.textContent = reason;
  ui.noWebGpu.hidden = false;
  ui.adapter.textContent = "No WebGPU adapter.";
  setStatus(ui.modelStatus, "The model cannot run without WebGPU.", true);
  setPhase("no-webgpu");
}

async function main() {
  setPhase("starting");
  const missing = await missingWebGpu();
  if (missing) {
    showNoWebGpu(missing);
    return;
  }
  state.engine = new EngineClient(showProgress);
  let opened;
  try {
    opened = await state.engine.open();
  } catch (error) {
    const message = errorMessage(error);
    if (state.engine.failure) {
      ui.adapter.textContent = "";
      setStatus(ui.modelStatus, message, true);
      setPhase("failed");
    } else {
      showNoWebGpu(`Opening the WebGPU device failed: ${message}`);
    }
    return;
  }
  ui.adapter.textContent = `Adapter: ${opened.summary}`;
  setPhase("idle");

  const requested = new URLSearchParams(location.search).get("model");
  if (requested) ui.modelUrl.value = requested;
  await loadModel();
}

async function loadModel() {
  if (state.phase === "loading" || state.phase === "generating") return;
  const url = ui.modelUrl.value.trim();
  if (!url) {
    setStatus(ui.modelStatus, "Enter the URL of a GGUF model file.", true);
    return;
  }
  setPhase("loading");
  state.model = null;
  state.roles = null;
  ui.downloadProgress.value = 0;
  ui.uploadProgress.value = 0;
  ui.downloadText.textContent = "";
  ui.uploadText.textContent = "";
  setStatus(ui.modelStatus, `Loading ${url}…`);
  const started = performance.now();
  try {
    const absolute = new URL(url, location.href).href;
    const info = await withEngine(() => state.engine.loadModel(absolute));
    console.info(`model loaded in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    state.model = info;
    state.roles = null;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(ui.modelStatus, `Loaded ${info.name}: ${info.layers} layers, ${info.heads} heads ` +
      `(${info.kvHeads} KV heads), context ${info.context}, in ${seconds} s.`);
    document.body.dataset.loadSeconds = seconds;
    configureHeatmaps(info);
    setPhase("ready");
  } catch (error) {
    setStatus(ui.modelStatus, `Loading the model failed: ${errorMessage(error)}`, true);
    setPhase(state.engine ? "idle" : "failed");
  }
}

function showProgress(phase, done, total) {
  if (phase === "download") {
    if (total > 0) {
      ui.downloadProgress.value = done / total;
      ui.downloadText.textContent = `${formatMegabytes(done)} of ${formatMegabytes(total)}`;
    } else {
      ui.downloadProgress.removeAttribute("value");
      ui.downloadText.textContent = `${formatMegabytes(done)} (size unknown)`;
    }
  } else if (phase === "upload") {
    ui.downloadProgress.value = 1;
    ui.uploadProgress.value = total > 0 ? done / total : 0;
    ui.uploadText.textContent = `${done} of ${total} tensors`;
  }
}

function configureHeatmaps(info) {
  ui.layer.replaceChildren(...Array.from({ length: info.layers }, (_, i) => new Option(String(i), i)));
  ui.head.replaceChildren(...Array.from({ length: info.heads }, (_, i) => new Option(String(i), i)));
  state.selected = { layer: 0, head: 0 };
  modelView.configure(info.layers, info.heads);
  modelView.setSelected(0, 0);
  headView.reset([]);
  updateHeadTitle();
}

function updateHeadTitle() {
  const { layer, head } = state.selected;
  const role = modelView.roleOf(layer, head);
  const roleText = role ? ` · ${role.role} (${role.score.toFixed(2)})` : "";
  ui.headTitle.textContent = `Head view: layer ${layer}, head ${head}${roleText}`;
}

/** Reads and checks the sampling controls; throws an Error naming the invalid field. */
function readOptions() {
  const number = (input, name, { min, max, integer }) => {
    const value = Number(input.value);
    if (input.value.trim() === "" || !Number.isFinite(value)) {
      throw new Error(`${name} must be a number, got "${input.value}"`);
    }
    if (integer && !Number.isInteger(value)) throw new Error(`${name} must be a whole number, got ${value}`);
    if (value < min || value > max) throw new Error(`${name} must be between ${min} and ${max}, got ${value}`);
    return value;
  };
  const context = state.model?.context ?? 8192;
  return {
    chat: ui.chat.checked,
    temperature: number(ui.temperature, "temperature", { min: 0, max: 5 }),
    topK: number(ui.topK, "top-k", { min: 0, max: 1e9, integer: true }),
    topP: number(ui.topP, "top-p", { min: 0.01, max: 1 }),
    maxTokens: number(ui.maxTokens, "max tokens", { min: 1, max: context, integer: true }),
    seed: number(ui.seed, "seed", { min: 0, max: 2 ** 32 - 1, integer: true }),
  };
}

async function generate() {
  if (state.phase === "generating") {
    setStatus(ui.generateStatus, "Already generating: press Stop first or wait for the answer.", true);
    return;
  }
  if (state.phase !== "ready") {
    setStatus(ui.generateStatus, "Load a model first.", true);
    return;
  }
  let options;
  try {
    options = readOptions();
  } catch (error) {
    setStatus(ui.generateStatus, errorMessage(error), true);
    return;
  }
  const prompt = ui.prompt.value;
  if (prompt.trim() === "") {
    setStatus(ui.generateStatus, "The prompt is empty.", true);
    return;
  }

  setPhase("generating");
  state.stopRequested = false;
  setStatus(ui.generateStatus, "Reading the prompt…");
  let generated = 0;
  let decodeStarted = 0;
  let stepSeconds = 0; // time inside engine steps, without the heatmap reads
  let endNote = "";
  try {
    const prefillStarted = performance.now();
    const start = await withEngine(() => state.engine.startGeneration(prompt, options));
    const prefillSeconds = (performance.now() - prefillStarted) / 1000;
    document.body.dataset.prefillSeconds = prefillSeconds.toFixed(3);
    console.info(`prompt of ${start.rows} tokens ran in ${prefillSeconds.toFixed(2)} s`);
    // The previous answer stays on the page until the new prompt has been accepted.
    ui.answer.textContent = "";
    ui.speed.textContent = "";
    modelView.reset();
    headView.reset(start.labels);
    state.rows = 0;
    if (start.notice) setStatus(ui.generateStatus, start.notice);
    await updateAttention(start.rows, true);
    setStatus(ui.generateStatus, start.notice || "Generating…");
    decodeStarted = performance.now();
    for (;;) {
      if (state.stopRequested) {
        endNote = `Stopped after ${generated} tokens.`;
        break;
      }
      const stepStarted = performance.now();
      const step = await withEngine(() => state.engine.step());
      stepSeconds += (performance.now() - stepStarted) / 1000;
      if (step.text) ui.answer.append(step.text);
      if (step.label !== null) {
        // The token entered the sequence, so it has a label and an attention row.
        generated += 1;
        headView.addLabels([step.label]);
        const seconds = (performance.now() - decodeStarted) / 1000;
        ui.speed.textContent = `${generated} tokens · ${(generated / stepSeconds).toFixed(2)} ` +
          `tokens/s decoding · ${(generated / seconds).toFixed(2)} tokens/s with heatmaps`;
        await updateAttention(step.rows, false);
      }
      if (step.done) {
        endNote = step.reason;
        break;
      }
    }
    if (!state.roles) {
      // Roles describe the model's heads, so they are scored once per model, on the first
      // generated text: scoring runs two more forward passes, which SwiftShader makes slow.
      setStatus(ui.generateStatus, `${endNote} Scoring head roles…`);
      const rolesStarted = performance.now();
      state.roles = await withEngine(() => state.engine.headRoles());
      const rolesSeconds = (performance.now() - rolesStarted) / 1000;
      document.body.dataset.rolesSeconds = rolesSeconds.toFixed(3);
      console.info(`head roles scored in ${rolesSeconds.toFixed(2)} s`);
    }
    modelView.setRoles(state.roles);
    updateHeadTitle();
    setStatus(ui.generateStatus, endNote);
  } catch (error) {
    const kept = generated > 0 ? ` The ${generated} tokens generated so far are kept above.` : "";
    setStatus(ui.generateStatus, `Generation failed: ${errorMessage(error)}.${kept}`, true);
  } finally {
    if (generated > 0) {
      const seconds = (performance.now() - decodeStarted) / 1000;
      document.body.dataset.tokensPerSecond = (generated / seconds).toFixed(3);
      document.body.dataset.decodeTokensPerSecond = (generated / stepSeconds).toFixed(3);
    }
    setPhase(state.model ? "ready" : "idle");
  }
}

/** Fetches attention rows `state.rows .. rows` for the head view and the model view. */
async function updateAttention(rows, isPrompt) {
  const first = state.rows;
  if (rows <= first) return;
  await syncHeadView(rows);

  let rowList = Array.from({ length: rows - first }, (_, i) => first + i);
  if (isPrompt && rowList.length > GRID_PROMPT_ROWS) {
    // NOTE: a long prompt's thumbnails use a sample of its rows, so a pattern confined to
    // skipped rows can be missing from the model view (never from the head view).
    const stride = Math.ceil(rowList.length / GRID_PROMPT_ROWS);
    rowList = rowList.filter((row, i) => i % stride === 0 || row === rows - 1);
  }
  const cells = state.model.layers * state.model.heads;
  const chunk = Math.max(1, Math.floor(GRID_VALUES_PER_READ / (cells * rows)));
  for (let i = 0; i < rowList.length; i += chunk) {
    const part = Uint32Array.from(rowList.slice(i, i + chunk));
    const grid = await withEngine(() => state.engine.attentionAllHeads(part));
    modelView.addRows(part, part[part.length - 1] + 1, grid);
  }
  state.rows = rows;
}

/**
 * Fetches the head view's missing rows up to `rows` for the selected head. A head switch
 * while a read is in flight resets the view, and the loop starts again for the new head.
 */
async function syncHeadView(rows) {
  for (;;) {
    const first = headView.rows;
    if (rows <= first) return;
    const switches = state.headSwitches;
    const { layer, head } = state.selected;
    const weights = await withEngine(() => state.engine.attention(layer, head, first, rows));
    if (switches === state.headSwitches && headView.rows === first) {
      headView.setRows(first, rows - first, rows, weights);
      return;
    }
  }
}

async function selectHead(layer, head) {
  state.selected = { layer, head };
  state.headSwitches += 1;
  ui.layer.value = String(layer);
  ui.head.value = String(head);
  modelView.setSelected(layer, head);
  updateHeadTitle();
  headView.reset(headView.labels);
  if (!state.engine || state.rows === 0) return;
  try {
    await syncHeadView(state.rows);
  } catch (error) {
    setStatus(ui.generateStatus, `Reading attention of layer ${layer}, head ${head} failed: ` +
      `${errorMessage(error)}`, true);
  }
}

function stop() {
  if (state.phase !== "generating") return;
  state.stopRequested = true;
  state.engine.stop().catch((error) => console.error("stop failed", error));
  setStatus(ui.generateStatus, "Stopping after the current token…");
}

ui.modelForm.addEventListener("submit", (event) => {
  event.preventDefault();
  loadModel();
});
ui.generate.addEventListener("click", () => generate());
ui.stop.addEventListener("click", () => stop());
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    generate();
  }
});
ui.layer.addEventListener("change", () => selectHead(Number(ui.layer.value), state.selected.head));
ui.head.addEventListener("change", () => selectHead(state.selected.layer, Number(ui.head.value)));
ui.scale.addEventListener("change", () => {
  headView.setScale(ui.scale.value);
  modelView.setScale(ui.scale.value);
});

// Tests and curious readers can reach the page's state from the console.
window.focal = { state, headView, modelView, selectHead };

main().catch((error) => {
  setStatus(ui.modelStatus, `The page failed to start: ${errorMessage(error)}`, true);
  setPhase("failed");
});
