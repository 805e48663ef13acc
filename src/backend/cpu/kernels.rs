//! CPU kernels over NCHW f32 slices. Each writes a fresh output and applies the
//! step's epilogue (residual add, then ReLU) where the kernel allows it.

use crate::graph::shape::adaptive_range;
use crate::graph::{Conv2d, Lrn, Pool2d};
use crate::lower::{Kernel, Step, StepParams};
use crate::tensor::numel;

#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
use rayon::prelude::*;

/// Floats a parallel task should touch at least: below this, waking a thread and splitting
/// costs more than the work (ResNet-50's 7x7 maps have 2048 planes of 49 floats).
#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
const GRAIN: usize = 16 * 1024;

/// `f(i, chunk)` over `out` split into `len`-sized chunks, in parallel where threads exist;
/// chunks are grouped so that each task touches about [`GRAIN`] floats or more.
pub(super) fn par_chunks(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    par_chunks_work(out, len, len, f)
}

/// [`par_chunks`] where each chunk touches `work` floats (its input, for a reduction).
pub(super) fn par_chunks_work(
    out: &mut [f32],
    len: usize,
    work: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let len = len.max(1);
    #[cfg(not(target_arch = "wasm32"))]
    {
        // The run's crew takes runs of chunks, a few per thread, each touching `GRAIN`
        // floats or more.
        let chunks = out.len().div_ceil(len);
        let min = GRAIN.div_ceil(work.max(1));
        let units = chunks.div_ceil(min).min(threads() * 8).max(1);
        let (total, dst) = (out.len(), OutPtr(out.as_mut_ptr()));
        let unit = |u: usize| {
            for i in u * chunks / units..(u + 1) * chunks / units {
                let at = i * len;
                // SAFETY: chunk i is `out[at..at + len]` (the last may be short): the units
                // cover disjoint runs of chunks.
                let c = unsafe { std::slice::from_raw_parts_mut(dst.at(at), len.min(total - at)) };
                f(i, c);
            }
        };
        if super::crew::par(units, unit).is_ok() {
            return;
        }
    }
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    out.par_chunks_mut(len)
        .enumerate()
        .with_min_len(GRAIN.div_ceil(work.max(1)))
        .for_each(|(i, c)| f(i, c));
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        let _ = work;
        out.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `f(i)` for `i` in `0..count`, in parallel where threads exist.
pub(super) fn par_for(count: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    let Err(f) = super::crew::par(count, f) else {
        return;
    };
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    (0..count).into_par_iter().for_each(f);
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    (0..count).for_each(f);
}

/// [`par_chunks`] with this thread's scratch buffer of `scratch` floats ([`with_scratch`]).
fn par_chunks_scratch(
    out: &mut [f32],
    len: usize,
    work: usize,
    scratch: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    par_chunks_work(out, len, work, |i, c| with_scratch(scratch, |s| f(i, c, s)));
}

/// `f` with this thread's scratch buffer of `len` floats: kept from call to call, so no
/// allocation once it is large enough; it holds whatever an earlier use left.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            if s.len() < len {
                s.resize(len, 0.0);
            }
            f(&mut s[..len])
        }
        // In use further up this thread's stack (a nested parallel call): a buffer of its own.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

fn parallelism() -> gemm::Parallelism {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        gemm::Parallelism::None
    }
}

/// Batches up to this size take the streaming kernel for linear layers (measured: at
/// batch 8 the GEMM repacks all of VGG's or AlexNet's 400 MB of weights per call).
const GEMV_MAX_BATCH: usize = 32;

/// `out[b, n] = x[b, k] . w[n, k] + bias[n]` for a few images: memory bound (VGG's fc6
/// is 411 MB), so each weight row is read once, by one thread, for every image, four rows
/// by up to four images at a time.
fn gemv(x: &[f32], w: &[f32], bias: &[f32], b: usize, k: usize, n: usize, out: &mut [f32]) {
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

pub(super) fn dims4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

pub fn run_step(
    step: &Step,
    p: &StepParams,
    weight: &[f32],
    ins: &[(&[f32], &[usize])],
    residual: Option<&[f32]>,
    out_shape: &[usize],
    out: &mut [f32],
) {
    let (x, xs) = ins[0];
    debug_assert_eq!(out.len(), numel(out_shape));
    match &step.kernel {
        Kernel::Conv { cfg, .. } => {
            // The conv applies its whole epilogue per tile.
            let o = dims4(out_shape);
            conv2d(x, dims4(xs), cfg, p, weight, o, residual, step.relu, out);
            return;
        }
        Kernel::Linear { cfg, .. } => {
            let (b, k, n) = (xs[0], cfg.in_features, cfg.out_features);
            if b <= GEMV_MAX_BATCH {
                gemv(x, weight, &p.bias, b, k, n, out);
            } else {
                // out[b, n] = x[b, k] * W^T: W^T is W read with swapped strides.
                // SAFETY: x is b x k, W is n x k and out is b x n, all row-major and whole.
                unsafe {
                    gemm::gemm(
                        b,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        weight.as_ptr(),
                        k as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        parallelism(),
                    )
                }
                for row in out.chunks_mut(n) {
                    row.iter_mut().zip(&p.bias).for_each(|(o, b)| *o += b);
                }
            }
        }
        Kernel::MaxPool(pool) => pool2d(x, dims4(xs), pool, dims4(out_shape), out, true),
        Kernel::AvgPool(pool) => pool2d(x, dims4(xs), pool, dims4(out_shape), out, false),
        Kernel::AdaptiveAvgPool { output } => {
            let [_, _, h, w] = dims4(xs);
            let [oh, ow] = *output;
            // A window per pixel (VGG's 7x7 maps, AlexNet's 6x6): the input itself. As a
            // parallel pass it took 40-50 us (these maps are 37-100 KB), mostly its hand-out.
            if [oh, ow] == [h, w] {
                out.copy_from_slice(&x[..out.len()]);
            } else {
                par_chunks_work(out, oh * ow, h * w, |nc, o| {
                    let plane = &x[nc * h * w..(nc + 1) * h * w];
                    for i in 0..oh {
                        let (h0, h1) = adaptive_range(i, h, oh);
                        for j in 0..ow {
                            let (w0, w1) = adaptive_range(j, w, ow);
                            let mut s = 0f32;
                            for y in h0..h1 {
                                s += plane[y * w + w0..y * w + w1].iter().sum::<f32>();
                            }
                            o[i * ow + j] = s / ((h1 - h0) * (w1 - w0)) as f32;
                        }
                    }
                });
            }
        }
        Kernel::Lrn(l) => lrn(x, dims4(xs), l, out),
        Kernel::BatchNorm { .. } => {
            let [_, c, h, w] = dims4(xs);
            par_chunks(out, h * w, |nc, o| {
                let (s, t) = (p.scale[nc % c], p.bias[nc % c]);
                o.iter_mut()
                    .zip(&x[nc * h * w..])
                    .for_each(|(o, &v)| *o = v * s + t);
            });
        }
        Kernel::GroupNorm { cfg, .. } => {
            let [_, c, h, w] = dims4(xs);
            let cg = c / cfg.groups;
            let len = cg * h * w;
            par_chunks(out, len, |ng, o| {
                let xs = &x[ng * len..(ng + 1) * len];
                let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
                let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
                let rstd = 1.0 / (var + cfg.eps as f64).sqrt();
                let g = ng % cfg.groups;
                for (i, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
                    let ch = g * cg + i / (h * w);
                    *o = ((v as f64 - mean) * rstd) as f32 * p.scale[ch] + p.bias[ch];
                }
            });
        }
        Kernel::Add => {
            let y = ins[1].0;
            out.iter_mut()
                .zip(x.iter().zip(y))
                .for_each(|(o, (a, b))| *o = a + b);
        }
        Kernel::Relu => out.copy_from_slice(x),
        Kernel::Softmax { dim } => {
            let c = xs[*dim];
            let inner: usize = xs[dim + 1..].iter().product();
            par_chunks(out, c * inner, |n, o| {
                let xs = &x[n * c * inner..(n + 1) * c * inner];
                for i in 0..inner {
                    let m = (0..c)
                        .map(|k| xs[k * inner + i])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for k in 0..c {
                        let e = (xs[k * inner + i] - m).exp();
                        o[k * inner + i] = e;
                        sum += e;
                    }
                    for k in 0..c {
                        o[k * inner + i] /= sum;
                    }
                }
            });
        }
    }
    epilogue(out, residual, step.relu || step.kernel == Kernel::Relu);
}

/// ReLU as PyTorch has it: NaN stays NaN (`f32::max(NaN, 0)` would give 0).
#[inline(always)]
fn relu_in_place(v: &mut f32) {
    if *v < 0.0 {
        *v = 0.0;
    }
}

fn epilogue(out: &mut [f32], residual: Option<&[f32]>, relu: bool) {
    if let Some(r) = residual {
        out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
    }
    if relu {
        out.iter_mut().for_each(relu_in_place);
    }
}

/// Target size of one im2col tile, in f32 elements: it stays in a core's L2 cache while
/// the GEMM reads it.
const COL_TILE: usize = 96 * 1024;

/// The output pointer shared by tiles that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every tile writes only its own rows x columns of the output (see `conv2d`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the whole (Send + Sync) wrapper, not the raw field.
    pub(super) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

pub(super) fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        1
    }
}

/// Run `f(task, scratch)` for every task, in parallel where threads exist, with the
/// thread's scratch buffer of `scratch` floats ([`with_scratch`]).
pub(super) fn par_tasks<T: Sync>(
    tasks: &[T],
    scratch: usize,
    f: impl Fn(&T, &mut [f32]) + Sync + Send,
) {
    let run = |t: &T| with_scratch(scratch, |buf| f(t, buf));
    #[cfg(not(target_arch = "wasm32"))]
    let Err(run) = super::crew::par(tasks.len(), |i| run(&tasks[i])).map_err(|_| run) else {
        return;
    };
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    tasks.par_iter().for_each(run);
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    tasks.iter().for_each(run);
}

/// Convolution as tiles of implicit GEMM: each tile is (image, group, run of output pixels,
/// run of output channels); it gathers its im2col columns into a cache-sized scratch
/// buffer (1x1 stride-1 convolutions read the input directly), multiplies on one thread,
/// and applies the whole epilogue (scale, shift, residual, ReLU) while the tile is hot.
#[allow(clippy::too_many_arguments)]
fn conv2d(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    cfg: &Conv2d,
    p: &StepParams,
    weight: &[f32],
    [_, oc, oh, ow]: [usize; 4],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let g = cfg.groups;
    let (icg, ocg) = (c / g, oc / g);
    let [kh, kw] = cfg.kernel;
    let kdim = icg * kh * kw;
    let pix = oh * ow;
    let direct = kh == 1 && kw == 1 && cfg.stride == [1, 1] && cfg.padding == [0, 0];
    // Shifted GEMMs beat im2col on large maps; on small ones (14x14 and below) the padded
    // columns and the kh*kw short GEMMs cost more than the gather saves (measured).
    if !direct && cfg.stride == [1, 1] && cfg.dilation == [1, 1] && pix >= SHIFT_MIN_PIXELS {
        let dims = ([n, c, h, w], [oc, oh, ow]);
        return conv2d_shifted(x, dims, cfg, p, weight, residual, relu, out);
    }
    // Pixel runs sized for the cache.
    let Tiling { nb, mb, tasks } = tiling(n, g, pix, ocg, COL_TILE / kdim);
    let dst = OutPtr(out.as_mut_ptr());
    let scratch = if direct { 0 } else { kdim * nb };
    par_tasks(&tasks, scratch, |&(b, gi, p0, m0), col| {
        let len = nb.min(pix - p0);
        let rows = mb.min(ocg - m0);
        let xg = &x[(b * c + gi * icg) * h * w..(b * c + (gi + 1) * icg) * h * w];
        let (bmat, ldb) = if direct {
            (&xg[p0..], pix)
        } else {
            im2col(xg, [icg, h, w], cfg, ow, p0, len, &mut col[..kdim * len]);
            (&col[..kdim * len], len)
        };
        let wg = &weight[(gi * ocg + m0) * kdim..(gi * ocg + m0 + rows) * kdim];
        let first_oc = gi * ocg + m0;
        let base = (b * oc + first_oc) * pix + p0;
        // SAFETY: this tile owns output rows first_oc..first_oc+rows of image b, columns
        // p0..p0+len; no other tile touches them, and all lie inside `out`.
        let tile =
            |r: usize| unsafe { std::slice::from_raw_parts_mut(dst.at(base + r * pix), len) };
        debug_assert!(base + (rows - 1) * pix + len <= n * oc * pix);
        // SAFETY: a is rows x kdim (row-major), b is kdim x len with row stride ldb, and c is
        // rows x len with row stride pix inside this tile's part of `out`.
        unsafe {
            gemm::gemm(
                rows,
                len,
                kdim,
                dst.at(base),
                1,
                pix as isize,
                false,
                wg.as_ptr(),
                1,
                kdim as isize,
                bmat.as_ptr(),
                1,
                ldb as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
        for r in 0..rows {
            let o = first_oc + r;
            let (scale, shift) = (p.scale[o], p.bias[o]);
            let row = tile(r);
            row.iter_mut().for_each(|v| *v = *v * scale + shift);
            if let Some(res) = residual {
                let off = (b * oc + o) * pix + p0;
                row.iter_mut()
                    .zip(&res[off..off + len])
                    .for_each(|(v, r)| *v += r);
            }
            if relu {
                row.iter_mut().for_each(relu_in_place);
            }
        }
    });
}

/// A convolution's output cut into tiles of `nb` output positions by `mb` output channels:
/// `(image, group, first position, first channel)` each.
struct Tiling {
    nb: usize,
    mb: usize,
    tasks: Vec<(usize, usize, usize, usize)>,
}

/// Tiles over `span` output positions of each image and group: runs of about `want`
/// positions, shortened until every thread has work, and where even that leaves too few
/// (7x7 maps) the output channels split too, in multiples of 16 rows (the GEMM's AVX-512
/// microkernel height).
fn tiling(images: usize, groups: usize, span: usize, ocg: usize, want: usize) -> Tiling {
    let threads = threads();
    let per_image = (images * groups).max(1);
    let mut nb = want.clamp(16, span.max(16));
    if per_image * span.div_ceil(nb) < 2 * threads {
        nb = nb.min(span.div_ceil((2 * threads).div_ceil(per_image)).max(16));
    }
    let nb = nb.min(span).max(1);
    let runs = per_image * span.div_ceil(nb);
    let m_split = if runs < 2 * threads {
        (2 * threads).div_ceil(runs).min(ocg.div_ceil(16)).max(1)
    } else {
        1
    };
    let mb = ocg.div_ceil(m_split).next_multiple_of(16).min(ocg).max(1);
    let mut tasks = vec![];
    for b in 0..images {
        for gi in 0..groups {
            for p0 in (0..span).step_by(nb) {
                for m0 in (0..ocg).step_by(mb) {
                    tasks.push((b, gi, p0, m0));
                }
            }
        }
    }
    Tiling { nb, mb, tasks }
}

/// The conv epilogue on one output row segment: scale and shift (bias, folded BatchNorm),
/// then the residual, then ReLU.
fn conv_epilogue(row: &mut [f32], scale: f32, shift: f32, residual: Option<&[f32]>, relu: bool) {
    row.iter_mut().for_each(|v| *v = *v * scale + shift);
    if let Some(res) = residual {
        row.iter_mut().zip(res).for_each(|(v, r)| *v += r);
    }
    if relu {
        row.iter_mut().for_each(relu_in_place);
    }
}

/// The smallest output map (pixels) that takes the shifted convolution: 28x28.
const SHIFT_MIN_PIXELS: usize = 28 * 28;

/// Output pixels per tile of the shifted convolution (in padded-row coordinates).
const SHIFT_TILE: usize = 512;

/// A stride-1 convolution without im2col: the input is copied once into zero-padded
/// planes, and each kernel offset `(ky, kx)` is one GEMM of the weights' `[oc, ic]` slice
/// with the padded planes read at that offset, accumulated into the tile. Outputs are
/// computed over whole padded rows (`wp` wide, the last `kw - 1` columns discarded), which
/// makes every shifted operand a plain strided matrix.
#[allow(clippy::too_many_arguments)]
fn conv2d_shifted(
    x: &[f32],
    ([n, c, h, w], [oc, oh, ow]): ([usize; 4], [usize; 3]),
    cfg: &Conv2d,
    p: &StepParams,
    weight: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let g = cfg.groups;
    let (icg, ocg) = (c / g, oc / g);
    let [kh, kw] = cfg.kernel;
    let [ph, pw] = cfg.padding;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let plane = hp * wp;
    let kdim = icg * kh * kw;
    let pix = oh * ow;
    // Zero-padded copy of the input, plus slack: the discarded columns of the last row
    // read up to kw - 1 floats past the last plane.
    let mut xp = vec![0f32; n * c * plane + kw];
    par_chunks(&mut xp[..n * c * plane], plane, |nc, dst| {
        for y in 0..h {
            let src = &x[(nc * h + y) * w..(nc * h + y + 1) * w];
            dst[(y + ph) * wp + pw..(y + ph) * wp + pw + w].copy_from_slice(src);
        }
    });
    let span = oh * wp; // output positions in padded-row coordinates
    let Tiling { nb, mb, tasks } = tiling(n, g, span, ocg, SHIFT_TILE);
    let dst = OutPtr(out.as_mut_ptr());
    let xp = &xp;
    par_tasks(&tasks, mb * nb, |&(b, gi, p0, m0), acc| {
        let len = nb.min(span - p0);
        let rows = mb.min(ocg - m0);
        let acc = &mut acc[..rows * len];
        let xg = (b * c + gi * icg) * plane;
        let wg = (gi * ocg + m0) * kdim;
        for ky in 0..kh {
            for kx in 0..kw {
                let off = xg + p0 + ky * wp + kx;
                let first = ky == 0 && kx == 0;
                // SAFETY: a is rows x icg with row stride kdim and column stride kh*kw inside
                // the weights; b is icg x len with row stride `plane` inside `xp` (its
                // slack covers the overrun of discarded columns); c is the rows x len
                // scratch tile.
                unsafe {
                    gemm::gemm(
                        rows,
                        len,
                        icg,
                        acc.as_mut_ptr(),
                        1,
                        len as isize,
                        !first,
                        weight.as_ptr().add(wg + ky * kw + kx),
                        (kh * kw) as isize,
                        kdim as isize,
                        xp.as_ptr().add(off),
                        1,
                        plane as isize,
                        if first { 0.0 } else { 1.0 },
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
        }
        // Valid columns of each padded row go to the output, through the epilogue.
        for r in 0..rows {
            let o = gi * ocg + m0 + r;
            let src = &mut acc[r * len..(r + 1) * len];
            let mut q = p0;
            while q < p0 + len {
                let (oy, ox) = (q / wp, q % wp);
                let end = (q - ox + wp).min(p0 + len);
                if ox < ow {
                    let seg_end = (q - ox + ow).min(end);
                    let n_out = seg_end - q;
                    let at = (b * oc + o) * pix + oy * ow + ox;
                    let seg = &mut src[q - p0..q - p0 + n_out];
                    conv_epilogue(
                        seg,
                        p.scale[o],
                        p.bias[o],
                        residual.map(|r| &r[at..at + n_out]),
                        relu,
                    );
                    // SAFETY: output row o of image b, pixels at..at+n_out, belong to this
                    // tile alone (its padded positions p0..p0+len map to them).
                    unsafe { std::ptr::copy_nonoverlapping(seg.as_ptr(), dst.at(at), n_out) };
                }
                q = end;
            }
        }
    });
}

/// Columns `p0..p0+nb` of the im2col matrix `[icg*kh*kw, oh*ow]` into `col` (`nb` wide).
fn im2col(
    x: &[f32],
    [_, h, w]: [usize; 3],
    cfg: &Conv2d,
    ow: usize,
    p0: usize,
    nb: usize,
    col: &mut [f32],
) {
    let [kh, kw] = cfg.kernel;
    let ([sh, sw], [ph, pw], [dh, dw]) = (cfg.stride, cfg.padding, cfg.dilation);
    for (row, dst) in col.chunks_exact_mut(nb).enumerate() {
        let (ci, r) = (row / (kh * kw), row % (kh * kw));
        let (ky, kx) = (r / kw, r % kw);
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        // Walk the block one output row at a time: no division per element.
        let (mut oy, mut ox) = (p0 / ow, p0 % ow);
        let mut j = 0;
        while j < nb {
            let run = (ow - ox).min(nb - j);
            let d = &mut dst[j..j + run];
            let iy = (oy * sh + ky * dh) as isize - ph as isize;
            if iy < 0 || iy as usize >= h {
                d.fill(0.0);
            } else {
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                let x0 = (kx * dw) as isize - pw as isize;
                if sw == 1 {
                    // A contiguous run of the input row, zero outside it.
                    for (k, v) in d.iter_mut().enumerate() {
                        let ix = x0 + (ox + k) as isize;
                        *v = if ix >= 0 && (ix as usize) < w {
                            src[ix as usize]
                        } else {
                            0.0
                        };
                    }
                } else {
                    for (k, v) in d.iter_mut().enumerate() {
                        let ix = x0 + ((ox + k) * sw) as isize;
                        *v = if ix >= 0 && (ix as usize) < w {
                            src[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
            j += run;
            ox = 0;
            oy += 1;
        }
    }
}

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

fn pool2d(x: &[f32], xs: [usize; 4], pool: &Pool2d, os: [usize; 4], out: &mut [f32], max: bool) {
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
    const L: usize = super::direct::BLOCKED_LANES;
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

fn lrn(x: &[f32], [_, c, h, w]: [usize; 4], l: &Lrn, out: &mut [f32]) {
    let hw = h * w;
    let (before, after) = (l.size / 2, (l.size - 1) / 2);
    par_chunks(out, c * hw, |n, o| {
        let xs = &x[n * c * hw..(n + 1) * c * hw];
        for ch in 0..c {
            let lo = ch.saturating_sub(before);
            let hi = (ch + after).min(c - 1);
            for i in 0..hw {
                let mut s = 0f32;
                for k in lo..=hi {
                    let v = xs[k * hw + i];
                    s += v * v;
                }
                let div = (l.k + l.alpha / l.size as f32 * s).powf(l.beta);
                o[ch * hw + i] = xs[ch * hw + i] / div;
            }
        }
    });
}

/// Global average pooling of `x` in the blocked layout (`[n][c / 8][hw][8]`), `[n, c, hw]`,
/// into `out` (`[n, c]`, which is also `[n, c, 1, 1]` in planes).
pub fn global_avg_pool_blocked(x: &[f32], [n, c, hw]: [usize; 3], out: &mut [f32]) {
    const L: usize = super::direct::BLOCKED_LANES;
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
    const L: usize = super::direct::BLOCKED_LANES;
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
        use super::super::direct::{from_blocked, to_blocked};
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
