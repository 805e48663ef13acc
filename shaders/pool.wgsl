// Pooling, one thread per output element: max and average windows with PyTorch's
// padding / ceil_mode rules, and adaptive average pooling (floor/ceil window bounds).

// Params, the bindings and the constants come from the generated header (src/backend/gpu/kernels/pool.rs).

struct Window { base: u32, h0: i32, h1: i32, w0: i32, w1: i32, size: f32 }

// The window of output element `i`: its input plane's offset, the bounds clamped to the
// input, and the size in padded coordinates (PyTorch's divisor with padding).
fn window(i: u32) -> Window {
    let plane = i / (prm.oh * prm.ow);
    let r = i % (prm.oh * prm.ow);
    let hs = i32((r / prm.ow) * prm.sh) - i32(prm.ph);
    let ws = i32((r % prm.ow) * prm.sw) - i32(prm.pw);
    let he = min(hs + i32(prm.kh), i32(prm.h + prm.ph));
    let we = min(ws + i32(prm.kw), i32(prm.w + prm.pw));
    let size = f32((he - hs) * (we - ws));
    return Window(plane * prm.h * prm.w, max(hs, 0), min(he, i32(prm.h)), max(ws, 0), min(we, i32(prm.w)), size);
}

@compute @workgroup_size(WG, 1, 1)
fn max_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    let win = window(i);
    let base = win.base;
    var m = bitcast<f32>(0xff7fffffu); // -FLT_MAX
    // max() may drop NaN; PyTorch propagates it, so keep the first NaN read.
    var nan = false;
    var nan_value = 0.0;
    for (var yy = win.h0; yy < win.h1; yy++) {
        for (var xx = win.w0; xx < win.w1; xx++) {
            let v = f32(x[base + u32(yy) * prm.w + u32(xx)]);
            // Tested on the bits: compilers may fold `v != v` to false (fast math).
            let bits = bitcast<u32>(v);
            if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0u && !nan) {
                nan = true;
                nan_value = v;
            }
            m = max(m, v);
        }
    }
    if (nan) { m = nan_value; }
    y[i] = S(m);
}

@compute @workgroup_size(WG, 1, 1)
fn avg_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    let win = window(i);
    let base = win.base;
    var s = 0.0;
    for (var yy = win.h0; yy < win.h1; yy++) {
        for (var xx = win.w0; xx < win.w1; xx++) {
            s += f32(x[base + u32(yy) * prm.w + u32(xx)]);
        }
    }
    var div = win.size;
    if (prm.count_include_pad == 0u) { div = f32((win.h1 - win.h0) * (win.w1 - win.w0)); }
    y[i] = S(s / div);
}

@compute @workgroup_size(WG, 1, 1)
fn adaptive_avg_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = out_index(gid, nwg);
    if (i >= prm.total) { return; }
    let plane = i / (prm.oh * prm.ow);
    let r = i % (prm.oh * prm.ow);
    let oy = r / prm.ow;
    let ox = r % prm.ow;
    let h0 = (oy * prm.h) / prm.oh;
    let h1 = ((oy + 1u) * prm.h + prm.oh - 1u) / prm.oh;
    let w0 = (ox * prm.w) / prm.ow;
    let w1 = ((ox + 1u) * prm.w + prm.ow - 1u) / prm.ow;
    let base = plane * prm.h * prm.w;
    var s = 0.0;
    for (var yy = h0; yy < h1; yy++) {
        for (var xx = w0; xx < w1; xx++) {
            s += f32(x[base + yy * prm.w + xx]);
        }
    }
    y[i] = S(s / f32((h1 - h0) * (w1 - w0)));
}
