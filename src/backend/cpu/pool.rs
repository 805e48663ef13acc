//! Pooling: separable max pooling on planes and on the blocked layout (AVX-512 and AVX2
//! where the CPU has them), average and adaptive average pooling, global average pooling.

use super::par::{par_chunks_scratch, par_chunks_work};
use crate::graph::Pool2d;

/// One axis of a pooling window: input range `lo..hi` (padding cut off) and the window's
/// size including padding (for `count_include_pad`), per output index.
fn pool_windows(
    n_in: usize,
    n_out: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Vec<(usize, usize, usize)> {
    (0..n_out)
        .map(|i| {
            // Window in padded coordinates, as PyTorch computes it.
            let start = (i * s) as isize - p as isize;
            let end = (start + k as isize).min((n_in + p) as isize);
            let (lo, hi) = (start.max(0) as usize, end.min(n_in as isize) as usize);
            (lo, hi.max(lo), (end - start) as usize)
        })
        .collect()
}

pub(super) fn pool2d(
    x: &[f32],
    xs: [usize; 4],
    pool: &Pool2d,
    os: [usize; 4],
    out: &mut [f32],
    max: bool,
) {
    pool2d_on(x, xs, pool, os, out, max, false)
}

/// [`pool2d`], on the portable code only where `portable` (to test it on any CPU).
fn pool2d_on(
    x: &[f32],
    [_, _, h, w]: [usize; 4],
    pool: &Pool2d,
    [_, _, oh, ow]: [usize; 4],
    out: &mut [f32],
    max: bool,
    portable: bool,
) {
    let ([kh, kw], [sh, sw], [ph, pw]) = (pool.kernel, pool.stride, pool.padding);
    // The windows are the same for every plane: compute them once.
    let rows = pool_windows(h, oh, kh, sh, ph);
    let cols = pool_windows(w, ow, kw, sw, pw);
    // Windows that fit inside a row: their maxima are one contiguous pass per tap, and
    // the output columns whose windows are whole, `j0..j1`, pick theirs.
    let whole = w.saturating_sub(kw - 1);
    let j0 = cols.iter().position(|c| c.1 - c.0 == kw).unwrap_or(ow);
    let j1 = j0 + cols[j0..].iter().take_while(|c| c.1 - c.0 == kw).count();
    let first = cols.get(j0).map_or(0, |c| c.0);
    // Windows up to 3 wide at stride 2 along rows (VGG's, ResNet's and AlexNet's pools):
    // in registers, with no passes through the row buffers.
    #[cfg(target_arch = "x86_64")]
    if max && !portable && sw == 2 && kw <= 3 && std::is_x86_feature_detected!("avx512f") {
        par_chunks_work(out, oh * ow, h * w, |nc, o| {
            let plane = &x[nc * h * w..(nc + 1) * h * w];
            // SAFETY: the CPU has AVX-512F.
            unsafe { max_pool_s2_avx512(plane, w, &rows, kw, pw, o) }
        });
        return;
    }
    par_chunks_scratch(out, oh * ow, h * w, w + whole, |nc, o, scratch| {
        let plane = &x[nc * h * w..(nc + 1) * h * w];
        let (vm, wm) = scratch.split_at_mut(w);
        for (i, &(h0, h1, hk)) in rows.iter().enumerate() {
            let orow = &mut o[i * ow..(i + 1) * ow];
            if max {
                let picks = Picks {
                    first,
                    stride: sw,
                    out: &mut orow[j0..j1],
                };
                max_pool_row(plane, w, h0..h1, kw, vm, wm, picks, portable);
                for j in (0..j0).chain(j1..ow) {
                    let (w0, w1, _) = cols[j];
                    orow[j] = vm[w0..w1]
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &e| max_nan(m, e));
                }
            } else {
                orow.fill(0.0);
                for y in h0..h1 {
                    let src = &plane[y * w..(y + 1) * w];
                    for (v, &(w0, w1, _)) in orow.iter_mut().zip(&cols) {
                        *v += src[w0..w1].iter().sum::<f32>();
                    }
                }
                for (v, &(w0, w1, wk)) in orow.iter_mut().zip(&cols) {
                    let div = if pool.count_include_pad {
                        hk * wk
                    } else {
                        (h1 - h0) * (w1 - w0)
                    };
                    *v /= div as f32;
                }
            }
        }
    });
}

/// Whole windows' maxima wanted by one output row: `out[j]` takes the window that starts
/// at column `first + j * stride`.
struct Picks<'a> {
    first: usize,
    stride: usize,
    out: &'a mut [f32],
}

/// Max pooling along one output row, separably: `vm` gets the column maxima of `plane`'s
/// rows `ys`, `wm[i]` the maximum of every whole window `vm[i..i + kw]`, and the picks
/// theirs (the caller folds the windows that padding cuts). Every pass is contiguous, in
/// AVX-512 where the CPU has it (the crate's baseline is SSE2).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn max_pool_row(
    plane: &[f32],
    w: usize,
    ys: std::ops::Range<usize>,
    kw: usize,
    vm: &mut [f32],
    wm: &mut [f32],
    picks: Picks,
    portable: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if !portable && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { max_pool_row_avx512(plane, w, ys, kw, vm, wm, picks) };
    }
    vm.fill(f32::NEG_INFINITY);
    for y in ys {
        let src = &plane[y * w..(y + 1) * w];
        vm.iter_mut()
            .zip(src)
            .for_each(|(m, &e)| *m = max_nan(*m, e));
    }
    wm.copy_from_slice(&vm[..wm.len()]);
    // No whole window (`wm` empty) where the kernel is wider than the row.
    let taps = if wm.is_empty() { 1 } else { kw };
    for d in 1..taps {
        wm.iter_mut()
            .zip(&vm[d..])
            .for_each(|(m, &e)| *m = max_nan(*m, e));
    }
    let Picks { first, stride, out } = picks;
    for (j, o) in out.iter_mut().enumerate() {
        *o = wm[first + j * stride];
    }
}

/// The larger of the running maximum `m` and a new value `e`, a NaN in either winning as
/// PyTorch's max pooling does. MAXPS returns its second operand when either is NaN: the
/// running maximum goes second, and a NaN in the new value is put back by the mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn nan_max_avx512(
    m: std::arch::x86_64::__m512,
    e: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let r = _mm512_max_ps(e, m);
    _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(e, e), e)
}

/// [`max_pool_row`] in AVX-512 intrinsics: the compiler turns the portable loops into
/// masked stores (slow here), and stride 2, ResNet's, picks 16 outputs per permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool_row_avx512(
    plane: &[f32],
    w: usize,
    ys: std::ops::Range<usize>,
    kw: usize,
    vm: &mut [f32],
    wm: &mut [f32],
    picks: Picks,
) {
    use std::arch::x86_64::*;
    let max = |m, e| nan_max_avx512(m, e);
    // The first `n` lanes (all for 16 and more).
    let lanes = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    // Loads and stores of `n` floats, masked only when partial: a masked one that
    // crosses a cache line costs many cycles on these CPUs (this pass ran 3x slower).
    let load = |p: *const f32, n: usize| {
        if n >= 16 {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(lanes(n), p)
        }
    };
    let store = |p: *mut f32, n: usize, v: __m512| {
        if n >= 16 {
            _mm512_storeu_ps(p, v)
        } else {
            _mm512_mask_storeu_ps(p, lanes(n), v)
        }
    };
    let Picks { first, stride, out } = picks;
    let n = wm.len();
    assert!(plane.len() >= ys.end * w && vm.len() == w && (n == 0 || n + kw <= w + 1));
    assert!(out.is_empty() || first + (out.len() - 1) * stride < n);
    let (vp, wp, xp) = (vm.as_mut_ptr(), wm.as_mut_ptr(), plane.as_ptr());
    // SAFETY (every access below): masked to `i..w` of `vm` and of a row of `plane`,
    // to `i..n` of `wm` and `i + d..n + d` (within `w`) of `vm`, and to `t..out.len()` of
    // `out` and the `wm` lanes it picks, all asserted above.
    for i in (0..w).step_by(16) {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for y in ys.clone() {
            // The lines four window heights further down: the previous layer's output
            // is too big to stay in cache (VGG-16's first pool, 13 MB, 0.95 -> 0.33 ms on
            // Zen 5 at 2 threads). Past the plane it fetches the next one's; a prefetch
            // never faults.
            let ahead = xp.wrapping_add((y + 4 * ys.len()) * w + i);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            m = max(m, load(xp.add(y * w + i), w - i));
        }
        store(vp.add(i), w - i, m);
    }
    for i in (0..n).step_by(16) {
        let mut m = load(vp.add(i), n - i);
        for d in 1..kw {
            m = max(m, load(vp.add(i + d), n - i));
        }
        store(wp.add(i), n - i, m);
    }
    match stride {
        1 => out.copy_from_slice(&wm[first..first + out.len()]),
        2 => {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let op = out.as_mut_ptr();
            for t in (0..out.len()).step_by(16) {
                let at = first + 2 * t;
                let a = load(wp.add(at), n - at);
                let b = load(wp.add(at + 16), (n - at).saturating_sub(16));
                let r = _mm512_permutex2var_ps(a, even, b);
                store(op.add(t), out.len() - t, r);
            }
        }
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = wm[first + j * stride];
            }
        }
    }
}

/// Max pooling of one plane (rows of `w`) into `out` by windows of rows `rows` (per output
/// row, from [`pool_windows`]) and of `kw` (up to 3) columns at stride 2 from column `-pw`,
/// the columns outside the plane left out. For 16 outputs, each window row's maxima over
/// the 32 (34 for 3 columns) columns they cover, then their even, odd and next even lanes',
/// all in registers. Through the row buffers of [`max_pool_row`] each pass's masked stores
/// held up the next pass's loads of them: VGG-16's 14x14 pool took 0.11 ms at 2 threads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool_s2_avx512(
    plane: &[f32],
    w: usize,
    rows: &[(usize, usize, usize)],
    kw: usize,
    pw: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let ow = out.len() / rows.len().max(1);
    assert!(out.len() == rows.len() * ow && (1..=3).contains(&kw));
    assert!(rows
        .iter()
        .all(|&(h0, h1, _)| h0 <= h1 && h1 * w <= plane.len()));
    let max = |m, e| nan_max_avx512(m, e);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    // Columns `c..c + 16` of a row, -inf outside `0..w`; whole vectors unmasked (a masked
    // access that crosses a cache line is slow here).
    let cols = |row: *const f32, c: isize| {
        if c >= 0 && c as usize + 16 <= w {
            _mm512_loadu_ps(row.add(c as usize))
        } else {
            let lo = (-c).clamp(0, 16) as u32;
            let hi = (w as isize - c).clamp(0, 16) as u32;
            let m = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16;
            // Masked-off lanes are not read: the address may lie outside the plane.
            _mm512_mask_loadu_ps(ninf, m, row.wrapping_offset(c))
        }
    };
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let (xp, op) = (plane.as_ptr(), out.as_mut_ptr());
    // SAFETY (every access below): rows `h0..h1` inside the plane (asserted above), the
    // columns inside `0..w` (the rest masked), and output lanes `t..ow` of row `i`.
    for (i, &(h0, h1, _)) in rows.iter().enumerate() {
        for t in (0..ow).step_by(16) {
            let c0 = 2 * t as isize - pw as isize;
            let (mut a, mut b, mut a2, mut b2) = (ninf, ninf, ninf, ninf);
            for y in h0..h1 {
                let row = xp.add(y * w);
                // Four window heights further down, as `max_pool_row_avx512` does.
                let ahead = row.wrapping_add(4 * (h1 - h0) * w).wrapping_offset(c0);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16) as *const i8);
                a = max(a, cols(row, c0));
                b = max(b, cols(row, c0 + 16));
                if kw == 3 {
                    a2 = max(a2, cols(row, c0 + 2));
                    b2 = max(b2, cols(row, c0 + 18));
                }
            }
            let mut m = _mm512_permutex2var_ps(a, even, b);
            if kw >= 2 {
                m = max(m, _mm512_permutex2var_ps(a, odd, b));
            }
            if kw == 3 {
                m = max(m, _mm512_permutex2var_ps(a2, even, b2));
            }
            let left = ow - t;
            let at = op.add(i * ow + t);
            if left >= 16 {
                _mm512_storeu_ps(at, m);
            } else {
                _mm512_mask_storeu_ps(at, ((1u32 << left) - 1) as __mmask16, m);
            }
        }
    }
}

/// Output pixels per run of [`max_pool_blocked`]'s rows.
const POOL_RUN: usize = 64;

/// The maxima of windows `cols` (their first and end columns) over every row of `window`
/// (rows of `w` pixels of 8 channels), into `dst` (8 floats per window), NaN where any
/// value is.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn max_pool_blocked_row(
    window: &[f32],
    w: usize,
    cols: &[(usize, usize, usize)],
    dst: &mut [f32],
    avx2: bool,
) {
    const L: usize = super::layout::BLOCKED_LANES;
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the CPU has AVX2.
        return unsafe { max_pool_blocked_row_avx2(window, w, cols, dst) };
    }
    for (&(w0, w1, _), m) in cols.iter().zip(dst.chunks_exact_mut(L)) {
        m.fill(f32::NEG_INFINITY);
        for row in window.chunks_exact(w * L) {
            for px in row[w0 * L..w1 * L].chunks_exact(L) {
                for (m, &e) in m.iter_mut().zip(px) {
                    *m = max_nan(*m, e);
                }
            }
        }
    }
}

/// [`max_pool_blocked_row`] in AVX2: the portable loop does not vectorise, and took 3x
/// ONNX Runtime's time on ResNet's pooling.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_pool_blocked_row_avx2(
    window: &[f32],
    w: usize,
    cols: &[(usize, usize, usize)],
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(window.len().is_multiple_of(w * 8) && dst.len() >= cols.len() * 8);
    assert!(cols.iter().all(|&(w0, w1, _)| w0 <= w1 && w1 <= w));
    let nan_value = _mm256_set1_ps(f32::NAN);
    for (j, &(w0, w1, _)) in cols.iter().enumerate() {
        let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut nan = _mm256_setzero_ps();
        for row in window.chunks_exact(w * 8) {
            for x in w0..w1 {
                // SAFETY: pixel x < w of this row, asserted above.
                let v = _mm256_loadu_ps(row.as_ptr().add(x * 8));
                // MAXPS returns its second operand when either is NaN: the running
                // maximum stays a number, and the lanes that met a NaN take one at the end.
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                mx = _mm256_max_ps(v, mx);
            }
        }
        // SAFETY: window j's 8 floats, inside `dst` (asserted above).
        _mm256_storeu_ps(
            dst.as_mut_ptr().add(j * 8),
            _mm256_blendv_ps(mx, nan_value, nan),
        );
    }
}

/// The larger of two floats, NaN if either is (PyTorch's max pooling propagates NaN;
/// `f32::max` drops it).
#[inline(always)]
fn max_nan(m: f32, e: f32) -> f32 {
    if m > e || m.is_nan() {
        m
    } else {
        e
    }
}

/// Global average pooling of `x` in the blocked layout (`[n][c / 8][hw][8]`), `[n, c, hw]`,
/// into `out` (`[n, c]`, which is also `[n, c, 1, 1]` in planes).
pub fn global_avg_pool_blocked(x: &[f32], [n, c, hw]: [usize; 3], out: &mut [f32]) {
    const L: usize = super::layout::BLOCKED_LANES;
    debug_assert!(c % L == 0 && x.len() >= n * c * hw && out.len() == n * c);
    for (nb, o) in out.chunks_exact_mut(L).enumerate() {
        let mut sum = [0f32; L];
        for px in x[nb * hw * L..(nb + 1) * hw * L].chunks_exact(L) {
            for (s, &v) in sum.iter_mut().zip(px) {
                *s += v;
            }
        }
        for (o, s) in o.iter_mut().zip(sum) {
            *o = s / hw as f32;
        }
    }
}

/// Max pooling of `x` in the blocked layout (`[n][c / 8][h][w][8]`, `xs` = `[n, c, h, w]`)
/// into `out`, blocked too, or where `planes`, `[n][c][oh][ow]`. NaN propagates as in
/// [`pool2d`].
pub fn max_pool_blocked(
    x: &[f32],
    xs: [usize; 4],
    pool: &Pool2d,
    os: [usize; 4],
    out: &mut [f32],
    planes: bool,
) {
    max_pool_blocked_on(x, xs, pool, os, out, planes, false)
}

/// [`max_pool_blocked`], on the portable code only where `portable` (to test it on any
/// CPU).
fn max_pool_blocked_on(
    x: &[f32],
    [_, _, h, w]: [usize; 4],
    pool: &Pool2d,
    [_, _, oh, ow]: [usize; 4],
    out: &mut [f32],
    planes: bool,
    portable: bool,
) {
    const L: usize = super::layout::BLOCKED_LANES;
    let ([kh, kw], [sh, sw], [ph, pw]) = (pool.kernel, pool.stride, pool.padding);
    let rows = pool_windows(h, oh, kh, sh, ph);
    let cols = pool_windows(w, ow, kw, sw, pw);
    #[cfg(target_arch = "x86_64")]
    let avx2 = !portable && std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = {
        let _ = portable;
        false
    };
    // Image n's channels 8b..8b+8 are one chunk of the output in either layout.
    par_chunks_work(out, oh * ow * L, h * w * L, |nb, o| {
        let src = &x[nb * h * w * L..(nb + 1) * h * w * L];
        // Planes take a run of maxima through this buffer, a lane to each plane.
        let mut buf = [0f32; POOL_RUN * L];
        for (i, &(h0, h1, _)) in rows.iter().enumerate() {
            let window = &src[h0 * w * L..h1 * w * L];
            for j0 in (0..ow).step_by(POOL_RUN) {
                let cols = &cols[j0..(j0 + POOL_RUN).min(ow)];
                let p0 = i * ow + j0;
                let dst = if planes {
                    &mut buf[..cols.len() * L]
                } else {
                    &mut o[p0 * L..(p0 + cols.len()) * L]
                };
                max_pool_blocked_row(window, w, cols, dst, avx2);
                if planes {
                    for (j, m) in buf.chunks_exact(L).take(cols.len()).enumerate() {
                        for (l, &v) in m.iter().enumerate() {
                            o[l * oh * ow + p0 + j] = v;
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's max pooling of `[1, c, h, w]`, window by window (NaN wins).
    fn naive_max_pool(
        x: &[f32],
        [c, h, w]: [usize; 3],
        p: &Pool2d,
        [oh, ow]: [usize; 2],
    ) -> Vec<f32> {
        let ([k, _], [s, _], [pad, _]) = (p.kernel, p.stride, p.padding);
        let mut out = vec![f32::NEG_INFINITY; c * oh * ow];
        for (i, o) in out.iter_mut().enumerate() {
            let (ci, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
            for (dy, dx) in (0..k).flat_map(|dy| (0..k).map(move |dx| (dy, dx))) {
                let y = (oy * s + dy).checked_sub(pad).filter(|&y| y < h);
                let xx = (ox * s + dx).checked_sub(pad).filter(|&xx| xx < w);
                if let (Some(y), Some(xx)) = (y, xx) {
                    *o = max_nan(*o, x[(ci * h + y) * w + xx]);
                }
            }
        }
        out
    }

    #[test]
    fn max_pool_matches_a_naive_pool_on_every_width_and_stride() {
        // Rows over one and several vectors with tails, strides 1-3 (2 takes the permute),
        // padding, ceil mode, an odd height (its last row in no window of 2x2 at stride
        // 2, the registers-only path), and NaN (which wins) and -inf in the data; the
        // AVX-512 code where the CPU has it, and the portable code.
        for (h, w) in [4, 5]
            .into_iter()
            .flat_map(|h| [1, 5, 16, 17, 33, 56, 113].into_iter().map(move |w| (h, w)))
        {
            let mut x: Vec<f32> = (0..2 * h * w)
                .map(|i| ((i * 7919) % 101) as f32 - 50.0)
                .collect();
            let len = x.len();
            x[(3 * w + 7) % len] = f32::NAN;
            x[(5 * w + 2) % len] = f32::NEG_INFINITY;
            for (k, s, ceil) in
                (1..=3).flat_map(|k| (1..=3).flat_map(move |s| [(k, s, false), (k, s, true)]))
            {
                for pad in 0..=k / 2 {
                    let pool = Pool2d::new(k).stride(s).padding(pad).ceil_mode(ceil);
                    let out_len = |n| crate::graph::shape::pool_out(n, k, s, pad, ceil);
                    let (Some(oh), Some(ow)) = (out_len(h), out_len(w)) else {
                        continue;
                    };
                    let want = naive_max_pool(&x, [2, h, w], &pool, [oh, ow]);
                    for portable in [false, true] {
                        let mut out = vec![0f32; 2 * oh * ow];
                        let (xs, os) = ([1, 2, h, w], [1, 2, oh, ow]);
                        pool2d_on(&x, xs, &pool, os, &mut out, true, portable);
                        for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                            let same = got == want || (got.is_nan() && want.is_nan());
                            let case =
                                format!("w{w} k{k} s{s} p{pad} ceil {ceil} portable {portable}");
                            assert!(same, "{case}, output {i}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_max_pool_matches_a_naive_pool_into_either_layout() {
        // 2 images of 16 channels (two blocks each), padding, strides, ceil mode, NaN.
        use super::super::layout::{from_blocked, to_blocked};
        let (n, c, h) = (2, 16, 5);
        // Widths past one run of `POOL_RUN` outputs too (stride 1 and 2).
        for w in [1, 6, 13, 70, 131] {
            let mut x: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 7919) % 101) as f32 - 50.0)
                .collect();
            x[(3 * w + 7) % (n * c * h * w)] = f32::NAN;
            x[(9 * w + 2) % (n * c * h * w)] = f32::NEG_INFINITY;
            let xb = to_blocked(&x, [n, c, h * w]);
            for (k, s, pad, ceil) in [(3, 2, 1, false), (2, 2, 0, true), (3, 1, 1, false)] {
                let pool = Pool2d::new(k).stride(s).padding(pad).ceil_mode(ceil);
                let out_len = |l| crate::graph::shape::pool_out(l, k, s, pad, ceil);
                let (Some(oh), Some(ow)) = (out_len(h), out_len(w)) else {
                    continue;
                };
                let want = naive_max_pool(&x, [n * c, h, w], &pool, [oh, ow]);
                for planes in [true, false] {
                    let (xs, os) = ([n, c, h, w], [n, c, oh, ow]);
                    for portable in [false, true] {
                        let mut out = vec![f32::INFINITY; n * c * oh * ow];
                        max_pool_blocked_on(&xb, xs, &pool, os, &mut out, planes, portable);
                        if !planes {
                            out = from_blocked(&out, [n, c, oh * ow]);
                        }
                        for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                            let same = got == want || (got.is_nan() && want.is_nan());
                            let case = format!(
                                "w{w} k{k} s{s} p{pad} ceil {ceil} planes {planes} portable {portable}"
                            );
                            assert!(same, "{case}, output {i}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}
