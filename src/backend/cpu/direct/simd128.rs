//! The direct convolution's wasm SIMD128 microkernels.

use super::{Epilogue, Kernel, Shape, Sums, Tile};
use std::arch::wasm32::*;

/// The channel tiles, best first for wide rows. V8 has 16 vector registers: 8
/// accumulators, the weights and the broadcasts fit (8 wide by 5 pixels spilled and ran
/// at half the speed).
pub(super) static TILES: [Tile; 2] = [channels::<2, 4>(), channels::<3, 3>()];

const fn channels<const MV: usize, const NR: usize>() -> Tile {
    Tile {
        shape: Shape {
            block: MV * 4,
            nr: NR,
            pixels: false,
            lanes: 1,
        },
        kernel: Kernel::Run(tile::<MV, NR>),
    }
}

/// One tile: `NR` output pixels by `MV * 4` output channels, reduced over every tap
/// (multiply, then add: wasm SIMD has no fused multiply-add), then stored pixel-major
/// per channel through the epilogue.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub unsafe fn tile<const MV: usize, const NR: usize>(
    x: *const f32,
    kofs: &[usize],
    panel: &[f32],
    out: *mut f32,
    ldo: usize,
    valid: usize,
    live: usize,
    res: Option<*const f32>,
    ep: &Epilogue,
    sums: Sums,
) {
    // Only x86 splits a reduction into passes.
    debug_assert!(sums.from.is_none() && sums.to.is_none());
    let mut acc = [[f32x4_splat(0.0); MV]; NR];
    let mut w = panel.as_ptr();
    for &off in kofs {
        let xk = x.add(off);
        let mut wv = [f32x4_splat(0.0); MV];
        for v in 0..MV {
            wv[v] = v128_load(w.add(v * 4) as *const v128);
        }
        for j in 0..NR {
            let b = f32x4_splat(*xk.add(j));
            for v in 0..MV {
                acc[j][v] = f32x4_add(acc[j][v], f32x4_mul(wv[v], b));
            }
        }
        w = w.add(MV * 4);
    }
    let mut t = [[0f32; 16]; NR];
    for j in 0..NR {
        for v in 0..MV {
            v128_store(t[j].as_mut_ptr().add(v * 4) as *mut v128, acc[j][v]);
        }
    }
    store(&t[..], out, ldo, valid, live, res, ep);
}

/// The epilogue from the pixel-major tile `t`, per channel over its run of pixels
/// (scaling the channel lanes as vectors before the store measured slower in V8).
#[allow(clippy::needless_range_loop)]
unsafe fn store(
    t: &[[f32; 16]],
    out: *mut f32,
    ldo: usize,
    valid: usize,
    live: usize,
    res: Option<*const f32>,
    ep: &Epilogue,
) {
    for o in 0..live {
        let (scale, shift) = (ep.scale[o], ep.shift[o]);
        let dst = out.add(o * ldo);
        for j in 0..valid {
            let mut y = t[j][o] * scale + shift;
            if let Some(r) = res {
                y += *r.add(o * ldo + j);
            }
            // A comparison, not f32::max: NaN stays NaN, as in PyTorch.
            if ep.relu && y < 0.0 {
                y = 0.0;
            }
            *dst.add(j) = y;
        }
    }
}
