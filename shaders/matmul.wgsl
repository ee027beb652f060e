// Batched matrix product C = A * B with register tiling.
//
// A is [batch, M, K] row-major. B is [batch, K, N], or [batch, N, K] when TRANSPOSE_B
// is set (the layout of linear-layer weights, out x in). C is [batch, M, N].
// A stride of 0 for A or B broadcasts it over the batch.
//
// Each workgroup computes a TILE_M x TILE_N block of C. Each invocation owns a
// THREAD_M x THREAD_N block of it in registers, so a few vec4 loads from workgroup
// memory feed THREAD_M * THREAD_N multiply-adds. Accumulation is always f32,
// whatever `elem` is.
//
// Constants from the host, with defaults below: TILE_M, TILE_N, TILE_K, THREAD_M and
// THREAD_N (multiples of 4, THREAD_* dividing TILE_*) and TRANSPOSE_B.

#default TILE_M 64u
#default TILE_N 64u
#default TILE_K 32u
#default THREAD_M 8u
#default THREAD_N 8u
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

const WG_X: u32 = TILE_N / THREAD_N;
const WG_Y: u32 = TILE_M / THREAD_M;
const WG_SIZE: u32 = WG_X * WG_Y;
// Tiles hold vec4s: four consecutive rows of A, or four consecutive columns of B.
const VEC_M: u32 = TILE_M / 4u;
const VEC_N: u32 = TILE_N / 4u;
const THREAD_VEC_M: u32 = THREAD_M / 4u;
const THREAD_VEC_N: u32 = THREAD_N / 4u;

// Tiles are stored k-major so that the inner loop reads consecutive rows (or
// columns) of one k step as vec4s.
var<workgroup> tile_a: array<vec4<f32>, TILE_K * VEC_M>;
var<workgroup> tile_b: array<vec4<f32>, TILE_K * VEC_N>;

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

    // acc[i * THREAD_VEC_N + q] holds row i, columns 4q..4q+3 of this invocation's block.
    var acc: array<vec4<f32>, THREAD_M * THREAD_VEC_N>;
    var av: array<vec4<f32>, THREAD_VEC_M>;
    var bv: array<vec4<f32>, THREAD_VEC_N>;

    for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
        // Stage the A tile: entry (kk, r) holds rows 4r..4r+3 at column k0 + kk.
        for (var i = lindex; i < TILE_K * VEC_M; i += WG_SIZE) {
            let kk = i % TILE_K;
            let r = i / TILE_K;
            let row = row0 + r * 4u;
            let col = k0 + kk;
            tile_a[kk * VEC_M + r] = vec4<f32>(
                load_a(base_a, row, col),
                load_a(base_a, row + 1u, col),
                load_a(base_a, row + 2u, col),
                load_a(base_a, row + 3u, col),
            );
        }
        // Stage the B tile: entry (kk, q) holds columns 4q..4q+3 at row k0 + kk.
        for (var i = lindex; i < TILE_K * VEC_N; i += WG_SIZE) {
#if TRANSPOSE_B
            let kk = i % TILE_K;
            let q = i / TILE_K;
#else
            let q = i % VEC_N;
            let kk = i / VEC_N;
#endif
            let col = col0 + q * 4u;
            let krow = k0 + kk;
            tile_b[kk * VEC_N + q] = vec4<f32>(
                load_b(base_b, krow, col),
                load_b(base_b, krow, col + 1u),
                load_b(base_b, krow, col + 2u),
                load_b(base_b, krow, col + 3u),
            );
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TILE_K; kk++) {
            for (var p = 0u; p < THREAD_VEC_M; p++) {
                av[p] = tile_a[kk * VEC_M + lid.y * THREAD_VEC_M + p];
            }
            for (var q = 0u; q < THREAD_VEC_N; q++) {
                bv[q] = tile_b[kk * VEC_N + lid.x * THREAD_VEC_N + q];
            }
            for (var i = 0u; i < THREAD_M; i++) {
                let a_value = vec4<f32>(av[i / 4u][i % 4u]);
                for (var q = 0u; q < THREAD_VEC_N; q++) {
                    let slot = i * THREAD_VEC_N + q;
                    acc[slot] = fma(a_value, bv[q], acc[slot]);
                }
            }
        }
        // The next iteration overwrites the tiles: wait until every invocation has read them.
        workgroupBarrier();
    }

    let base_c = batch * params.stride_c;
    for (var i = 0u; i < THREAD_M; i++) {
        let row = row0 + lid.y * THREAD_M + i;
        if (row >= params.m) {
            break;
        }
        for (var j = 0u; j < THREAD_N; j++) {
            let col = col0 + lid.x * THREAD_N + j;
            if (col < params.n) {
                c[base_c + row * params.n + col] = elem(acc[i * THREAD_VEC_N + j / 4u][j % 4u]);
            }
        }
    }
}

