//! CPU kernels over NCHW f32 slices. Each writes a fresh output and applies the
//! step's epilogue (residual add, then ReLU) where the kernel allows it.

use crate::graph::shape::adaptive_range;
use crate::graph::{Conv2d, Lrn, Pool2d};
use crate::lower::{Kernel, Step, StepParams};
use crate::tensor::numel;

#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

/// `f(i, chunk)` over `out` split into `len`-sized chunks, in parallel where threads exist.
fn par_chunks(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    out.par_chunks_mut(len.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
    #[cfg(target_arch = "wasm32")]
    out.chunks_mut(len.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}

fn parallelism() -> gemm::Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
    #[cfg(target_arch = "wasm32")]
    {
        gemm::Parallelism::None
    }
}

/// `c[m x n] (row stride ldc) = a[m x k] (row-major) * b[k x n] (row stride ldb)`.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        a.len() >= (m - 1) * lda + k
            && b.len() >= (k - 1) * ldb + n
            && c.len() >= (m - 1) * ldc + n
    );
    // SAFETY: the bounds above cover every element the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            false,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

fn dims4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

pub fn run_step(
    step: &Step,
    p: &StepParams,
    weight: &[f32],
    ins: &[(&[f32], &[usize])],
    residual: Option<&[f32]>,
    out_shape: &[usize],
) -> Vec<f32> {
    let (x, xs) = ins[0];
    let mut out = vec![0f32; numel(out_shape)];
    match &step.kernel {
        Kernel::Conv { cfg, .. } => {
            conv2d(x, dims4(xs), cfg, p, weight, dims4(out_shape), &mut out)
        }
        Kernel::Linear { cfg, .. } => {
            let (b, k, n) = (xs[0], cfg.in_features, cfg.out_features);
            // out[b, n] = x[b, k] * W^T: W^T is W read with swapped strides.
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
        Kernel::MaxPool(pool) => pool2d(x, dims4(xs), pool, dims4(out_shape), &mut out, true),
        Kernel::AvgPool(pool) => pool2d(x, dims4(xs), pool, dims4(out_shape), &mut out, false),
        Kernel::AdaptiveAvgPool { output } => {
            let [_, _, h, w] = dims4(xs);
            let [oh, ow] = *output;
            par_chunks(&mut out, oh * ow, |nc, o| {
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
        Kernel::Lrn(l) => lrn(x, dims4(xs), l, &mut out),
        Kernel::BatchNorm { .. } => {
            let [_, c, h, w] = dims4(xs);
            par_chunks(&mut out, h * w, |nc, o| {
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
            par_chunks(&mut out, len, |ng, o| {
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
            par_chunks(&mut out, c * inner, |n, o| {
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
    epilogue(&mut out, residual, step.relu || step.kernel == Kernel::Relu);
    out
}

fn epilogue(out: &mut [f32], residual: Option<&[f32]>, relu: bool) {
    if let Some(r) = residual {
        out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
    }
    if relu {
        out.iter_mut().for_each(|o| *o = o.max(0.0));
    }
}

/// Largest im2col block, in f32 elements, to keep the column matrix in cache-sized pieces.
const COL_BLOCK: usize = 1 << 21;

fn conv2d(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    cfg: &Conv2d,
    p: &StepParams,
    weight: &[f32],
    [_, oc, oh, ow]: [usize; 4],
    out: &mut [f32],
) {
    let g = cfg.groups;
    let (icg, ocg) = (c / g, oc / g);
    let [kh, kw] = cfg.kernel;
    let kdim = icg * kh * kw;
    let pix = oh * ow;
    let direct = kh == 1 && kw == 1 && cfg.stride == [1, 1] && cfg.padding == [0, 0];
    let block = (COL_BLOCK / kdim).clamp(64, pix.max(64)).min(pix);
    let mut col = if direct {
        vec![]
    } else {
        vec![0f32; kdim * block]
    };
    for b in 0..n {
        for gi in 0..g {
            let xg = &x[(b * c + gi * icg) * h * w..(b * c + (gi + 1) * icg) * h * w];
            let wg = &weight[gi * ocg * kdim..(gi + 1) * ocg * kdim];
            let og = &mut out[(b * oc + gi * ocg) * pix..(b * oc + (gi + 1) * ocg) * pix];
            if direct {
                sgemm(ocg, pix, kdim, wg, kdim, xg, pix, og, pix);
                continue;
            }
            for p0 in (0..pix).step_by(block) {
                let nb = block.min(pix - p0);
                im2col(xg, [icg, h, w], cfg, ow, p0, nb, &mut col[..kdim * nb]);
                sgemm(ocg, nb, kdim, wg, kdim, &col, nb, &mut og[p0..], pix);
            }
        }
    }
    par_chunks(out, pix, |i, o| {
        let (scale, bias) = (p.scale[i % oc], p.bias[i % oc]);
        o.iter_mut().for_each(|v| *v = *v * scale + bias);
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
    par_chunks(col, nb, |row, dst| {
        let (ci, r) = (row / (kh * kw), row % (kh * kw));
        let (ky, kx) = (r / kw, r % kw);
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for (j, d) in dst.iter_mut().enumerate() {
            let pidx = p0 + j;
            let (oy, ox) = (pidx / ow, pidx % ow);
            let iy = (oy * sh + ky * dh) as isize - ph as isize;
            let ix = (ox * sw + kx * dw) as isize - pw as isize;
            *d = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                plane[iy as usize * w + ix as usize]
            } else {
                0.0
            };
        }
    });
}

fn pool2d(
    x: &[f32],
    [_, _, h, w]: [usize; 4],
    pool: &Pool2d,
    [_, _, oh, ow]: [usize; 4],
    out: &mut [f32],
    max: bool,
) {
    let ([kh, kw], [sh, sw], [ph, pw]) = (pool.kernel, pool.stride, pool.padding);
    par_chunks(out, oh * ow, |nc, o| {
        let plane = &x[nc * h * w..(nc + 1) * h * w];
        for i in 0..oh {
            for j in 0..ow {
                // Window in padded coordinates, as PyTorch computes it.
                let hs = (i * sh) as isize - ph as isize;
                let ws = (j * sw) as isize - pw as isize;
                let he = (hs + kh as isize).min((h + ph) as isize);
                let we = (ws + kw as isize).min((w + pw) as isize);
                let pool_size = ((he - hs) * (we - ws)) as f32;
                let (h0, w0) = (hs.max(0) as usize, ws.max(0) as usize);
                let (h1, w1) = (he.min(h as isize) as usize, we.min(w as isize) as usize);
                let v = if max {
                    let mut m = f32::NEG_INFINITY;
                    for y in h0..h1 {
                        for &v in &plane[y * w + w0..y * w + w1] {
                            // NaN propagates as in PyTorch.
                            if v > m || v.is_nan() {
                                m = v;
                            }
                        }
                    }
                    m
                } else {
                    let mut s = 0f32;
                    for y in h0..h1 {
                        s += plane[y * w + w0..y * w + w1].iter().sum::<f32>();
                    }
                    let div = if pool.count_include_pad {
                        pool_size
                    } else {
                        ((h1 - h0) * (w1 - w0)) as f32
                    };
                    s / div
                };
                o[i * ow + j] = v;
            }
        }
    });
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
