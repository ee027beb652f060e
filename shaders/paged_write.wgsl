// Scatter of new K and V rows into the paged KV pool of one layer.
//
// k_new and v_new are [kv_heads, rows, head_dim]. slots[r] is the physical slot of
// new row r: block slots[r] / block_size, offset slots[r] % block_size. The pools are
// [num_blocks, kv_heads, block_size, head_dim], so row (h, slot) starts at
// ((block * kv_heads + h) * block_size + offset) * head_dim. Rows move as vec4, which
// is why the host requires head_dim to be a multiple of 4.
//
// Constants from the host: WG (invocations per workgroup).

#default WG 64u

struct Params {
    kv_heads: u32,
    rows: u32,
    block_size: u32,
    // head_dim / 4
    head_vec4s: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> k_new: array<elem4>;
@group(0) @binding(2) var<storage, read> v_new: array<elem4>;
@group(0) @binding(3) var<storage, read> slots: array<u32>;
@group(0) @binding(4) var<storage, read_write> k_pool: array<elem4>;
@group(0) @binding(5) var<storage, read_write> v_pool: array<elem4>;

@compute @workgroup_size(WG, 1, 1)
fn write_rows(
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    // One invocation per vec4 of the new rows; there are no barriers, so the excess
    // invocations of the last workgroup simply return.
    let index = (wid.y * groups.x + wid.x) * WG + lindex;
    let per_head = params.rows * params.head_vec4s;
    if (index >= params.kv_heads * per_head) {
        return;
    }
    let head = index / per_head;
    let row = (index % per_head) / params.head_vec4s;
    let part = index % params.head_vec4s;

    let slot = slots[row];
    let block = slot / params.block_size;
    let offset = slot % params.block_size;
    let dst = ((block * params.kv_heads + head) * params.block_size + offset) * params.head_vec4s
        + part;
    k_pool[dst] = k_new[index];
    v_pool[dst] = v_new[index];
}
