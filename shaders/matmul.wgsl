// Batched matrix product C = A * B with register tiling.
//
// A is [batch, M, K] row-major. B is [batch, K, N], or [batch, N, K] when TRANSPOSE_B
// is set (the layout of linear-layer weights, out x in). C is [batch, M, N].
// A stride of 0 for A or B broadcasts it over the batch.
//
// Each workgroup computes a TILE_M x TILE_N block of C. Each invocation owns a
// 4 x 4 block of it in registers, so one pair of vec4 loads from workgroup memory
// feeds sixteen multiply-adds. Accumulation is always f32, whatever `elem` is.
//
// Constants from the host, with defaults below: TILE_M, TILE_N (multiples of 4),
// TILE_K and TRANSPOSE_B.

#default TILE_M 64u
#default TILE_N 64u
#default TILE_K 16u
#default TRANSPOSE_B false

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<elem>;
@group(0) @binding(2) var<storage, read> b: array<elem>;
@group(0) @binding(3) var<storage, read_write> c: array<elem>;

const WG_X: u32 = TILE_N / 4u;
const WG_Y: u32 = TILE_M / 4u;
const WG_SIZE: u32 = WG_X * WG_Y;

// Tiles are stored k-major so that the inner loop reads four consecutive rows
// (or columns) as one vec4.
var<workgroup> tile_a: array<vec4<f32>, TILE_K * WG_Y>;
var<workgroup> tile_b: array<vec4<f32>, TILE_K * WG_X>;

fn load_a(base: u32, row: u32, col: u32) -> f32 {
    if (row < params.m && col < params.k) {
        return f32(a[base + row * params.k + col]);
    }
    return 0.0;
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (kk < params.k && col < params.n) {
#if TRANSPOSE_B
        return f32(b[base + col * params.k + kk]);
#else
        return f32(b[base + kk * params.n + col]);
#endif
    }
    return 0.0;
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn matmul(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lindex: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let batch = wid.z;
    let row0 = wid.y * TILE_M;
    let col0 = wid.x * TILE_N;
    let base_a = batch * params.stride_a;
    let base_b = batch * params.stride_b;

    var acc: array<vec4<f32>, 4>;

    for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
        // Stage the A tile: entry (kk, r) holds rows 4r..4r+3 at column k0 + kk.
        for (var i = lindex; i < TILE_K * WG_Y; i += WG_SIZE) {
            let kk = i % TILE_K;
            let r = i / TILE_K;
            let row = row0 + r * 4u;
            let col = k0 + kk;
            tile_a[kk * WG_Y + r] = vec4<f32>(
                load_a(base_a, row, col),
                load_a(base_a, row + 1u, col),
                load_a(base_a, row + 2u, col),
                load_a(base_a, row + 3u, col),
            );
        }
        // Stage the B tile: entry (kk, q) holds columns 4q..4q+3 at row k0 + kk.
        for (var i = lindex; i < TILE_K * WG_X; i += WG_SIZE) {
#if TRANSPOSE_B
            let kk = i % TILE_K;
            let q = i / TILE_K;
#else
            let q = i % WG_X;
            let kk = i / WG_X;
#endif
            let col = col0 + q * 4u;
            let krow = k0 + kk;
            tile_b[kk * WG_X + q] = vec4<f32>(
                load_b(base_b, krow, col),
                load_b(base_b, krow, col + 1u),
                load_b(base_b, krow, col + 2u),
                load_b(base_b, krow, col + 3u),
            );
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TILE_K; kk++) {
            let av = tile_a[kk * WG_Y + lid.y];
            let bv = tile_b[kk * WG_X + lid.x];
            acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
            acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
            acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
            acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
        }
        // The next iteration overwrites the tiles: wait until every invocation has read them.
        workgroupBarrier();
    }

    let base_c = batch * params.stride_c;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        if (row >= params.m) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (col < params.n) {
                c[base_c + row * params.n + col] = elem(acc[i][j]);
            }
        }
    }
}
