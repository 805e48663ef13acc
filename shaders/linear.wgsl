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
        linear_reduce(t, row, b0, acc);
    }
}

// The same with whole vectors along k (k a multiple of 4): 16 bytes of the row per load,
// four times the bytes in flight per invocation.
@compute @workgroup_size(256, 1, 1)
fn linear_v4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= prm.rows) { return; }
    let t = lid.x;
    let k4 = prm.k / 4u;
    let w_row = row * k4;
    for (var b0 = 0u; b0 < prm.batch; b0 += 4u) {
        let last = prm.batch - 1u;
        let xr = vec4<u32>(b0, min(b0 + 1u, last), min(b0 + 2u, last), min(b0 + 3u, last)) * k4;
        var acc = vec4<f32>(0.0);
        for (var k = t; k < k4; k += 256u) {
            let wv = vec4<f32>(wt4[w_row + k]);
            acc += vec4<f32>(
                dot(wv, vec4<f32>(x4[xr.x + k])),
                dot(wv, vec4<f32>(x4[xr.y + k])),
                dot(wv, vec4<f32>(x4[xr.z + k])),
                dot(wv, vec4<f32>(x4[xr.w + k])),
            );
        }
        linear_reduce(t, row, b0, acc);
    }
}

// Sum the workgroup's partial sums for images b0 .. b0 + 3 of `row` (images past the end
// are stored by no one), add the bias, ReLU, store.
fn linear_reduce(t: u32, row: u32, b0: u32, acc: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) { red[j * 256u + t] = acc[j]; }
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (t < s) {
            for (var j = 0u; j < 4u; j++) { red[j * 256u + t] += red[j * 256u + t + s]; }
        }
        workgroupBarrier();
    }
    let n = prm.n_base + row;
    if (t < 4u && b0 + t < prm.batch) {
        var v = red[t * 256u] + f32(bias[n]);
        if (prm.relu != 0u) { v = relu_f(v); }
        y[(b0 + t) * prm.n_total + n] = S(v);
    }
    workgroupBarrier();
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
        // c<i>[j]: row r0 + i, image b0 + j (vectors, not an array: software adapters
        // keep an array that a loop indexes in memory).
        var c0 = vec4<f32>(0.0);
        var c1 = vec4<f32>(0.0);
        var c2 = vec4<f32>(0.0);
        var c3 = vec4<f32>(0.0);
        if (prm.batch == 1u) {
            for (var k = 0u; k < k4; k++) {
                let xv = vec4<f32>(x4[k]);
                c0 = fma(vec4<f32>(wt4[wr.x + k]), xv, c0);
                c1 = fma(vec4<f32>(wt4[wr.y + k]), xv, c1);
                c2 = fma(vec4<f32>(wt4[wr.z + k]), xv, c2);
                c3 = fma(vec4<f32>(wt4[wr.w + k]), xv, c3);
            }
            let one = vec4<f32>(1.0);
            c0 = vec4<f32>(dot(c0, one));
            c1 = vec4<f32>(dot(c1, one));
            c2 = vec4<f32>(dot(c2, one));
            c3 = vec4<f32>(dot(c3, one));
        } else {
            for (var k = 0u; k < k4; k++) {
                let x0 = vec4<f32>(x4[xr.x + k]);
                let x1 = vec4<f32>(x4[xr.y + k]);
                let x2 = vec4<f32>(x4[xr.z + k]);
                let x3 = vec4<f32>(x4[xr.w + k]);
                let w0 = vec4<f32>(wt4[wr.x + k]);
                let w1 = vec4<f32>(wt4[wr.y + k]);
                let w2 = vec4<f32>(wt4[wr.z + k]);
                let w3 = vec4<f32>(wt4[wr.w + k]);
                c0 += vec4<f32>(dot(w0, x0), dot(w0, x1), dot(w0, x2), dot(w0, x3));
                c1 += vec4<f32>(dot(w1, x0), dot(w1, x1), dot(w1, x2), dot(w1, x3));
                c2 += vec4<f32>(dot(w2, x0), dot(w2, x1), dot(w2, x2), dot(w2, x3));
                c3 += vec4<f32>(dot(w3, x0), dot(w3, x1), dot(w3, x2), dot(w3, x3));
            }
        }
        linear_store(r0, b0, c0);
        linear_store(r0 + 1u, b0, c1);
        linear_store(r0 + 2u, b0, c2);
        linear_store(r0 + 3u, b0, c3);
    }
}

// Row `row`'s outputs for images b0 .. b0 + 3 (rows and images past the end skipped).
fn linear_store(row: u32, b0: u32, acc: vec4<f32>) {
    if (row >= prm.rows) { return; }
    let n = prm.n_base + row;
    for (var j = 0u; j < 4u; j++) {
        if (b0 + j >= prm.batch) { return; }
        var v = acc[j] + f32(bias[n]);
        if (prm.relu != 0u) { v = relu_f(v); }
        y[(b0 + j) * prm.n_total + n] = S(v);
    }
}
