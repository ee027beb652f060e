// RMSNorm over rows: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight.
//
// x and y are [rows, cols]; weight is [cols]. One workgroup per row; the sum of
// squares is reduced in f32 with subgroup operations when SUBGROUPS is set and a
// tree in workgroup memory otherwise.
//
// Constants from the host: WG (invocations per workgroup, a power of two).

#default WG 256u

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> weight: array<elem>;
@group(0) @binding(3) var<storage, read_write> y: array<elem>;

var<workgroup> scratch: array<f32, WG>;

fn reduce_sum(v: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
#if SUBGROUPS
    let partial = subgroupAdd(v);
    if (sg_lane == 0u) {
        scratch[lindex / sg_size] = partial;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG / sg_size; i++) {
        total += scratch[i];
    }
#else
    scratch[lindex] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lindex < stride) {
            scratch[lindex] += scratch[lindex + stride];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
#endif
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG, 1, 1)
fn rmsnorm(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
) {
#ifndef SUBGROUPS
    let sg_lane = 0u;
    let sg_size = 1u;
#endif
    // Rows past the end take part in the reduction so that barriers stay uniform.
    let row = wid.y * groups.x + wid.x;
    let live = row < params.rows;
    let base = row * params.cols;

    var local_sum = 0.0;
    for (var i = lindex; live && i < params.cols; i += WG) {
        let v = f32(x[base + i]);
        local_sum += v * v;
    }
    let total = reduce_sum(local_sum, lindex, sg_lane, sg_size);
    let inv_rms = inverseSqrt(total / f32(params.cols) + params.eps);

    for (var i = lindex; live && i < params.cols; i += WG) {
        y[base + i] = elem(f32(x[base + i]) * inv_rms * f32(weight[i]));
    }
}
