// Helpers every kernel family shares (after the generated header, before the family's code).

// ReLU as PyTorch has it: NaN stays NaN. A bit test, not max() or a comparison, which
// compilers that assume no NaN fold away: zero only what has its sign bit set and is
// not NaN (negative numbers, -0 and -inf).
fn relu_f(v: f32) -> f32 {
    let b = bitcast<u32>(v);
    if ((b & 0x80000000u) != 0u && (b & 0x7fffffffu) <= 0x7f800000u) { return 0.0; }
    return v;
}

// The flat index of a one-per-element invocation: grids past the per-dimension limit
// are folded into 2D rows of `num_workgroups.x` workgroups of WG.
fn out_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * WG + gid.x;
}

