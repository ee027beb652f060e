// Split-K decode attention (flash-decoding) for few query rows and long contexts.
//
// Shapes and mask rules are those of attention_flash.wgsl. The keys are cut into
// `splits` chunks of `chunk_len`. `decode_partial` runs one workgroup per
// (chunk, query row, batch * q_heads): each invocation scores KEYS_PER_INVOCATION keys
// of a sub-tile of WG * KEYS_PER_INVOCATION keys, the workgroup reduces the sub-tile's
// max and sum, and invocations then own output columns to accumulate P V. Several keys
// per invocation mean fewer barriers per key, which dominate on CPU adapters. It writes the unnormalised accumulator and
// the chunk's (max, sum) to `partial`. `decode_merge` rescales the chunks to the
// common max, divides by the total sum and writes O and the log-sum-exp.
//
// `partial` is f32 [batch * q_heads * q_len, splits, HEAD_DIM + 2].
//
// Constants from the host: HEAD_DIM, WG (invocations per workgroup, a power of two
// of at least the subgroup size), WRITE_LSE, SPARSE (dense block-visibility table).

#default HEAD_DIM 64u
#default WG 64u
#default KEYS_PER_INVOCATION 4u
#default WRITE_LSE false
#default SPARSE false

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
@group(0) @binding(3) var<storage, read> v: array<elem>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<elem>;
#if WRITE_LSE
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
#endif
#if SPARSE
@group(0) @binding(7) var<storage, read> block_visible: array<u32>;
#endif

const D4: u32 = HEAD_DIM / 4u;
const COLUMNS_PER_INVOCATION: u32 = (HEAD_DIM + WG - 1u) / WG;
const STRIDE: u32 = HEAD_DIM + 2u;
const SUB_TILE: u32 = WG * KEYS_PER_INVOCATION;

// Stands for minus infinity in running maxima; finite so that exp(NEG - max) is 0.
const NEG: f32 = -3.0e38;

// The bits of -inf, the log-sum-exp of a row that sees no key. A private variable
// rather than a constant: WGSL rejects infinities in constant expressions, and Tint
// enforces that, so bitcast<f32>(0xff800000u) fails to compile in Chromium.
var<private> minus_inf_bits: u32 = 0xff800000u;

var<workgroup> q_shared: array<vec4<f32>, D4>;
var<workgroup> weights: array<f32, SUB_TILE>;
var<workgroup> scratch: array<f32, WG>;

// Key j is visible to query row i at position p: the same rules as attention_flash.wgsl.
fn visible(i: u32, p: i32, j: u32) -> bool {
    let key = i32(j);
    let causal_ok = params.causal == 0u || key <= p;
    let in_window = key >= p - i32(params.window_left) && key <= p + i32(params.window_right);
    var ok = key < i32(params.kv_len) && causal_ok && (in_window || j < params.sinks);
#if SPARSE
    if (ok) {
        let block = (i / params.block_size) * params.k_blocks + j / params.block_size;
        ok = block_visible[block] != 0u;
    }
#endif
    return ok;
}

#if SUBGROUPS
fn reduce_max(value: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    let part = subgroupMax(value);
    if (sg_lane == 0u) {
        scratch[lindex / sg_size] = part;
    }
    workgroupBarrier();
    var total = NEG;
    for (var i = 0u; i < WG / sg_size; i++) {
        total = max(total, scratch[i]);
    }
    workgroupBarrier();
    return total;
}

fn reduce_sum(value: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    let part = subgroupAdd(value);
    if (sg_lane == 0u) {
        scratch[lindex / sg_size] = part;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG / sg_size; i++) {
        total += scratch[i];
    }
    workgroupBarrier();
    return total;
}
#else
fn reduce_max(value: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    scratch[lindex] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lindex < stride) {
            scratch[lindex] = max(scratch[lindex], scratch[lindex + stride]);
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

fn reduce_sum(value: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    scratch[lindex] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lindex < stride) {
            scratch[lindex] += scratch[lindex + stride];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}
#endif

@compute @workgroup_size(WG, 1, 1)
fn decode_partial(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
) {
#ifndef SUBGROUPS
    let sg_lane = 0u;
    let sg_size = 1u;
#endif
    let split = wid.x;
    let row = wid.y;
    let bh = wid.z;
    let batch = bh / params.q_heads;
    let head = bh % params.q_heads;
    let kv_head = head / (params.q_heads / params.kv_heads);
    let kv_base = (batch * params.kv_heads + kv_head) * params.kv_len;

    let q_base = (bh * params.q_len + row) * D4;
    for (var e = lindex; e < D4; e += WG) {
        q_shared[e] = vec4<f32>(q[q_base + e]) * params.scale;
    }
    workgroupBarrier();

    // Keys this row can see, [lo, hi) plus the sinks; all uniform in the workgroup.
    let p = i32(row) + params.offset;
    var hi = min(i32(params.kv_len), p + i32(params.window_right) + 1);
    if (params.causal != 0u) {
        hi = min(hi, p + 1);
    }
    let lo = max(0, p - i32(params.window_left));
    let chunk_start = split * params.chunk_len;
    let chunk_end = min(chunk_start + params.chunk_len, params.kv_len);

    var row_max = NEG;
    var row_sum = 0.0;
    var acc: array<f32, COLUMNS_PER_INVOCATION>;
    for (var t0 = chunk_start; t0 < chunk_end; t0 += SUB_TILE) {
        let t_end = min(t0 + SUB_TILE, chunk_end);
        let in_range = i32(t0) < hi && i32(t_end) > lo;
        if (!in_range && t0 >= params.sinks) {
            continue;
        }
        // Invocation lindex scores keys t0 + u * WG + lindex.
        var scores: array<f32, KEYS_PER_INVOCATION>;
        var local_max = NEG;
        for (var u = 0u; u < KEYS_PER_INVOCATION; u++) {
            let j = t0 + u * WG + lindex;
            var s = NEG;
            if (j < t_end && visible(row, p, j)) {
                let k_row = (kv_base + j) * D4;
                var dot4 = vec4<f32>(0.0);
                for (var d = 0u; d < D4; d++) {
                    dot4 = fma(q_shared[d], vec4<f32>(k[k_row + d]), dot4);
                }
                s = dot4.x + dot4.y + dot4.z + dot4.w;
            }
            scores[u] = s;
            local_max = max(local_max, s);
        }
        let new_max = max(row_max, reduce_max(local_max, lindex, sg_lane, sg_size));
        var local_sum = 0.0;
        for (var u = 0u; u < KEYS_PER_INVOCATION; u++) {
            var weight = 0.0;
            if (scores[u] > NEG) {
                weight = exp(scores[u] - new_max);
            }
            local_sum += weight;
            weights[u * WG + lindex] = weight;
        }
        // Rescaling by exp(old max - new max) keeps acc and row_sum relative to the
        // running max; while nothing is visible both are 0 and stay 0.
        let alpha = exp(row_max - new_max);
        row_sum = row_sum * alpha + reduce_sum(local_sum, lindex, sg_lane, sg_size);
        row_max = new_max;
        workgroupBarrier();

        let count = t_end - t0;
        for (var a = 0u; a < COLUMNS_PER_INVOCATION; a++) {
            let column = lindex + a * WG;
            if (column < HEAD_DIM) {
                var sum = acc[a] * alpha;
                for (var c = 0u; c < count; c++) {
                    sum = fma(weights[c], f32(v[(kv_base + t0 + c) * HEAD_DIM + column]), sum);
                }
                acc[a] = sum;
            }
        }
        // The next sub-tile overwrites the weights.
        workgroupBarrier();
    }

    let base = ((bh * params.q_len + row) * params.splits + split) * STRIDE;
    for (var a = 0u; a < COLUMNS_PER_INVOCATION; a++) {
        let column = lindex + a * WG;
        if (column < HEAD_DIM) {
            partial[base + column] = acc[a];
        }
    }
    if (lindex == 0u) {
        partial[base + HEAD_DIM] = row_max;
        partial[base + HEAD_DIM + 1u] = row_sum;
    }
}

// One workgroup per row of the output; invocations own output columns.
@compute @workgroup_size(WG, 1, 1)
fn decode_merge(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let row = wid.y * groups.x + wid.x;
    if (row >= params.batch * params.q_heads * params.q_len) {
        return;
    }
    let first = row * params.splits * STRIDE;
    var total_max = NEG;
    for (var c = 0u; c < params.splits; c++) {
        total_max = max(total_max, partial[first + c * STRIDE + HEAD_DIM]);
    }
    var total_sum = 0.0;
    for (var c = 0u; c < params.splits; c++) {
        let base = first + c * STRIDE;
        total_sum += partial[base + HEAD_DIM + 1u] * exp(partial[base + HEAD_DIM] - total_max);
    }
    var inv_sum = 0.0;
    if (total_sum > 0.0) {
        inv_sum = 1.0 / total_sum;
    }
    for (var column = lindex; column < HEAD_DIM; column += WG) {
        var sum = 0.0;
        for (var c = 0u; c < params.splits; c++) {
            let base = first + c * STRIDE;
            sum += partial[base + column] * exp(partial[base + HEAD_DIM] - total_max);
        }
        o[row * HEAD_DIM + column] = elem(sum * inv_sum);
    }
#if WRITE_LSE
    if (lindex == 0u) {
        // A row that saw no key gets -inf, as in attention_flash.wgsl.
        var row_lse = bitcast<f32>(minus_inf_bits);
        if (total_sum > 0.0) {
            row_lse = total_max + log(total_sum);
        }
        lse[row] = row_lse;
    }
#endif
}
