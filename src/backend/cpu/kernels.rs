//! CPU kernels over NCHW f32 slices. Each writes a fresh output and applies the
//! step's epilogue (residual add, then ReLU) where the kernel allows it.

use super::linear::{gemv, GEMV_MAX_BATCH};
use super::pool::pool2d;
use crate::graph::shape::adaptive_range;
use crate::graph::{Conv2d, Lrn};
use crate::lower::{Kernel, Step, StepParams};
use crate::tensor::numel;
use gemm_common::Parallelism;

use super::par::{par_chunks, par_chunks_work, par_tasks, parallelism, threads, OutPtr};

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
                    sgemm(
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
            sgemm(
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
                Parallelism::None,
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
                    sgemm(
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
                        Parallelism::None,
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

/// `dst = alpha * dst + beta * lhs · rhs` in f32, strides in elements (`read_dst` false:
/// `dst` is only written): the `gemm` crate's f32 kernel with its front's orientation rule
/// (the kernel wants a column-major destination, so a row-major product is computed
/// transposed), without the f64 and complex kernels that front also compiles.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    beta: f32,
    parallelism: Parallelism,
) {
    // Every caller walks its matrices forwards (the front would also flip negative strides).
    debug_assert!(
        dst_cs > 0 && dst_rs > 0 && lhs_cs >= 0 && lhs_rs >= 0 && rhs_cs >= 0 && rhs_rs >= 0
    );
    let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) = if dst_cs < dst_rs {
        (
            n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs,
        )
    } else {
        (
            m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs,
        )
    };
    // SAFETY: the caller's contract (each matrix whole at its strides) is the kernel's.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}
