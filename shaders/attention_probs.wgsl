// Attention probabilities recomputed from the log-sum-exp that flash prefill wrote:
// P[r, j] = exp(scale * q_r . k_j - lse_r) for visible keys, 0 for hidden ones, for
// rows row_start .. row_start + row_count of one (batch, head). Nothing else is
// materialised, and each row sums to 1 because lse is the log of the same sum.
//
// Q is [batch, q_heads, q_len, HEAD_DIM], K is [batch, kv_heads, kv_len, HEAD_DIM],
// lse is f32 [batch, q_heads, q_len], the output is f32 [row_count, kv_len]. The mask
// rules are those of attention_flash.wgsl.
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
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> probs: array<f32>;
#if SPARSE
@group(0) @binding(5) var<storage, read> block_visible: array<u32>;
#endif

const D4: u32 = HEAD_DIM / 4u;

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

// One invocation per probability; x runs over keys, y over the requested rows.
@compute @workgroup_size(64, 1, 1)
fn recompute_probs(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    if (j >= params.kv_len || r >= params.row_count) {
        return;
    }
    let i = params.row_start + r;
    let bh = params.batch_index * params.q_heads + params.head;
    let kv_head = params.head / (params.q_heads / params.kv_heads);
    let q_base = (bh * params.q_len + i) * D4;
    let k_base = ((params.batch_index * params.kv_heads + kv_head) * params.kv_len + j) * D4;
    var p = 0.0;
    if (visible(i, j)) {
        var dot4 = vec4<f32>(0.0);
        for (var d = 0u; d < D4; d++) {
            dot4 = fma(vec4<f32>(q[q_base + d]), vec4<f32>(k[k_base + d]), dot4);
        }
        let s = (dot4.x + dot4.y + dot4.z + dot4.w) * params.scale;
        p = exp(s - lse[bh * params.q_len + i]);
    }
    probs[r * params.kv_len + j] = p;
}
