// Shared pieces of the browser tests: the `focal serve` process, headless Chromium with
// or without WebGPU, and page helpers. Every process started here is stopped by the test
// that started it.

import { spawn, execFile } from "node:child_process";
import { promisify } from "node:util";
import path from "node:path";
import { fileURLToPath } from "node:url";
import fs from "node:fs";
import { chromium } from "playwright-core";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const focalBinary = process.env.FOCAL_BIN ?? path.join(repoRoot, "target/release/focal");
/** Native helper that prints a head's attention probabilities for a prompt as JSON. */
export const nativeAttentionBinary = path.join(repoRoot, "target/release/examples/native_attention");
export const modelPath =
  process.env.FOCAL_MODEL ?? path.join(repoRoot, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
export const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const artifactsDir = path.join(repoRoot, "target/e2e");

/** Flags that keep Chromium from contacting any host but 127.0.0.1. */
const QUIET_FLAGS = [
  "--no-sandbox",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-default-apps",
  "--disable-domain-reliability",
  "--metrics-recording-only",
];

/** WebGPU on Chromium's bundled SwiftShader; the last two flags keep canvases alive. */
const WEBGPU_FLAGS = [
  "--enable-unsafe-webgpu",
  "--use-angle=swiftshader",
  "--use-webgpu-adapter=opengles",
];

/** Fails with a clear message when a prerequisite of the browser tests is missing. */
export function checkPrerequisites() {
  const missing = [];
  if (!fs.existsSync(chromiumPath)) missing.push(`${chromiumPath} (apt-get install chromium)`);
  if (!fs.existsSync(focalBinary)) missing.push(`${focalBinary} (cargo build --release -p focal-cli)`);
  if (!fs.existsSync(nativeAttentionBinary)) {
    missing.push(`${nativeAttentionBinary} (cargo build --release -p focal-web --example native_attention)`);
  }
  if (!fs.existsSync(path.join(repoRoot, "web/pkg/focal_web_bg.wasm"))) {
    missing.push("web/pkg/focal_web_bg.wasm (just build-web)");
  }
  if (!fs.existsSync(modelPath)) missing.push(`${modelPath} (just fetch-model)`);
  if (missing.length > 0) {
    throw new Error(`browser tests need: ${missing.join(", ")}`);
  }
}

/**
 * Starts `focal serve` on a free port and resolves to { url, close } once it prints its
 * URL. `model` is the file served at /model.gguf.
 */
export function startServer({ model = modelPath } = {}) {
  const child = spawn(focalBinary, ["serve", "--root", "web", "--model", model, "--port", "0"], {
    cwd: repoRoot,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`focal serve printed no URL within 30 s; output: ${output}`));
    }, 30_000);
    const onData = (chunk) => {
      output += chunk;
      const match = output.match(/http:\/\/127\.0\.0\.1:\d+\//);
      if (match) {
        clearTimeout(timer);
        resolve({
          url: match[0],
          close: () =>
            new Promise((done) => {
              if (child.exitCode !== null) return done();
              child.once("exit", () => done());
              child.kill();
            }),
        });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (chunk) => (output += chunk));
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`focal serve exited with code ${code}: ${output}`));
    });
  });
}

/** Launches headless Chromium, with SwiftShader WebGPU unless `webgpu` is false. */
export function launchBrowser({ webgpu = true } = {}) {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: webgpu ? [...QUIET_FLAGS, ...WEBGPU_FLAGS] : QUIET_FLAGS,
  });
}

/**
 * Opens a page that records console output and uncaught errors, for failure messages and
 * for the check that the page never throws.
 */
export async function openPage(browser, url) {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1400 } });
  const log = [];
  const errors = [];
  page.on("console", (message) => log.push(`[${message.type()}] ${message.text()}`));
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("worker", (worker) => {
    worker.on("console", (message) => log.push(`[worker ${message.type()}] ${message.text()}`));
  });
  await page.goto(url);
  return { page, log, errors };
}

/** Waits until the page's phase (body[data-phase]) is one of `phases`; returns it. */
export async function waitForPhase(page, phases, timeout) {
  await page.waitForFunction(
    (wanted) => wanted.includes(document.body.dataset.phase),
    phases,
    { timeout, polling: 250 },
  );
  return page.evaluate(() => document.body.dataset.phase);
}

/** Sets the sampling controls and the prompt. */
export async function setPrompt(page, prompt, options) {
  await page.fill("#prompt", prompt);
  await page.setChecked("#chat", options.chat ?? true);
  await page.fill("#temperature", String(options.temperature));
  await page.fill("#top-k", String(options.topK ?? 40));
  await page.fill("#top-p", String(options.topP ?? 0.95));
  await page.fill("#max-tokens", String(options.maxTokens));
  await page.fill("#seed", String(options.seed ?? 1));
}

/** Runs a command and resolves to its stdout; rejects with stderr on failure. */
export async function run(command, args, options = {}) {
  const { stdout } = await promisify(execFile)(command, args, {
    cwd: repoRoot,
    maxBuffer: 256 * 1024 * 1024,
    ...options,
  });
  return stdout;
}
