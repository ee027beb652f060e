//! `focal heatmap`: draws captured attention probabilities as a PNG, either one head with
//! token labels or a grid of every layer and head, each with a colour scale.

use std::path::PathBuf;

use focal::model::{AttentionMap, Model};
use focal::{Error, Result};
use font8x8::UnicodeFonts;

use crate::generate::{load_model, prompt_tokens, PromptArgs};

const DEFAULT_PROMPT: &str = "The quick brown fox jumps over the lazy dog. The quick brown fox";
/// Glyph size of the built-in 8x8 bitmap font.
const GLYPH: usize = 8;
/// Characters of a token label that are drawn.
const LABEL_CHARS: usize = 10;
const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [20, 20, 20];

#[derive(clap::Args)]
pub struct HeatmapArgs {
    #[command(flatten)]
    pub device: crate::DeviceArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Layer to draw (ignored with --grid).
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Head to draw (ignored with --grid).
    #[arg(long, default_value_t = 0)]
    pub head: usize,
    /// Draw every layer and head as a grid instead of one head.
    #[arg(long)]
    pub grid: bool,
    /// Output PNG file.
    #[arg(long, short, default_value = "heatmap.png")]
    pub output: PathBuf,
}

/// An RGB image being drawn.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        let mut pixels = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            pixels.extend(BACKGROUND);
        }
        Self {
            width,
            height,
            pixels,
        }
    }

    fn put(&mut self, x: usize, y: usize, color: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.pixels[i..i + 3].copy_from_slice(&color);
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, color: [u8; 3]) {
        for dy in 0..h {
            for dx in 0..w {
                self.put(x + dx, y + dy, color);
            }
        }
    }

    /// Draws `text` from (x, y), left to right, or top to bottom when `vertical`.
    fn text(&mut self, x: usize, y: usize, text: &str, vertical: bool) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits >> col & 1 == 1 {
                        let (px, py) = if vertical {
                            (x + GLYPH - 1 - row, y + i * GLYPH + col)
                        } else {
                            (x + i * GLYPH + col, y + row)
                        };
                        self.put(px, py, INK);
                    }
                }
            }
        }
    }

    fn save(&self, path: &std::path::Path) -> Result<()> {
        let io_error = |source: std::io::Error| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io_error)?;
        let mut encoder = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let png_error = |e: png::EncodingError| io_error(std::io::Error::other(e.to_string()));
        let mut writer = encoder.write_header().map_err(png_error)?;
        writer.write_image_data(&self.pixels).map_err(png_error)?;
        writer.finish().map_err(png_error)
    }
}

/// Maps 0..=1 to a perceptually ordered colour (an approximation of viridis).
fn colour(value: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = value.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f32;
    let mix = |c: usize| (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f) as u8;
    [mix(0), mix(1), mix(2)]
}

/// Draws a vertical colour scale from 0 (bottom) to `max` (top) with its end labels.
fn colour_scale(canvas: &mut Canvas, x: usize, y: usize, height: usize, max: f32) {
    for dy in 0..height {
        let value = 1.0 - dy as f32 / height.max(1) as f32;
        canvas.fill(x, y + dy, 12, 1, colour(value));
    }
    canvas.text(x + 16, y, &format!("{max:.2}"), false);
    canvas.text(x + 16, y + height - GLYPH, "0", false);
}

/// Returns a printable ASCII label of at most LABEL_CHARS characters for a token.
fn label(model: &Model, token: u32) -> String {
    let text = model.tokenizer().token_label(token);
    let printable: String = text
        .chars()
        .map(|c| match c {
            '\n' => '|',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(LABEL_CHARS)
        .collect();
    printable.replace(' ', "_")
}

/// Draws `map` as square cells of `cell` pixels from (`x0`, `y0`), each coloured by its
/// probability over the map's largest, and returns that largest probability.
fn fill_map(canvas: &mut Canvas, map: &AttentionMap, x0: usize, y0: usize, cell: usize) -> f32 {
    let max = map.probs.iter().copied().fold(0.0f32, f32::max).max(1e-9);
    for (row, probs) in map.probs.chunks(map.cols.max(1)).enumerate() {
        for (col, &p) in probs.iter().enumerate() {
            canvas.fill(
                x0 + col * cell,
                y0 + row * cell,
                cell,
                cell,
                colour(p / max),
            );
        }
    }
    max
}

fn draw_head(model: &Model, tokens: &[u32], map: &AttentionMap) -> Canvas {
    let n = map.cols;
    let cell = (720 / n).clamp(2, 24);
    let margin = LABEL_CHARS * GLYPH + 8;
    let title = 16;
    let size = n * cell;
    let mut canvas = Canvas::new(margin + size + 80, title + margin + size + 8);
    canvas.text(
        4,
        4,
        &format!("layer {} head {}", map.layer, map.head),
        false,
    );
    let top = title + margin;
    let max = fill_map(&mut canvas, map, margin, top, cell);
    // Token labels fit when a cell is at least one glyph tall.
    if cell >= GLYPH {
        for (i, &token) in tokens.iter().enumerate().take(n) {
            let text = label(model, token);
            let offset = (cell - GLYPH) / 2;
            canvas.text(4, top + i * cell + offset, &text, false);
            let y = title + margin - 4 - text.chars().count() * GLYPH;
            canvas.text(margin + i * cell + offset, y, &text, true);
        }
    }
    colour_scale(&mut canvas, margin + size + 12, top, size, max);
    canvas
}

fn draw_grid(maps: &[AttentionMap], layers: usize, heads: usize) -> Canvas {
    let n = maps.first().map_or(1, |m| m.cols);
    let cell = (96 / n).clamp(1, 4);
    let tile = n * cell + 4;
    let left = 5 * GLYPH;
    let top = 2 * GLYPH;
    let mut canvas = Canvas::new(left + heads * tile + 80, top + layers * tile + 8);
    for head in 0..heads {
        canvas.text(left + head * tile, 4, &format!("H{head}"), false);
    }
    for layer in 0..layers {
        canvas.text(
            2,
            top + layer * tile + tile / 2 - GLYPH / 2,
            &format!("L{layer}"),
            false,
        );
    }
    // Each tile is scaled to its own maximum, so the scale reads as "fraction of max".
    for map in maps {
        fill_map(
            &mut canvas,
            map,
            left + map.head * tile,
            top + map.layer * tile,
            cell,
        );
    }
    colour_scale(
        &mut canvas,
        left + heads * tile + 8,
        top,
        layers * tile - 4,
        1.0,
    );
    canvas
}

pub fn run(args: &HeatmapArgs) -> Result<()> {
    let ctx = args.device.context()?;
    let model = load_model(&ctx, args.prompt.model.as_deref())?;
    let tokens = prompt_tokens(&model, &args.prompt, DEFAULT_PROMPT)?;
    let mut seq = model.new_sequence()?;
    model.forward_blocking(&mut seq, &tokens)?;
    let canvas = if args.grid {
        let maps = pollster::block_on(model.attention_all(&seq))?;
        draw_grid(&maps, model.config().layers, model.config().heads)
    } else {
        let map = model.attention_probs_blocking(&seq, args.layer, args.head, 0..seq.len())?;
        draw_head(&model, &tokens, &map)
    };
    canvas.save(&args.output)?;
    println!(
        "wrote {} ({}x{} pixels, {} tokens)",
        args.output.display(),
        canvas.width,
        canvas.height,
        tokens.len()
    );
    Ok(())
}
