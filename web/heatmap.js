// Attention heatmaps drawn on <canvas>: the head view (one layer and head, token x token)
// and the model view (every layer x head as a thumbnail). Both keep their data in typed
// arrays and draw whole images, never one DOM node per cell, so they stay responsive at
// thousands of tokens.

// Viridis, as the 6th-degree polynomial fit by Matt Zucker (shadertoy "viridis"), sampled
// into 256 entries. Index 0 is the lowest weight.
const VIRIDIS = [
  [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
  [0.1050930431085774, 1.404613529898575, 1.384590162594685],
  [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
  [-4.634230498983486, -5.799100973351585, -19.33244095627987],
  [6.228269936347081, 14.17993336680509, 56.69055260068105],
  [4.776384997670288, -13.74514537774601, -65.35303263337234],
  [-5.435455855934631, 4.645852612178535, 26.3124352495832],
];

/** Colour lookup table: 256 entries of [r, g, b] bytes. */
export const COLORMAP = Array.from({ length: 256 }, (_, index) => {
  const t = index / 255;
  return [0, 1, 2].map((channel) => {
    let value = 0;
    for (let power = VIRIDIS.length - 1; power >= 0; power--) {
      value = value * t + VIRIDIS[power][channel];
    }
    return Math.round(Math.min(1, Math.max(0, value)) * 255);
  });
});

/** Colour scales: how a weight in [0, 1] maps to a position in [0, 1] on the colour map. */
export const SCALES = {
  linear: { forward: (w) => w, inverse: (x) => x },
  sqrt: { forward: (w) => Math.sqrt(w), inverse: (x) => x * x },
};

/** Returns the colour map index (0..255) of an attention weight under `scale`. */
export function colorIndex(weight, scale = "sqrt") {
  const position = SCALES[scale].forward(Math.min(1, Math.max(0, weight)));
  return Math.round(position * 255);
}

/** Returns the weight at the centre of colour map entry `index` under `scale`. */
export function weightOfIndex(index, scale = "sqrt") {
  return SCALES[scale].inverse(index / 255);
}

/** Returns the colour map index whose colour is nearest to an [r, g, b] pixel. */
export function nearestColorIndex(r, g, b) {
  let best = 0;
  let bestDistance = Infinity;
  for (let index = 0; index < 256; index++) {
    const [cr, cg, cb] = COLORMAP[index];
    const distance = (cr - r) ** 2 + (cg - g) ** 2 + (cb - b) ** 2;
    if (distance < bestDistance) {
      best = index;
      bestDistance = distance;
    }
  }
  return best;
}

/** Formats a token for an axis label: visible spaces and newlines, at most `max` chars. */
export function tokenLabel(text, max = 10) {
  const visible = text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·");
  return visible.length > max ? visible.slice(0, max - 1) + "…" : visible;
}

function writePixel(pixels, offset, weight, scale) {
  const [r, g, b] = COLORMAP[colorIndex(weight, scale)];
  pixels[offset] = r;
  pixels[offset + 1] = g;
  pixels[offset + 2] = b;
  pixels[offset + 3] = 255;
}

function makeCanvas(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

const LABEL_FONT = "11px system-ui, sans-serif";
const MARGIN = 72;

/**
 * Head view: the full token x token attention matrix of one layer and head, one row per
 * query token. Rows arrive as they are generated; `draw` is batched to animation frames.
 */
export class HeadView {
  constructor(canvas, legendCanvas, tooltip) {
    this.canvas = canvas;
    this.legendCanvas = legendCanvas;
    this.tooltip = tooltip;
    this.scale = "sqrt";
    this.hover = null;
    this.reset([]);
    canvas.addEventListener("mousemove", (event) => this.onMouseMove(event));
    canvas.addEventListener("mouseleave", () => this.setHover(null));
    this.drawLegend();
  }

  /** Clears the matrix and sets the token labels (one per row and column). */
  reset(labels) {
    this.labels = labels.slice();
    this.rows = 0;
    this.capacity = 0;
    this.weights = new Float32Array(0);
    this.image = null;
    this.ensureCapacity(Math.max(64, labels.length));
    this.requestDraw();
  }

  /** Appends token labels for positions that have no label yet. */
  addLabels(labels) {
    this.labels.push(...labels);
    this.ensureCapacity(this.labels.length);
    this.requestDraw();
  }

  setScale(scale) {
    this.scale = scale;
    this.repaintImage();
    this.drawLegend();
    this.requestDraw();
  }

  ensureCapacity(count) {
    if (count <= this.capacity) return;
    let capacity = Math.max(64, this.capacity);
    while (capacity < count) capacity *= 2;
    const weights = new Float32Array(capacity * capacity);
    for (let row = 0; row < this.rows; row++) {
      weights.set(this.weights.subarray(row * this.capacity, row * this.capacity + this.rows), row * capacity);
    }
    this.weights = weights;
    this.capacity = capacity;
    this.image = makeCanvas(capacity, capacity);
    this.repaintImage();
  }

  /**
   * Stores rows `start .. start + count` of the matrix. `data` holds `count` rows of
   * `keys` weights each, row-major. Columns past a row's causal limit are ignored.
   */
  setRows(start, count, keys, data) {
    this.ensureCapacity(Math.max(start + count, keys, this.labels.length));
    for (let i = 0; i < count; i++) {
      const row = start + i;
      const width = Math.min(keys, row + 1);
      this.weights.set(data.subarray(i * keys, i * keys + width), row * this.capacity);
    }
    this.rows = Math.max(this.rows, start + count);
    this.paintRows(start, count);
    this.requestDraw();
  }

  /** Returns the stored weight of query `row` on key `column`, or undefined. */
  weight(row, column) {
    if (row >= this.rows || column > row) return undefined;
    return this.weights[row * this.capacity + column];
  }

  repaintImage() {
    if (!this.image) return;
    const context = this.image.getContext("2d");
    context.clearRect(0, 0, this.capacity, this.capacity);
    if (this.rows > 0) this.paintRows(0, this.rows);
  }

  paintRows(start, count) {
    const width = Math.max(1, start + count);
    const image = new ImageData(width, count);
    for (let i = 0; i < count; i++) {
      const row = start + i;
      for (let column = 0; column < width; column++) {
        const offset = (i * width + column) * 4;
        if (column <= row) {
          writePixel(image.data, offset, this.weights[row * this.capacity + column], this.scale);
        } else {
          image.data[offset + 3] = 0;
        }
      }
    }
    this.image.getContext("2d").putImageData(image, 0, start);
  }

  requestDraw() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.draw();
    });
  }

  /** Plot geometry: top-left corner, side in pixels and the number of tokens shown. */
  layout() {
    const tokens = Math.max(this.rows, this.labels.length, 1);
    // The space below the plot holds the key axis title.
    const side = Math.max(1, Math.min(this.canvas.width, this.canvas.height) - MARGIN - 18);
    return { x: MARGIN, y: MARGIN, side, tokens, cell: side / tokens };
  }

  draw() {
    const context = this.canvas.getContext("2d");
    const { x, y, side, tokens, cell } = this.layout();
    context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    context.fillStyle = "#111";
    context.fillRect(x, y, side, side);
    if (this.rows > 0) {
      // Upscaling keeps hard cell edges; downscaling past one pixel per token averages.
      context.imageSmoothingEnabled = cell < 1;
      context.imageSmoothingQuality = "high";
      context.drawImage(this.image, 0, 0, tokens, tokens, x, y, side, side);
    }
    this.drawLabels(context, x, y, side, tokens, cell);
    if (this.hover) this.drawHover(context, x, y, cell);
  }

  drawLabels(context, x, y, side, tokens, cell) {
    context.font = LABEL_FONT;
    context.fillStyle = "#ccc";
    const step = Math.max(1, Math.ceil(12 / cell));
    context.textAlign = "right";
    context.textBaseline = "middle";
    for (let index = 0; index < this.labels.length && index < tokens; index += step) {
      context.fillText(tokenLabel(this.labels[index]), x - 4, y + (index + 0.5) * cell);
    }
    context.save();
    context.translate(x, y - 4);
    context.rotate(-Math.PI / 2);
    context.textAlign = "left";
    for (let index = 0; index < this.labels.length && index < tokens; index += step) {
      context.fillText(tokenLabel(this.labels[index]), 0, (index + 0.5) * cell);
    }
    context.restore();
    context.textAlign = "right";
    context.textBaseline = "top";
    context.fillStyle = "#888";
    context.fillText("keys →", x + side, y + side + 3);
    context.textAlign = "left";
    context.textBaseline = "middle";
    context.save();
    context.translate(8, y + side - 8);
    context.rotate(-Math.PI / 2);
    context.fillText("queries →", 0, 0);
    context.restore();
  }

  drawHover(context, x, y, cell) {
    const { row, column } = this.hover;
    const thickness = Math.max(1, cell);
    context.fillStyle = "rgba(255, 255, 255, 0.18)";
    context.fillRect(x, y + row * cell, (row + 1) * cell, thickness);
    context.fillRect(x + column * cell, y + column * cell, thickness, (this.rows - column) * cell);
    context.strokeStyle = "#fff";
    context.lineWidth = 1;
    context.strokeRect(x + column * cell, y + row * cell, thickness, thickness);
  }

  onMouseMove(event) {
    const bounds = this.canvas.getBoundingClientRect();
    const px = ((event.clientX - bounds.left) * this.canvas.width) / bounds.width;
    const py = ((event.clientY - bounds.top) * this.canvas.height) / bounds.height;
    const { x, y, side, cell } = this.layout();
    let row = Math.floor((py - y) / cell);
    let column = Math.floor((px - x) / cell);
    if (px < x && py >= y && py < y + side) column = row; // a row label: that token
    if (py < y && px >= x && px < x + side) row = column; // a column label: that token
    if (row < 0 || column < 0 || row >= this.rows || column > row) {
      this.setHover(null);
      return;
    }
    this.setHover({ row, column });
  }

  /** Highlights query `row` and key `column` and shows their exact weight. */
  setHover(hover) {
    this.hover = hover;
    if (!hover) {
      this.tooltip.textContent = "Hover over the matrix or a token label for exact weights.";
    } else {
      const { row, column } = hover;
      const weight = this.weight(row, column);
      const rowLabel = JSON.stringify(this.labels[row] ?? "");
      const columnLabel = JSON.stringify(this.labels[column] ?? "");
      let text = `query ${row} ${rowLabel} → key ${column} ${columnLabel}: ${weight.toFixed(4)}`;
      const top = this.topKeys(row, 3)
        .map(([key, value]) => `${JSON.stringify(this.labels[key] ?? "")} ${value.toFixed(3)}`)
        .join(", ");
      text += ` · strongest keys of query ${row}: ${top}`;
      this.tooltip.textContent = text;
    }
    this.requestDraw();
  }

  topKeys(row, count) {
    const entries = [];
    for (let column = 0; column <= row; column++) entries.push([column, this.weight(row, column)]);
    entries.sort((a, b) => b[1] - a[1]);
    return entries.slice(0, count);
  }

  drawLegend() {
    const canvas = this.legendCanvas;
    const context = canvas.getContext("2d");
    const width = canvas.width;
    const barTop = 4;
    const barHeight = 14;
    context.clearRect(0, 0, width, canvas.height);
    const bar = new ImageData(256, 1);
    for (let index = 0; index < 256; index++) {
      const [r, g, b] = COLORMAP[index];
      bar.data.set([r, g, b, 255], index * 4);
    }
    const strip = makeCanvas(256, 1);
    strip.getContext("2d").putImageData(bar, 0, 0);
    context.imageSmoothingEnabled = false;
    context.drawImage(strip, 0, 0, 256, 1, 0, barTop, width, barHeight);
    context.font = LABEL_FONT;
    context.fillStyle = "#ccc";
    context.textBaseline = "top";
    for (const tick of [0, 0.01, 0.05, 0.1, 0.25, 0.5, 1]) {
      const position = SCALES[this.scale].forward(tick) * (width - 1);
      context.fillRect(position, barTop + barHeight, 1, 4);
      context.textAlign = "center";
      if (tick === 0) context.textAlign = "left";
      if (tick === 1) context.textAlign = "right";
      if (this.scale === "linear" && tick > 0 && tick < 0.25) continue;
      context.fillText(String(tick), position, barTop + barHeight + 5);
    }
  }
}

/** Short names of head roles for the grid. */
const ROLE_SHORT = {
  "previous-token": "prev",
  sink: "sink",
  local: "local",
  induction: "induct",
  broad: "broad",
};

/**
 * Model view: one thumbnail per (layer, head), rows = layers, columns = heads. Each
 * thumbnail is a `bins` x `bins` max-pooled summary of the head's matrix. When the
 * sequence outgrows it, neighbouring bins merge two by two, so memory stays fixed.
 */
export class ModelView {
  constructor(canvas, tooltip, onSelect) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.onSelect = onSelect;
    this.bins = 32;
    this.thumb = 44;
    this.gap = 9;
    this.labelHeight = 13;
    this.scale = "sqrt";
    this.layers = 0;
    this.heads = 0;
    this.selected = { layer: 0, head: 0 };
    this.roles = [];
    this.hover = null;
    canvas.addEventListener("click", (event) => {
      const cell = this.cellAt(event);
      if (cell) this.onSelect(cell.layer, cell.head);
    });
    canvas.addEventListener("mousemove", (event) => this.onMouseMove(event));
    canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.updateTooltip();
      this.requestDraw();
    });
  }

  /** Sizes the grid for a model and clears every thumbnail and role label. */
  configure(layers, heads) {
    this.layers = layers;
    this.heads = heads;
    this.left = 28;
    this.top = 16;
    this.canvas.width = this.left + heads * (this.thumb + this.gap);
    this.canvas.height = this.top + layers * (this.thumb + this.labelHeight + this.gap);
    this.roles = [];
    this.reset();
  }

  /** Clears every thumbnail; role labels stay, because they belong to the model. */
  reset() {
    const cells = this.layers * this.heads;
    this.span = 1;
    this.tokens = 0;
    this.grids = new Float32Array(cells * this.bins * this.bins);
    this.atlas = makeCanvas(Math.max(1, this.heads * this.bins), Math.max(1, this.layers * this.bins));
    this.requestDraw();
  }

  setScale(scale) {
    this.scale = scale;
    this.repaintAtlas();
    this.requestDraw();
  }

  setSelected(layer, head) {
    this.selected = { layer, head };
    this.requestDraw();
  }

  /** Sets role labels: an array of { layer, head, role, score }. */
  setRoles(roles) {
    this.roles = roles;
    this.updateTooltip();
    this.requestDraw();
  }

  roleOf(layer, head) {
    return this.roles.find((role) => role.layer === layer && role.head === head);
  }

  /**
   * Adds the query rows listed in `rows` (ascending) for every head. `data` is laid out
   * as [layer][head][row][key] with `keys` keys per row. Rows left out of a long prompt
   * leave their bins at the maximum of the rows that were given.
   */
  addRows(rows, keys, data) {
    if (rows.length === 0) return;
    const end = rows[rows.length - 1] + 1;
    while (end > this.bins * this.span) this.mergeBins();
    const bins = this.bins;
    const perHead = rows.length * keys;
    for (let cell = 0; cell < this.layers * this.heads; cell++) {
      const grid = this.grids.subarray(cell * bins * bins, (cell + 1) * bins * bins);
      const base = cell * perHead;
      for (let i = 0; i < rows.length; i++) {
        const row = rows[i];
        const rowBin = Math.floor(row / this.span) * bins;
        const width = Math.min(keys, row + 1);
        for (let key = 0; key < width; key++) {
          const value = data[base + i * keys + key];
          const index = rowBin + Math.floor(key / this.span);
          if (value > grid[index]) grid[index] = value;
        }
      }
    }
    this.tokens = Math.max(this.tokens, end);
    this.repaintAtlas();
    this.requestDraw();
  }

  mergeBins() {
    const bins = this.bins;
    const half = bins / 2;
    for (let cell = 0; cell < this.layers * this.heads; cell++) {
      const grid = this.grids.subarray(cell * bins * bins, (cell + 1) * bins * bins);
      const merged = new Float32Array(bins * bins);
      for (let row = 0; row < half; row++) {
        for (let column = 0; column < half; column++) {
          const a = grid[2 * row * bins + 2 * column];
          const b = grid[2 * row * bins + 2 * column + 1];
          const c = grid[(2 * row + 1) * bins + 2 * column];
          const d = grid[(2 * row + 1) * bins + 2 * column + 1];
          merged[row * bins + column] = Math.max(a, b, c, d);
        }
      }
      grid.set(merged);
    }
    this.span *= 2;
  }

  repaintAtlas() {
    const bins = this.bins;
    const width = this.heads * bins;
    const height = this.layers * bins;
    if (width === 0 || height === 0) return;
    const image = new ImageData(width, height);
    const used = Math.ceil(this.tokens / this.span);
    for (let layer = 0; layer < this.layers; layer++) {
      for (let head = 0; head < this.heads; head++) {
        const grid = (layer * this.heads + head) * bins * bins;
        for (let row = 0; row < used; row++) {
          for (let column = 0; column <= row; column++) {
            const offset = ((layer * bins + row) * width + head * bins + column) * 4;
            writePixel(image.data, offset, this.grids[grid + row * bins + column], this.scale);
          }
        }
      }
    }
    this.atlas.getContext("2d").putImageData(image, 0, 0);
  }

  requestDraw() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      this.draw();
    });
  }

  cellOrigin(layer, head) {
    return {
      x: this.left + head * (this.thumb + this.gap),
      y: this.top + layer * (this.thumb + this.labelHeight + this.gap),
    };
  }

  draw() {
    const context = this.canvas.getContext("2d");
    context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    context.font = "10px system-ui, sans-serif";
    context.textBaseline = "top";
    context.fillStyle = "#888";
    context.textAlign = "center";
    for (let head = 0; head < this.heads; head++) {
      context.fillText(`h${head}`, this.cellOrigin(0, head).x + this.thumb / 2, 2);
    }
    const used = Math.max(1, Math.ceil(this.tokens / this.span));
    context.imageSmoothingEnabled = false;
    for (let layer = 0; layer < this.layers; layer++) {
      context.fillStyle = "#888";
      context.textAlign = "right";
      context.fillText(`L${layer}`, this.left - 4, this.cellOrigin(layer, 0).y + this.thumb / 2 - 5);
      for (let head = 0; head < this.heads; head++) {
        const { x, y } = this.cellOrigin(layer, head);
        context.fillStyle = "#111";
        context.fillRect(x, y, this.thumb, this.thumb);
        if (this.tokens > 0) {
          const sx = head * this.bins;
          const sy = layer * this.bins;
          context.drawImage(this.atlas, sx, sy, used, used, x, y, this.thumb, this.thumb);
        }
        this.drawRole(context, layer, head, x, y);
      }
    }
    this.drawMarker(this.selected, "#ff5");
    if (this.hover) this.drawMarker(this.hover, "#fff");
  }

  drawRole(context, layer, head, x, y) {
    const role = this.roleOf(layer, head);
    if (!role) return;
    context.fillStyle = "#bbb";
    context.textAlign = "left";
    const name = ROLE_SHORT[role.role] ?? role.role;
    const score = role.score.toFixed(2).replace(/^0/, "");
    context.fillText(`${name} ${score}`, x, y + this.thumb + 1);
  }

  drawMarker(cell, color) {
    if (cell.layer >= this.layers || cell.head >= this.heads) return;
    const context = this.canvas.getContext("2d");
    const { x, y } = this.cellOrigin(cell.layer, cell.head);
    context.strokeStyle = color;
    context.lineWidth = 2;
    context.strokeRect(x - 2, y - 2, this.thumb + 4, this.thumb + 4);
  }

  cellAt(event) {
    const bounds = this.canvas.getBoundingClientRect();
    const px = ((event.clientX - bounds.left) * this.canvas.width) / bounds.width;
    const py = ((event.clientY - bounds.top) * this.canvas.height) / bounds.height;
    const head = Math.floor((px - this.left) / (this.thumb + this.gap));
    const layer = Math.floor((py - this.top) / (this.thumb + this.labelHeight + this.gap));
    if (head < 0 || head >= this.heads || layer < 0 || layer >= this.layers) return null;
    return { layer, head };
  }

  onMouseMove(event) {
    this.hover = this.cellAt(event);
    this.updateTooltip();
    this.requestDraw();
  }

  updateTooltip() {
    if (!this.hover) {
      this.tooltip.textContent = "Click a thumbnail to show that head above.";
      return;
    }
    const { layer, head } = this.hover;
    const role = this.roleOf(layer, head);
    let text = `layer ${layer}, head ${head}`;
    if (role) {
      text += `: ${role.role} (score ${role.score.toFixed(3)})`;
      if (role.scores) {
        const all = Object.entries(role.scores)
          .map(([name, score]) => `${name} ${Number(score).toFixed(2)}`)
          .join(", ");
        text += ` · ${all}`;
      }
    }
    this.tooltip.textContent = text;
  }
}
