// Linear layer y[b, n] = sum_k x[b, k] * W[n, k] + bias[n] (+ ReLU). One 256-thread
// workgroup per output feature: the weight row is read once, coalesced, for four batch
// rows at a time, then reduced in workgroup memory. These layers are bandwidth-bound
// (AlexNet/VGG fc6 hold 38M-103M weights), so reading each weight once is what counts.

// Params, the bindings and the constants come from the generated header (src/backend/gpu/kernels/linear.rs).

var<workgroup> red: array<f32, 1024>; // [4][256]

@compute @workgroup_size(256, 1, 1)
fn linear(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= prm.rows) { return; }
    let t = lid.x;
    let w_row = row * prm.k;
    let n = prm.n_base + row;
    for (var b0 = 0u; b0 < prm.batch; b0 += 4u) {
        var acc = vec4<f32>(0.0);
        for (var k = t; k < prm.k; k += 256u) {
            let wv = f32(wt[w_row + k]);
            for (var j = 0u; j < 4u; j++) {
                if (b0 + j < prm.batch) {
                    acc[j] = fma(wv, f32(x[(b0 + j) * prm.k + k]), acc[j]);
                }
            }
        }
        for (var j = 0u; j < 4u; j++) { red[j * 256u + t] = acc[j]; }
        workgroupBarrier();
        for (var s = 128u; s > 0u; s >>= 1u) {
            if (t < s) {
                for (var j = 0u; j < 4u; j++) { red[j * 256u + t] += red[j * 256u + t + s]; }
            }
            workgroupBarrier();
        }
        if (t < 4u && b0 + t < prm.batch) {
            var v = red[t * 256u] + f32(bias[n]);
            if (prm.relu != 0u) { v = relu_f(v); }
            y[(b0 + t) * prm.n_total + n] = S(v);
        }
        workgroupBarrier();
    }
}

// The same layer for software adapters, which run a workgroup's invocations as CPU vector
// lanes and pay dearly for barriers: one invocation per output feature, its weight row read
// once for four batch rows at a time, no workgroup memory.
@compute @workgroup_size(LINEAR_RB_ROWS, 1, 1)
fn linear_rb(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = (wid.y * nwg.x + wid.x) * LINEAR_RB_ROWS + lid.x;
    if (row >= prm.rows) { return; }
    let w_row = row * prm.k;
    let n = prm.n_base + row;
    for (var b0 = 0u; b0 < prm.batch; b0 += 4u) {
        // Batch rows past the end read the last one; the store skips them.
        let last = prm.batch - 1u;
        let xr = vec4<u32>(b0, min(b0 + 1u, last), min(b0 + 2u, last), min(b0 + 3u, last)) * prm.k;
        var acc = vec4<f32>(0.0);
        for (var k = 0u; k < prm.k; k++) {
            let wv = f32(wt[w_row + k]);
            acc = fma(vec4<f32>(wv), vec4<f32>(f32(x[xr.x + k]), f32(x[xr.y + k]), f32(x[xr.z + k]), f32(x[xr.w + k])), acc);
        }
        for (var j = 0u; j < 4u; j++) {
            if (b0 + j < prm.batch) {
                var v = acc[j] + f32(bias[n]);
                if (prm.relu != 0u) { v = relu_f(v); }
                y[(b0 + j) * prm.n_total + n] = S(v);
            }
        }
    }
}

// The same where k is a multiple of 4: whole vectors along k, and four output features per
// invocation sharing each input vector. llvmpipe loads storage lane by lane, one loop per
// load instruction whatever its width, so the loads per weight are what counts: here 5 per
// 16 weights at batch 1, against 2 per weight one float at a time (VGG's fc6 on lavapipe:
// 213 -> 40 ms, 10 GB/s).
@compute @workgroup_size(LINEAR_RB_ROWS, 1, 1)
fn linear_rb4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let r0 = ((wid.y * nwg.x + wid.x) * LINEAR_RB_ROWS + lid.x) * 4u;
    if (r0 >= prm.rows) { return; }
    let k4 = prm.k / 4u;
    let lr = prm.rows - 1u;
    let wr = vec4<u32>(r0, min(r0 + 1u, lr), min(r0 + 2u, lr), min(r0 + 3u, lr)) * k4;
    for (var b0 = 0u; b0 < prm.batch; b0 += 4u) {
        let last = prm.batch - 1u;
        let xr = vec4<u32>(b0, min(b0 + 1u, last), min(b0 + 2u, last), min(b0 + 3u, last)) * k4;
        var acc: array<vec4<f32>, 4>; // [row][image]
        if (prm.batch == 1u) {
            var a0 = vec4<f32>(0.0);
            var a1 = vec4<f32>(0.0);
            var a2 = vec4<f32>(0.0);
            var a3 = vec4<f32>(0.0);
            for (var k = 0u; k < k4; k++) {
                let xv = vec4<f32>(x4[k]);
                a0 = fma(vec4<f32>(wt4[wr.x + k]), xv, a0);
                a1 = fma(vec4<f32>(wt4[wr.y + k]), xv, a1);
                a2 = fma(vec4<f32>(wt4[wr.z + k]), xv, a2);
                a3 = fma(vec4<f32>(wt4[wr.w + k]), xv, a3);
            }
            acc[0] = vec4<f32>(dot(a0, vec4<f32>(1.0)));
            acc[1] = vec4<f32>(dot(a1, vec4<f32>(1.0)));
            acc[2] = vec4<f32>(dot(a2, vec4<f32>(1.0)));
            acc[3] = vec4<f32>(dot(a3, vec4<f32>(1.0)));
        } else {
            for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }
            for (var k = 0u; k < k4; k++) {
                let x0 = vec4<f32>(x4[xr.x + k]);
                let x1 = vec4<f32>(x4[xr.y + k]);
                let x2 = vec4<f32>(x4[xr.z + k]);
                let x3 = vec4<f32>(x4[xr.w + k]);
                for (var i = 0u; i < 4u; i++) {
                    let wv = vec4<f32>(wt4[wr[i] + k]);
                    acc[i] += vec4<f32>(dot(wv, x0), dot(wv, x1), dot(wv, x2), dot(wv, x3));
                }
            }
        }
        for (var i = 0u; i < 4u; i++) {
            let row = r0 + i;
            if (row >= prm.rows) { break; }
            let n = prm.n_base + row;
            for (var j = 0u; j < 4u; j++) {
                if (b0 + j < prm.batch) {
                    var v = acc[i][j] + f32(bias[n]);
                    if (prm.relu != 0u) { v = relu_f(v); }
                    y[(b0 + j) * prm.n_total + n] = S(v);
                }
            }
        }
    }
}
