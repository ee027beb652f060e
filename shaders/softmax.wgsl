// Row softmax: y[r, :] = softmax(scale * x[r, :]) over rows of length `cols`.
//
// One workgroup per row. The row max and the sum of exponentials are reduced
// across the workgroup, with subgroup operations when SUBGROUPS is set and a
// tree in workgroup memory otherwise. Values at or below -1e30 count as masked;
// a row with every entry masked produces zeros instead of NaN.
//
// Constants from the host: WG (invocations per workgroup, a power of two).

#default WG 256u

struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read_write> y: array<elem>;

const MASKED: f32 = -1e30;

var<workgroup> scratch: array<f32, WG>;

#if SUBGROUPS
fn reduce_max(v: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    let partial = subgroupMax(v);
    if (sg_lane == 0u) {
        scratch[lindex / sg_size] = partial;
    }
    workgroupBarrier();
    var total = MASKED * 10.0;
    for (var i = 0u; i < WG / sg_size; i++) {
        total = max(total, scratch[i]);
    }
    workgroupBarrier();
    return total;
}

fn reduce_sum(v: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    let partial = subgroupAdd(v);
    if (sg_lane == 0u) {
        scratch[lindex / sg_size] = partial;
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
fn reduce_max(v: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    scratch[lindex] = v;
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

fn reduce_sum(v: f32, lindex: u32, sg_lane: u32, sg_size: u32) -> f32 {
    scratch[lindex] = v;
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
fn softmax(
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
    // Rows past the end still run the reductions so that every barrier stays in
    // uniform control flow; they only skip their loads and stores.
    let row = wid.y * groups.x + wid.x;
    let live = row < params.rows;
    let base = row * params.cols;

    var local_max = MASKED * 10.0;
    for (var i = lindex; live && i < params.cols; i += WG) {
        local_max = max(local_max, f32(x[base + i]) * params.scale);
    }
    let row_max = reduce_max(local_max, lindex, sg_lane, sg_size);

    var local_sum = 0.0;
    for (var i = lindex; live && i < params.cols; i += WG) {
        let v = f32(x[base + i]) * params.scale;
        if (v > MASKED) {
            local_sum += exp(v - row_max);
        }
    }
    let row_sum = reduce_sum(local_sum, lindex, sg_lane, sg_size);

    var inv_sum = 0.0;
    if (row_sum > 0.0) {
        inv_sum = 1.0 / row_sum;
    }
    for (var i = lindex; live && i < params.cols; i += WG) {
        let v = f32(x[base + i]) * params.scale;
        var p = 0.0;
        if (v > MASKED) {
            p = exp(v - row_max) * inv_sum;
        }
        y[base + i] = elem(p);
    }
}
