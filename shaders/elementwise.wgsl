// Elementwise ops that did not fuse into a producer: residual add (+ ReLU), ReLU, and
// softmax along one dimension (max-subtracted, one thread per softmax row).

struct Params {
    total: u32, relu: u32, dim_len: u32, inner: u32,
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn out_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * 64u + gid.x;
}

// ReLU as PyTorch has it: NaN stays NaN. A bit test, not max() or a comparison, which
// compilers that assume no NaN fold away: zero only what has its sign bit set and is
// not NaN (negative numbers, -0 and -inf).
fn relu_f(v: f32) -> f32 {
    let b = bitcast<u32>(v);
    if ((b & 0x80000000u) != 0u && (b & 0x7fffffffu) <= 0x7f800000u) { return 0.0; }
    return v;
}

@compute @workgroup_size(64, 1, 1)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    var v = a[i] + b[i];
    if (prm.relu != 0u) { v = relu_f(v); }
    y[i] = v;
}

@compute @workgroup_size(64, 1, 1)
fn relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    y[i] = relu_f(a[i]);
}

// `total` counts rows: (outer, inner) positions; the softmax runs over `dim_len`.
@compute @workgroup_size(64, 1, 1)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = out_index(gid, nwg);
    if (r >= prm.total) { return; }
    let base = (r / prm.inner) * prm.dim_len * prm.inner + r % prm.inner;
    var m = bitcast<f32>(0xff7fffffu); // -FLT_MAX
    for (var k = 0u; k < prm.dim_len; k++) { m = max(m, a[base + k * prm.inner]); }
    var s = 0.0;
    for (var k = 0u; k < prm.dim_len; k++) { s += exp(a[base + k * prm.inner] - m); }
    for (var k = 0u; k < prm.dim_len; k++) {
        y[base + k * prm.inner] = exp(a[base + k * prm.inner] - m) / s;
    }
}
