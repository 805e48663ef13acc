// Normalisations: LocalResponseNorm (PyTorch: alpha / size, zero-padded across
// channels), inference BatchNorm as a per-channel scale and shift, and GroupNorm with a
// two-pass mean / variance per (image, group). BatchNorm and GroupNorm take the
// residual-add + ReLU epilogue.

// Params, the bindings and the constants come from the generated header (src/backend/gpu/kernels/norm.rs).

fn finish(i: u32, v: f32) -> f32 {
    var o = v;
    if (prm.has_res != 0u) { o += f32(res[i]); }
    if (prm.relu != 0u) { o = relu_f(o); }
    return o;
}

@compute @workgroup_size(WG, 1, 1)
fn lrn(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    let ch = (i / prm.hw) % prm.c;
    let first = i - ch * prm.hw; // channel 0 at this pixel
    let lo = i32(ch) - i32(prm.size / 2u);
    let hi = min(i32(ch) + i32((prm.size - 1u) / 2u), i32(prm.c) - 1);
    var s = 0.0;
    for (var k = max(lo, 0); k <= hi; k++) {
        let v = f32(x[first + u32(k) * prm.hw]);
        s = fma(v, v, s);
    }
    y[i] = S(f32(x[i]) / pow(prm.k + prm.alpha / f32(prm.size) * s, prm.beta));
}

@compute @workgroup_size(WG, 1, 1)
fn batch_norm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    let ch = (i / prm.hw) % prm.c;
    y[i] = S(finish(i, fma(f32(x[i]), f32(scale[ch]), f32(shift[ch]))));
}

var<workgroup> part: array<f32, 256>;

fn reduce_sum(t: u32, v: f32) -> f32 {
    part[t] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (t < s) { part[t] += part[t + s]; }
        workgroupBarrier();
    }
    let r = part[0];
    workgroupBarrier();
    return r;
}

// One workgroup per (image, group): the group's channels are contiguous in NCHW.
@compute @workgroup_size(256, 1, 1)
fn group_norm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let cg = prm.c / prm.groups;
    let len = cg * prm.hw;
    let base = wid.x * len;
    let g = wid.x % prm.groups;
    var s = 0.0;
    for (var i = t; i < len; i += 256u) { s += f32(x[base + i]); }
    let mean = reduce_sum(t, s) / f32(len);
    var q = 0.0;
    for (var i = t; i < len; i += 256u) {
        let d = f32(x[base + i]) - mean;
        q = fma(d, d, q);
    }
    let rstd = inverseSqrt(reduce_sum(t, q) / f32(len) + prm.eps);
    for (var i = t; i < len; i += 256u) {
        let ch = g * cg + i / prm.hw;
        y[base + i] = S(finish(base + i, fma((f32(x[base + i]) - mean) * rstd, f32(scale[ch]), f32(shift[ch]))));
    }
}
