// Convolution as an implicit GEMM: C[oc, p] = sum_k W[oc, k] * X_col[k, p] per image and
// group, where k = (ci, ky, kx) and p = (oy, ox). The im2col matrix is never stored: each
// output tile of `tm` channels x `tn` pixels gathers its `tk`-deep slices of X_col straight
// into workgroup memory. Each invocation computes a 4x4 block of the tile, read from
// workgroup memory as two vec4 per k step (vector loads, 16 FMAs). Two tile shapes share
// the code: 64x64 (256 invocations, 16 deep) and, for maps too small to give a GPU enough
// 64x64 tiles (7x7, 14x14), 32x32 (64 invocations, 32 deep: about the same workgroup memory).
// A third, for large layers, takes 128x128 tiles 8 deep, 8x8 per invocation.
// Epilogue: * scale + shift per output channel (bias and a folded BatchNorm), + residual, ReLU.

// Params, the bindings and the constants come from the generated header (src/backend/gpu/kernels/conv.rs).

// The weights' rows are padded by one vector: consecutive invocations store consecutive k
// of one channel, which unpadded rows of 16 vectors would put in one memory bank (a 16-way
// conflict on GPUs with 32 banks of 4 bytes; padded, 2-way).
var<workgroup> a_tile: array<vec4<f32>, A_TILE>; // [tk][tm / 4 + 1]
var<workgroup> b_tile: array<vec4<f32>, B_TILE>; // [tk][tn / 4]

@compute @workgroup_size(TN / 4u, TM / 4u, 1)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    conv_tiled(lid, wid, TM, TN, TK);
}

@compute @workgroup_size(TN_S / 4u, TM_S / 4u, 1)
fn conv2d_small(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    conv_tiled(lid, wid, TM_S, TN_S, TK_S);
}

// What one workgroup of a tiled kernel computes: its tile (first channel m0, first pixel
// n0) of one (image, group) plane, and its slice of k. Nothing in it depends on the
// invocation, so its loop bounds are uniform (as barriers inside the loop require).
struct TileJob {
    m0: u32,
    n0: u32,
    part: u32,
    img: u32,
    g: u32,
    x_base: u32,
    w_base: u32,
    k_begin: u32,
    k_end: u32,
}

// The input pixel an invocation loads at every k step (its invocations are a whole
// number of tile rows), its coordinates found once.
struct TilePixel {
    nn: u32,
    inside: bool,
    iy0: i32,
    ix0: i32,
}

fn tile_job(wid: vec3<u32>, tm: u32, tn: u32) -> TileJob {
    var j: TileJob;
    j.n0 = wid.x * tn;
    j.m0 = wid.y * tm;
    // Split along k (`splits` > 1): each of a tile's workgroups sums one slice of k and
    // stores it plain, for conv_split_sum to add up (few tiles, long k: the tiles alone
    // would leave most of a large GPU idle).
    let splits = max(prm.splits, 1u);
    j.part = wid.z % splits;
    let plane_id = wid.z / splits;
    j.k_begin = j.part * prm.k_chunk;
    j.k_end = select(prm.k, min(prm.k, j.k_begin + prm.k_chunk), splits > 1u);
    j.img = plane_id / prm.g_count;
    let gl = plane_id % prm.g_count;
    j.g = prm.g_base + gl;
    j.x_base = (j.img * prm.c + j.g * prm.icg) * prm.h * prm.w;
    j.w_base = gl * prm.m_count * prm.k;
    return j;
}

fn tile_pixel(j: TileJob, tid: u32, tn: u32) -> TilePixel {
    var q: TilePixel;
    q.nn = tid % tn;
    let p = j.n0 + q.nn;
    q.inside = p < prm.p;
    q.iy0 = i32((p / prm.ow) * prm.sh) - i32(prm.ph);
    q.ix0 = i32((p % prm.ow) * prm.sw) - i32(prm.pw);
    return q;
}

// Stage the job's weights and input patches for k0 .. k0 + tk in workgroup memory (the
// caller puts the barriers around it).
fn tile_fill(j: TileJob, q: TilePixel, tid: u32, threads: u32, k0: u32, tm: u32, tn: u32, tk: u32) {
    let mv = tm / 4u;
    let nv = tn / 4u;
    // Weights: consecutive invocations read consecutive k of one row.
    for (var e = tid; e < tk * tm; e += threads) {
        let mm = e / tk;
        let kk = e % tk;
        let m = j.m0 + mm;
        let k = k0 + kk;
        var v = 0.0;
        if (m < prm.m_count && k < j.k_end) {
            v = f32(wt[j.w_base + m * prm.k + k]);
        }
        a_tile[kk * (mv + 1u) + mm / 4u][mm % 4u] = v;
    }
    // Input patches: consecutive invocations read consecutive output pixels.
    let khw = prm.kh * prm.kw;
    let plane = prm.h * prm.w;
    for (var kk = tid / tn; kk < tk; kk += threads / tn) {
        let k = k0 + kk;
        var v = 0.0;
        if (q.inside && k < j.k_end) {
            var ci = k;
            var iy = q.iy0;
            var ix = q.ix0;
            if (khw != 1u) {
                ci = k / khw;
                let rk = k - ci * khw;
                let ky = rk / prm.kw;
                iy += i32(ky * prm.dh);
                ix += i32((rk - ky * prm.kw) * prm.dw);
            }
            if (iy >= 0 && ix >= 0 && u32(iy) < prm.h && u32(ix) < prm.w) {
                v = f32(x[j.x_base + ci * plane + u32(iy) * prm.w + u32(ix)]);
            }
        }
        b_tile[kk * nv + q.nn / 4u][q.nn % 4u] = v;
    }
}

// Where the job's channel `m` (a row of its chunk) and pixels from `p0` go: the output
// image (a slice of a split layer has its own, `plain` set), channel and pixel.
fn tile_store(j: TileJob, m: u32, p0: u32, acc: vec4<f32>) {
    conv_store(j.part * prm.batch + j.img, m, j.g * prm.ocg + prm.m_base + m, p0, acc);
}

// The tiled kernel for `tm` x `tn` tiles, `tk` deep, on (tn / 4) x (tm / 4) invocations
// of 4x4 outputs (constants at every call: the compilers fold them).
fn conv_tiled(lid: vec3<u32>, wid: vec3<u32>, tm: u32, tn: u32, tk: u32) {
    let mv = tm / 4u;
    let nv = tn / 4u;
    let threads = mv * nv;
    let tid = lid.y * nv + lid.x;
    let j = tile_job(wid, tm, tn);
    let q = tile_pixel(j, tid, tn);

    // Rows m0 + 4 * lid.y + i, columns n0 + 4 * lid.x ..: four vectors, not an array
    // (software adapters keep an array that a loop indexes in memory).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var k0 = j.k_begin; k0 < j.k_end; k0 += tk) {
        tile_fill(j, q, tid, threads, k0, tm, tn, tk);
        workgroupBarrier();
        for (var kk = 0u; kk < tk; kk++) {
            let a = a_tile[kk * (mv + 1u) + lid.y];
            let b = b_tile[kk * nv + lid.x];
            c0 = fma(vec4<f32>(a.x), b, c0);
            c1 = fma(vec4<f32>(a.y), b, c1);
            c2 = fma(vec4<f32>(a.z), b, c2);
            c3 = fma(vec4<f32>(a.w), b, c3);
        }
        workgroupBarrier();
    }
    let m = j.m0 + 4u * lid.y;
    let p0 = j.n0 + 4u * lid.x;
    tile_store(j, m, p0, c0);
    tile_store(j, m + 1u, p0, c1);
    tile_store(j, m + 2u, p0, c2);
    tile_store(j, m + 3u, p0, c3);
}

// 128x128 tiles, 8 deep, on 16x16 invocations of 8x8 outputs each: four times the
// multiply-adds per value read from workgroup memory and per value staged from storage
// as the 64x64 kernel (the classic shape of fast SGEMMs on large GPUs). An invocation's
// 8 channels and 8 pixels are two groups of 4, half a tile apart, so that neighbouring
// invocations read neighbouring vectors of workgroup memory.
@compute @workgroup_size(TN_L / 8u, TM_L / 8u, 1)
fn conv2d_large(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let mv = TM_L / 4u;
    let nv = TN_L / 4u;
    let threads = (TM_L / 8u) * (TN_L / 8u);
    let tid = lid.y * (TN_L / 8u) + lid.x;
    let j = tile_job(wid, TM_L, TN_L);
    let q = tile_pixel(j, tid, TN_L);

    // c<i>: row i of the invocation's 8 (0-3 from m0 + 4 * lid.y, 4-7 half a tile on),
    // its first 4 pixels; d<i>: the same rows, the 4 pixels half a tile on.
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var d0 = vec4<f32>(0.0);
    var d1 = vec4<f32>(0.0);
    var d2 = vec4<f32>(0.0);
    var d3 = vec4<f32>(0.0);
    var d4 = vec4<f32>(0.0);
    var d5 = vec4<f32>(0.0);
    var d6 = vec4<f32>(0.0);
    var d7 = vec4<f32>(0.0);
    for (var k0 = j.k_begin; k0 < j.k_end; k0 += TK_L) {
        tile_fill(j, q, tid, threads, k0, TM_L, TN_L, TK_L);
        workgroupBarrier();
        for (var kk = 0u; kk < TK_L; kk++) {
            let a = a_tile[kk * (mv + 1u) + lid.y];
            let e = a_tile[kk * (mv + 1u) + lid.y + mv / 2u];
            let b = b_tile[kk * nv + lid.x];
            let f = b_tile[kk * nv + lid.x + nv / 2u];
            c0 = fma(vec4<f32>(a.x), b, c0);
            c1 = fma(vec4<f32>(a.y), b, c1);
            c2 = fma(vec4<f32>(a.z), b, c2);
            c3 = fma(vec4<f32>(a.w), b, c3);
            c4 = fma(vec4<f32>(e.x), b, c4);
            c5 = fma(vec4<f32>(e.y), b, c5);
            c6 = fma(vec4<f32>(e.z), b, c6);
            c7 = fma(vec4<f32>(e.w), b, c7);
            d0 = fma(vec4<f32>(a.x), f, d0);
            d1 = fma(vec4<f32>(a.y), f, d1);
            d2 = fma(vec4<f32>(a.z), f, d2);
            d3 = fma(vec4<f32>(a.w), f, d3);
            d4 = fma(vec4<f32>(e.x), f, d4);
            d5 = fma(vec4<f32>(e.y), f, d5);
            d6 = fma(vec4<f32>(e.z), f, d6);
            d7 = fma(vec4<f32>(e.w), f, d7);
        }
        workgroupBarrier();
    }
    let m = j.m0 + 4u * lid.y;
    let m_far = m + TM_L / 2u;
    let p0 = j.n0 + 4u * lid.x;
    let p_far = p0 + TN_L / 2u;
    tile_store(j, m, p0, c0);
    tile_store(j, m + 1u, p0, c1);
    tile_store(j, m + 2u, p0, c2);
    tile_store(j, m + 3u, p0, c3);
    tile_store(j, m_far, p0, c4);
    tile_store(j, m_far + 1u, p0, c5);
    tile_store(j, m_far + 2u, p0, c6);
    tile_store(j, m_far + 3u, p0, c7);
    tile_store(j, m, p_far, d0);
    tile_store(j, m + 1u, p_far, d1);
    tile_store(j, m + 2u, p_far, d2);
    tile_store(j, m + 3u, p_far, d3);
    tile_store(j, m_far, p_far, d4);
    tile_store(j, m_far + 1u, p_far, d5);
    tile_store(j, m_far + 2u, p_far, d6);
    tile_store(j, m_far + 3u, p_far, d7);
}

// Partial sum `i` of a split layer, in f32 (F32_SLOTS values of S each).
fn part_store(i: u32, v: f32) {
    let h = f32_pack(v);
    y[i * F32_SLOTS] = h.x;
    if (F32_SLOTS == 2u) { y[i * F32_SLOTS + 1u] = h.y; }
}

// The sums of a split layer's `splits` slices (`x`: [slice][image][oc][p]), then the
// epilogue; one invocation per output.
@compute @workgroup_size(WG, 1, 1)
fn conv_split_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    let total = prm.batch * prm.oc * prm.p;
    if (i >= total) { return; }
    var v = 0.0;
    for (var s = 0u; s < prm.splits; s++) {
        let at = (s * total + i) * F32_SLOTS;
        v += f32_unpack(vec2<S>(x[at], x[at + F32_SLOTS - 1u]));
    }
    let oc = (i / prm.p) % prm.oc;
    v = v * f32(affine[oc]) + f32(affine[prm.oc + oc]);
    if (prm.has_res != 0u) { v += f32(res[i]); }
    if (prm.relu != 0u) { v = relu_f(v); }
    y[i] = S(v);
}

// The epilogue for 4 consecutive pixels from p0 of output channel oc (chunk row m; rows
// and pixels past the end are skipped): * scale + shift, + residual, ReLU. The GEMM
// kernels pass their plane as `img` (with `oc` = `m_count`: whole layers).
fn conv_store(img: u32, m: u32, oc: u32, p0: u32, acc: vec4<f32>) {
    if (m >= prm.m_count) { return; }
    let row = (img * prm.oc + oc) * prm.p;
    if (prm.plain != 0u) {
        // Winograd's products, or a slice of a split layer: the sums alone (a slice's in
        // f32 whatever S is).
        for (var j = 0u; j < 4u; j++) {
            if (p0 + j >= prm.p) { return; }
            if (prm.splits > 1u) {
                part_store(row + p0 + j, acc[j]);
            } else {
                y[row + p0 + j] = S(acc[j]);
            }
        }
        return;
    }
    let scale = f32(affine[oc]);
    let shift = f32(affine[prm.oc + oc]);
    for (var j = 0u; j < 4u; j++) {
        let p = p0 + j;
        if (p >= prm.p) { return; }
        var v = acc[j] * scale + shift;
        if (prm.has_res != 0u) { v += f32(res[row + p]); }
        if (prm.relu != 0u) { v = relu_f(v); }
        y[row + p] = S(v);
    }
}

// The register-blocked kernels' block: (first pixel, first channel) of this invocation's
// `pixels` x `channels` outputs. Blocks are numbered pixel-block-fastest over the x-y grid (folded
// past the per-dimension limit), so a 7x7 layer fills whole workgroups with channel
// blocks instead of idling most of their lanes.
fn rb_block(lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>, pixels: u32, channels: u32) -> vec2<u32> {
    let i = (wid.y * nwg.x + wid.x) * RB_WG + lid.x;
    let pb = (prm.p + pixels - 1u) / pixels;
    return vec2<u32>((i % pb) * pixels, (i / pb) * channels);
}

// The input row and column (before the kernel taps) of pixels p0 .. p0 + 3; pixels past
// the end repeat the last one (their stores are skipped).
struct Origins { y: vec4<i32>, x: vec4<i32> }

fn rb_origins(p0: u32) -> Origins {
    let p = min(vec4<u32>(p0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(prm.p - 1u));
    let y = vec4<i32>((p / prm.ow) * prm.sh) - vec4<i32>(i32(prm.ph));
    let x = vec4<i32>((p % prm.ow) * prm.sw) - vec4<i32>(i32(prm.pw));
    return Origins(y, x);
}

// Tap (ky, kx) of those pixels: offsets in an input plane, and which are inside it
// (outside: offset 0, always there, whose value the caller replaces by zero).
struct Tap { off: vec4<u32>, inside: vec4<bool> }

fn rb_tap(o: Origins, ky: u32, kx: u32) -> Tap {
    let iy = o.y + vec4<i32>(i32(ky * prm.dh));
    let ix = o.x + vec4<i32>(i32(kx * prm.dw));
    let h = i32(prm.h);
    let w = i32(prm.w);
    let inside = (iy >= vec4<i32>(0)) & (iy < vec4<i32>(h)) & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(w));
    return Tap(vec4<u32>(select(vec4<i32>(0), iy * w + ix, inside)), inside);
}

// The same convolution for software adapters (lavapipe, SwiftShader), which run a
// workgroup's invocations as CPU vector lanes and pay dearly for barriers: no workgroup
// memory. Each invocation keeps 4 output channels x 4 consecutive pixels in registers; the
// kernel taps are the outer loop, so each pixel's input offset and bounds are worked out
// once per tap, and the input channels the inner one (one load per pixel and weight).
@compute @workgroup_size(RB_WG, 1, 1)
fn conv2d_rb(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let blk = rb_block(lid, wid, nwg, RB_P, RB_M);
    let p0 = blk.x;
    let m0 = blk.y;
    if (m0 >= prm.m_count) { return; }
    let img = wid.z / prm.g_count;
    let gl = wid.z % prm.g_count;
    let g = prm.g_base + gl;
    let khw = prm.kh * prm.kw;
    let hw = prm.h * prm.w;
    let x_base = (img * prm.c + g * prm.icg) * hw;
    let w_base = gl * prm.m_count * prm.k;
    // Rows past the end repeat the last one; the store skips them.
    let last = prm.m_count - 1u;
    let wrow = vec4<u32>(w_base) + min(vec4<u32>(m0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last)) * prm.k;
    let origin = rb_origins(p0);
    // c<i>[j]: channel m0 + i, pixel p0 + j (vectors, not an array: see conv_tiled).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var ky = 0u; ky < prm.kh; ky++) {
        for (var kx = 0u; kx < prm.kw; kx++) {
            let tap = rb_tap(origin, ky, kx);
            let off = tap.off;
            let inside = tap.inside;
            var xi = x_base;
            var wi = wrow + vec4<u32>(ky * prm.kw + kx);
            for (var ci = 0u; ci < prm.icg; ci++) {
                let xv = select(vec4<f32>(0.0), vec4<f32>(f32(x[xi + off.x]), f32(x[xi + off.y]), f32(x[xi + off.z]), f32(x[xi + off.w])), inside);
                c0 = fma(vec4<f32>(f32(wt[wi.x])), xv, c0);
                c1 = fma(vec4<f32>(f32(wt[wi.y])), xv, c1);
                c2 = fma(vec4<f32>(f32(wt[wi.z])), xv, c2);
                c3 = fma(vec4<f32>(f32(wt[wi.w])), xv, c3);
                xi += hw;
                wi += vec4<u32>(khw);
            }
        }
    }
    let oc = g * prm.ocg + prm.m_base + m0;
    conv_store(img, m0, oc, p0, c0);
    conv_store(img, m0 + 1u, oc + 1u, p0, c1);
    conv_store(img, m0 + 2u, oc + 2u, p0, c2);
    conv_store(img, m0 + 3u, oc + 3u, p0, c3);
}

// The direct kernel for software adapters on the GEMM's k-major weights (ungrouped layers
// that are neither 1x1 nor 3x3 stride 1: the stem, strided 3x3): blocks of RB_P pixels x
// GEMM_M channels numbered as gemm_rb's, taps outer as in conv2d_rb, and each input
// channel's step loads 4 pixels and two vectors of 4 channels for 32 FMAs (conv2d_rb: 8
// loads for 16). Software adapters load storage lane by lane, one loop per load
// instruction, so loads per FMA are what counts on the stem's 3 channels.
@compute @workgroup_size(RB_WG, 1, 1)
fn conv2d_rbk(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let blk = rb_block(lid, wid, nwg, RB_P, GEMM_M);
    let p0 = blk.x;
    let m0 = blk.y;
    if (m0 >= prm.m_count) { return; }
    let img = wid.z;
    let khw = prm.kh * prm.kw;
    let hw = prm.h * prm.w;
    let x_base = img * prm.c * hw;
    let oc4 = (prm.m_count + 3u) / 4u;
    // The second vector of 4 channels, or the first again past the last channel.
    let second = select(0u, 1u, m0 + 4u < prm.m_count);
    let origin = rb_origins(p0);
    // c<i>[j]: channel m0 + i, pixel p0 + j (vectors, not an array: see conv_tiled).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    for (var ky = 0u; ky < prm.kh; ky++) {
        for (var kx = 0u; kx < prm.kw; kx++) {
            let tap = rb_tap(origin, ky, kx);
            let off = tap.off;
            let inside = tap.inside;
            var xi = x_base;
            // Row k = ci * khw + ky * kw + kx of W[k][oc4].
            var wi = (ky * prm.kw + kx) * oc4 + m0 / 4u;
            for (var ci = 0u; ci < prm.c; ci++) {
                let b = select(vec4<f32>(0.0), vec4<f32>(f32(x[xi + off.x]), f32(x[xi + off.y]), f32(x[xi + off.z]), f32(x[xi + off.w])), inside);
                let a = vec4<f32>(wt4[wi]);
                let a2 = vec4<f32>(wt4[wi + second]);
                c0 = fma(vec4<f32>(a.x), b, c0);
                c1 = fma(vec4<f32>(a.y), b, c1);
                c2 = fma(vec4<f32>(a.z), b, c2);
                c3 = fma(vec4<f32>(a.w), b, c3);
                c4 = fma(vec4<f32>(a2.x), b, c4);
                c5 = fma(vec4<f32>(a2.y), b, c5);
                c6 = fma(vec4<f32>(a2.z), b, c6);
                c7 = fma(vec4<f32>(a2.w), b, c7);
                xi += hw;
                wi += khw * oc4;
            }
        }
    }
    conv_store(img, m0, m0, p0, c0);
    conv_store(img, m0 + 1u, m0 + 1u, p0, c1);
    conv_store(img, m0 + 2u, m0 + 2u, p0, c2);
    conv_store(img, m0 + 3u, m0 + 3u, p0, c3);
    conv_store(img, m0 + 4u, m0 + 4u, p0, c4);
    conv_store(img, m0 + 5u, m0 + 5u, p0, c5);
    conv_store(img, m0 + 6u, m0 + 6u, p0, c6);
    conv_store(img, m0 + 7u, m0 + 7u, p0, c7);
}

// Convolutions as plain GEMMs for software adapters: Y[plane][m][p] = sum_k
// W[k][m] X[plane][k][p], on the input itself (1x1, stride 1, unpadded), on its im2col
// copy (other shapes), or on Winograd's transformed input (16 planes per image, one per
// transform element, `g_count` = 16). The weights are a derived copy, k-major with the
// channels padded to `oc4`, so each step loads two vectors of 4 channels and one of 4
// pixels for 32 FMAs (software adapters turn every per-lane load into a gather; 8
// channels x 4 pixels ran 15-20% faster than 4 x 4 on SwiftShader and the same on
// lavapipe). X rows are `p4` apart (a multiple of 4); `plain` stores the sums alone
// (Winograd's products).
@compute @workgroup_size(RB_WG, 1, 1)
fn gemm_rb(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let blk = rb_block(lid, wid, nwg, RB_P, GEMM_M);
    let p0 = blk.x;
    let m0 = blk.y;
    if (m0 >= prm.m_count) { return; }
    let plane = wid.z;
    let e = plane % prm.g_count;
    let xs = prm.p4 / 4u;
    let oc4 = (prm.m_count + 3u) / 4u;
    var xi = plane * prm.k * xs + p0 / 4u;
    var wi = e * prm.k * oc4 + m0 / 4u;
    // The second vector of 4 channels, or the first again past the last channel.
    let second = select(0u, 1u, m0 + 4u < prm.m_count);
    // c<i>[j]: channel m0 + i, pixel p0 + j (vectors, not an array: see conv_tiled).
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    for (var k = 0u; k < prm.k; k++) {
        let b = vec4<f32>(x4[xi]);
        let a = vec4<f32>(wt4[wi]);
        let a2 = vec4<f32>(wt4[wi + second]);
        xi += xs;
        wi += oc4;
        c0 = fma(vec4<f32>(a.x), b, c0);
        c1 = fma(vec4<f32>(a.y), b, c1);
        c2 = fma(vec4<f32>(a.z), b, c2);
        c3 = fma(vec4<f32>(a.w), b, c3);
        c4 = fma(vec4<f32>(a2.x), b, c4);
        c5 = fma(vec4<f32>(a2.y), b, c5);
        c6 = fma(vec4<f32>(a2.z), b, c6);
        c7 = fma(vec4<f32>(a2.w), b, c7);
    }
    conv_store(plane, m0, m0, p0, c0);
    conv_store(plane, m0 + 1u, m0 + 1u, p0, c1);
    conv_store(plane, m0 + 2u, m0 + 2u, p0, c2);
    conv_store(plane, m0 + 3u, m0 + 3u, p0, c3);
    conv_store(plane, m0 + 4u, m0 + 4u, p0, c4);
    conv_store(plane, m0 + 5u, m0 + 5u, p0, c5);
    conv_store(plane, m0 + 6u, m0 + 6u, p0, c6);
    conv_store(plane, m0 + 7u, m0 + 7u, p0, c7);
}

// gemm_rb for rows of at least GEMM_WIDE_FROM pixels: 8 channels x 8 pixels per
// invocation, 4 loads for 64 FMAs (lavapipe: ResNet-50's 1x1 layers 10-30% faster; on
// the 16 tiles of a 7x7 map's Winograd products, 50% slower).
@compute @workgroup_size(RB_WG, 1, 1)
fn gemm_rb_wide(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let blk = rb_block(lid, wid, nwg, 2u * RB_P, GEMM_M);
    let p0 = blk.x;
    let m0 = blk.y;
    if (m0 >= prm.m_count) { return; }
    let plane = wid.z;
    let e = plane % prm.g_count;
    let xs = prm.p4 / 4u;
    let oc4 = (prm.m_count + 3u) / 4u;
    var xi = plane * prm.k * xs + p0 / 4u;
    var wi = e * prm.k * oc4 + m0 / 4u;
    // The second vector of 4 channels (of 4 pixels), or the first again past the end.
    let second = select(0u, 1u, m0 + 4u < prm.m_count);
    let xsec = select(0u, 1u, p0 + 4u < prm.p);
    // c<i>, d<i>: channel m0 + i, pixels p0 .. p0 + 3 and p0 + 4 .. p0 + 7.
    var c0 = vec4<f32>(0.0);
    var d0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var d1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var d2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var d3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var d4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var d5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var d6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var d7 = vec4<f32>(0.0);
    for (var k = 0u; k < prm.k; k++) {
        let b = vec4<f32>(x4[xi]);
        let b2 = vec4<f32>(x4[xi + xsec]);
        let a = vec4<f32>(wt4[wi]);
        let a2 = vec4<f32>(wt4[wi + second]);
        xi += xs;
        wi += oc4;
        c0 = fma(vec4<f32>(a.x), b, c0);
        d0 = fma(vec4<f32>(a.x), b2, d0);
        c1 = fma(vec4<f32>(a.y), b, c1);
        d1 = fma(vec4<f32>(a.y), b2, d1);
        c2 = fma(vec4<f32>(a.z), b, c2);
        d2 = fma(vec4<f32>(a.z), b2, d2);
        c3 = fma(vec4<f32>(a.w), b, c3);
        d3 = fma(vec4<f32>(a.w), b2, d3);
        c4 = fma(vec4<f32>(a2.x), b, c4);
        d4 = fma(vec4<f32>(a2.x), b2, d4);
        c5 = fma(vec4<f32>(a2.y), b, c5);
        d5 = fma(vec4<f32>(a2.y), b2, d5);
        c6 = fma(vec4<f32>(a2.z), b, c6);
        d6 = fma(vec4<f32>(a2.z), b2, d6);
        c7 = fma(vec4<f32>(a2.w), b, c7);
        d7 = fma(vec4<f32>(a2.w), b2, d7);
    }
    conv_store(plane, m0 + 0u, m0 + 0u, p0, c0);
    conv_store(plane, m0 + 0u, m0 + 0u, p0 + 4u, d0);
    conv_store(plane, m0 + 1u, m0 + 1u, p0, c1);
    conv_store(plane, m0 + 1u, m0 + 1u, p0 + 4u, d1);
    conv_store(plane, m0 + 2u, m0 + 2u, p0, c2);
    conv_store(plane, m0 + 2u, m0 + 2u, p0 + 4u, d2);
    conv_store(plane, m0 + 3u, m0 + 3u, p0, c3);
    conv_store(plane, m0 + 3u, m0 + 3u, p0 + 4u, d3);
    conv_store(plane, m0 + 4u, m0 + 4u, p0, c4);
    conv_store(plane, m0 + 4u, m0 + 4u, p0 + 4u, d4);
    conv_store(plane, m0 + 5u, m0 + 5u, p0, c5);
    conv_store(plane, m0 + 5u, m0 + 5u, p0 + 4u, d5);
    conv_store(plane, m0 + 6u, m0 + 6u, p0, c6);
    conv_store(plane, m0 + 6u, m0 + 6u, p0 + 4u, d6);
    conv_store(plane, m0 + 7u, m0 + 7u, p0, c7);
    conv_store(plane, m0 + 7u, m0 + 7u, p0 + 4u, d7);
}

// The GEMM's weights from a conv weight [oc][k]: W[k][oc4], channels past oc left zero.
@compute @workgroup_size(WG, 1, 1)
fn gemm_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg); // oc * k + k
    if (i >= prm.m_count * prm.k) { return; }
    let oc4 = (prm.m_count + 3u) / 4u * 4u;
    y[(i % prm.k) * oc4 + i / prm.k] = S(f32(wt[i]));
}

// The im2col copy of the input, col[img][k][p4] for k = (ci, ky, kx): zero outside the
// input and past the last pixel. One invocation per output row of one k: integer
// division is scalar on CPU-backed adapters, so it is paid per row, not per element.
@compute @workgroup_size(WG, 1, 1)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.batch * prm.k * prm.oh) { return; }
    let oy = i % prm.oh;
    let k = (i / prm.oh) % prm.k;
    let img = i / (prm.oh * prm.k);
    let khw = prm.kh * prm.kw;
    let ci = k / khw;
    let rk = k % khw;
    let iy = i32(oy * prm.sh + (rk / prm.kw) * prm.dh) - i32(prm.ph);
    let ix0 = i32((rk % prm.kw) * prm.dw) - i32(prm.pw);
    let out = (img * prm.k + k) * prm.p4 + oy * prm.ow;
    let row_in = iy >= 0 && u32(iy) < prm.h;
    let src = ((img * prm.c + ci) * prm.h + u32(max(iy, 0))) * prm.w;
    for (var ox = 0u; ox < prm.ow; ox++) {
        let ix = ix0 + i32(ox * prm.sw);
        var v = 0.0;
        if (row_in && ix >= 0 && u32(ix) < prm.w) { v = f32(x[src + u32(ix)]); }
        y[out + ox] = S(v);
    }
    // The last row pads its k's pixels to p4.
    if (oy + 1u == prm.oh) {
        for (var p = prm.p; p < prm.p4; p++) { y[(img * prm.k + k) * prm.p4 + p] = S(0.0); }
    }
}

// Winograd F(2x2, 3x3) for 3x3, stride-1 convolutions on software adapters: 16 products
// per 2x2 output tile instead of 36, and the products are plain GEMMs. Each
// image's tiles run row by row, `tiles` of them padded to `t4` (a multiple of 4).
// Transformed input V[img][e][ci][t4], weights U[e][ci][oc4], products M[img][e][oc][t4],
// for the 16 elements e of a 4x4 transform.

// (tiles per row, tiles, t4) of the layer.
fn wino_tiles() -> vec3<u32> {
    let tw = (prm.ow + 1u) / 2u;
    let t = ((prm.oh + 1u) / 2u) * tw;
    return vec3<u32>(tw, t, (t + 3u) / 4u * 4u);
}

// U = G g G^T for each 3x3 kernel g (one per output and input channel), once per model.
@compute @workgroup_size(WG, 1, 1)
fn wino_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg); // oc * c + ci
    if (i >= prm.m_count * prm.c) { return; }
    let oc = i / prm.c;
    let ci = i % prm.c;
    // [element][c][oc4] for gemm_rb; `plain`: [element][oc][c] for the tiled kernel.
    var oc4 = (prm.m_count + 3u) / 4u * 4u;
    var o = ci * oc4 + oc;
    if (prm.plain != 0u) {
        oc4 = prm.m_count;
        o = i;
    }
    let n = prm.c * oc4;
    let r0 = vec3<f32>(f32(wt[i * 9u]), f32(wt[i * 9u + 1u]), f32(wt[i * 9u + 2u]));
    let r1 = vec3<f32>(f32(wt[i * 9u + 3u]), f32(wt[i * 9u + 4u]), f32(wt[i * 9u + 5u]));
    let r2 = vec3<f32>(f32(wt[i * 9u + 6u]), f32(wt[i * 9u + 7u]), f32(wt[i * 9u + 8u]));
    // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2.
    let t = array<vec3<f32>, 4>(r0, 0.5 * (r0 + r1 + r2), 0.5 * (r0 - r1 + r2), r2);
    for (var r = 0u; r < 4u; r++) {
        let v = t[r];
        let u = vec4<f32>(v.x, 0.5 * (v.x + v.y + v.z), 0.5 * (v.x - v.y + v.z), v.z);
        for (var j = 0u; j < 4u; j++) { y[(r * 4u + j) * n + o] = S(u[j]); }
    }
}

// B^T d applied to a row vector's four entries (d's columns): the input transform's rows.
fn wino_bt(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(v.x - v.z, v.y + v.z, v.z - v.y, v.y - v.w);
}

// V = B^T d B for each 4x4 input patch d (zero outside the input); one invocation per
// image, input channel and tile (padding tiles write zeros).
@compute @workgroup_size(WG, 1, 1)
fn wino_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tl = wino_tiles();
    let i = out_index(gid, nwg);
    let per_img = prm.c * tl.z;
    if (i >= prm.batch * per_img) { return; }
    let img = i / per_img;
    let ci = (i % per_img) / tl.z;
    let t = i % tl.z;
    let e_stride = per_img;
    let out = img * 16u * per_img + ci * tl.z + t;
    // Local arrays would live in memory on software adapters (llvmpipe keeps an array
    // that any loop indexes on the stack): four rows, each a vector.
    var d0 = vec4<f32>(0.0);
    var d1 = vec4<f32>(0.0);
    var d2 = vec4<f32>(0.0);
    var d3 = vec4<f32>(0.0);
    if (t < tl.y) {
        let y0 = i32((t / tl.x) * 2u) - i32(prm.ph);
        let x0 = i32((t % tl.x) * 2u) - i32(prm.pw);
        let xb = (img * prm.c + ci) * prm.h * prm.w;
        d0 = wino_patch_row(xb, y0, x0);
        d1 = wino_patch_row(xb, y0 + 1, x0);
        d2 = wino_patch_row(xb, y0 + 2, x0);
        d3 = wino_patch_row(xb, y0 + 3, x0);
    }
    wino_store_row(out, 0u, e_stride, wino_bt(d0 - d2));
    wino_store_row(out, 1u, e_stride, wino_bt(d1 + d2));
    wino_store_row(out, 2u, e_stride, wino_bt(d2 - d1));
    wino_store_row(out, 3u, e_stride, wino_bt(d1 - d3));
}

// Four input values from column x0 of row yy of the plane at xb, zero outside the input
// (out-of-range columns read offset 0, then select zero).
fn wino_patch_row(xb: u32, yy: i32, x0: i32) -> vec4<f32> {
    let h = i32(prm.h);
    let w = i32(prm.w);
    let xx = vec4<i32>(x0) + vec4<i32>(0, 1, 2, 3);
    let inside = (xx >= vec4<i32>(0)) & (xx < vec4<i32>(w)) & vec4<bool>(yy >= 0 && yy < h);
    let o = vec4<u32>(select(vec4<i32>(0), vec4<i32>(yy * w) + xx, inside)) + vec4<u32>(xb);
    let v = vec4<f32>(f32(x[o.x]), f32(x[o.y]), f32(x[o.z]), f32(x[o.w]));
    return select(vec4<f32>(0.0), v, inside);
}

// Row r of a transformed tile: elements r * 4 .. r * 4 + 3, `e_stride` apart.
fn wino_store_row(out: u32, r: u32, e_stride: u32, v: vec4<f32>) {
    let o = out + r * 4u * e_stride;
    y[o] = S(v.x);
    y[o + e_stride] = S(v.y);
    y[o + 2u * e_stride] = S(v.z);
    y[o + 3u * e_stride] = S(v.w);
}

// Row r of a tile's products: elements r * 4 .. r * 4 + 3, `e_stride` apart.
fn wino_load_row(src: u32, r: u32, e_stride: u32) -> vec4<f32> {
    let b = src + r * 4u * e_stride;
    return vec4<f32>(f32(x[b]), f32(x[b + e_stride]), f32(x[b + 2u * e_stride]), f32(x[b + 3u * e_stride]));
}

// A^T applied to a row vector's four entries: the output transform's two columns.
fn wino_at(v: vec4<f32>) -> vec2<f32> {
    return vec2<f32>(v.x + v.y + v.z, v.y - v.z - v.w);
}

// Y = A^T M A for each tile's 16 products, then the epilogue; one invocation per image,
// output channel and tile. `x` holds the products.
@compute @workgroup_size(WG, 1, 1)
fn wino_output(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tl = wino_tiles();
    let i = out_index(gid, nwg);
    let per_img = prm.oc * tl.y;
    if (i >= prm.batch * per_img) { return; }
    let img = i / per_img;
    let oc = (i % per_img) / tl.y;
    let t = i % tl.y;
    let e_stride = prm.oc * tl.z;
    let src = img * 16u * e_stride + oc * tl.z + t;
    let m0 = wino_load_row(src, 0u, e_stride);
    let m1 = wino_load_row(src, 1u, e_stride);
    let m2 = wino_load_row(src, 2u, e_stride);
    let m3 = wino_load_row(src, 3u, e_stride);
    let top = wino_at(m0 + m1 + m2);
    let bottom = wino_at(m1 - m2 - m3);
    let oy = (t / tl.x) * 2u;
    let ox = (t % tl.x) * 2u;
    let scale = f32(affine[oc]);
    let shift = f32(affine[prm.oc + oc]);
    let plane = (img * prm.oc + oc) * prm.p;
    for (var r = 0u; r < 2u; r++) {
        if (oy + r >= prm.oh) { continue; }
        var v2 = top;
        if (r == 1u) { v2 = bottom; }
        for (var c = 0u; c < 2u; c++) {
            if (ox + c >= prm.ow) { continue; }
            let o = plane + (oy + r) * prm.ow + ox + c;
            var v = v2[c] * scale + shift;
            if (prm.has_res != 0u) { v += f32(res[o]); }
            if (prm.relu != 0u) { v = relu_f(v); }
            y[o] = S(v);
        }
    }
}
