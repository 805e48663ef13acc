//! The direct convolution's AVX-512 microkernels.

use super::{Epilogue, Kernel, Shape, Sums, Tile};
use std::arch::x86_64::*;

/// The channel tiles (`MV` vectors of 16 channels by `NR` pixels), best first for wide
/// rows: 28 or 26 accumulators, or 21 with three weight vectors.
pub(super) static TILES: [Tile; 3] = [channels::<2, 14>(), channels::<3, 7>(), channels::<2, 13>()];

const fn channels<const MV: usize, const NR: usize>() -> Tile {
    Tile {
        shape: Shape {
            block: MV * 16,
            nr: NR,
            pixels: false,
            lanes: 1,
        },
        kernel: Kernel::Run(tile::<MV, NR>),
    }
}

/// The pixel-vector tile: 8 channels by 48 pixels (24 accumulators).
pub(super) static POINTWISE: Tile = Tile {
    shape: Shape {
        block: 8,
        nr: 48,
        pixels: true,
        lanes: 1,
    },
    kernel: Kernel::Pointwise(pointwise),
};

/// Floats ahead (4 KiB) that both tiles prefetch their weights. A model's weights do
/// not stay in cache between runs (ResNet-50's are 100 MB), so each block's first
/// tile streams its panel from memory at the rate its FMAs consume it, faster than the
/// hardware prefetcher runs ahead; later tiles find the lines in L2 and the prefetch
/// costs them nothing. Past a panel's end it fetches the next block's (panels are
/// contiguous), and past the last one it is dropped (a prefetch never faults). On one
/// Zen 5 at 2 threads, with the weights cold: ResNet-50's 7x7 layers 10-15% faster,
/// its 1024-channel 1x1 layers 12%, with hot weights the same; the whole model 4%
/// (runs alternating with and without, in one process), ResNet-18 2%, VGG-16 the same.
const WEIGHTS_AHEAD: usize = 1024;

/// Taps between the prefetches of a tile's output lines and its residual's, spread
/// over the start of its reduction. Its stores and residual loads go to two lines per
/// channel, each in a plane of its own: on large maps (VGG's 224x224 and 112x112
/// layers, ResNet's 56x56 ones at batch 8) those lines have left the caches since the
/// layer before wrote them, and the epilogue waited for each. One Zen 5 core, VGG's
/// 224x224 64-channel layer: 16.6 ms without, 15.9 with, 15.7 with every store sent to
/// one cached row; with a residual 18.4 -> 16.5 ms. All at once at the tile's start
/// they queued behind each other; in the last 48 taps, worse than none. (A prefetch
/// for writing, PREFETCHW by inline assembly, was no better than this read prefetch.)
const STORE_EVERY: usize = 8;

/// One tile: `nr` output pixels by `MV * 16` output channels, reduced over the taps
/// `kofs` (from and to `sums` where its reduction runs in passes), then stored
/// transposed (pixels contiguous per channel) through the epilogue. `valid` pixels and
/// `live` channels are written.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
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
    let mut acc = [[_mm512_setzero_ps(); MV]; NR];
    if let Some(from) = sums.from {
        for (j, a) in acc.iter_mut().enumerate() {
            for (v, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(from.add((j * MV + v) * 16));
            }
        }
    }
    // The output lines (each channel's `valid` pixels span two lines at most) and
    // the residual's, one pair per `STORE_EVERY` taps.
    let lines = if sums.to.is_none() { 2 * live } else { 0 };
    let mut w = panel.as_ptr();
    for (i, &off) in kofs.iter().enumerate() {
        let xk = x.add(off);
        if i % STORE_EVERY == 0 && i / STORE_EVERY < lines {
            let line = i / STORE_EVERY;
            let at = (line / 2) * ldo + (line % 2) * (valid - 1);
            _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(at) as *const i8);
            if let Some(r) = res {
                _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(at) as *const i8);
            }
        }
        for v in 0..MV {
            let ahead = w.wrapping_add(WEIGHTS_AHEAD + 16 * v);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        }
        let mut wv = [_mm512_setzero_ps(); MV];
        for (v, wv) in wv.iter_mut().enumerate() {
            *wv = _mm512_loadu_ps(w.add(v * 16));
        }
        for (j, a) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*xk.add(j));
            for v in 0..MV {
                a[v] = _mm512_fmadd_ps(wv[v], b, a[v]);
            }
        }
        w = w.add(MV * 16);
    }
    if let Some(to) = sums.to {
        for (j, a) in acc.iter().enumerate() {
            for (v, a) in a.iter().enumerate() {
                _mm512_storeu_ps(to.add((j * MV + v) * 16), *a);
            }
        }
        return;
    }
    let mask = ((1u32 << valid) - 1) as __mmask16;
    let zero = _mm512_setzero_ps();
    for v in 0..MV {
        let mut rows = [zero; 16];
        for j in 0..NR {
            rows[j] = acc[j][v];
        }
        let cols = transpose16(rows);
        for (i, &col) in cols.iter().enumerate() {
            let o = v * 16 + i;
            if o >= live {
                return;
            }
            let mut y = _mm512_fmadd_ps(
                col,
                _mm512_set1_ps(ep.scale[o]),
                _mm512_set1_ps(ep.shift[o]),
            );
            if let Some(r) = res {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, r.add(o * ldo)));
            }
            if ep.relu {
                // MAXPS returns its second operand when either is NaN: NaN stays NaN,
                // as PyTorch's ReLU keeps it.
                y = _mm512_max_ps(zero, y);
            }
            _mm512_mask_storeu_ps(out.add(o * ldo), mask, y);
        }
    }
}

/// The pixel-vector tile of a 1x1 convolution: 8 output channels by `len` (up to 48)
/// consecutive pixels, reduced over the input channels at `kofs`, stored through the
/// epilogue without a transpose.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub unsafe fn pointwise(
    x: *const f32,
    kofs: &[usize],
    panel: &[f32],
    out: *mut f32,
    ldo: usize,
    len: usize,
    live: usize,
    res: Option<*const f32>,
    ep: &Epilogue,
) {
    match len.div_ceil(16) {
        3 => pointwise_nv::<3>(x, kofs, panel, out, ldo, len, live, res, ep),
        2 => pointwise_nv::<2>(x, kofs, panel, out, ldo, len, live, res, ep),
        _ => pointwise_nv::<1>(x, kofs, panel, out, ldo, len, live, res, ep),
    }
}

#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
unsafe fn pointwise_nv<const NV: usize>(
    x: *const f32,
    kofs: &[usize],
    panel: &[f32],
    out: *mut f32,
    ldo: usize,
    len: usize,
    live: usize,
    res: Option<*const f32>,
    ep: &Epilogue,
) {
    // The last vector's lanes past `len` are neither read nor written.
    let tail = len - 16 * (NV - 1);
    let last = ((1u32 << tail) - 1) as __mmask16;
    let mask = |v: usize| if v == NV - 1 { last } else { !0 };
    let mut acc = [[_mm512_setzero_ps(); NV]; 8];
    // Its output lines and the residual's, one per tap from the first (see
    // `STORE_EVERY`): each channel's vectors and its last pixel's line (ResNet-50's
    // 64 -> 256 layer at batch 8 with its residual, alone: 3.8 -> 2.4 ms).
    let lines = live * (NV + 1);
    let mut w = panel.as_ptr();
    for (i, &off) in kofs.iter().enumerate() {
        let xk = x.add(off);
        if i < lines {
            let (j, q) = (i / (NV + 1), i % (NV + 1));
            let at = j * ldo + if q < NV { 16 * q } else { len - 1 };
            _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(at) as *const i8);
            if let Some(r) = res {
                _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(at) as *const i8);
            }
        }
        // A tap's 8 weights are half a line.
        if i % 2 == 0 {
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(WEIGHTS_AHEAD) as *const i8);
        }
        let mut xv = [_mm512_setzero_ps(); NV];
        for v in 0..NV {
            xv[v] = _mm512_maskz_loadu_ps(mask(v), xk.add(16 * v));
        }
        for j in 0..8 {
            let b = _mm512_set1_ps(*w.add(j));
            for v in 0..NV {
                acc[j][v] = _mm512_fmadd_ps(xv[v], b, acc[j][v]);
            }
        }
        w = w.add(8);
    }
    let zero = _mm512_setzero_ps();
    for j in 0..live {
        let (s, h) = (_mm512_set1_ps(ep.scale[j]), _mm512_set1_ps(ep.shift[j]));
        for v in 0..NV {
            let mut y = _mm512_fmadd_ps(acc[j][v], s, h);
            let at = j * ldo + 16 * v;
            if let Some(r) = res {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask(v), r.add(at)));
            }
            if ep.relu {
                y = _mm512_max_ps(zero, y);
            }
            _mm512_mask_storeu_ps(out.add(at), mask(v), y);
        }
    }
}

/// `r[j]` lane `i` becomes `c[i]` lane `j`.
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a0, a1, a2, a3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        u[4 * i] = pd_lo(a0, a2);
        u[4 * i + 1] = pd_hi(a0, a2);
        u[4 * i + 2] = pd_lo(a1, a3);
        u[4 * i + 3] = pd_hi(a1, a3);
    }
    let mut s = [_mm512_setzero_ps(); 16];
    for i in 0..2 {
        for j in 0..4 {
            s[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(u[8 * i + j], u[8 * i + 4 + j]);
            s[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(u[8 * i + j], u[8 * i + 4 + j]);
        }
    }
    let mut c = [_mm512_setzero_ps(); 16];
    for j in 0..8 {
        c[j] = _mm512_shuffle_f32x4::<0x88>(s[j], s[8 + j]);
        c[8 + j] = _mm512_shuffle_f32x4::<0xdd>(s[j], s[8 + j]);
    }
    c
}

#[inline(always)]
unsafe fn pd_lo(a: __m512, b: __m512) -> __m512 {
    _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
}

#[inline(always)]
unsafe fn pd_hi(a: __m512, b: __m512) -> __m512 {
    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_moves_every_lane() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 on this CPU: the kernel it tests is never chosen");
            return;
        }
        unsafe {
            let mut r = [_mm512_setzero_ps(); 16];
            for (j, v) in r.iter_mut().enumerate() {
                let lanes: Vec<f32> = (0..16).map(|i| (j * 16 + i) as f32).collect();
                *v = _mm512_loadu_ps(lanes.as_ptr());
            }
            let c = transpose16(r);
            for (i, v) in c.iter().enumerate() {
                let mut got = [0f32; 16];
                _mm512_storeu_ps(got.as_mut_ptr(), *v);
                let want: Vec<f32> = (0..16).map(|j| (j * 16 + i) as f32).collect();
                assert_eq!(got.to_vec(), want, "column {i}");
            }
        }
    }
}
