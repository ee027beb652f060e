// Browser tests of the demo page in headless Chromium on SwiftShader WebGPU, served by
// `focal serve`. The model runs for real, so the tests keep prompts short and token
// limits small, and wait with generous timeouts (they never assert on time).

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import {
  artifactsDir,
  checkPrerequisites,
  focalBinary,
  launchBrowser,
  modelPath,
  nativeAttentionBinary,
  openPage,
  run,
  setPrompt,
  startServer,
  waitForPhase,
} from "./harness.js";
import { colorIndex, nearestColorIndex } from "../../web/heatmap.js";

const MINUTE = 60_000;
const LOAD_TIMEOUT = 5 * MINUTE;
const GENERATE_TIMEOUT = 8 * MINUTE;
const QUESTION = "What is the capital of France?";
/** Layer and head whose head-view pixels are compared with the native engine. */
const CHECKED_LAYER = 3;
const CHECKED_HEAD = 5;

checkPrerequisites();
fs.mkdirSync(artifactsDir, { recursive: true });

/** Returns how many pixels of a canvas differ from its top-left pixel. */
async function countNonBlankPixels(page, selector) {
  return page.$eval(selector, (canvas) => {
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] > 0 && (data[i] > 40 || data[i + 1] > 40 || data[i + 2] > 40)) count++;
    }
    return count;
  });
}

/**
 * Reads the colour at the centre of every head-view cell (row, column <= row) and
 * returns { rows, indices } with the colour map index of each cell, row-major.
 */
async function readHeadViewCells(page) {
  return page.evaluate(() => {
    const view = window.focal.headView;
    const { x, y, cell } = view.layout();
    const context = view.canvas.getContext("2d");
    const { data, width } = context.getImageData(0, 0, view.canvas.width, view.canvas.height);
    const pixels = [];
    for (let row = 0; row < view.rows; row++) {
      for (let column = 0; column <= row; column++) {
        const px = Math.floor(x + (column + 0.5) * cell);
        const py = Math.floor(y + (row + 0.5) * cell);
        const offset = (py * width + px) * 4;
        pixels.push([data[offset], data[offset + 1], data[offset + 2]]);
      }
    }
    return { rows: view.rows, pixels };
  });
}

/**
 * Runs the native engine (Vulkan, lavapipe on CI) on the same chat prompt and returns
 * { rows, cols, labels, probs } for one layer and head.
 */
async function nativeAttention(layer, head) {
  const stdout = await run(nativeAttentionBinary, [modelPath, String(layer), String(head), QUESTION]);
  return JSON.parse(stdout);
}

describe("demo page with WebGPU", () => {
  let server;
  let browser;
  let page;
  let log;
  let errors;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
    ({ page, log, errors } = await openPage(browser, server.url));
  });

  after(async () => {
    if (errors?.length) console.log(`page errors:\n${errors.join("\n")}`);
    if (log?.length) console.log(`browser console:\n${log.slice(-40).join("\n")}`);
    await browser?.close();
    await server?.close();
  });

  test("model loads with progress", { timeout: LOAD_TIMEOUT }, async () => {
    const phase = await waitForPhase(page, ["ready", "idle", "failed", "no-webgpu"], LOAD_TIMEOUT);
    const status = await page.textContent("#model-status");
    assert.equal(phase, "ready", `model status: ${status}`);
    assert.match(status, /30 layers, 9 heads/);
    assert.equal(await page.$eval("#download-progress", (bar) => bar.value), 1);
    assert.equal(await page.$eval("#upload-progress", (bar) => bar.value), 1);
    assert.match(await page.textContent("#download-text"), /98\.4 MB of 98\.4 MB/);
  });

  test("greedy answer names Paris", { timeout: GENERATE_TIMEOUT }, async () => {
    await setPrompt(page, QUESTION, { temperature: 0, maxTokens: 12 });
    await page.click("#generate");
    await waitForPhase(page, ["generating"], MINUTE);
    const phase = await waitForPhase(page, ["ready", "idle", "failed"], GENERATE_TIMEOUT);
    const status = await page.textContent("#generate-status");
    assert.equal(phase, "ready", `generate status: ${status}`);
    const answer = await page.textContent("#answer");
    assert.match(answer, /Paris/, `answer: ${answer}`);
    assert.doesNotMatch(status, /failed/i, status);
    assert.match(await page.textContent("#speed"), /tokens\/s/);
    const timing = await page.evaluate(() => ({ ...document.body.dataset }));
    console.log(`SwiftShader timing: model load ${timing.loadSeconds} s, prompt ` +
      `${timing.prefillSeconds} s, decode ${timing.decodeTokensPerSecond} tokens/s ` +
      `(${timing.tokensPerSecond} with heatmap reads), head roles ${timing.rolesSeconds} s`);
    await page.screenshot({ path: path.join(artifactsDir, "demo.png"), fullPage: true });
  });

  test("head and model views are drawn", async () => {
    assert.ok((await countNonBlankPixels(page, "#head-view")) > 1000, "head view is blank");
    assert.ok((await countNonBlankPixels(page, "#model-view")) > 1000, "model view is blank");
    assert.ok((await countNonBlankPixels(page, "#legend")) > 100, "legend is blank");
    const roles = await page.evaluate(() => window.focal.modelView.roles.length);
    assert.equal(roles, 30 * 9, "every head has a role label");
  });

  test("hover shows exact weight", async () => {
    await page.locator("#head-view").scrollIntoViewIfNeeded();
    const box = await page.locator("#head-view").boundingBox();
    const { x, y, cell } = await page.evaluate(() => window.focal.headView.layout());
    await page.mouse.move(box.x + x + 2.5 * cell, box.y + y + 5.5 * cell);
    const tooltip = await page.textContent("#head-tooltip");
    assert.match(tooltip, /query 5 .* → key 2 .*: \d\.\d{4}/, tooltip);
  });

  test("head view pixels match native attention", { timeout: 3 * MINUTE }, async () => {
    await page.mouse.move(0, 0); // no hover highlight over the cells
    await page.selectOption("#scale", "linear");
    await page.evaluate(([layer, head]) => window.focal.selectHead(layer, head), [CHECKED_LAYER, CHECKED_HEAD]);
    await page.waitForFunction(() => window.focal.headView.rows === window.focal.state.rows);
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    const { rows, pixels } = await readHeadViewCells(page);

    const native = await nativeAttention(CHECKED_LAYER, CHECKED_HEAD);
    const promptRows = native.rows;
    assert.ok(promptRows >= 30, `native run has only ${promptRows} rows`);
    assert.ok(promptRows <= rows, `native rows ${promptRows} exceed the page's ${rows}`);
    const labels = await page.evaluate((count) => window.focal.headView.labels.slice(0, count), promptRows);
    assert.deepEqual(labels, native.labels, "the page and the native run see the same tokens");
    let worst = { difference: -1 };
    let cellIndex = 0;
    for (let row = 0; row < promptRows; row++) {
      for (let column = 0; column <= row; column++, cellIndex++) {
        const [r, g, b] = pixels[cellIndex];
        const shown = nearestColorIndex(r, g, b);
        const expected = colorIndex(native.probs[row * native.cols + column], "linear");
        const difference = Math.abs(shown - expected);
        if (difference > worst.difference) worst = { difference, row, column, shown, expected };
      }
    }
    // 5 colour steps of 255 on the linear scale is 0.02 in probability.
    assert.ok(worst.difference <= 5, `largest colour difference: ${JSON.stringify(worst)}`);

    const stored = await page.evaluate((count) => {
      const view = window.focal.headView;
      const values = [];
      for (let row = 0; row < count; row++) {
        for (let column = 0; column <= row; column++) values.push(view.weight(row, column));
      }
      return values;
    }, promptRows);
    let largest = 0;
    let index = 0;
    for (let row = 0; row < promptRows; row++) {
      for (let column = 0; column <= row; column++, index++) {
        const difference = Math.abs(stored[index] - native.probs[row * native.cols + column]);
        largest = Math.max(largest, difference);
      }
    }
    console.log(`head view vs native: largest probability difference ${largest.toExponential(2)}, ` +
      `largest colour step difference ${worst.difference}`);
    assert.ok(largest < 0.01, `largest probability difference ${largest}`);
  });

  test("prompt longer than context is rejected", { timeout: 3 * MINUTE }, async () => {
    const answerBefore = await page.textContent("#answer");
    await setPrompt(page, "Paris ".repeat(9000), { temperature: 0, maxTokens: 4 });
    await page.click("#generate");
    await page.waitForFunction(
      () => document.querySelector("#generate-status").classList.contains("error"),
      null,
      { timeout: 2 * MINUTE },
    );
    const status = await page.textContent("#generate-status");
    assert.match(status, /context holds 8192 tokens/, status);
    assert.equal(await waitForPhase(page, ["ready"], MINUTE), "ready");
    assert.equal(await page.textContent("#answer"), answerBefore, "the previous answer is kept");
  });

  test("stop and head switch mid-generation", { timeout: GENERATE_TIMEOUT }, async () => {
    await setPrompt(page, "Name three colours.", { temperature: 0.8, maxTokens: 40, seed: 7 });
    await page.click("#generate");
    // The answer is cleared when the prompt is accepted, so text now is new text.
    await page.waitForFunction(
      () => window.focal.state.generated >= 1 && document.querySelector("#answer").textContent.length > 0,
      null,
      { timeout: GENERATE_TIMEOUT },
    );

    await page.press("#prompt", "Control+Enter");
    assert.match(await page.textContent("#generate-status"), /Already generating/);

    await page.selectOption("#layer", "2");
    await page.selectOption("#head", "1");
    await page.click("#stop");
    const phase = await waitForPhase(page, ["ready", "idle", "failed"], GENERATE_TIMEOUT);
    assert.equal(phase, "ready");
    const status = await page.textContent("#generate-status");
    assert.match(status, /Stopped after \d+ tokens/, status);
    const answer = await page.textContent("#answer");
    assert.ok(answer.length > 0, "the partial answer is kept");

    await page.waitForFunction(() => window.focal.headView.rows === window.focal.state.rows, null, {
      timeout: MINUTE,
    });
    const selected = await page.evaluate(() => window.focal.state.selected);
    assert.deepEqual(selected, { layer: 2, head: 1 });
    assert.match(await page.textContent("#head-title"), /layer 2, head 1/);
  });

  test("every attention kernel matches the CPU in the browser", { timeout: 5 * MINUTE }, async () => {
    // A second engine on the page's main thread, beside the worker's. The check needs no
    // model, only a device, so every kernel goes through the browser's shader compiler.
    const checks = await page.evaluate(async () => {
      const wasm = await import("/pkg/focal_web.js");
      await wasm.default();
      const engine = await wasm.Engine.open();
      return engine.checkKernels();
    });
    const kernels = [...new Set(checks.map((check) => check.kernel))].sort();
    assert.deepEqual(kernels, ["decode", "flash", "naive", "paged", "probs"]);
    for (const check of checks) {
      assert.ok(
        check.passed,
        `${check.kernel} ${check.dtype} ${check.case}: max error ${check.maxError}, allowed ${check.tolerance}`,
      );
    }
    console.log(`browser kernel check: ${checks.length} cases, largest error ` +
      `${Math.max(...checks.map((check) => check.maxError)).toExponential(2)}`);
  });

  test("bad model URLs show errors", { timeout: 2 * MINUTE }, async () => {
    await page.fill("#model-url", "missing.gguf");
    await page.click("#load");
    await waitForPhase(page, ["idle"], MINUTE);
    assert.match(await page.textContent("#model-status"), /HTTP 404/);

    await page.fill("#model-url", "index.html");
    await page.click("#load");
    await waitForPhase(page, ["idle"], MINUTE);
    assert.match(await page.textContent("#model-status"), /HTML page/);
    assert.equal(await page.$eval("#generate", (button) => button.disabled), true);
    assert.equal(await page.$eval("#load", (button) => button.disabled), false);
    assert.deepEqual(errors, [], "the page threw");
  });
});

describe("demo page with a truncated model", () => {
  let server;
  let browser;
  let truncated;

  before(async () => {
    truncated = path.join(os.tmpdir(), `focal-e2e-truncated-${process.pid}.gguf`);
    const handle = fs.openSync(modelPath, "r");
    const head = Buffer.alloc(4 << 20);
    fs.readSync(handle, head, 0, head.length, 0);
    fs.closeSync(handle);
    fs.writeFileSync(truncated, head);
    server = await startServer({ model: truncated });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    fs.rmSync(truncated, { force: true });
  });

  test("truncated file shows an error", { timeout: 2 * MINUTE }, async () => {
    const { page, errors } = await openPage(browser, server.url);
    const phase = await waitForPhase(page, ["ready", "idle", "failed"], MINUTE);
    const status = await page.textContent("#model-status");
    assert.equal(phase, "idle", status);
    assert.match(status, /Loading the model failed: .*GGUF/, status);
    assert.equal(await page.$eval("#load", (button) => button.disabled), false);
    assert.deepEqual(errors, [], "the page threw");
  });
});

describe("demo page without WebGPU", () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser({ webgpu: false });
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test("page explains missing WebGPU", { timeout: MINUTE }, async () => {
    const { page, errors } = await openPage(browser, server.url);
    assert.equal(await waitForPhase(page, ["no-webgpu", "ready", "idle", "failed"], MINUTE), "no-webgpu");
    assert.equal(await page.isVisible("#no-webgpu"), true);
    const reason = await page.textContent("#no-webgpu-reason");
    assert.match(reason, /navigator\.gpu|adapter/, reason);
    assert.match(await page.textContent("#no-webgpu"), /--enable-unsafe-webgpu/);
    assert.equal(await page.$eval("#generate", (button) => button.disabled), true);
    assert.deepEqual(errors, [], "the page threw");
  });

  // The heatmap classes need no WebGPU, so this feeds them synthetic attention rows: a
  // sink on token 0 plus a previous-token diagonal, one row per step as in generation.
  test("heatmaps handle 2048 tokens and clicks", { timeout: 3 * MINUTE }, async () => {
    const { page, errors } = await openPage(browser, server.url);
    await waitForPhase(page, ["no-webgpu"], MINUTE);
    const timing = await page.evaluate(async () => {
      const { headView, modelView } = window.focal;
      const tokens = 2048;
      modelView.configure(30, 9);
      headView.reset(Array.from({ length: tokens }, (_, i) => `t${i}`));
      const started = performance.now();
      for (let row = 0; row < tokens; row++) {
        const keys = row + 1;
        const weights = new Float32Array(keys);
        weights[0] = row === 0 ? 1 : 0.5;
        if (row > 0) weights[row - 1] += 0.5;
        headView.setRows(row, 1, keys, weights);
        if (row % 64 === 63 || row === tokens - 1) {
          const grid = new Float32Array(30 * 9 * keys);
          for (let cell = 0; cell < 30 * 9; cell++) grid.set(weights, cell * keys);
          modelView.addRows([row], keys, grid);
        }
      }
      const fed = performance.now() - started;
      await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
      const drawStarted = performance.now();
      headView.draw();
      modelView.draw();
      return { fedMs: fed, drawMs: performance.now() - drawStarted };
    });
    console.log(`2048-token heatmaps: rows fed in ${timing.fedMs.toFixed(0)} ms, ` +
      `one redraw of both views in ${timing.drawMs.toFixed(1)} ms`);

    await page.locator("#head-view").scrollIntoViewIfNeeded();
    const box = await page.locator("#head-view").boundingBox();
    const { x, y, cell } = await page.evaluate(() => window.focal.headView.layout());
    await page.mouse.move(box.x + x + 1000.5 * cell, box.y + y + 1001.5 * cell);
    // A cell is a third of a pixel here, so the hovered cell may be a neighbour of the
    // aimed one: check that the tooltip's weight is the one stored for its own cell.
    const tooltip = await page.textContent("#head-tooltip");
    const match = tooltip.match(/query (\d+) "t\d+" → key (\d+) "t\d+": (\d\.\d{4})/);
    assert.ok(match, tooltip);
    const [row, column, shown] = [Number(match[1]), Number(match[2]), Number(match[3])];
    assert.ok(Math.abs(row - 1001) <= 4, tooltip);
    assert.ok(Math.abs(column - 1000) <= 4, tooltip);
    let expected = 0;
    if (column === 0) expected += 0.5;
    if (column === row - 1) expected += 0.5;
    assert.equal(shown, expected, tooltip);
    assert.ok((await countNonBlankPixels(page, "#head-view")) > 1000, "head view is blank");
    assert.ok((await countNonBlankPixels(page, "#model-view")) > 1000, "model view is blank");

    const thumbnail = page.locator("#model-view");
    await thumbnail.scrollIntoViewIfNeeded();
    const origin = await page.evaluate(() => window.focal.modelView.cellOrigin(4, 7));
    await thumbnail.click({ position: { x: origin.x + 10, y: origin.y + 10 } });
    assert.deepEqual(await page.evaluate(() => window.focal.state.selected), { layer: 4, head: 7 });
    assert.match(await page.textContent("#head-title"), /layer 4, head 7/);
    assert.deepEqual(errors, [], "the page threw");
  });
});
