// Per-token steps of a Llama-family decoder that are not matrix products: embedding
// lookup, rotary position embedding with the split into attention heads, the merge of
// the attention heads, the SwiGLU gate and a greedy argmax over the logits.
// Activations are f32; `elem` is the weight type.
//
// Head layouts, for one forward call of `tokens` tokens: queries
// [heads, tokens, HEAD_DIM], keys and values [kv_heads, tokens, HEAD_DIM].
//
// Constants from the host: WG (invocations), HEAD_DIM.

#default WG 64u
#default HEAD_DIM 64u

struct Params {
    tokens: u32,
    start: u32,
    heads: u32,
    kv_heads: u32,
    width: u32,
    rope_theta: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

fn flat_index(lindex: u32, wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return (wid.y * groups.x + wid.x) * WG + lindex;
}

// Embedding: y[t, :] = table[ids[t], :] for t < tokens; `width` is the hidden size.
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<elem>;
@group(0) @binding(3) var<storage, read_write> embedded: array<f32>;

@compute @workgroup_size(WG, 1, 1)
fn embedding(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = flat_index(lindex, wid, groups);
    if (i < params.tokens * params.width) {
        let t = i / params.width;
        let c = i % params.width;
        embedded[i] = f32(table[ids[t] * params.width + c]);
    }
}

// RoPE and head split. qkv is [tokens, (heads + 2 * kv_heads) * HEAD_DIM]: queries,
// then keys, then values of each token, as the fused projection writes them. Token t
// sits at position start + t. Rotation acts on adjacent pairs (2i, 2i + 1) with angle
// position * theta^(-2i / HEAD_DIM), the layout llama.cpp stores Q and K rows in.
@group(0) @binding(4) var<storage, read> qkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> q_heads: array<f32>;
@group(0) @binding(6) var<storage, read_write> k_heads: array<f32>;
@group(0) @binding(7) var<storage, read_write> v_heads: array<f32>;

@compute @workgroup_size(WG, 1, 1)
fn rope_store(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let pairs = HEAD_DIM / 2u;
    let all_heads = params.heads + 2u * params.kv_heads;
    let i = flat_index(lindex, wid, groups);
    if (i >= params.tokens * all_heads * pairs) {
        return;
    }
    let pair = i % pairs;
    let head = (i / pairs) % all_heads;
    let t = i / (pairs * all_heads);
    let position = params.start + t;
    let src = (t * all_heads + head) * HEAD_DIM + 2u * pair;
    let x0 = qkv[src];
    let x1 = qkv[src + 1u];

    let inv_freq = pow(params.rope_theta, -f32(2u * pair) / f32(HEAD_DIM));
    let angle = f32(position) * inv_freq;
    let c = cos(angle);
    let s = sin(angle);
    let r0 = x0 * c - x1 * s;
    let r1 = x0 * s + x1 * c;

    if (head < params.heads) {
        let dst = (head * params.tokens + t) * HEAD_DIM + 2u * pair;
        q_heads[dst] = r0;
        q_heads[dst + 1u] = r1;
    } else if (head < params.heads + params.kv_heads) {
        let kv = head - params.heads;
        let dst = (kv * params.tokens + t) * HEAD_DIM + 2u * pair;
        k_heads[dst] = r0;
        k_heads[dst + 1u] = r1;
    } else {
        let kv = head - params.heads - params.kv_heads;
        let dst = (kv * params.tokens + t) * HEAD_DIM + 2u * pair;
        v_heads[dst] = x0;
        v_heads[dst + 1u] = x1;
    }
}

// Head merge: merged[t, head * HEAD_DIM + c] = per_head[head, t, c], turning the
// attention output [heads, tokens, HEAD_DIM] into the rows the output projection reads.
@group(0) @binding(12) var<storage, read> per_head: array<f32>;
@group(0) @binding(13) var<storage, read_write> merged: array<f32>;

@compute @workgroup_size(WG, 1, 1)
fn merge_heads(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = flat_index(lindex, wid, groups);
    if (i >= params.tokens * params.heads * HEAD_DIM) {
        return;
    }
    let c = i % HEAD_DIM;
    let head = (i / HEAD_DIM) % params.heads;
    let t = i / (HEAD_DIM * params.heads);
    merged[i] = per_head[(head * params.tokens + t) * HEAD_DIM + c];
}

// SwiGLU: y[t, i] = silu(gate_up[t, i]) * gate_up[t, width + i], with gate_up
// [tokens, 2 * width] as the fused gate and up projection writes it.
@group(0) @binding(8) var<storage, read> gate_up: array<f32>;
@group(0) @binding(9) var<storage, read_write> gated: array<f32>;

@compute @workgroup_size(WG, 1, 1)
fn swiglu(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = flat_index(lindex, wid, groups);
    if (i < params.tokens * params.width) {
        let t = i / params.width;
        let c = i % params.width;
        let g = gate_up[t * 2u * params.width + c];
        let u = gate_up[t * 2u * params.width + params.width + c];
        gated[i] = g / (1.0 + exp(-g)) * u;
    }
}

// Greedy pick: best[0] = the index of the largest of `width` logits, the lowest index
// on ties. Runs as a single workgroup.
@group(0) @binding(10) var<storage, read> logits: array<f32>;
@group(0) @binding(11) var<storage, read_write> best: array<u32>;

var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;

@compute @workgroup_size(WG, 1, 1)
fn argmax(@builtin(local_invocation_index) lindex: u32) {
    var value = -3.4e38;
    var index = 0xffffffffu;
    for (var i = lindex; i < params.width; i += WG) {
        let v = logits[i];
        if (v > value) {
            value = v;
            index = i;
        }
    }
    best_value[lindex] = value;
    best_index[lindex] = index;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lindex < stride) {
            let v = best_value[lindex + stride];
            let j = best_index[lindex + stride];
            if (v > best_value[lindex] || (v == best_value[lindex] && j < best_index[lindex])) {
                best_value[lindex] = v;
                best_index[lindex] = j;
            }
        }
        workgroupBarrier();
    }
    if (lindex == 0u) {
        best[0] = best_index[0];
    }
}
