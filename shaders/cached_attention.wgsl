// Causal attention over a sequence's cache, one workgroup per (query token, head), and
// the attention probabilities recomputed from the stored log-sum-exp.
//
// Layouts for one layer (see llama.wgsl): q_cache [capacity, heads, HEAD_DIM], k_cache
// and v_cache [capacity, kv_heads, HEAD_DIM], lse [capacity, heads]. Query head h reads
// KV head h / (heads / kv_heads). Scores are q . k * scale in f32.
//
// Constants from the host: WG (invocations), HEAD_DIM.

#default WG 32u
#default HEAD_DIM 64u

struct Params {
    tokens: u32,
    start: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    head: u32,
    row_len: u32,
    out_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q_cache: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

var<workgroup> lane_max: array<f32, WG>;
var<workgroup> lane_sum: array<f32, WG>;
var<workgroup> lane_out: array<f32, WG * HEAD_DIM>;

// Attends tokens start .. start + tokens to every cached position up to their own.
// out is [tokens, heads, HEAD_DIM]; lse[position, head] receives log sum exp(score).
// Each invocation keeps an online softmax (running max, sum and weighted values) over
// every WG-th key; the workgroup then merges them.
@compute @workgroup_size(WG, 1, 1)
fn attend(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let items = params.tokens * params.heads;
    let item = wid.y * groups.x + wid.x;
    // Surplus workgroups of a 2-D grid redo the last item and store nothing, so that
    // barriers stay in uniform control flow.
    let live = item < items;
    let it = min(item, items - 1u);
    let t = it / params.heads;
    let h = it % params.heads;
    let position = params.start + t;
    let kv = h / (params.heads / params.kv_heads);

    let q_base = (position * params.heads + h) * HEAD_DIM;
    var q: array<f32, HEAD_DIM>;
    for (var c = 0u; c < HEAD_DIM; c++) {
        q[c] = q_cache[q_base + c] * params.scale;
    }

    var m = -1e30;
    var l = 0.0;
    var acc: array<f32, HEAD_DIM>;
    for (var j = lindex; j <= position; j += WG) {
        let k_base = (j * params.kv_heads + kv) * HEAD_DIM;
        var s = 0.0;
        for (var c = 0u; c < HEAD_DIM; c++) {
            s += q[c] * k_cache[k_base + c];
        }
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let p = exp(s - m_new);
        l = l * correction + p;
        for (var c = 0u; c < HEAD_DIM; c++) {
            acc[c] = acc[c] * correction + p * v_cache[k_base + c];
        }
        m = m_new;
    }

    lane_max[lindex] = m;
    lane_sum[lindex] = l;
    workgroupBarrier();
    var m_all = -1e30;
    for (var i = 0u; i < WG; i++) {
        m_all = max(m_all, lane_max[i]);
    }
    var l_all = 0.0;
    for (var i = 0u; i < WG; i++) {
        l_all += lane_sum[i] * exp(lane_max[i] - m_all);
    }
    // Lanes without keys have l = 0 and acc = 0, so their share is zero.
    let factor = exp(m - m_all);
    for (var c = 0u; c < HEAD_DIM; c++) {
        lane_out[lindex * HEAD_DIM + c] = acc[c] * factor;
    }
    workgroupBarrier();

    if (live) {
        for (var c = lindex; c < HEAD_DIM; c += WG) {
            var total = 0.0;
            for (var i = 0u; i < WG; i++) {
                total += lane_out[i * HEAD_DIM + c];
            }
            out[(t * params.heads + h) * HEAD_DIM + c] = total / l_all;
        }
        if (lindex == 0u) {
            lse[position * params.heads + h] = m_all + log(l_all);
        }
    }
}

// Probabilities of one head for query positions start .. start + tokens against keys
// 0 .. row_len: probs[r, j] = exp(q_r . k_j * scale - lse[r]) for j <= r, else 0.
// These match the softmax inside `attend` up to rounding. Results are written from
// element out_offset of probs on, so many heads can share one output buffer.
@group(0) @binding(6) var<storage, read_write> probs: array<f32>;

@compute @workgroup_size(WG, 1, 1)
fn probabilities(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lindex;
    if (i >= params.tokens * params.row_len) {
        return;
    }
    let r = i / params.row_len;
    let j = i % params.row_len;
    let position = params.start + r;
    if (j > position) {
        probs[params.out_offset + i] = 0.0;
        return;
    }
    let h = params.head;
    let kv = h / (params.heads / params.kv_heads);
    let q_base = (position * params.heads + h) * HEAD_DIM;
    let k_base = (j * params.kv_heads + kv) * HEAD_DIM;
    var s = 0.0;
    for (var c = 0u; c < HEAD_DIM; c++) {
        s += q_cache[q_base + c] * k_cache[k_base + c];
    }
    probs[params.out_offset + i] = exp(s * params.scale - lse[position * params.heads + h]);
}
