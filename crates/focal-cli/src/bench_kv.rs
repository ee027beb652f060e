//! `focal bench kv`: paged decode against contiguous decode, the cost of forking a long
//! sequence, and the KV cache's accounting.
//!
//! Shapes follow SmolLM2-135M: 9 query heads, 3 KV heads, head size 64. Decode times one
//! layer's attention for one new token. The contiguous baselines are the engine's split-K
//! decode over `[1, kv_heads, len, head_dim]` tensors and the paged kernel over a pool
//! whose single block holds the whole sequence, which isolates the block-table cost.

use std::time::Instant;

use focal::attention::{decode_attention_into, AttentionOptions, Mask};
use focal::kv::{KvBudget, KvCache, KvCacheConfig, SequenceId};
use focal::{Context, DType, Result, Tensor};

const Q_HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const CONTEXTS: [usize; 3] = [1024, 4096, 8192];
const FORK_LEN: usize = 4096;
const FORK_LAYERS: usize = 30;

/// Runs the KV cache benchmarks and prints their tables.
pub fn run(ctx: &Context, reps: usize) -> Result<()> {
    decode(ctx, reps)?;
    fork(ctx, reps)
}

fn pattern(count: usize, seed: usize) -> Vec<f32> {
    (0..count)
        .map(|i| (((i * 7 + seed * 13) % 29) as f32 - 14.0) / 15.0)
        .collect()
}

/// Creates a one-layer cache of `block_size` and a sequence holding `keys` and `values`
/// (`[KV_HEADS, len, HEAD_DIM]`).
fn filled_cache(
    ctx: &Context,
    block_size: usize,
    keys: &Tensor,
    values: &Tensor,
) -> Result<(KvCache, SequenceId)> {
    let len = keys.shape()[1];
    let config = KvCacheConfig::new(1, KV_HEADS, HEAD_DIM, DType::F32, KvBudget::Tokens(len))
        .with_block_size(block_size);
    let mut cache = KvCache::new(ctx, config)?;
    let id = cache.create(None)?;
    cache.append(id, std::slice::from_ref(keys), std::slice::from_ref(values))?;
    Ok((cache, id))
}

/// Times one run of `f` plus the wait for the GPU, in milliseconds.
fn time_once(ctx: &Context, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    ctx.wait_idle()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn decode(ctx: &Context, reps: usize) -> Result<()> {
    let variant = if ctx.capabilities().subgroup_attention {
        "subgroup"
    } else {
        "plain"
    };
    println!(
        "\nKV decode, 9 query heads, 3 KV heads, head size 64, f32, {variant} kernels\n\n\
         | context | contiguous decode ms | paged, 1 block ms | paged, block 16 ms | \
         paged / contiguous |"
    );
    println!("|---|---|---|---|---|");
    for len in CONTEXTS {
        let keys = Tensor::from_f32(
            ctx,
            &pattern(KV_HEADS * len * HEAD_DIM, 1),
            &[KV_HEADS, len, HEAD_DIM],
            DType::F32,
        )?;
        let values = Tensor::from_f32(
            ctx,
            &pattern(KV_HEADS * len * HEAD_DIM, 2),
            &[KV_HEADS, len, HEAD_DIM],
            DType::F32,
        )?;
        let q_data = pattern(Q_HEADS * HEAD_DIM, 3);
        let q = Tensor::from_f32(ctx, &q_data, &[1, Q_HEADS, 1, HEAD_DIM], DType::F32)?;
        let out = Tensor::zeros(ctx, &[1, Q_HEADS, 1, HEAD_DIM], DType::F32)?;
        let lse = Tensor::zeros(ctx, &[1, Q_HEADS, 1], DType::F32)?;

        let k4 = keys.reshape(&[1, KV_HEADS, len, HEAD_DIM])?;
        let v4 = values.reshape(&[1, KV_HEADS, len, HEAD_DIM])?;
        let options = AttentionOptions::with_mask(Mask::causal());
        let (one_block, one_block_id) = filled_cache(ctx, len, &keys, &values)?;
        let (paged, paged_id) = filled_cache(ctx, 16, &keys, &values)?;
        let paged_options = paged.attention_options();

        // The three kernels take turns within each repetition, so that a change in the
        // machine's load affects all of them alike.
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for rep in 0..=reps.max(1) {
            let contiguous = time_once(ctx, || {
                let mut encoder = ctx.encoder();
                decode_attention_into(ctx, &mut encoder, &q, &k4, &v4, &options, &out, Some(&lse))?;
                ctx.submit(encoder);
                Ok(())
            })?;
            let mut paged_ms = [0.0; 2];
            for (ms, (cache, id)) in paged_ms
                .iter_mut()
                .zip([(&one_block, one_block_id), (&paged, paged_id)])
            {
                *ms = time_once(ctx, || {
                    let mut encoder = ctx.encoder();
                    cache.attention_into(&mut encoder, id, 0, &q, &paged_options, &out, &lse)?;
                    ctx.submit(encoder);
                    Ok(())
                })?;
            }
            // Repetition 0 warms up the pipelines and is not counted.
            if rep > 0 {
                times[0].push(contiguous);
                times[1].push(paged_ms[0]);
                times[2].push(paged_ms[1]);
            }
        }
        let [contiguous, one_block_ms, paged_ms] = times.map(median);
        println!(
            "| {len} | {contiguous:.2} | {:.2} | {:.2} | {:.2} |",
            one_block_ms,
            paged_ms,
            paged_ms / contiguous
        );
    }
    Ok(())
}

fn fork(ctx: &Context, reps: usize) -> Result<()> {
    let config = KvCacheConfig::new(
        FORK_LAYERS,
        KV_HEADS,
        HEAD_DIM,
        DType::F32,
        KvBudget::Tokens(FORK_LEN + 1024),
    );
    let block_bytes = config.block_bytes();
    let mut cache = KvCache::new(ctx, config)?;
    let parent = cache.create(None)?;
    // An odd length leaves the last block partly filled, so the first write after the
    // fork has to copy it.
    let len = FORK_LEN - 3;
    let data = pattern(KV_HEADS * len * HEAD_DIM, 4);
    let rows = Tensor::from_f32(ctx, &data, &[KV_HEADS, len, HEAD_DIM], DType::F32)?;
    let layers = vec![rows; FORK_LAYERS];
    cache.append(parent, &layers, &layers)?;
    ctx.wait_idle()?;
    let before = cache.stats();

    let mut fork_times = Vec::new();
    let mut children = Vec::new();
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        children.push(cache.fork(parent)?);
        ctx.wait_idle()?;
        fork_times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let fork_ms = median(fork_times.clone());
    let after = cache.stats();

    // The first token appended to a child copies the shared partial block in every layer.
    let new_row = Tensor::from_f32(
        ctx,
        &pattern(KV_HEADS * HEAD_DIM, 5),
        &[KV_HEADS, 1, HEAD_DIM],
        DType::F32,
    )?;
    let start = Instant::now();
    let mut encoder = ctx.encoder();
    let reservation = cache.reserve(&mut encoder, children[0], 1)?;
    for layer in 0..FORK_LAYERS {
        cache.write_into(&mut encoder, children[0], layer, &new_row, &new_row)?;
    }
    ctx.submit(encoder);
    ctx.wait_idle()?;
    let first_write = start.elapsed().as_secs_f64() * 1e3;
    let copied = reservation.copies.len() as u64 * block_bytes * 2 * FORK_LAYERS as u64;

    println!(
        "\n| KV fork of {len} tokens, {FORK_LAYERS} layers, f32 | ms | blocks allocated | \
         K/V bytes allocated and copied |"
    );
    println!("|---|---|---|---|");
    println!(
        "| fork (median of {}) | {:.3} | {} | {} |",
        fork_times.len(),
        fork_ms,
        after.blocks_used - before.blocks_used,
        after.bytes_used - before.bytes_used
    );
    println!(
        "| first append to the fork (copy-on-write of 1 block) | {first_write:.3} | {} | {copied} |",
        reservation.copies.len()
    );
    println!("\nKV cache after the forks:\n{}", cache.stats());
    Ok(())
}
