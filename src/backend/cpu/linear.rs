//! Linear layers: a streaming kernel that reads each weight once for batches up to
//! [`GEMV_MAX_BATCH`] (memory bound: VGG's fc6 is 411 MB), the `gemm` crate above.

use super::par::{par_for, threads, OutPtr};

/// Batches up to this size take the streaming kernel for linear layers (measured: at
/// batch 8 the GEMM repacks all of VGG's or AlexNet's 400 MB of weights per call).
pub(super) const GEMV_MAX_BATCH: usize = 32;

/// `out[b, n] = x[b, k] . w[n, k] + bias[n]` for a few images: memory bound (VGG's fc6
/// is 411 MB), so each weight row is read once, by one thread, for every image, four rows
/// by up to four images at a time.
pub(super) fn gemv(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    b: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    // Rows per task: enough work to amortise scheduling, enough tasks to share.
    let rows = (n / (8 * threads())).clamp(4, 256).next_multiple_of(4);
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::is_x86_feature_detected!("avx512f");
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    debug_assert_eq!(out.len(), b * n);
    let dst = OutPtr(out.as_mut_ptr());
    par_for(n.div_ceil(rows), |t| {
        let r0 = t * rows;
        let ws = &w[r0 * k..(r0 + rows).min(n) * k];
        // SAFETY: this task alone writes rows r0..r0+rows of every image, inside `out`.
        let put = |r: usize, img: usize, v: f32| unsafe {
            *dst.at(img * n + r0 + r) = v + bias[r0 + r];
        };
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe { gemv_rows_avx512(x, ws, b, k, put) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { gemv_rows_avx2(x, ws, b, k, put) };
            return;
        }
        gemv_rows(x, ws, b, k, put);
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_rows_avx512(
    x: &[f32],
    w: &[f32],
    b: usize,
    k: usize,
    put: impl Fn(usize, usize, f32),
) {
    gemv_rows(x, w, b, k, put)
}

/// [`gemv_rows`] for AVX2 CPUs (at batch 8, AlexNet's fc6 ran at 32 GFLOP/s on SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_rows_avx2(
    x: &[f32],
    w: &[f32],
    b: usize,
    k: usize,
    put: impl Fn(usize, usize, f32),
) {
    gemv_rows(x, w, b, k, put)
}

/// `put(r, img, w[r] . x[img])` for the rows of `w`: four rows by up to four images at a
/// time, or up to eight ([`dots_8`]).
#[inline(always)]
fn gemv_rows(x: &[f32], w: &[f32], b: usize, k: usize, put: impl Fn(usize, usize, f32)) {
    let n = w.len() / k;
    let mut r = 0;
    while r < n {
        let rr = (n - r).min(4);
        let mut i = 0;
        while i < b {
            let ii = (b - i).min(if rr == 4 && b - i > 4 { 8 } else { 4 });
            let xs = &x[i * k..(i + ii) * k];
            let ws = &w[r * k..(r + rr) * k];
            let mut res = [[0f32; 8]; 4];
            match (rr, ii) {
                (4, 8) => dots_8::<4>(ws, xs, k, &mut res),
                (4, 7) => dots_8::<3>(ws, xs, k, &mut res),
                (4, 6) => dots_8::<2>(ws, xs, k, &mut res),
                (4, 5) => dots_8::<1>(ws, xs, k, &mut res),
                (4, 4) => dots::<4, 4>(ws, xs, k, &mut res),
                (4, 3) => dots::<4, 3>(ws, xs, k, &mut res),
                (4, 2) => dots::<4, 2>(ws, xs, k, &mut res),
                (4, 1) => dots::<4, 1>(ws, xs, k, &mut res),
                (_, 4) => dots::<1, 4>(ws, xs, k, &mut res),
                (_, 3) => dots::<1, 3>(ws, xs, k, &mut res),
                (_, 2) => dots::<1, 2>(ws, xs, k, &mut res),
                _ => dots::<1, 1>(ws, xs, k, &mut res),
            }
            // Rows past the first when fewer than four: one at a time.
            let done = if rr == 4 { 4 } else { 1 };
            for (dr, row) in res.iter().enumerate().take(done) {
                for (di, &v) in row.iter().enumerate().take(ii) {
                    put(r + dr, i + di, v);
                }
            }
            if rr != 4 {
                for extra in 1..rr {
                    for di in 0..ii {
                        let wr = &w[(r + extra) * k..(r + extra + 1) * k];
                        put(r + extra, i + di, dot(wr, &xs[di * k..(di + 1) * k]));
                    }
                }
            }
            i += ii;
        }
        r += rr;
    }
}

/// Floats (2 KiB) ahead of the weights it reads that [`dots`] prefetches each row's, on
/// x86: with the hardware prefetcher alone the rows streamed slower than memory serves them
/// (Zen 5, 2 threads, runs alternating with and without in one process: AlexNet 2-3% faster
/// at batch 1, 4.6% at batch 8; 4 KiB ahead was 2% slower, 512 bytes no better).
#[cfg(target_arch = "x86_64")]
const GEMV_AHEAD: usize = 512;

/// `res[r][i] = w[r] . x[i]` for `R` rows by `B` images, in independent 16-wide lanes
/// (so it vectorises without fast-math): each weight vector loaded once for `B` images.
/// Each sum runs in the same order whatever `R` and `B`, so answers do not depend on the
/// batch.
#[inline(always)]
fn dots<const R: usize, const B: usize>(w: &[f32], x: &[f32], k: usize, res: &mut [[f32; 8]]) {
    assert!(w.len() >= R * k && x.len() >= B * k && res.len() >= R);
    let body = k - k % 16;
    let acc = dots_run::<R, B, true>(w, x, k, 0..body, [[[0f32; 16]; B]; R]);
    dots_finish(w, x, k, &acc, res, 0);
}

/// Columns (1 KiB of each row) per chunk in [`dots_8`].
const DOTS_CHUNK: usize = 256;

/// [`dots`] for 4 rows by `4 + B2` images: along the rows in chunks, each chunk's four
/// images then the other `B2`, so that each weight comes from memory once and the second
/// time from L1, and the rows stream from memory without a pause (a whole second pass read
/// them again from L2, no memory stream meanwhile: AlexNet's fc6 at batch 8 took 1.34x its
/// batch-1 time, ONNX Runtime's 1.06x). The sums run in the same order as in [`dots`].
#[inline(always)]
fn dots_8<const B2: usize>(w: &[f32], x: &[f32], k: usize, res: &mut [[f32; 8]]) {
    assert!(w.len() >= 4 * k && x.len() >= (4 + B2) * k && res.len() >= 4);
    let body = k - k % 16;
    let x2 = &x[4 * k..];
    let mut a1 = [[[0f32; 16]; 4]; 4];
    let mut a2 = [[[0f32; 16]; B2]; 4];
    for c0 in (0..body).step_by(DOTS_CHUNK) {
        let cols = c0..(c0 + DOTS_CHUNK).min(body);
        a1 = dots_run::<4, 4, true>(w, x, k, cols.clone(), a1);
        a2 = dots_run::<4, B2, false>(w, x2, k, cols, a2);
    }
    dots_finish(w, x, k, &a1, res, 0);
    dots_finish(w, x2, k, &a2, res, 4);
}

/// The 16-lane sums of `acc` carried on over columns `cols` (multiples of 16), prefetching
/// the rows ahead where `PREFETCH`.
#[inline(always)]
fn dots_run<const R: usize, const B: usize, const PREFETCH: bool>(
    w: &[f32],
    x: &[f32],
    k: usize,
    cols: std::ops::Range<usize>,
    mut acc: [[[f32; 16]; B]; R],
) -> [[[f32; 16]; B]; R] {
    assert!(w.len() >= R * k && x.len() >= B * k && cols.end <= k);
    for o in cols.step_by(16) {
        #[cfg(target_arch = "x86_64")]
        for r in 0..R {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let ahead = w.as_ptr().wrapping_add(r * k + o + GEMV_AHEAD);
            // SAFETY: a prefetch never faults, wherever it points.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8) };
        }
        for (r, ar) in acc.iter_mut().enumerate() {
            // SAFETY: o + 16 <= k, and w holds R rows of k (asserted above).
            let wr = unsafe { &*(w.as_ptr().add(r * k + o) as *const [f32; 16]) };
            for (i, a) in ar.iter_mut().enumerate() {
                // SAFETY: as above, x holds B rows of k.
                let xi = unsafe { &*(x.as_ptr().add(i * k + o) as *const [f32; 16]) };
                for l in 0..16 {
                    a[l] += wr[l] * xi[l];
                }
            }
        }
    }
    acc
}

/// `res[r][i0 + i]`: the lanes of `acc[r][i]` summed, plus the columns past the last 16.
#[inline(always)]
fn dots_finish<const R: usize, const B: usize>(
    w: &[f32],
    x: &[f32],
    k: usize,
    acc: &[[[f32; 16]; B]; R],
    res: &mut [[f32; 8]],
    i0: usize,
) {
    let body = k - k % 16;
    for r in 0..R {
        for i in 0..B {
            let tail: f32 = (body..k).map(|j| w[r * k + j] * x[i * k + j]).sum();
            res[r][i0 + i] = acc[r][i].iter().sum::<f32>() + tail;
        }
    }
}

/// A dot product in independent 16-wide lanes, so it vectorises without fast-math.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_matches_naive_products_for_every_tail() {
        // Tails of the 16-wide lanes and of the 4-row blocks, in one chunk of columns and
        // over several (`dots_8`), at every batch up to two blocks of eight images.
        for k in [37, 2 * DOTS_CHUNK + 21] {
            let n = 11;
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
            let image = |img: usize| -> Vec<f32> {
                (0..k)
                    .map(|j| (((img * k + j) * 104729) % 89) as f32 / 89.0)
                    .collect()
            };
            for b in (1..=9).chain([17]) {
                let x: Vec<f32> = (0..b).flat_map(image).collect();
                let mut out = vec![f32::NAN; b * n];
                gemv(&x, &w, &bias, b, k, n, &mut out);
                for img in 0..b {
                    // Each image's answers, bit for bit, whatever the batch.
                    let mut alone = vec![f32::NAN; n];
                    gemv(&image(img), &w, &bias, 1, k, n, &mut alone);
                    assert_eq!(
                        &out[img * n..(img + 1) * n],
                        &alone[..],
                        "k {k} b {b} img {img}"
                    );
                    for r in 0..n {
                        let want: f64 = (0..k)
                            .map(|j| x[img * k + j] as f64 * w[r * k + j] as f64)
                            .sum::<f64>()
                            + bias[r] as f64;
                        let got = out[img * n + r] as f64;
                        assert!(
                            (got - want).abs() < 1e-3 * want.abs().max(1.0),
                            "k {k} b {b} img {img} row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
