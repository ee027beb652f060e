// The page's handle on the engine worker: each method posts one request and returns a
// promise for its result. A worker that fails to start (for example because web/pkg was
// never built) rejects every pending and later call with the reason.

export class EngineClient {
  constructor(onProgress) {
    this.onProgress = onProgress;
    this.nextId = 1;
    this.pending = new Map();
    this.failure = null;
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = ({ data }) => this.onMessage(data);
    this.worker.onerror = (event) => {
      event.preventDefault();
      const detail = event.message || "the script or the wasm module failed to load";
      this.fail(`the engine worker failed: ${detail}. Build the wasm module with \`just build-web\`.`);
    };
    this.worker.onmessageerror = () => this.fail("a message from the engine worker could not be read");
  }

  onMessage(data) {
    if (data.event === "progress") {
      this.onProgress(data.phase, data.done, data.total);
      return;
    }
    const request = this.pending.get(data.id);
    if (!request) return;
    this.pending.delete(data.id);
    if ("error" in data) request.reject(new Error(data.error));
    else request.resolve(data.result);
  }

  fail(message) {
    this.failure = new Error(message);
    for (const request of this.pending.values()) request.reject(this.failure);
    this.pending.clear();
  }

  call(method, ...args) {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, method, args });
    });
  }

  open() { return this.call("open"); }
  loadModel(url) { return this.call("loadModel", url); }
  startGeneration(prompt, options) { return this.call("startGeneration", prompt, options); }
  step() { return this.call("step"); }
  stop() { return this.call("stop"); }
  attention(layer, head, start, end) { return this.call("attention", layer, head, start, end); }
  attentionAllHeads(rows) { return this.call("attentionAllHeads", rows); }
  headRoles() { return this.call("headRoles"); }
}
