// Split-K paged attention: decode (q_len = 1) and prefill over a cached prefix.
//
// q and out are [q_heads, q_len, HEAD_DIM]; query row i sits at sequence position
// seq_len - q_len + i (causal, aligned to the bottom right). K and V are read in place
// from the pool [num_blocks, kv_heads, BLOCK_SIZE, HEAD_DIM] through the block table:
// key j lives in physical block table[j / BLOCK_SIZE] at offset j % BLOCK_SIZE.
// Evicted blocks hold EVICTED in the table and are never read. Query head h reads KV
// head h / (q_heads / kv_heads) (GQA).
//
// Pass 1, paged_partial: workgroup (chunk, kv head, row tile) runs an online softmax
// over the keys of one chunk for ROWS query rows of one KV head, so each K/V tile is
// loaded once for the whole GQA group, and writes the partial (max, sum, acc).
// Pass 2, paged_merge: one workgroup per query row rescales the chunks' partials to a
// common max, writes out = acc / sum and lse = max + log(sum).
//
// A query at position p attends to key j when j <= p and, if window > 0, when
// j < sinks or p - j < window. A row with no visible key gets zeros and lse = -1e30.
//
// Constants from the host: HEAD_DIM (a multiple of 4), ROWS (query rows per
// workgroup), TILE_KEYS (keys per shared-memory tile), WG (invocations, a multiple
// of ROWS) and BLOCK_SIZE (tokens per block). BLOCK_SIZE is a constant rather than a
// parameter because an integer division by a runtime value is slow on many GPUs and
// on CPU drivers such as lavapipe, and the load loop divides once per element.

#default HEAD_DIM 64u
#default ROWS 4u
#default TILE_KEYS 16u
#default WG 64u
#default BLOCK_SIZE 16u

struct Params {
    q_heads: u32,
    kv_heads: u32,
    q_len: u32,
    seq_len: u32,
    block_size: u32,
    chunk_keys: u32,
    num_chunks: u32,
    row_tiles: u32,
    sinks: u32,
    window: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<elem4>;
@group(0) @binding(2) var<storage, read> k_pool: array<elem4>;
@group(0) @binding(3) var<storage, read> v_pool: array<elem4>;
@group(0) @binding(4) var<storage, read> block_table: array<u32>;
// [num_chunks, q_heads * q_len, HEAD_DIM]: unnormalised output of each chunk.
@group(0) @binding(5) var<storage, read_write> partial_acc: array<f32>;
// [num_chunks, q_heads * q_len]: (running max, sum of exponentials) of each chunk.
@group(0) @binding(6) var<storage, read_write> partial_stats: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> out: array<elem>;
@group(0) @binding(8) var<storage, read_write> lse: array<f32>;

const MASKED: f32 = -1e30;
const EVICTED: u32 = 0xffffffffu;
const VEC4S: u32 = HEAD_DIM / 4u;
// In the accumulate step, THREADS_PER_ROW invocations share one query row and each
// owns DIMS_PER_THREAD output dimensions, strided by THREADS_PER_ROW.
const THREADS_PER_ROW: u32 = WG / ROWS;
const DIMS_PER_THREAD: u32 = (HEAD_DIM + THREADS_PER_ROW - 1u) / THREADS_PER_ROW;

var<workgroup> q_tile: array<vec4<f32>, ROWS * VEC4S>;
var<workgroup> k_tile: array<vec4<f32>, TILE_KEYS * VEC4S>;
var<workgroup> v_tile: array<f32, TILE_KEYS * HEAD_DIM>;
// Scores of the current tile, then their exp(s - max).
var<workgroup> scores: array<f32, ROWS * TILE_KEYS>;
// Running max of each row before the current tile, and after it.
var<workgroup> row_max: array<f32, ROWS>;
var<workgroup> next_max: array<f32, ROWS>;
// Sequence position of each row's query.
var<workgroup> row_query: array<u32, ROWS>;

fn is_visible(query: u32, key: u32) -> bool {
    if (key > query) {
        return false;
    }
    return params.window == 0u || key < params.sinks || query - key < params.window;
}

// Score of tile entry i = r * TILE_KEYS + t, or MASKED when the row cannot see the key.
fn masked_score(i: u32, dot_product: f32, first_row: u32, rows_here: u32, tile_end: u32, t0: u32) -> f32 {
    let r = i / TILE_KEYS;
    let key = t0 + i % TILE_KEYS;
    if (first_row + r < rows_here && key < tile_end && is_visible(row_query[r], key)) {
        return dot_product * params.scale;
    }
    return MASKED;
}

@compute @workgroup_size(WG, 1, 1)
fn paged_partial(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
) {
    let chunk = wid.x;
    let kv_head = wid.y / params.row_tiles;
    let row_tile = wid.y % params.row_tiles;
    let group = params.q_heads / params.kv_heads;
    // Row r of this KV head is query head kv_head * group + r / q_len at query index
    // r % q_len; its global row kv_head * group * q_len + r indexes q, out and lse.
    let rows_here = group * params.q_len;
    let first_row = row_tile * ROWS;
    let last_row = min(first_row + ROWS, rows_here) - 1u;
    let head_base = kv_head * rows_here;

    for (var i = lindex; i < ROWS * VEC4S; i += WG) {
        let row = first_row + i / VEC4S;
        var value = vec4<f32>(0.0);
        if (row < rows_here) {
            value = vec4<f32>(q[(head_base + row) * VEC4S + i % VEC4S]);
        }
        q_tile[i] = value;
    }

    // Query positions covered by this workgroup. When the tile spans two heads, the
    // positions wrap around, so take the full range.
    let offset = params.seq_len - params.q_len;
    var query_min = offset;
    var query_max = offset + params.q_len - 1u;
    if (first_row / params.q_len == last_row / params.q_len) {
        query_min = offset + first_row % params.q_len;
        query_max = offset + last_row % params.q_len;
    }
    let key_begin = chunk * params.chunk_keys;
    let key_end = min(min(key_begin + params.chunk_keys, params.seq_len), query_max + 1u);
    // With a window, keys in [sinks, horizon) are invisible to every row here.
    var horizon = 0u;
    if (params.window != 0u && query_min + 1u > params.window) {
        horizon = query_min + 1u - params.window;
    }

    let my_row = lindex / THREADS_PER_ROW;
    let lane = lindex % THREADS_PER_ROW;
    if (lindex < ROWS) {
        row_max[lindex] = MASKED;
        row_query[lindex] = offset + (first_row + lindex) % params.q_len;
    }
    var running_sum = 0.0;
    var acc: array<f32, DIMS_PER_THREAD>;

    // The loop bounds and the skip test depend only on the workgroup id and params, so
    // the barriers inside stay in uniform control flow.
    for (var t0 = key_begin; t0 < key_end; t0 += TILE_KEYS) {
        let tile_end = min(t0 + TILE_KEYS, key_end);
        let skip = t0 >= params.sinks && tile_end <= horizon;
        if (!skip) {
            // Stage the tile's keys and values, looking each key's block up in the table.
            for (var i = lindex; i < TILE_KEYS * VEC4S; i += WG) {
                let key = t0 + i / VEC4S;
                var k_value = vec4<f32>(0.0);
                var v_value = vec4<f32>(0.0);
                if (key < tile_end) {
                    let block = block_table[key / BLOCK_SIZE];
                    if (block != EVICTED) {
                        let slot = (block * params.kv_heads + kv_head) * BLOCK_SIZE
                            + key % BLOCK_SIZE;
                        k_value = vec4<f32>(k_pool[slot * VEC4S + i % VEC4S]);
                        v_value = vec4<f32>(v_pool[slot * VEC4S + i % VEC4S]);
                    }
                }
                k_tile[i] = k_value;
                let d = (i % VEC4S) * 4u;
                let base = (i / VEC4S) * HEAD_DIM + d;
                v_tile[base] = v_value.x;
                v_tile[base + 1u] = v_value.y;
                v_tile[base + 2u] = v_value.z;
                v_tile[base + 3u] = v_value.w;
            }
            workgroupBarrier();

#if SUBGROUPS
            // Each subgroup computes one score at a time: its lanes split the head
            // dimension and subgroupAdd sums them. The loop bound is uniform, so every
            // lane reaches subgroupAdd.
            let subgroups = max(WG / sg_size, 1u);
            let subgroup = lindex / sg_size;
            for (var base = 0u; base < ROWS * TILE_KEYS; base += subgroups) {
                let i = base + subgroup;
                var part = 0.0;
                if (i < ROWS * TILE_KEYS) {
                    let r = i / TILE_KEYS;
                    let t = i % TILE_KEYS;
                    for (var d = sg_lane; d < VEC4S; d += sg_size) {
                        part += dot(q_tile[r * VEC4S + d], k_tile[t * VEC4S + d]);
                    }
                }
                let total = subgroupAdd(part);
                if (sg_lane == 0u && i < ROWS * TILE_KEYS) {
                    scores[i] = masked_score(i, total, first_row, rows_here, tile_end, t0);
                }
            }
#else
            for (var i = lindex; i < ROWS * TILE_KEYS; i += WG) {
                let r = i / TILE_KEYS;
                let t = i % TILE_KEYS;
                var total = 0.0;
                for (var d = 0u; d < VEC4S; d++) {
                    total += dot(q_tile[r * VEC4S + d], k_tile[t * VEC4S + d]);
                }
                scores[i] = masked_score(i, total, first_row, rows_here, tile_end, t0);
            }
#endif
            workgroupBarrier();

            // Each row's new running max: the old one or the tile's largest score.
            if (lindex < ROWS) {
                var tile_max = row_max[lindex];
                for (var t = 0u; t < TILE_KEYS; t++) {
                    tile_max = max(tile_max, scores[lindex * TILE_KEYS + t]);
                }
                next_max[lindex] = tile_max;
            }
            workgroupBarrier();

            // Turn scores into exp(s - new max), once per (row, key).
            for (var i = lindex; i < ROWS * TILE_KEYS; i += WG) {
                let s = scores[i];
                var p = 0.0;
                if (s > MASKED) {
                    p = exp(s - next_max[i / TILE_KEYS]);
                }
                scores[i] = p;
            }
            workgroupBarrier();

            // Online softmax: rescaling by exp(old max - new max) keeps
            // acc = sum over keys of exp(s - max) * v and sum = sum of exp(s - max).
            // Every invocation of a row keeps an identical copy of the row's sum.
            let rescale = exp(row_max[my_row] - next_max[my_row]);
            var tile_sum = 0.0;
            for (var j = 0u; j < DIMS_PER_THREAD; j++) {
                acc[j] *= rescale;
            }
            for (var t = 0u; t < TILE_KEYS; t++) {
                let p = scores[my_row * TILE_KEYS + t];
                tile_sum += p;
                for (var j = 0u; j < DIMS_PER_THREAD; j++) {
                    let d = lane + j * THREADS_PER_ROW;
                    if (d < HEAD_DIM) {
                        acc[j] += p * v_tile[t * HEAD_DIM + d];
                    }
                }
            }
            running_sum = running_sum * rescale + tile_sum;
            // Every invocation has read row_max and the probabilities of this tile.
            workgroupBarrier();
            if (lindex < ROWS) {
                row_max[lindex] = next_max[lindex];
            }
        }
    }
    // Makes the last row_max update visible (and orders the initial one when no tile ran).
    workgroupBarrier();

    let row = first_row + my_row;
    if (row < rows_here) {
        let global_row = head_base + row;
        let rows_total = params.q_heads * params.q_len;
        let base = (chunk * rows_total + global_row) * HEAD_DIM;
        for (var j = 0u; j < DIMS_PER_THREAD; j++) {
            let d = lane + j * THREADS_PER_ROW;
            if (d < HEAD_DIM) {
                partial_acc[base + d] = acc[j];
            }
        }
        if (lane == 0u) {
            partial_stats[chunk * rows_total + global_row] = vec2<f32>(row_max[my_row], running_sum);
        }
    }
}

@compute @workgroup_size(WG, 1, 1)
fn paged_merge(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    // No barriers here, so rows past the end may return early.
    let row = wid.y * groups.x + wid.x;
    let rows_total = params.q_heads * params.q_len;
    if (row >= rows_total) {
        return;
    }

    var row_max = MASKED;
    for (var c = 0u; c < params.num_chunks; c++) {
        let stats = partial_stats[c * rows_total + row];
        if (stats.y > 0.0) {
            row_max = max(row_max, stats.x);
        }
    }
    var row_sum = 0.0;
    for (var c = 0u; c < params.num_chunks; c++) {
        let stats = partial_stats[c * rows_total + row];
        if (stats.y > 0.0) {
            row_sum += stats.y * exp(stats.x - row_max);
        }
    }

    for (var d = lindex; d < HEAD_DIM; d += WG) {
        var value = 0.0;
        for (var c = 0u; c < params.num_chunks; c++) {
            let stats = partial_stats[c * rows_total + row];
            if (stats.y > 0.0) {
                value += partial_acc[(c * rows_total + row) * HEAD_DIM + d] * exp(stats.x - row_max);
            }
        }
        if (row_sum > 0.0) {
            value /= row_sum;
        }
        out[row * HEAD_DIM + d] = elem(value);
    }
    if (lindex == 0u) {
        var row_lse = MASKED;
        if (row_sum > 0.0) {
            row_lse = row_max + log(row_sum);
        }
        lse[row] = row_lse;
    }
}
