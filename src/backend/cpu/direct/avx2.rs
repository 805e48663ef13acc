//! The direct convolution's AVX2 with FMA microkernels.

use super::{Epilogue, Kernel, Shape, Sums, Tile};
use std::arch::x86_64::*;

/// The channel tile: 16 channels by 6 pixels. 16 vector registers: 12 accumulators, two
/// weight vectors and a broadcast (BLIS's 6x16 for Haswell). Its input is read
/// interleaved by 8 channels where the planner makes it so (`lanes`).
pub(super) static TILES: [Tile; 1] = [Tile {
    shape: Shape {
        block: 16,
        nr: 6,
        pixels: false,
        lanes: 1,
    },
    kernel: Kernel::Gather(tile),
}];

/// The pixel-vector tile: 6 channels by 16 pixels (12 accumulators, 2 input vectors
/// and a broadcast weight in 16 registers).
pub(super) static POINTWISE: Tile = Tile {
    shape: Shape {
        block: 6,
        nr: 16,
        pixels: true,
        lanes: 1,
    },
    kernel: Kernel::Pointwise(pointwise),
};

/// `-1` in the first eight lanes: `LANES[8 - n..]` masks the first `n` of eight.
static LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// Where a tile stores: `valid` pixels of `live` channels, `ldo` apart.
pub struct Store<'a> {
    pub out: *mut f32,
    pub ldo: usize,
    pub valid: usize,
    pub live: usize,
    pub res: Option<*const f32>,
    pub ep: &'a Epilogue<'a>,
    /// Store (and read the residual) in [`super::Layout::Blocked`]: each pixel's 8
    /// channels as one vector, `ldo * 8` floats between blocks.
    pub blocked: bool,
}

/// A tile of `valid` pixels (up to 6), each read from its own base in `xs`, by two
/// vectors of channels: compiled per width. (Three vectors by four pixels needs all
/// 16 registers and ran VGG-16's 56x56 layers at half the speed.)
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(xs: &[*const f32; 8], kofs: &[usize], panel: &[f32], s: &Store, sums: Sums) {
    let f = match s.valid {
        1 => tile_nr::<2, 1>,
        2 => tile_nr::<2, 2>,
        3 => tile_nr::<2, 3>,
        4 => tile_nr::<2, 4>,
        5 => tile_nr::<2, 5>,
        6 => tile_nr::<2, 6>,
        _ => unreachable!("{} pixels", s.valid),
    };
    f(xs, kofs, panel, s, sums)
}

/// Taps ahead that the channel tile prefetches its input.
const PREFETCH_AHEAD: usize = 32;

/// One tile: `NR` (up to 8) output pixels by `MV * 8` output channels, reduced over
/// every tap (each pixel's tap at the same offset from its base), then stored
/// transposed (pixels contiguous per channel) through the epilogue.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_nr<const MV: usize, const NR: usize>(
    xs: &[*const f32; 8],
    kofs: &[usize],
    panel: &[f32],
    s: &Store,
    sums: Sums,
) {
    let xs: [*const f32; NR] = std::array::from_fn(|j| xs[j]);
    let mut acc = [[_mm256_setzero_ps(); MV]; NR];
    if let Some(from) = sums.from {
        for (j, a) in acc.iter_mut().enumerate() {
            for (v, a) in a.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(from.add((j * MV + v) * 8));
            }
        }
    }
    let mut w = panel.as_ptr();
    for (k, &off) in kofs.iter().enumerate() {
        // The input lines of the taps `PREFETCH_AHEAD` on, ahead of their loads: in the
        // interleaved input each run of 8 taps reads 32 bytes per pixel at a new place
        // (the next block of 8 channels, `h * w * 32` bytes on), a stride the hardware
        // does not follow. Every other pixel's line covers all the tile's. On one Zen 3
        // core, 1x1 layers of 2048 input channels ran at 78 GFLOP/s without, 90 with
        // (4096 channels: 62 -> 77); short reductions and 3x3 layers: the same or 1%
        // faster. (Prefetching the weights or the residual ran slower.)
        if k % 8 == 0 {
            if let Some(&o) = kofs.get(k + PREFETCH_AHEAD) {
                for j in 0..NR {
                    if j % 2 == 0 || j == NR - 1 {
                        _mm_prefetch::<_MM_HINT_T0>(xs[j].wrapping_add(o) as *const i8);
                    }
                }
            }
        }
        let mut wv = [_mm256_setzero_ps(); MV];
        for (v, wv) in wv.iter_mut().enumerate() {
            *wv = _mm256_loadu_ps(w.add(v * 8));
        }
        for (j, a) in acc.iter_mut().enumerate() {
            let b = _mm256_broadcast_ss(&*xs[j].add(off));
            for v in 0..MV {
                a[v] = _mm256_fmadd_ps(wv[v], b, a[v]);
            }
        }
        w = w.add(MV * 8);
    }
    if let Some(to) = sums.to {
        for (j, a) in acc.iter().enumerate() {
            for (v, a) in a.iter().enumerate() {
                _mm256_storeu_ps(to.add((j * MV + v) * 8), *a);
            }
        }
        return;
    }
    let Store {
        out,
        ldo,
        valid,
        live,
        res,
        ep,
        blocked,
    } = *s;
    let zero = _mm256_setzero_ps();
    if blocked {
        // No transpose: an accumulator is one pixel's vector of 8 channels, whole
        // (blocked outputs have whole blocks of 8).
        for v in 0..MV.min(live / 8) {
            let scale = _mm256_loadu_ps(ep.scale.as_ptr().add(8 * v));
            let shift = _mm256_loadu_ps(ep.shift.as_ptr().add(8 * v));
            for j in 0..NR {
                let at = (v * ldo + j) * 8;
                let mut y = _mm256_fmadd_ps(acc[j][v], scale, shift);
                if let Some(r) = res {
                    y = _mm256_add_ps(y, _mm256_loadu_ps(r.add(at)));
                }
                if ep.relu {
                    y = _mm256_max_ps(zero, y);
                }
                _mm256_storeu_ps(out.add(at), y);
            }
        }
        return;
    }
    let mask = _mm256_loadu_si256(LANES.as_ptr().add(8 - valid) as *const __m256i);
    for v in 0..MV {
        let mut rows = [zero; 8];
        for j in 0..NR {
            rows[j] = acc[j][v];
        }
        let cols = transpose8(rows);
        for (i, &col) in cols.iter().enumerate() {
            let o = v * 8 + i;
            if o >= live {
                return;
            }
            let mut y = _mm256_fmadd_ps(
                col,
                _mm256_set1_ps(ep.scale[o]),
                _mm256_set1_ps(ep.shift[o]),
            );
            if let Some(r) = res {
                y = _mm256_add_ps(y, _mm256_maskload_ps(r.add(o * ldo), mask));
            }
            if ep.relu {
                // MAXPS returns its second operand when either is NaN: NaN stays NaN.
                y = _mm256_max_ps(zero, y);
            }
            store_n(out.add(o * ldo), y, valid);
        }
    }
}

/// The pixel-vector tile of a 1x1 convolution: 6 output channels by `len` (up to
/// 16) consecutive pixels, reduced over the input channels at `kofs`, stored through
/// the epilogue without a transpose.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
    // Whole tiles load without a mask (its test stays out of the loop).
    let f = match len {
        16 => pointwise_nv::<2, false>,
        9.. => pointwise_nv::<2, true>,
        8 => pointwise_nv::<1, false>,
        _ => pointwise_nv::<1, true>,
    };
    f(x, kofs, panel, out, ldo, len, live, res, ep)
}

#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
unsafe fn pointwise_nv<const NV: usize, const MASKED: bool>(
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
    const CH: usize = 6;
    // The last vector's lanes past `len` are neither read nor written.
    let tail = len - 8 * (NV - 1);
    let mask = _mm256_loadu_si256(LANES.as_ptr().add(8 - tail) as *const __m256i);
    let load = |p: *const f32, v: usize| {
        if MASKED && v == NV - 1 {
            _mm256_maskload_ps(p, mask)
        } else {
            _mm256_loadu_ps(p)
        }
    };
    let mut acc = [[_mm256_setzero_ps(); NV]; CH];
    let mut w = panel.as_ptr();
    for &off in kofs {
        let xk = x.add(off);
        let mut xv = [_mm256_setzero_ps(); NV];
        for v in 0..NV {
            xv[v] = load(xk.add(8 * v), v);
        }
        for j in 0..CH {
            let b = _mm256_broadcast_ss(&*w.add(j));
            for v in 0..NV {
                acc[j][v] = _mm256_fmadd_ps(xv[v], b, acc[j][v]);
            }
        }
        w = w.add(CH);
    }
    let zero = _mm256_setzero_ps();
    for j in 0..live {
        let (s, h) = (_mm256_set1_ps(ep.scale[j]), _mm256_set1_ps(ep.shift[j]));
        for v in 0..NV {
            let mut y = _mm256_fmadd_ps(acc[j][v], s, h);
            let at = j * ldo + 8 * v;
            if let Some(r) = res {
                y = _mm256_add_ps(y, load(r.add(at), v));
            }
            if ep.relu {
                y = _mm256_max_ps(zero, y);
            }
            let n = if v == NV - 1 { tail } else { 8 };
            store_n(out.add(at), y, n);
        }
    }
}

/// Store the first `n` lanes of `v` at `p` without a masked store: VMASKMOVPS to
/// memory is slow on AMD's cores.
#[inline(always)]
unsafe fn store_n(p: *mut f32, v: __m256, n: usize) {
    if n == 8 {
        return _mm256_storeu_ps(p, v);
    }
    let (mut lo, mut p, mut n) = (_mm256_castps256_ps128(v), p, n);
    if n >= 4 {
        _mm_storeu_ps(p, lo);
        lo = _mm256_extractf128_ps::<1>(v);
        p = p.add(4);
        n -= 4;
    }
    if n >= 2 {
        _mm_storel_epi64(p as *mut __m128i, _mm_castps_si128(lo));
        lo = _mm_movehl_ps(lo, lo);
        p = p.add(2);
        n -= 2;
    }
    if n == 1 {
        _mm_store_ss(p, lo);
    }
}

/// [`super::interleave`] for strides 1 and 2, eight pixels at a time by an 8x8
/// transpose: the pixels done (the caller finishes the rest).
#[target_feature(enable = "avx2")]
pub unsafe fn interleave(rows: &[&[f32]; 8], sw: usize, dst: &mut [f32]) -> usize {
    let n = dst.len() / 8;
    let len = rows.iter().map(|r| r.len()).min().unwrap_or(0);
    let mut j = 0;
    // Eight pixels read 8 * sw floats of every row.
    while j + 8 <= n && (j + 8) * sw <= len {
        let mut r = [_mm256_setzero_ps(); 8];
        for (c, v) in r.iter_mut().enumerate() {
            let p = rows[c].as_ptr().add(j * sw);
            *v = if sw == 1 {
                _mm256_loadu_ps(p)
            } else {
                // The even lanes of 16 floats: [a0 a2 b0 b2 | a4 a6 b4 b6], then the
                // middle 64-bit lanes swapped.
                let e = _mm256_shuffle_ps::<0x88>(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(e)))
            };
        }
        let cols = transpose8(r);
        let out = dst.as_mut_ptr().add(j * 8);
        for (i, c) in cols.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * 8), *c);
        }
        j += 8;
    }
    j
}

/// `r[j]` lane `i` becomes `c[i]` lane `j`.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Per 128-bit half: u[4h + q] holds lane q (and q + 4) of rows 4h..4h+4.
    let mut u = [_mm256_setzero_ps(); 8];
    for h in 0..2 {
        let (a0, a1, a2, a3) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
        u[4 * h] = _mm256_shuffle_ps::<0x44>(a0, a2);
        u[4 * h + 1] = _mm256_shuffle_ps::<0xee>(a0, a2);
        u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(a1, a3);
        u[4 * h + 3] = _mm256_shuffle_ps::<0xee>(a1, a3);
    }
    let mut c = [_mm256_setzero_ps(); 8];
    for q in 0..4 {
        c[q] = _mm256_permute2f128_ps::<0x20>(u[q], u[4 + q]);
        c[4 + q] = _mm256_permute2f128_ps::<0x31>(u[q], u[4 + q]);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose8_moves_every_lane() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the kernel it tests is never chosen");
            return;
        }
        // SAFETY: the CPU has AVX2 (checked above); the function is inlined into a
        // caller that enables it.
        #[target_feature(enable = "avx2")]
        unsafe fn check() {
            let mut r = [_mm256_setzero_ps(); 8];
            for (j, v) in r.iter_mut().enumerate() {
                let lanes: Vec<f32> = (0..8).map(|i| (j * 8 + i) as f32).collect();
                *v = _mm256_loadu_ps(lanes.as_ptr());
            }
            let c = transpose8(r);
            for (i, v) in c.iter().enumerate() {
                let mut got = [0f32; 8];
                _mm256_storeu_ps(got.as_mut_ptr(), *v);
                let want: Vec<f32> = (0..8).map(|j| (j * 8 + i) as f32).collect();
                assert_eq!(got.to_vec(), want, "column {i}");
            }
        }
        unsafe { check() }
    }
}
