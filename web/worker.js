// Runs the wasm engine in a dedicated worker, so downloading, tokenising and uploading
// the model do not block the page. Messages in: { id, method, args }. Messages out:
// { id, result } or { id, error }, plus { event: "progress", phase, done, total } while
// a model loads. Float32Array results are transferred, not copied.

import init, { Engine } from "./pkg/focal_web.js";

let engine = null;
let ready = null;

function messageOf(error) {
  if (error instanceof Error) return error.message;
  return String(error);
}

async function call(method, args) {
  ready ??= init();
  await ready;
  if (method === "open") {
    engine ??= await Engine.open();
    return { summary: engine.adapterSummary(), info: engine.adapterInfo() };
  }
  if (!engine) throw new Error("the engine is not open yet");
  if (method === "stop") return engine.stop();
  if (method === "loadModel") {
    const report = (phase, done, total) => self.postMessage({ event: "progress", phase, done, total });
    return engine.loadModel(args[0], report);
  }
  const allowed = ["startGeneration", "step", "attention", "attentionAllHeads", "headRoles"];
  if (!allowed.includes(method)) throw new Error(`unknown engine method ${method}`);
  return engine[method](...args);
}

self.onmessage = async ({ data }) => {
  const { id, method, args } = data;
  try {
    const result = await call(method, args ?? []);
    const transfer = result instanceof Float32Array ? [result.buffer] : [];
    self.postMessage({ id, result }, transfer);
  } catch (error) {
    self.postMessage({ id, error: messageOf(error) });
  }
};
