// Linear layer for small token counts: y[t, n] = sum_k x[t, k] * w[n, k], or
// y[t, n] += ... when ACCUMULATE is set (a residual add fused into the projection).
//
// x is [T, K] f32, read from vec4 index `x_offset` on; w is [N, K] in `elem` (f16 or
// f32 weights); y is [T, N] f32. K must be a multiple of 4. Accumulation is f32.
//
// This is a matrix-vector product, not a tiled matmul: decode reads every weight once
// per token, so the kernel streams weight rows with consecutive invocations reading
// consecutive vec4s. A workgroup owns ROWS output rows for TOKENS tokens, so each
// weight vec4 it loads feeds TOKENS multiply-adds and each x vec4 feeds ROWS.
// Partial sums are reduced across the workgroup with subgroup operations when
// SUBGROUPS is set and a tree in workgroup memory otherwise.
//
// Constants from the host: WG (invocations, a power of two), ROWS, TOKENS, ACCUMULATE.

#default WG 32u
#default ROWS 4u
#default TOKENS 1u
#default ACCUMULATE false

struct Params {
    n: u32,
    k4: u32,
    tokens: u32,
    x_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<elem>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const OUTPUTS: u32 = ROWS * TOKENS;

#if SUBGROUPS
// One partial sum per subgroup and output; subgroups are at least 4 wide.
var<workgroup> partial: array<f32, OUTPUTS * (WG / 4u)>;
#else
var<workgroup> partial: array<f32, OUTPUTS * WG>;
#endif

@compute @workgroup_size(WG, 1, 1)
fn linear(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
) {
    let row0 = (wid.y * groups.x + wid.x) * ROWS;
    let t0 = wid.z * TOKENS;
    let k4 = params.k4;

    // Out-of-range rows and tokens are clamped to valid ones so that every invocation
    // runs the same loop and reaches the barriers; their results are not stored.
    var acc: array<f32, OUTPUTS>;
    for (var i = lindex; i < k4; i += WG) {
        var xv: array<vec4<f32>, TOKENS>;
        for (var t = 0u; t < TOKENS; t++) {
            let token = min(t0 + t, params.tokens - 1u);
            xv[t] = x[params.x_offset + token * k4 + i];
        }
        for (var r = 0u; r < ROWS; r++) {
            let row = min(row0 + r, params.n - 1u);
            let wv = vec4<f32>(w[row * k4 + i]);
            for (var t = 0u; t < TOKENS; t++) {
                acc[r * TOKENS + t] += dot(wv, xv[t]);
            }
        }
    }

#if SUBGROUPS
    let subgroups = WG / sg_size;
    let sg_id = lindex / sg_size;
    for (var o = 0u; o < OUTPUTS; o++) {
        let sum = subgroupAdd(acc[o]);
        if (sg_lane == 0u) {
            partial[o * subgroups + sg_id] = sum;
        }
    }
    workgroupBarrier();
    for (var o = lindex; o < OUTPUTS; o += WG) {
        var total = 0.0;
        for (var s = 0u; s < subgroups; s++) {
            total += partial[o * subgroups + s];
        }
        store(row0, t0, o, total);
    }
#else
    for (var o = 0u; o < OUTPUTS; o++) {
        partial[o * WG + lindex] = acc[o];
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lindex < stride) {
            for (var o = 0u; o < OUTPUTS; o++) {
                partial[o * WG + lindex] += partial[o * WG + lindex + stride];
            }
        }
        workgroupBarrier();
    }
    for (var o = lindex; o < OUTPUTS; o += WG) {
        store(row0, t0, o, partial[o * WG]);
    }
#endif
}

fn store(row0: u32, t0: u32, o: u32, value: f32) {
    let row = row0 + o / TOKENS;
    let token = t0 + o % TOKENS;
    if (row < params.n && token < params.tokens) {
        let index = token * params.n + row;
#if ACCUMULATE
        y[index] += value;
#else
        y[index] = value;
#endif
    }
}
