// Convolution as an implicit GEMM: C[oc, p] = sum_k W[oc, k] * X_col[k, p] per image and
// group, where k = (ci, ky, kx) and p = (oy, ox). The im2col matrix is never stored: each
// 64x64 output tile gathers its 16-deep slices of X_col straight into workgroup memory.
// Every 256-thread workgroup computes 64 output channels x 64 pixels; each thread a 4x4
// block, read from workgroup memory as two vec4 per k step (vector loads, 16 FMAs).
// Epilogue: * scale + shift per output channel (bias and a folded BatchNorm), + residual, ReLU.

// Params, the bindings and the constants come from the generated header (src/backend/gpu/kernels/conv.rs).

var<workgroup> a_tile: array<vec4<f32>, TK * TM / 4u>; // [TK][TM / 4]
var<workgroup> b_tile: array<vec4<f32>, TK * TN / 4u>; // [TK][TN / 4]

@compute @workgroup_size(16, 16, 1)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let n0 = wid.x * TN;
    let m0 = wid.y * TM;
    let img = wid.z / prm.g_count;
    let gl = wid.z % prm.g_count;
    let g = prm.g_base + gl;
    let khw = prm.kh * prm.kw;
    let x_base = (img * prm.c + g * prm.icg) * prm.h * prm.w;
    let w_base = gl * prm.m_count * prm.k;

    var acc: array<vec4<f32>, 4>; // rows m0 + 4 * lid.y + i, columns n0 + 4 * lid.x ..
    for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = 0u; k0 < prm.k; k0 += TK) {
        // Weights: consecutive threads read consecutive k of one row.
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            let mm = e / TK;
            let kk = e % TK;
            let m = m0 + mm;
            let k = k0 + kk;
            var v = 0.0;
            if (m < prm.m_count && k < prm.k) {
                v = wt[w_base + m * prm.k + k];
            }
            a_tile[kk * 16u + mm / 4u][mm % 4u] = v;
        }
        // Input patches: consecutive threads read consecutive output pixels.
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            let kk = e / TN;
            let nn = e % TN;
            let p = n0 + nn;
            let k = k0 + kk;
            var v = 0.0;
            if (p < prm.p && k < prm.k) {
                let ci = k / khw;
                let rk = k % khw;
                let iy = i32((p / prm.ow) * prm.sh + (rk / prm.kw) * prm.dh) - i32(prm.ph);
                let ix = i32((p % prm.ow) * prm.sw + (rk % prm.kw) * prm.dw) - i32(prm.pw);
                if (iy >= 0 && ix >= 0 && u32(iy) < prm.h && u32(ix) < prm.w) {
                    v = x[x_base + (ci * prm.h + u32(iy)) * prm.w + u32(ix)];
                }
            }
            b_tile[kk * 16u + nn / 4u][nn % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = a_tile[kk * 16u + lid.y];
            let b = b_tile[kk * 16u + lid.x];
            acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
            acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
            acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
            acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let m = m0 + 4u * lid.y + i;
        if (m >= prm.m_count) { continue; }
        let oc = g * prm.ocg + prm.m_base + m;
        let row = (img * prm.oc + oc) * prm.p;
        for (var j = 0u; j < 4u; j++) {
            let p = n0 + 4u * lid.x + j;
            if (p >= prm.p) { continue; }
            var v = acc[i][j] * affine[oc] + affine[prm.oc + oc];
            if (prm.has_res != 0u) { v += res[row + p]; }
            if (prm.relu != 0u) { v = relu_f(v); }
            y[row + p] = v;
        }
    }
}

// The same convolution for software adapters (lavapipe, SwiftShader), which run a
// workgroup's invocations as CPU vector lanes and pay dearly for barriers: no workgroup
// memory. Each invocation keeps 4 output channels x 4 consecutive pixels in registers; the
// kernel taps are the outer loop, so each pixel's input offset and bounds are worked out
// once per tap, and the input channels the inner one (one load per pixel and weight).
@compute @workgroup_size(RB_WG, 1, 1)
fn conv2d_rb(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let p0 = gid.x * RB_P;
    // From the workgroup id, not the invocation's: the same in every lane, so compilers
    // that track uniformity load each weight once for the whole workgroup.
    let m0 = wid.y * RB_M;
    if (p0 >= prm.p || m0 >= prm.m_count) { return; }
    let img = wid.z / prm.g_count;
    let gl = wid.z % prm.g_count;
    let g = prm.g_base + gl;
    let khw = prm.kh * prm.kw;
    let hw = prm.h * prm.w;
    let x_base = (img * prm.c + g * prm.icg) * hw;
    let w_base = gl * prm.m_count * prm.k;
    // Rows and pixels past the end repeat the last one; the store skips them.
    var wrow: vec4<u32>;
    var oy: vec4<i32>;
    var ox: vec4<i32>;
    for (var i = 0u; i < 4u; i++) {
        wrow[i] = w_base + min(m0 + i, prm.m_count - 1u) * prm.k;
        let p = min(p0 + i, prm.p - 1u);
        oy[i] = i32((p / prm.ow) * prm.sh) - i32(prm.ph);
        ox[i] = i32((p % prm.ow) * prm.sw) - i32(prm.pw);
    }
    let h = i32(prm.h);
    let w = i32(prm.w);
    var acc: array<vec4<f32>, 4>; // acc[i][j]: channel m0 + i, pixel p0 + j
    for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }
    for (var ky = 0u; ky < prm.kh; ky++) {
        let iy = oy + vec4<i32>(i32(ky * prm.dh));
        for (var kx = 0u; kx < prm.kw; kx++) {
            let ix = ox + vec4<i32>(i32(kx * prm.dw));
            let inside = (iy >= vec4<i32>(0)) & (iy < vec4<i32>(h)) & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(w));
            // Outside the input: read offset 0 (always there), then select zero.
            let off = vec4<u32>(select(vec4<i32>(0), iy * w + ix, inside));
            var xi = x_base;
            var wi = wrow + vec4<u32>(ky * prm.kw + kx);
            for (var ci = 0u; ci < prm.icg; ci++) {
                let xv = select(vec4<f32>(0.0), vec4<f32>(x[xi + off.x], x[xi + off.y], x[xi + off.z], x[xi + off.w]), inside);
                acc[0] = fma(vec4<f32>(wt[wi.x]), xv, acc[0]);
                acc[1] = fma(vec4<f32>(wt[wi.y]), xv, acc[1]);
                acc[2] = fma(vec4<f32>(wt[wi.z]), xv, acc[2]);
                acc[3] = fma(vec4<f32>(wt[wi.w]), xv, acc[3]);
                xi += hw;
                wi += vec4<u32>(khw);
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + i;
        if (m >= prm.m_count) { continue; }
        let oc = g * prm.ocg + prm.m_base + m;
        let row = (img * prm.oc + oc) * prm.p;
        for (var j = 0u; j < 4u; j++) {
            let p = p0 + j;
            if (p >= prm.p) { continue; }
            var v = acc[i][j] * affine[oc] + affine[prm.oc + oc];
            if (prm.has_res != 0u) { v += res[row + p]; }
            if (prm.relu != 0u) { v = relu_f(v); }
            y[row + p] = v;
        }
    }
}
