//! Attention benchmarks: flash against naive, sliding window against full causal,
//! block-sparse against dense, and split-K decode against one workgroup per head.
//!
//! Every case prints one markdown row. GFLOP/s counts two FLOPs per multiply-add of
//! `Q K^T` and `P V` over the visible (query, key) pairs only, so a causal run counts
//! half the square. GPU memory is the sum of the buffers that the case allocates
//! (inputs, outputs, log-sum-exp, scratch), computed from their sizes.

use focal::attention::{self, AttentionOptions, BlockSparseLayout, Mask};
use focal::{Context, DType, Tensor};

use crate::bench::time_ms;

const HEADS: usize = 8;
const HEAD_DIM: usize = 64;
const MIB: f64 = 1024.0 * 1024.0;
/// Decode steps recorded per submit in the decode benchmark.
const DECODE_STEPS: usize = 16;

/// Settings of the attention benchmarks: `quick` runs only the small sizes.
pub struct AttentionBench {
    pub reps: usize,
    pub quick: bool,
}

impl AttentionBench {
    /// Runs the benchmark called `name`: attention, window, sparse, decode or all.
    pub fn run(&self, ctx: &Context, name: &str) -> focal::Result<()> {
        match name {
            "attention" => self.flash_vs_naive(ctx),
            "window" => self.window_vs_causal(ctx),
            "sparse" => self.sparse_vs_dense(ctx),
            "decode" => self.split_vs_single(ctx),
            _ => {
                self.flash_vs_naive(ctx)?;
                self.window_vs_causal(ctx)?;
                self.sparse_vs_dense(ctx)?;
                self.split_vs_single(ctx)
            }
        }
    }

    /// Repetitions for a case of `n` tokens: one run past 4096, where a run takes
    /// seconds on lavapipe.
    fn reps_for(&self, n: usize) -> usize {
        if n >= 4096 {
            1
        } else {
            self.reps.max(1)
        }
    }

    fn flash_vs_naive(&self, ctx: &Context) -> focal::Result<()> {
        println!(
            "\n### attention: flash vs naive, causal, {HEADS} heads, head_dim {HEAD_DIM}, f32\n"
        );
        println!("| N | kernel | ms | GFLOP/s | GPU MiB | note |\n|---|---|---|---|---|---|");
        let sizes: &[usize] = if self.quick {
            &[512, 1024, 2048]
        } else {
            &[512, 1024, 2048, 4096, 8192, 16384]
        };
        let options = AttentionOptions::with_mask(Mask::causal());
        for &n in sizes {
            let reps = self.reps_for(n);
            let [q, k, v] = random_qkv(ctx, 1, HEADS, n, n)?;
            let flops = visible_pairs(n, n, &Mask::causal()) * flops_per_pair(HEADS);
            let out = Tensor::zeros(ctx, q.shape(), DType::F32)?;
            let lse = Tensor::zeros(ctx, &[1, HEADS, n], DType::F32)?;
            let ms = time_ms(ctx, reps, || {
                let mut encoder = ctx.encoder();
                attention::flash_attention_into(
                    ctx,
                    &mut encoder,
                    &q,
                    &k,
                    &v,
                    &options,
                    &out,
                    Some(&lse),
                )?;
                ctx.submit(encoder);
                Ok(())
            })?;
            let memory = bytes(&[&q, &k, &v, &out, &lse]);
            let extra = bytes(&[&out, &lse]);
            let note = format!("writes lse; output + lse {:.1} MiB", extra as f64 / MIB);
            print_row(n, "flash", ms, flops, memory, &note);

            match naive_per_head(ctx, &q, &k, &v, &options, reps) {
                Ok((ms, memory, note)) => print_row(n, "naive", ms, flops, memory, &note),
                Err(e) => println!("| {n} | naive | - | - | - | cannot allocate: {e} |"),
            }
        }
        Ok(())
    }

    fn window_vs_causal(&self, ctx: &Context) -> focal::Result<()> {
        let window = 512;
        println!(
            "\n### window: sliding window {window} vs full causal, {HEADS} heads, head_dim {HEAD_DIM}, f32\n"
        );
        println!("| N | mask | ms | GFLOP/s | GPU MiB | note |\n|---|---|---|---|---|---|");
        let sizes: &[usize] = if self.quick { &[2048] } else { &[4096, 16384] };
        for &n in sizes {
            let reps = self.reps_for(n);
            let [q, k, v] = random_qkv(ctx, 1, HEADS, n, n)?;
            let memory = bytes(&[&q, &k, &v, &q]);
            let mut times = Vec::new();
            for (name, mask) in [
                ("causal", Mask::causal()),
                ("window 512", Mask::causal_window(window)),
                (
                    "window 512 + 4 sinks",
                    Mask::causal_window(window).with_sinks(4),
                ),
            ] {
                let flops = visible_pairs(n, n, &mask) * flops_per_pair(HEADS);
                let ms = time_flash(ctx, &q, &k, &v, &AttentionOptions::with_mask(mask), reps)?;
                let note = match times.first() {
                    Some(causal) => format!("{:.1}x faster than causal", causal / ms),
                    None => String::new(),
                };
                times.push(ms);
                print_row(n, name, ms, flops, memory, &note);
            }
        }
        Ok(())
    }

    fn sparse_vs_dense(&self, ctx: &Context) -> focal::Result<()> {
        let n = if self.quick { 1024 } else { 4096 };
        let block = 64;
        println!(
            "\n### sparse: block-sparse (blocks of {block}) vs dense, N {n}, {HEADS} heads, head_dim {HEAD_DIM}, f32\n"
        );
        println!("| density | ms | GFLOP/s | time / dense | note |\n|---|---|---|---|---|");
        let reps = self.reps_for(n);
        let [q, k, v] = random_qkv(ctx, 1, HEADS, n, n)?;
        let dense_ms = time_flash(ctx, &q, &k, &v, &AttentionOptions::default(), reps)?;
        let dense_flops = (n * n) as f64 * flops_per_pair(HEADS);
        println!(
            "| dense (no mask) | {dense_ms:.1} | {:.2} | 1.00 | |",
            dense_flops / (dense_ms * 1e6)
        );
        let blocks = n / block;
        for density in [0.5, 0.25, 0.1] {
            let layout = random_layout(block, blocks, density, 17)?;
            let actual = layout.density();
            let flops = (n * n) as f64 * actual * flops_per_pair(HEADS);
            let options = AttentionOptions::with_mask(Mask::none().with_block_sparse(layout));
            let ms = time_flash(ctx, &q, &k, &v, &options, reps)?;
            println!(
                "| {:.0}% (random blocks) | {ms:.1} | {:.2} | {:.2} | listed density {:.3} |",
                density * 100.0,
                flops / (ms * 1e6),
                ms / dense_ms,
                actual
            );
        }
        let bigbird = BlockSparseLayout::local_global_random(block, n, n, 1, 1, 2, 5)?;
        let actual = bigbird.density();
        let flops = (n * n) as f64 * actual * flops_per_pair(HEADS);
        let options = AttentionOptions::with_mask(Mask::none().with_block_sparse(bigbird));
        let ms = time_flash(ctx, &q, &k, &v, &options, reps)?;
        println!(
            "| {:.1}% (BigBird: local 1, global 1, random 2) | {ms:.1} | {:.2} | {:.2} | |",
            actual * 100.0,
            flops / (ms * 1e6),
            ms / dense_ms
        );
        Ok(())
    }

    fn split_vs_single(&self, ctx: &Context) -> focal::Result<()> {
        let variant = if ctx.capabilities().subgroup_attention {
            "subgroup"
        } else {
            "plain"
        };
        println!(
            "\n### decode: split-K vs one workgroup per head, q_len 1, {HEADS} heads, head_dim {HEAD_DIM}, f32, {variant} kernels, {DECODE_STEPS} steps per submit\n"
        );
        println!("| context | kernel | ms | GFLOP/s | note |\n|---|---|---|---|---|");
        let contexts: &[usize] = if self.quick {
            &[2048]
        } else {
            &[1024, 4096, 8192]
        };
        for &n in contexts {
            let [q, k, v] = random_qkv(ctx, 1, HEADS, 1, n)?;
            let flops = n as f64 * flops_per_pair(HEADS);
            let reps = self.reps.max(3);
            let auto = attention::decode_splits(n, HEADS);
            let mut single_ms = 0.0;
            for (name, splits) in [("one workgroup per head", 1), ("split-K", auto)] {
                let options = AttentionOptions {
                    kv_splits: Some(splits),
                    ..AttentionOptions::with_mask(Mask::causal())
                };
                let out = Tensor::zeros(ctx, q.shape(), DType::F32)?;
                // One decode step takes milliseconds on lavapipe, about as long as a
                // submit and wait, so each timed run records DECODE_STEPS steps.
                let batch_ms = time_ms(ctx, reps, || {
                    let mut encoder = ctx.encoder();
                    for _ in 0..DECODE_STEPS {
                        attention::decode_attention_into(
                            ctx,
                            &mut encoder,
                            &q,
                            &k,
                            &v,
                            &options,
                            &out,
                            None,
                        )?;
                    }
                    ctx.submit(encoder);
                    Ok(())
                })?;
                let ms = batch_ms / DECODE_STEPS as f64;
                let note = if splits == 1 {
                    single_ms = ms;
                    String::new()
                } else {
                    format!("{splits} chunks, {:.1}x faster", single_ms / ms)
                };
                println!(
                    "| {n} | {name} | {ms:.2} | {:.2} | {note} |",
                    flops / (ms * 1e6)
                );
            }
        }
        Ok(())
    }
}

fn time_flash(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
    reps: usize,
) -> focal::Result<f64> {
    let out = Tensor::zeros(ctx, q.shape(), q.dtype())?;
    time_ms(ctx, reps, || {
        let mut encoder = ctx.encoder();
        attention::flash_attention_into(ctx, &mut encoder, q, k, v, options, &out, None)?;
        ctx.submit(encoder);
        Ok(())
    })
}

/// Times naive attention over all heads in one call, or head by head when the score
/// matrix of all heads exceeds the binding limit (from N = 4096 at lavapipe's 128 MiB).
/// Returns (ms, GPU bytes, note).
fn naive_per_head(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    options: &AttentionOptions,
    reps: usize,
) -> focal::Result<(f64, u64, String)> {
    let [_, heads, n, d] = *q.shape() else {
        unreachable!("benchmark tensors have four axes")
    };
    let all_heads = attention::naive_attention(ctx, q, k, v, options);
    if let Ok(result) = all_heads {
        drop(result);
        let mut last_result = None;
        let ms = time_ms(ctx, reps, || {
            last_result = Some(attention::naive_attention(ctx, q, k, v, options)?);
            Ok(())
        })?;
        let result = last_result.expect("time_ms ran at least once");
        let scores = result.probs.size_bytes();
        let memory = bytes(&[q, k, v, &result.output, &result.probs]) + scores;
        return Ok((ms, memory, "all heads in one call".into()));
    }
    let per_head = [1, 1, n, d];
    let head_data = random_data(n * d, 3);
    let hq = Tensor::from_f32(ctx, &head_data, &per_head, DType::F32)?;
    let hk = Tensor::from_f32(ctx, &head_data, &per_head, DType::F32)?;
    let hv = Tensor::from_f32(ctx, &head_data, &per_head, DType::F32)?;
    let out = Tensor::zeros(ctx, &per_head, DType::F32)?;
    let probs = Tensor::zeros(ctx, &[1, 1, n, n], DType::F32)?;
    let ms = time_ms(ctx, reps, || {
        for _ in 0..heads {
            let mut encoder = ctx.encoder();
            attention::naive_attention_into(
                ctx,
                &mut encoder,
                &hq,
                &hk,
                &hv,
                options,
                &out,
                &probs,
            )?;
            ctx.submit(encoder);
        }
        Ok(())
    })?;
    let memory = bytes(&[q, k, v, q, &probs]) + probs.size_bytes();
    Ok((
        ms,
        memory,
        format!("{heads} calls of one head: all heads exceed the binding limit"),
    ))
}

fn print_row(n: usize, name: &str, ms: f64, flops: f64, memory: u64, note: &str) {
    println!(
        "| {n} | {name} | {ms:.1} | {:.2} | {:.1} | {note} |",
        flops / (ms * 1e6),
        memory as f64 / MIB
    );
}

fn bytes(tensors: &[&Tensor]) -> u64 {
    tensors.iter().map(|t| t.size_bytes()).sum()
}

/// FLOPs per visible (query, key) pair over all heads: a multiply-add per dimension
/// in `Q K^T` and in `P V`.
fn flops_per_pair(heads: usize) -> f64 {
    4.0 * (heads * HEAD_DIM) as f64
}

/// Number of visible (query, key) pairs of one head under `mask`.
fn visible_pairs(q_len: usize, kv_len: usize, mask: &Mask) -> f64 {
    if mask.block_sparse.is_none() && mask.window.is_none() && mask.causal && q_len == kv_len {
        return (q_len * (q_len + 1) / 2) as f64;
    }
    let mut count = 0usize;
    for i in 0..q_len {
        let row_start = match mask.window {
            Some(w) => i.saturating_sub(w.left),
            None => 0,
        };
        count += (row_start..=i)
            .filter(|&j| mask.is_visible(i, j, q_len, kv_len))
            .count();
        count += (0..row_start.min(mask.sinks)).count();
    }
    count as f64
}

fn random_data(count: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn random_qkv(
    ctx: &Context,
    batch: usize,
    heads: usize,
    q_len: usize,
    kv_len: usize,
) -> focal::Result<[Tensor; 3]> {
    let q_shape = [batch, heads, q_len, HEAD_DIM];
    let kv_shape = [batch, heads, kv_len, HEAD_DIM];
    Ok([
        Tensor::from_f32(
            ctx,
            &random_data(q_shape.iter().product(), 1),
            &q_shape,
            DType::F32,
        )?,
        Tensor::from_f32(
            ctx,
            &random_data(kv_shape.iter().product(), 2),
            &kv_shape,
            DType::F32,
        )?,
        Tensor::from_f32(
            ctx,
            &random_data(kv_shape.iter().product(), 3),
            &kv_shape,
            DType::F32,
        )?,
    ])
}

/// Builds a layout in which each query block lists its diagonal key block plus random
/// others, `density` of all blocks in total.
fn random_layout(
    block: usize,
    blocks: usize,
    density: f64,
    seed: u64,
) -> focal::Result<BlockSparseLayout> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let per_row = ((blocks as f64 * density).round() as usize).max(1);
    let lists: Vec<Vec<usize>> = (0..blocks)
        .map(|b| {
            let mut others: Vec<usize> = (0..blocks).filter(|&c| c != b).collect();
            others.shuffle(&mut rng);
            let mut list = vec![b];
            list.extend(others.into_iter().take(per_row - 1));
            list
        })
        .collect();
    BlockSparseLayout::from_lists(block, blocks, &lists)
}
