// Naive attention: the reference that materialises the score matrix.
//
// `scores` writes S = scale * Q K^T as f32 [batch, q_heads, q_len, kv_len], with
// MASKED_SCORE where the mask hides a key; the row softmax kernel then turns S into
// probabilities P (it treats values at or below -1e30 as masked), and
// `weighted_sum` computes O = P V. Shapes and the mask rules are those of
// attention_flash.wgsl.
//
// Constants from the host: HEAD_DIM (a multiple of 4) and SPARSE (test a dense
// block-visibility table of [q_blocks, k_blocks] words).

#default HEAD_DIM 64u
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
@group(0) @binding(3) var<storage, read> v: array<elem4>;
@group(0) @binding(4) var<storage, read_write> scores_out: array<f32>;
@group(0) @binding(5) var<storage, read> probs_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<elem4>;
#if SPARSE
@group(0) @binding(7) var<storage, read> block_visible: array<u32>;
#endif

const D4: u32 = HEAD_DIM / 4u;
const MASKED_SCORE: f32 = -1e31;

// Key j is visible to query row i: the same rules as attention_flash.wgsl.
fn visible(i: u32, j: u32) -> bool {
    let p = i32(i) + params.offset;
    let key = i32(j);
    let causal_ok = params.causal == 0u || key <= p;
    let in_window = key >= p - i32(params.window_left) && key <= p + i32(params.window_right);
    var ok = causal_ok && (in_window || j < params.sinks);
#if SPARSE
    let block = (i / params.block_size) * params.k_blocks + j / params.block_size;
    ok = ok && block_visible[block] != 0u;
#endif
    return ok;
}

// One invocation per score; x runs over keys, y over query rows, z over (batch, head).
@compute @workgroup_size(16, 16, 1)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    let bh = gid.z;
    if (j >= params.kv_len || i >= params.q_len) {
        return;
    }
    let batch = bh / params.q_heads;
    let head = bh % params.q_heads;
    let kv_head = head / (params.q_heads / params.kv_heads);
    let q_base = (bh * params.q_len + i) * D4;
    let k_base = ((batch * params.kv_heads + kv_head) * params.kv_len + j) * D4;
    var s = MASKED_SCORE;
    if (visible(i, j)) {
        var dot4 = vec4<f32>(0.0);
        for (var d = 0u; d < D4; d++) {
            dot4 = fma(vec4<f32>(q[q_base + d]), vec4<f32>(k[k_base + d]), dot4);
        }
        s = (dot4.x + dot4.y + dot4.z + dot4.w) * params.scale;
    }
    scores_out[(bh * params.q_len + i) * params.kv_len + j] = s;
}

// One invocation per 4 output columns of one row: O[row, d4] = sum_j P[row, j] V[j, d4].
@compute @workgroup_size(64, 1, 1)
fn weighted_sum(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let index = (wid.y * groups.x + wid.x) * 64u + lindex;
    let rows = params.batch * params.q_heads * params.q_len;
    if (index >= rows * D4) {
        return;
    }
    let row = index / D4;
    let d = index % D4;
    let bh = row / params.q_len;
    let batch = bh / params.q_heads;
    let head = bh % params.q_heads;
    let kv_head = head / (params.q_heads / params.kv_heads);
    let v_base = (batch * params.kv_heads + kv_head) * params.kv_len * D4 + d;
    let p_base = row * params.kv_len;
    var sum = vec4<f32>(0.0);
    for (var j = 0u; j < params.kv_len; j++) {
        sum = fma(vec4<f32>(probs_in[p_base + j]), vec4<f32>(v[v_base + j * D4]), sum);
    }
    o[index] = elem4(sum);
}
