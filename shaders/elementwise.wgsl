// Elementwise kernels over flat arrays of `len` elements.
//
// Binary operations broadcast `b` cyclically: element i reads b[i % len_b], which
// covers equal shapes (len_b = len) and a row vector added to every row
// (len_b = columns). Arithmetic runs in f32 and is stored as `elem`.
//
// Constants from the host: WG (invocations per workgroup).

#default WG 256u

struct Params {
    len: u32,
    len_b: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<elem>;
@group(0) @binding(2) var<storage, read> b: array<elem>;
@group(0) @binding(3) var<storage, read_write> y: array<elem>;

fn silu_f32(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

fn index_of(lindex: u32, wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return (wid.y * groups.x + wid.x) * WG + lindex;
}

@compute @workgroup_size(WG, 1, 1)
fn add(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = index_of(lindex, wid, groups);
    if (i < params.len) {
        y[i] = elem(f32(a[i]) + f32(b[i % params.len_b]));
    }
}

@compute @workgroup_size(WG, 1, 1)
fn mul(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = index_of(lindex, wid, groups);
    if (i < params.len) {
        y[i] = elem(f32(a[i]) * f32(b[i % params.len_b]));
    }
}

// SwiGLU gate: y = silu(a) * b.
@compute @workgroup_size(WG, 1, 1)
fn silu_mul(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = index_of(lindex, wid, groups);
    if (i < params.len) {
        y[i] = elem(silu_f32(f32(a[i])) * f32(b[i % params.len_b]));
    }
}

// Unary: y = silu(a). Its pipeline binds no `b`.
@compute @workgroup_size(WG, 1, 1)
fn silu(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let i = index_of(lindex, wid, groups);
    if (i < params.len) {
        y[i] = elem(silu_f32(f32(a[i])));
    }
}
