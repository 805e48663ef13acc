// Elementwise ops that did not fuse into a producer: residual add (+ ReLU), ReLU, and
// softmax along one dimension (max-subtracted, one thread per softmax row).

// Params, the bindings and the constants come from the generated header (src/backend/gpu/kernels/elementwise.rs).

@compute @workgroup_size(WG, 1, 1)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    var v = f32(a[i]) + f32(b[i]);
    if (prm.relu != 0u) { v = relu_f(v); }
    y[i] = S(v);
}

@compute @workgroup_size(WG, 1, 1)
fn relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    y[i] = S(relu_f(f32(a[i])));
}

// `total` counts rows: (outer, inner) positions; the softmax runs over `dim_len`.
@compute @workgroup_size(WG, 1, 1)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = out_index(gid, nwg);
    if (r >= prm.total) { return; }
    let base = (r / prm.inner) * prm.dim_len * prm.inner + r % prm.inner;
    var m = bitcast<f32>(0xff7fffffu); // -FLT_MAX
    for (var k = 0u; k < prm.dim_len; k++) { m = max(m, f32(a[base + k * prm.inner])); }
    var s = 0.0;
    for (var k = 0u; k < prm.dim_len; k++) { s += exp(f32(a[base + k * prm.inner]) - m); }
    for (var k = 0u; k < prm.dim_len; k++) {
        y[base + k * prm.inner] = S(exp(f32(a[base + k * prm.inner]) - m) / s);
    }
}
