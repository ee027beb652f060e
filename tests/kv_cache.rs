//! Paged KV cache on the real adapter: paged attention against an f64 CPU reference
//! over random lengths, block sizes 1/16/64, GQA ratios and head sizes, after forks,
//! prefix sharing and window eviction; readback of stored rows; accounting; typed
//! errors for bad input.
//!
//! Tolerances: f32 outputs within 1e-4 relative plus 1e-5 absolute, f16 within 1e-2
//! relative plus 2e-3 absolute (inputs rounded to f16, arithmetic in f32). The
//! log-sum-exp is f32 in both cases.

use focal::kv::{KvBudget, KvCache, KvCacheConfig, PagedAttentionOptions, SequenceId, Window};
use focal::{Context, DType, Error, Tensor};
use focal_tests::{assert_close, gpu, random_vec};

/// K and V rows appended to one sequence, kept on the CPU: `keys[layer][head]` is
/// `[len, head_dim]` row-major.
#[derive(Clone, Debug)]
struct HostRows {
    keys: Vec<Vec<Vec<f32>>>,
    values: Vec<Vec<Vec<f32>>>,
}

impl HostRows {
    fn new(layers: usize, kv_heads: usize) -> Self {
        Self {
            keys: vec![vec![Vec::new(); kv_heads]; layers],
            values: vec![vec![Vec::new(); kv_heads]; layers],
        }
    }
}

fn rounded(data: Vec<f32>, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => data,
        DType::F16 => data
            .into_iter()
            .map(|x| half::f16::from_f32(x).to_f32())
            .collect(),
    }
}

fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-4, 1e-5),
        DType::F16 => (1e-2, 2e-3),
    }
}

/// Appends `n` random rows to every layer of a sequence, on the GPU and in `host`.
fn append(
    cache: &mut KvCache,
    ctx: &Context,
    id: SequenceId,
    host: &mut HostRows,
    n: usize,
    seed: u64,
) {
    let config = cache.config().clone();
    let (heads, d) = (config.kv_heads, config.head_dim);
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for layer in 0..config.layers {
        let seed = seed * 1000 + layer as u64 * 2;
        let k = rounded(random_vec(heads * n * d, seed), config.dtype);
        let v = rounded(random_vec(heads * n * d, seed + 1), config.dtype);
        for h in 0..heads {
            host.keys[layer][h].extend_from_slice(&k[h * n * d..(h + 1) * n * d]);
            host.values[layer][h].extend_from_slice(&v[h * n * d..(h + 1) * n * d]);
        }
        keys.push(Tensor::from_f32(ctx, &k, &[heads, n, d], config.dtype).unwrap());
        values.push(Tensor::from_f32(ctx, &v, &[1, heads, n, d], config.dtype).unwrap());
    }
    cache.append(id, &keys, &values).unwrap();
}

/// f64 attention of `q` `[q_heads, q_len, d]` over one layer of `host`, with query row
/// `i` at position `len - q_len + i` seeing the keys for which `is_visible(query, key)` holds.
/// Returns the output `[q_heads, q_len, d]` and the log-sum-exp `[q_heads, q_len]`.
fn reference(
    q: &[f32],
    host: &HostRows,
    layer: usize,
    q_heads: usize,
    q_len: usize,
    d: usize,
    is_visible: impl Fn(usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let kv_heads = host.keys[layer].len();
    let len = host.keys[layer][0].len() / d;
    let scale = 1.0 / (d as f64).sqrt();
    let group = q_heads / kv_heads;
    let mut out = vec![0.0; q_heads * q_len * d];
    let mut lse = vec![-1e30; q_heads * q_len];
    for h in 0..q_heads {
        let keys = &host.keys[layer][h / group];
        let values = &host.values[layer][h / group];
        for i in 0..q_len {
            let query = len - q_len + i;
            let row = &q[(h * q_len + i) * d..][..d];
            let scores: Vec<(usize, f64)> = (0..len)
                .filter(|&j| is_visible(query, j))
                .map(|j| {
                    let dot: f64 = (0..d).map(|x| row[x] as f64 * keys[j * d + x] as f64).sum();
                    (j, dot * scale)
                })
                .collect();
            if scores.is_empty() {
                continue;
            }
            let max = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s.1 - max).exp()).sum();
            lse[h * q_len + i] = max + sum.ln();
            for &(j, s) in &scores {
                let p = (s - max).exp() / sum;
                for x in 0..d {
                    out[(h * q_len + i) * d + x] += p * values[j * d + x] as f64;
                }
            }
        }
    }
    (out, lse)
}

/// Runs paged attention for a random `q` against every layer of a sequence and compares
/// output and log-sum-exp with the reference under `is_visible`.
#[allow(clippy::too_many_arguments)]
fn check_attention(
    ctx: &Context,
    cache: &KvCache,
    id: SequenceId,
    host: &HostRows,
    q_heads: usize,
    q_len: usize,
    options: &PagedAttentionOptions,
    is_visible: impl Fn(usize, usize) -> bool + Copy,
    label: &str,
) {
    let config = cache.config();
    let d = config.head_dim;
    let (rtol, atol) = tolerance(config.dtype);
    for layer in 0..config.layers {
        let q = rounded(
            random_vec(q_heads * q_len * d, 77 + layer as u64),
            config.dtype,
        );
        let qt = Tensor::from_f32(ctx, &q, &[1, q_heads, q_len, d], config.dtype).unwrap();
        let (out, lse) = cache.attention(id, layer, &qt, options).unwrap();
        assert_eq!(out.shape(), [1, q_heads, q_len, d]);
        let (want_out, want_lse) = reference(&q, host, layer, q_heads, q_len, d, is_visible);
        let label = format!("{label} layer {layer}");
        assert_close(
            &format!("{label} out"),
            &out.to_vec_blocking(ctx).unwrap(),
            &want_out,
            rtol,
            atol,
        );
        assert_close(
            &format!("{label} lse"),
            &lse.to_vec_blocking(ctx).unwrap(),
            &want_lse,
            1e-4,
            1e-4,
        );
    }
}

fn causal(query: usize, key: usize) -> bool {
    key <= query
}

fn cache(
    ctx: &Context,
    layers: usize,
    kv_heads: usize,
    d: usize,
    bs: usize,
    dtype: DType,
) -> KvCache {
    let config =
        KvCacheConfig::new(layers, kv_heads, d, dtype, KvBudget::Tokens(4096)).with_block_size(bs);
    KvCache::new(ctx, config).unwrap()
}

fn plain(ctx: &Context, d: usize) -> PagedAttentionOptions {
    PagedAttentionOptions {
        subgroups: false,
        ..PagedAttentionOptions::new(ctx, d)
    }
}

#[test]
fn paged_decode_matches_reference() {
    let Some(ctx) = gpu() else { return };
    // (block size, appended chunk lengths, q_heads, kv_heads, head_dim)
    let cases: &[(usize, &[usize], usize, usize, usize)] = &[
        (1, &[7], 2, 2, 32),
        (16, &[20, 1, 24], 9, 3, 64),
        (64, &[100, 31], 8, 1, 64),
        (16, &[17], 4, 4, 128),
        (64, &[1], 3, 3, 64),
    ];
    for (index, &(bs, chunks, q_heads, kv_heads, d)) in cases.iter().enumerate() {
        let mut cache = cache(&ctx, 1, kv_heads, d, bs, DType::F32);
        let id = cache.create(None).unwrap();
        let mut host = HostRows::new(1, kv_heads);
        for (i, &n) in chunks.iter().enumerate() {
            append(
                &mut cache,
                &ctx,
                id,
                &mut host,
                n,
                index as u64 * 10 + i as u64,
            );
        }
        // One chunk covering everything, then chunks of 16 keys merged in pass 2.
        for chunk_keys in [None, Some(16)] {
            let options = PagedAttentionOptions {
                chunk_keys,
                ..plain(&ctx, d)
            };
            let label = format!(
                "bs {bs} chunks {chunks:?} gqa {q_heads}/{kv_heads} d {d} split {chunk_keys:?}"
            );
            check_attention(
                &ctx, &cache, id, &host, q_heads, 1, &options, causal, &label,
            );
        }
    }
}

#[test]
fn paged_decode_f16_matches_reference() {
    let Some(ctx) = gpu() else { return };
    if !ctx.capabilities().shader_f16 {
        eprintln!("adapter has no shader-f16: the f16 paged kernels are not run");
        return;
    }
    let mut cache = cache(&ctx, 2, 3, 64, 16, DType::F16);
    let id = cache.create(None).unwrap();
    let mut host = HostRows::new(2, 3);
    append(&mut cache, &ctx, id, &mut host, 37, 1);
    let options = PagedAttentionOptions {
        chunk_keys: Some(16),
        ..plain(&ctx, 64)
    };
    check_attention(
        &ctx,
        &cache,
        id,
        &host,
        9,
        1,
        &options,
        causal,
        "f16 decode",
    );
}

#[test]
fn subgroup_variant_matches_reference() {
    let Some(ctx) = gpu() else { return };
    if !ctx.capabilities().subgroups {
        eprintln!("adapter has no SUBGROUP feature: the subgroup paged kernel is not run");
        return;
    }
    let mut cache = cache(&ctx, 1, 3, 64, 16, DType::F32);
    let id = cache.create(None).unwrap();
    let mut host = HostRows::new(1, 3);
    append(&mut cache, &ctx, id, &mut host, 45, 3);
    for q_len in [1, 4] {
        let options = PagedAttentionOptions {
            subgroups: true,
            chunk_keys: Some(16),
            ..PagedAttentionOptions::new(&ctx, 64)
        };
        let label = format!("subgroups q_len {q_len}");
        check_attention(&ctx, &cache, id, &host, 9, q_len, &options, causal, &label);
    }
}

#[test]
fn paged_prefill_over_cached_prefix() {
    let Some(ctx) = gpu() else { return };
    let mut cache = cache(&ctx, 1, 3, 64, 16, DType::F32);
    let id = cache.create(None).unwrap();
    let mut host = HostRows::new(1, 3);
    append(&mut cache, &ctx, id, &mut host, 40, 5);
    append(&mut cache, &ctx, id, &mut host, 7, 6);
    for chunk_keys in [None, Some(16)] {
        let options = PagedAttentionOptions {
            chunk_keys,
            ..plain(&ctx, 64)
        };
        let label = format!("prefill 7 over 40, split {chunk_keys:?}");
        check_attention(&ctx, &cache, id, &host, 9, 7, &options, causal, &label);
    }
}

#[test]
fn fork_writes_copy_shared_blocks() {
    let Some(ctx) = gpu() else { return };
    let mut cache = cache(&ctx, 2, 2, 32, 16, DType::F32);
    let parent = cache.create(None).unwrap();
    let mut parent_rows = HostRows::new(2, 2);
    append(&mut cache, &ctx, parent, &mut parent_rows, 20, 1);

    let used = cache.stats().blocks_used;
    let child = cache.fork(parent).unwrap();
    let mut child_rows = parent_rows.clone();
    assert_eq!(cache.stats().blocks_used, used, "fork allocated blocks");
    assert_eq!(cache.stats().blocks_shared, 2);

    // Both write into the shared, partly filled second block.
    append(&mut cache, &ctx, child, &mut child_rows, 3, 2);
    append(&mut cache, &ctx, parent, &mut parent_rows, 2, 3);
    assert_eq!(
        cache.stats().blocks_shared,
        1,
        "the partial block was not copied"
    );

    for (id, rows, label) in [
        (parent, &parent_rows, "parent"),
        (child, &child_rows, "child"),
    ] {
        for layer in 0..2 {
            for head in 0..2 {
                let len = cache.len(id).unwrap();
                let keys = cache.read_keys_blocking(id, layer, head, 0..len).unwrap();
                assert_eq!(
                    keys, rows.keys[layer][head],
                    "{label} keys layer {layer} head {head}"
                );
                let values = cache.read_values_blocking(id, layer, head, 0..len).unwrap();
                assert_eq!(
                    values, rows.values[layer][head],
                    "{label} values layer {layer} head {head}"
                );
            }
        }
        let options = PagedAttentionOptions {
            chunk_keys: Some(16),
            ..plain(&ctx, 32)
        };
        check_attention(&ctx, &cache, id, rows, 4, 1, &options, causal, label);
    }
}

#[test]
fn prefix_sharing_reuses_cached_blocks() {
    let Some(ctx) = gpu() else { return };
    let mut cache = cache(&ctx, 1, 3, 64, 16, DType::F32);
    let prompt: Vec<u32> = (100..140).collect();

    let (first, cached) = cache.create_with_prefix(&prompt, None).unwrap();
    assert_eq!(cached, 0);
    let mut first_rows = HostRows::new(1, 3);
    let (k, v) = (random_vec(3 * 40 * 64, 8), random_vec(3 * 40 * 64, 9));
    for h in 0..3 {
        first_rows.keys[0][h] = k[h * 40 * 64..(h + 1) * 40 * 64].to_vec();
        first_rows.values[0][h] = v[h * 40 * 64..(h + 1) * 40 * 64].to_vec();
    }
    let kt = Tensor::from_f32(&ctx, &k, &[3, 40, 64], DType::F32).unwrap();
    let vt = Tensor::from_f32(&ctx, &v, &[3, 40, 64], DType::F32).unwrap();
    let mut encoder = ctx.encoder();
    cache.reserve_tokens(&mut encoder, first, &prompt).unwrap();
    cache.write_into(&mut encoder, first, 0, &kt, &vt).unwrap();
    ctx.submit(encoder);
    assert_eq!(cache.stats().blocks_prefix, 2);
    let used = cache.stats().blocks_used;

    // The second sequence reuses the two full blocks and computes the last 8 tokens.
    let (second, cached) = cache.create_with_prefix(&prompt, None).unwrap();
    assert_eq!(cached, 32);
    assert_eq!(cache.stats().blocks_used, used);
    assert_eq!(cache.stats().blocks_shared, 2);
    let mut second_rows = HostRows::new(1, 3);
    for h in 0..3 {
        second_rows.keys[0][h] = first_rows.keys[0][h][..32 * 64].to_vec();
        second_rows.values[0][h] = first_rows.values[0][h][..32 * 64].to_vec();
    }
    append(&mut cache, &ctx, second, &mut second_rows, 8, 10);
    assert_eq!(cache.stats().blocks_used, used + 1);
    check_attention(
        &ctx,
        &cache,
        second,
        &second_rows,
        9,
        8,
        &plain(&ctx, 64),
        causal,
        "prefix",
    );
}

#[test]
fn window_keeps_sinks_and_recent_tokens() {
    let Some(ctx) = gpu() else { return };
    let window = Window { sinks: 4, size: 20 };
    let mut cache = cache(&ctx, 1, 3, 64, 8, DType::F32);
    let id = cache.create(Some(window)).unwrap();
    let mut host = HostRows::new(1, 3);
    append(&mut cache, &ctx, id, &mut host, 30, 1);
    for step in 0..40 {
        append(&mut cache, &ctx, id, &mut host, 1, 100 + step);
    }
    let len = cache.len(id).unwrap();
    assert_eq!(len, 70);

    // Sinks: the first block; window: tokens 51..70 in blocks 6..8. Nothing else stays.
    let table = cache.allocator().block_table(id).unwrap().to_vec();
    let resident: Vec<usize> = (0..table.len()).filter(|&b| table[b].is_some()).collect();
    assert_eq!(resident, vec![0, 6, 7, 8]);
    assert_eq!(cache.stats().blocks_used, 4);

    let sinks = cache.read_keys_blocking(id, 0, 1, 0..4).unwrap();
    assert_eq!(sinks, host.keys[0][1][..4 * 64]);
    let recent = cache.read_keys_blocking(id, 0, 1, 50..70).unwrap();
    assert_eq!(recent, host.keys[0][1][50 * 64..]);
    let err = cache.read_keys_blocking(id, 0, 1, 10..12).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "positions",
                ..
            }
        ),
        "{err}"
    );

    // Attention equals full attention with the sinks-plus-window mask.
    for chunk_keys in [None, Some(16)] {
        let options = PagedAttentionOptions {
            chunk_keys,
            ..plain(&ctx, 64)
        };
        let is_visible = move |query: usize, key: usize| window.is_visible(query, key);
        let label = format!("window split {chunk_keys:?}");
        check_attention(&ctx, &cache, id, &host, 9, 1, &options, is_visible, &label);
    }
}

#[test]
fn pool_exhausted_leaves_cache_consistent() {
    let Some(ctx) = gpu() else { return };
    let config = KvCacheConfig::new(1, 2, 32, DType::F32, KvBudget::Tokens(64)).with_block_size(16);
    let mut cache = KvCache::new(&ctx, config).unwrap();
    let a = cache.create(None).unwrap();
    let b = cache.create(None).unwrap();
    let mut a_rows = HostRows::new(1, 2);
    let mut b_rows = HostRows::new(1, 2);
    append(&mut cache, &ctx, a, &mut a_rows, 40, 1);
    append(&mut cache, &ctx, b, &mut b_rows, 10, 2);
    let before = cache.stats();

    let mut encoder = ctx.encoder();
    let err = cache.reserve(&mut encoder, b, 30).unwrap_err();
    match err {
        Error::PoolExhausted {
            sequence,
            needed,
            free,
            total,
        } => {
            assert_eq!(sequence, b.0);
            assert_eq!(needed, 2);
            assert_eq!(free, 0);
            assert_eq!(total, 4);
        }
        other => panic!("expected PoolExhausted, got {other}"),
    }
    assert_eq!(cache.stats(), before);

    // A write after the failed reserve has nothing reserved to fill beyond the last
    // successful reserve of 10 rows.
    let k = Tensor::zeros(&ctx, &[2, 30, 32], DType::F32).unwrap();
    assert!(matches!(
        cache.write_into(&mut encoder, b, 0, &k, &k),
        Err(Error::ShapeMismatch { .. })
    ));
    drop(encoder);

    let a_keys = cache.read_keys_blocking(a, 0, 1, 0..40).unwrap();
    assert_eq!(a_keys, a_rows.keys[0][1]);
    check_attention(
        &ctx,
        &cache,
        b,
        &b_rows,
        2,
        1,
        &plain(&ctx, 32),
        causal,
        "b after failure",
    );
    check_attention(
        &ctx,
        &cache,
        a,
        &a_rows,
        2,
        1,
        &plain(&ctx, 32),
        causal,
        "a after failure",
    );

    // Freeing a makes room for b.
    cache.free(a).unwrap();
    append(&mut cache, &ctx, b, &mut b_rows, 30, 3);
    check_attention(
        &ctx,
        &cache,
        b,
        &b_rows,
        4,
        1,
        &plain(&ctx, 32),
        causal,
        "b after free",
    );
}

#[test]
fn stats_count_blocks_and_bytes() {
    let Some(ctx) = gpu() else { return };
    let config = KvCacheConfig::new(3, 3, 64, DType::F32, KvBudget::Bytes(1 << 20));
    let mut cache = KvCache::new(&ctx, config).unwrap();
    // 16 tokens x 3 heads x 64 x 4 bytes = 12 KiB per block per buffer; 6 buffers.
    let per_block = 16 * 3 * 64 * 4 * 6;
    let stats = cache.stats();
    assert_eq!(stats.blocks_total, (1 << 20) / per_block);
    assert_eq!(stats.bytes_total, (stats.blocks_total * per_block) as u64);
    assert_eq!(stats.blocks_used, 0);

    let id = cache.create(None).unwrap();
    let mut host = HostRows::new(3, 3);
    append(&mut cache, &ctx, id, &mut host, 33, 1);
    let child = cache.fork(id).unwrap();
    let stats = cache.stats();
    assert_eq!(stats.blocks_used, 3);
    assert_eq!(stats.blocks_free, stats.blocks_total - 3);
    assert_eq!(stats.blocks_shared, 3);
    assert_eq!(stats.bytes_used, 3 * per_block as u64);
    assert_eq!(stats.tokens, vec![(id, 33), (child, 33)]);
    assert_eq!(stats.resident_tokens, 66);
    let text = stats.to_string();
    assert!(text.contains("3 used"), "{text}");

    cache.free(id).unwrap();
    cache.free(child).unwrap();
    assert_eq!(cache.stats().blocks_used, 0);
}

#[test]
fn bad_input_returns_typed_errors() {
    let Some(ctx) = gpu() else { return };
    let config = |bs: usize, budget: KvBudget| {
        KvCacheConfig::new(1, 2, 32, DType::F32, budget).with_block_size(bs)
    };
    let err = KvCache::new(&ctx, config(0, KvBudget::Tokens(64))).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "block_size",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("= 0"), "{err}");
    let err = KvCache::new(&ctx, config(128, KvBudget::Tokens(64))).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "block_size",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("128"), "{err}");
    let err = KvCache::new(&ctx, config(16, KvBudget::Bytes(1000))).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "block_size",
                ..
            }
        ),
        "{err}"
    );
    let odd = KvCacheConfig::new(1, 2, 30, DType::F32, KvBudget::Tokens(64));
    let err = KvCache::new(&ctx, odd).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "head_dim",
                ..
            }
        ),
        "{err}"
    );
    let huge = KvCacheConfig::new(1, 8, 128, DType::F32, KvBudget::Tokens(1 << 24));
    let err = KvCache::new(&ctx, huge).unwrap_err();
    assert!(matches!(err, Error::BufferTooLarge { .. }), "{err}");

    let mut cache = KvCache::new(&ctx, config(16, KvBudget::Tokens(256))).unwrap();
    let id = cache.create(None).unwrap();
    let mut host = HostRows::new(1, 2);
    append(&mut cache, &ctx, id, &mut host, 5, 1);
    let mut encoder = ctx.encoder();

    // Wrong head count and head size in writes.
    cache.reserve(&mut encoder, id, 2).unwrap();
    let wrong_heads = Tensor::zeros(&ctx, &[3, 2, 32], DType::F32).unwrap();
    let err = cache
        .write_into(&mut encoder, id, 0, &wrong_heads, &wrong_heads)
        .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { .. }) && err.to_string().contains("[3, 2, 32]"),
        "{err}"
    );
    let wrong_dim = Tensor::zeros(&ctx, &[2, 2, 64], DType::F32).unwrap();
    let err = cache
        .write_into(&mut encoder, id, 0, &wrong_dim, &wrong_dim)
        .unwrap_err();
    assert!(err.to_string().contains("[2, 2, 64]"), "{err}");
    let right = Tensor::zeros(&ctx, &[2, 2, 32], DType::F32).unwrap();
    let err = cache
        .write_into(&mut encoder, id, 1, &right, &right)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "layer", .. }),
        "{err}"
    );
    if ctx.capabilities().shader_f16 {
        let half = Tensor::zeros(&ctx, &[2, 2, 32], DType::F16).unwrap();
        let err = cache
            .write_into(&mut encoder, id, 0, &half, &half)
            .unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
    }
    cache
        .write_into(&mut encoder, id, 0, &right, &right)
        .unwrap();

    // Queries: GQA ratio, head size, more rows than tokens.
    let out = Tensor::zeros(&ctx, &[1, 3, 1, 32], DType::F32).unwrap();
    let lse = Tensor::zeros(&ctx, &[3, 1], DType::F32).unwrap();
    let options = plain(&ctx, 32);
    let err = cache
        .attention_into(&mut encoder, id, 0, &out, &options, &out, &lse)
        .unwrap_err();
    assert!(err.to_string().contains("q_heads 3"), "{err}");
    let q = Tensor::zeros(&ctx, &[1, 2, 8, 32], DType::F32).unwrap();
    let lse = Tensor::zeros(&ctx, &[2, 8], DType::F32).unwrap();
    let err = cache
        .attention_into(&mut encoder, id, 0, &q, &options, &q, &lse)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "q_len", .. }),
        "{err}"
    );
    let q = Tensor::zeros(&ctx, &[1, 2, 1, 64], DType::F32).unwrap();
    let err = cache.attention(id, 0, &q, &options).unwrap_err();
    assert!(err.to_string().contains("[1, 2, 1, 64]"), "{err}");
    ctx.submit(encoder);

    // Unknown and freed sequences.
    let unknown = SequenceId(999);
    let err = cache.fork(unknown).unwrap_err();
    assert!(matches!(err, Error::UnknownSequence(999)), "{err}");
    cache.free(id).unwrap();
    let mut encoder = ctx.encoder();
    for err in [
        cache.free(id).unwrap_err(),
        cache.len(id).unwrap_err(),
        cache.reserve(&mut encoder, id, 1).unwrap_err(),
        cache
            .write_into(&mut encoder, id, 0, &right, &right)
            .unwrap_err(),
        cache.read_keys_blocking(id, 0, 0, 0..1).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::UnknownSequence(n) if n == id.0),
            "{err}"
        );
    }
    let q = Tensor::zeros(&ctx, &[1, 2, 1, 32], DType::F32).unwrap();
    let err = cache.attention(id, 0, &q, &options).unwrap_err();
    assert!(matches!(err, Error::UnknownSequence(_)), "{err}");

    // Writing without a reservation.
    let fresh = cache.create(None).unwrap();
    let err = cache
        .write_into(&mut encoder, fresh, 0, &right, &right)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "sequence",
                ..
            }
        ),
        "{err}"
    );
}

/// Returns `[1, kv_heads, len, head_dim]` data of one layer of `host`, as the contiguous
/// attention kernels take it.
fn contiguous(rows: &[Vec<f32>]) -> Vec<f32> {
    rows.concat()
}

#[test]
fn paged_decode_random_lengths() {
    use rand::{Rng, SeedableRng};
    let Some(ctx) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for case in 0..6 {
        let bs = [1, 16, 64][rng.gen_range(0..3)];
        let kv_heads = rng.gen_range(1..=3);
        let group = [1, 3, 8][rng.gen_range(0..3)];
        let d = [32, 64, 128][rng.gen_range(0..3)];
        let chunks: Vec<usize> = (0..rng.gen_range(1..4))
            .map(|_| rng.gen_range(1..60))
            .collect();
        let mut cache = cache(&ctx, 1, kv_heads, d, bs, DType::F32);
        let id = cache.create(None).unwrap();
        let mut host = HostRows::new(1, kv_heads);
        for (i, &n) in chunks.iter().enumerate() {
            append(
                &mut cache,
                &ctx,
                id,
                &mut host,
                n,
                500 + case * 10 + i as u64,
            );
        }
        let options = PagedAttentionOptions {
            chunk_keys: Some(rng.gen_range(1..80)),
            ..plain(&ctx, d)
        };
        let label = format!(
            "case {case}: bs {bs} chunks {chunks:?} gqa {}/{kv_heads} d {d} split {:?}",
            group * kv_heads,
            options.chunk_keys
        );
        let q_heads = group * kv_heads;
        check_attention(
            &ctx, &cache, id, &host, q_heads, 1, &options, causal, &label,
        );
    }
}

#[test]
fn paged_matches_contiguous_attention() {
    use focal::attention::{attention, AttentionOptions, Mask};
    let Some(ctx) = gpu() else { return };
    let (q_heads, kv_heads, d) = (9, 3, 64);
    let window = Window { sinks: 4, size: 24 };
    for windowed in [false, true] {
        let mut cache = cache(&ctx, 1, kv_heads, d, 16, DType::F32);
        let id = cache.create(windowed.then_some(window)).unwrap();
        let mut host = HostRows::new(1, kv_heads);
        append(&mut cache, &ctx, id, &mut host, 50, 1);
        for step in 0..3 {
            append(&mut cache, &ctx, id, &mut host, 1, 2 + step);
        }
        let len = cache.len(id).unwrap();

        let q = random_vec(q_heads * d, 3);
        let qt = Tensor::from_f32(&ctx, &q, &[1, q_heads, 1, d], DType::F32).unwrap();
        let options = PagedAttentionOptions {
            chunk_keys: Some(16),
            ..plain(&ctx, d)
        };
        let (paged, _) = cache.attention(id, 0, &qt, &options).unwrap();

        let shape = [1, kv_heads, len, d];
        let k = Tensor::from_f32(&ctx, &contiguous(&host.keys[0]), &shape, DType::F32).unwrap();
        let v = Tensor::from_f32(&ctx, &contiguous(&host.values[0]), &shape, DType::F32).unwrap();
        let mask = if windowed {
            Mask::causal_window(window.size).with_sinks(window.sinks)
        } else {
            Mask::causal()
        };
        let reference = attention(&ctx, &qt, &k, &v, &AttentionOptions::with_mask(mask))
            .unwrap()
            .to_vec_blocking(&ctx)
            .unwrap();
        let reference: Vec<f64> = reference.iter().map(|&x| x as f64).collect();
        assert_close(
            &format!("paged vs contiguous, windowed {windowed}"),
            &paged.to_vec_blocking(&ctx).unwrap(),
            &reference,
            1e-4,
            1e-5,
        );
    }
}
