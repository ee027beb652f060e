// Flash attention prefill: O = softmax(scale * Q K^T, masked) V without the score
// matrix.
//
// Q and O are [batch, q_heads, q_len, HEAD_DIM]; K and V are
// [batch, kv_heads, kv_len, HEAD_DIM]. Query head h reads KV head
// h / (q_heads / kv_heads). Arithmetic is f32 whatever `elem` is.
//
// One workgroup per (tile of BLOCK_Q query rows, query head, batch), one invocation
// per query row. The workgroup walks the key range its rows can see in tiles of
// BLOCK_K keys held in workgroup memory, and each invocation keeps an online softmax
// (running max, running sum and an f32 accumulator rescaled whenever the max grows).
// Key tiles that the causal, window or block-sparse mask hides from every row of the
// workgroup are never loaded, so a window of W keys costs O(q_len * W).
//
// The key range is derived from the uniform parameters and the workgroup id only, so
// every loop that contains a barrier runs in uniform control flow. Rows past q_len in
// the last tile run the loops like the others and skip the final store.
//
// Constants from the host: HEAD_DIM (a multiple of 4), BLOCK_Q (workgroup size),
// BLOCK_K, WRITE_LSE (also write the per-row log-sum-exp) and SPARSE (walk the key
// blocks of a block-sparse layout instead of one contiguous range).

#default HEAD_DIM 64u
#default BLOCK_Q 64u
#default BLOCK_K 32u
#default WRITE_LSE false
#default SPARSE false

// Shared by every attention shader; the host's `Params` in attention/validate.rs.
struct AttentionParams {
    batch: u32,
    q_heads: u32,
    kv_heads: u32,
    q_len: u32,
    kv_len: u32,
    offset: i32,
    scale: f32,
    causal: u32,
    window_left: u32,
    window_right: u32,
    sinks: u32,
    block_size: u32,
    k_blocks: u32,
    row_start: u32,
    row_count: u32,
    head: u32,
    batch_index: u32,
    splits: u32,
    chunk_len: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<elem4>;
@group(0) @binding(2) var<storage, read> k: array<elem4>;
@group(0) @binding(3) var<storage, read> v: array<elem4>;
@group(0) @binding(4) var<storage, read_write> o: array<elem4>;
#if WRITE_LSE
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
#endif
#if SPARSE
@group(0) @binding(6) var<storage, read> block_offsets: array<u32>;
@group(0) @binding(7) var<storage, read> block_indices: array<u32>;
#endif

const D4: u32 = HEAD_DIM / 4u;

// Stands for minus infinity in running maxima. It is finite so that
// exp(NEG - max) is 0 instead of NaN.
const NEG: f32 = -3.0e38;

// The bits of -inf, the log-sum-exp of a row that sees no key. A private variable
// rather than a constant: WGSL rejects infinities in constant expressions, and Tint
// enforces that, so bitcast<f32>(0xff800000u) fails to compile in Chromium.
var<private> minus_inf_bits: u32 = 0xff800000u;

var<workgroup> q_tile: array<vec4<f32>, BLOCK_Q * D4>;
var<workgroup> k_tile: array<vec4<f32>, BLOCK_K * D4>;
var<workgroup> v_tile: array<vec4<f32>, BLOCK_K * D4>;

// Per-invocation state of one query row's online softmax.
var<private> q_row: array<vec4<f32>, D4>;
var<private> acc: array<vec4<f32>, D4>;
var<private> scores: array<f32, BLOCK_K>;
var<private> row_max: f32;
var<private> row_sum: f32;

// Key j is visible to the row at position p: causal rule, then window or sink.
fn visible(p: i32, j: u32) -> bool {
    let key = i32(j);
    let causal_ok = params.causal == 0u || key <= p;
    let in_window = key >= p - i32(params.window_left) && key <= p + i32(params.window_right);
    return causal_ok && (in_window || j < params.sinks);
}

// Folds keys start..end into the row state, one tile of BLOCK_K keys at a time.
// start and end must be uniform across the workgroup.
fn attend_range(start: i32, end: i32, lindex: u32, kv_base: u32, p: i32) {
    for (var t0 = start; t0 < end; t0 += i32(BLOCK_K)) {
        // Every invocation must have finished reading the previous tile.
        workgroupBarrier();
        let tile_start = u32(t0);
        let count = min(BLOCK_K, u32(end - t0));
        for (var e = lindex; e < BLOCK_K * D4; e += BLOCK_Q) {
            let key = e / D4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (key < count) {
                let index = kv_base + (tile_start + key) * D4 + e % D4;
                kv = vec4<f32>(k[index]);
                vv = vec4<f32>(v[index]);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();

        var tile_max = NEG;
        for (var c = 0u; c < BLOCK_K; c++) {
            var dot4 = vec4<f32>(0.0);
            for (var d = 0u; d < D4; d++) {
                dot4 = fma(q_row[d], k_tile[c * D4 + d], dot4);
            }
            var s = dot4.x + dot4.y + dot4.z + dot4.w;
            if (c >= count || !visible(p, tile_start + c)) {
                s = NEG;
            }
            scores[c] = s;
            tile_max = max(tile_max, s);
        }

        // A tile with no visible key for this row leaves the state unchanged.
        let new_max = max(row_max, tile_max);
        if (new_max > NEG) {
            // Rescaling by exp(old max - new max) keeps acc and row_sum relative to
            // the running max.
            let alpha = exp(row_max - new_max);
            row_sum *= alpha;
            for (var d = 0u; d < D4; d++) {
                acc[d] *= alpha;
            }
            for (var c = 0u; c < BLOCK_K; c++) {
                let weight = exp(scores[c] - new_max);
                row_sum += weight;
                for (var d = 0u; d < D4; d++) {
                    acc[d] = fma(vec4<f32>(weight), v_tile[c * D4 + d], acc[d]);
                }
            }
            row_max = new_max;
        }
    }
}

@compute @workgroup_size(BLOCK_Q, 1, 1)
fn flash_prefill(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let row0 = wid.x * BLOCK_Q;
    let head = wid.y;
    let batch = wid.z;
    let group = params.q_heads / params.kv_heads;
    let kv_head = head / group;
    let q_base = ((batch * params.q_heads + head) * params.q_len + row0) * D4;
    let kv_base = (batch * params.kv_heads + kv_head) * params.kv_len * D4;

    // Stage the query tile with coalesced loads, then give each row its own copy.
    let rows = min(BLOCK_Q, params.q_len - row0);
    for (var e = lindex; e < BLOCK_Q * D4; e += BLOCK_Q) {
        var value = vec4<f32>(0.0);
        if (e / D4 < rows) {
            value = vec4<f32>(q[q_base + e]) * params.scale;
        }
        q_tile[e] = value;
    }
    workgroupBarrier();
    for (var d = 0u; d < D4; d++) {
        q_row[d] = q_tile[lindex * D4 + d];
        acc[d] = vec4<f32>(0.0);
    }
    row_max = NEG;
    row_sum = 0.0;
    let p = i32(row0 + lindex) + params.offset;

    // Keys any row of this tile can see: [lo, hi) plus the sinks [0, sinks).
    let p_first = i32(row0) + params.offset;
    let p_last = i32(row0 + rows) - 1 + params.offset;
    var hi = min(i32(params.kv_len), p_last + i32(params.window_right) + 1);
    if (params.causal != 0u) {
        hi = min(hi, p_last + 1);
    }
    let lo = max(0, p_first - i32(params.window_left));
    let sink_end = min(i32(params.sinks), hi);

#if SPARSE
    // The host makes BLOCK_Q divide block_size, so the tile lies in one query block.
    let q_block = row0 / params.block_size;
    var range_lo = lo;
    if (params.sinks > 0u) {
        range_lo = 0;
    }
    for (var e = block_offsets[q_block]; e < block_offsets[q_block + 1u]; e++) {
        let key_block = i32(block_indices[e] * params.block_size);
        let start = max(key_block, range_lo);
        let end = min(key_block + i32(params.block_size), hi);
        attend_range(start, end, lindex, kv_base, p);
    }
#else
    attend_range(0, sink_end, lindex, kv_base, p);
    attend_range(max(lo, sink_end), hi, lindex, kv_base, p);
#endif

    if (lindex < rows) {
        var inv_sum = 0.0;
        if (row_sum > 0.0) {
            inv_sum = 1.0 / row_sum;
        }
        let o_base = q_base + lindex * D4;
        for (var d = 0u; d < D4; d++) {
            o[o_base + d] = elem4(acc[d] * inv_sum);
        }
#if WRITE_LSE
        // A row that saw no key gets -inf, so exp(s - lse) can never turn it visible.
        var row_lse = bitcast<f32>(minus_inf_bits);
        if (row_sum > 0.0) {
            row_lse = row_max + log(row_sum);
        }
        lse[(batch * params.q_heads + head) * params.q_len + row0 + lindex] = row_lse;
#endif
    }
}
