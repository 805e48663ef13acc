use super::*;
use crate::backend::cpu::layout::{from_blocked, to_blocked};
use crate::graph::shape::conv_out;

/// PyTorch's convolution in f64, then scale, shift, residual, ReLU.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    cfg: &Conv2d,
    wt: &[f32],
    p: &StepParams,
    res: Option<&[f32]>,
    relu: bool,
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    let oc = cfg.out_channels;
    let (icg, ocg) = (c / cfg.groups, oc / cfg.groups);
    let [kh, kw] = cfg.kernel;
    let mut out = vec![0f32; n * oc * oh * ow];
    for b in 0..n {
        for o in 0..oc {
            let g = o / ocg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0f64;
                    for ci in 0..icg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * cfg.stride[0] + ky * cfg.dilation[0]) as isize
                                    - cfg.padding[0] as isize;
                                let ix = (ox * cfg.stride[1] + kx * cfg.dilation[1]) as isize
                                    - cfg.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue;
                                }
                                let xi =
                                    ((b * c + g * icg + ci) * h + iy as usize) * w + ix as usize;
                                let wi = ((o * icg + ci) * kh + ky) * kw + kx;
                                s += x[xi] as f64 * wt[wi] as f64;
                            }
                        }
                    }
                    let i = ((b * oc + o) * oh + oy) * ow + ox;
                    let mut v = (s * p.scale[o] as f64 + p.bias[o] as f64) as f32;
                    if let Some(r) = res {
                        v += r[i];
                    }
                    if relu && v < 0.0 {
                        v = 0.0;
                    }
                    out[i] = v;
                }
            }
        }
    }
    out
}

fn noise(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn interleave_matches_a_naive_copy_for_every_width_and_stride() {
    // The scalar copy, and the AVX2 one where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    let simd = [false, Isa::available().contains(&Isa::Avx2)];
    #[cfg(not(target_arch = "x86_64"))]
    let simd = [false];
    for sw in 1..=3 {
        for n in 0..40 {
            let len = if n == 0 { 0 } else { (n - 1) * sw + 1 + n % 3 };
            let data: Vec<Vec<f32>> = (0..8).map(|c| noise(len, (c * 100 + n) as u32)).collect();
            let rows = std::array::from_fn(|c| &data[c][..]);
            for avx2 in simd {
                let mut got = vec![f32::NAN; n * 8];
                interleave(rows, sw, &mut got, avx2);
                for j in 0..n {
                    for c in 0..8 {
                        assert_eq!(
                            got[j * 8 + c],
                            data[c][j * sw],
                            "stride {sw}, {n} pixels, AVX2 {avx2}: {j}, {c}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
#[cfg(target_os = "linux")]
fn tasks_size_their_panels_by_this_cores_l2() {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/{f}"));
    let l2 = (0..8).find_map(|i| {
        let level = read(&format!("index{i}/level")).ok()?;
        let size = read(&format!("index{i}/size")).ok()?;
        let kib: usize = size.trim().strip_suffix('K')?.parse().ok()?;
        (level.trim() == "2").then_some(kib * 1024)
    });
    let l2 = l2.expect("sysfs lists this core's L2 in KiB");
    assert_eq!(l2_panels(), L2_PANELS.min(l2 / 4 * 3), "L2 of {l2} bytes");
}

#[test]
fn direct_conv_matches_a_naive_convolution_on_awkward_shapes() {
    let isas = Isa::available();
    if isas.is_empty() {
        eprintln!("no microkernel for this CPU: the direct convolution is never chosen");
        return;
    }
    // (n, c, oc, h, w, k, stride, pad, dilation, groups, residual+relu)
    let cases = [
        (1, 5, 40, 9, 30, 3, 1, 1, 1, 1, true), // partial block, partial tile
        (2, 8, 70, 7, 7, 3, 1, 1, 1, 1, true),  // 7x7 map: the 7-wide tile, 2 images
        (1, 16, 64, 6, 28, 3, 1, 1, 1, 1, true), // 28-wide rows: the 14-wide tile
        (1, 3, 33, 23, 23, 7, 2, 3, 1, 1, false), // stem-like, stride 2
        (1, 3, 16, 35, 35, 11, 4, 2, 1, 1, false), // AlexNet-like, stride 4
        (1, 16, 32, 14, 14, 1, 1, 0, 1, 1, true), // 1x1 in place
        (1, 16, 32, 13, 13, 1, 2, 0, 1, 1, false), // 1x1 stride 2: one phase of four
        (1, 8, 8, 10, 11, 3, 1, 0, 1, 1, false), // in place, reads past the end: copies
        (1, 8, 12, 10, 11, 3, 1, 2, 2, 2, true), // dilation and groups
        (1, 8, 8, 9, 10, 3, 2, 1, 1, 8, false), // depthwise
        (1, 40, 12, 15, 15, 1, 1, 0, 1, 1, true), // pixel vectors in place, tails
        (2, 24, 20, 30, 29, 1, 2, 0, 1, 1, true), // 1x1 stride 2 (AVX-512: pixel vectors)
        (1, 6, 20, 17, 19, 5, 3, 2, 1, 1, true), // stride 3: the general strided copy
        (1, 16, 48, 7, 7, 1, 1, 0, 1, 1, true), // in place, last read ends at the end
        (1, 3, 20, 20, 32, 3, 1, 1, 1, 1, true), // image layer: pixel rows, padded
        (2, 3, 8, 30, 69, 7, 2, 3, 1, 1, false), // image layer: pixel rows, stride 2
        (1, 8, 40, 23, 23, 7, 2, 3, 1, 1, true), // channel tiles after a stride-2 copy
        (1, 16, 24, 10, 11, 3, 1, 2, 2, 2, true), // channel tiles: dilation and groups
        (1, 1500, 16, 15, 15, 1, 1, 0, 1, 1, true), // pixel vectors, input past L2_INPUT_RUN
        (1, 520, 20, 14, 14, 1, 1, 0, 1, 1, true), // deep 1x1: AVX2 interleaves a copy
        (2, 16, 24, 9, 13, 3, 1, 1, 1, 1, true), // AVX2 blocked: a half block, 2 images
        (2, 32, 32, 13, 13, 1, 2, 0, 1, 2, true), // AVX2 blocked: groups, 1x1 stride 2
    ];
    let (mut blocked_runs, mut pass_runs, mut avx512_pass_runs) = (0, 0, 0);
    // Every tile shape of every ISA (its block and width) is chosen by some case.
    let mut tiles_run: Vec<(Isa, usize, usize)> = vec![];
    #[cfg(target_arch = "x86_64")]
    let isa_is_avx512 = |isa: Isa| isa == Isa::Avx512;
    #[cfg(not(target_arch = "x86_64"))]
    let isa_is_avx512 = |_: Isa| false;
    for (i, &(n, c, oc, h, w, k, s, pd, d, g, epi)) in cases.iter().enumerate() {
        for &isa in &isas {
            let cfg = Conv2d {
                in_channels: c,
                out_channels: oc,
                kernel: [k, k],
                stride: [s, s],
                padding: [pd, pd],
                dilation: [d, d],
                groups: g,
                bias: true,
            };
            let oh = conv_out(h, k, s, pd, d).unwrap();
            let ow = conv_out(w, k, s, pd, d).unwrap();
            let x = noise(n * c * h * w, i as u32);
            let wt = noise(oc * c / g * k * k, 100 + i as u32);
            let p = StepParams {
                weight: None,
                scale: noise(oc, 200 + i as u32),
                bias: noise(oc, 300 + i as u32),
            };
            let mut res = noise(n * oc * oh * ow, 400 + i as u32);
            res[0] = f32::NAN;
            let res = epi.then_some(&res[..]);
            let want = reference(&x, [n, c, h, w], &cfg, &wt, &p, res, epi, [oh, ow]);
            let tile = DirectConv::choose(isa, &cfg, [oh, ow], true);
            let shape = tile.shape;
            let panels: Arc<[f32]> = pack(&wt, &cfg, shape.block, shape.lanes).into();
            let planes = (Layout::Planes, Layout::Planes);
            let (xs, os) = ([n, c, h, w], [n, oc, oh, ow]);
            let dc = DirectConv::new(isa, tile, panels.clone(), &cfg, xs, os, planes);
            tiles_run.push((isa, shape.block, shape.nr));
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                // Every case with few channels per group tiles better by pixel rows.
                let rows = c / g <= STEM_CHANNELS;
                let pixels = (k == 1 && pd == 0 && oh * ow >= PIXELS_MIN) || rows;
                assert_eq!(shape.pixels, pixels, "case {i}: {shape:?}");
            }
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx2 {
                let pixels = k == 1 && pd == 0 && s == 1 && oh * ow >= PIXELS_MIN && c / g <= 512;
                assert_eq!(shape.pixels, pixels, "case {i}: {shape:?}");
                // Inputs with whole blocks of 8 channels per group are read
                // interleaved.
                let lanes = if (c / g) % 8 == 0 { 8 } else { 1 };
                if !shape.pixels {
                    assert_eq!(shape.lanes, lanes, "case {i}: {shape:?}");
                }
            }
            if k == 1 && s == 1 && shape.lanes == 1 {
                assert_eq!(
                    dc.scratch_len(),
                    0,
                    "case {i}: a 1x1 stride-1 conv copies its input"
                );
            }
            let mut out = vec![f32::INFINITY; want.len()];
            dc.run(&x, &mut vec![], &p, res, epi, &mut out);
            let check = |out: &[f32], how: &str| {
                for (j, (a, b)) in out.iter().zip(&want).enumerate() {
                    let same =
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()) || (a.is_nan() && b.is_nan());
                    assert!(
                        same,
                        "case {i} on {isa:?}{how}, element {j}: got {a}, want {b}"
                    );
                }
            };
            check(&out, "");
            // The x86 channel tiles' reduction in passes of one block of input
            // channels, on whatever this CPU's L2 makes of the case (AVX-512 and
            // AVX2; wasm never splits one).
            let in_passes = |mut dc: DirectConv| {
                dc.set_pass(dc.shape.lanes * k * k);
                let x86 = cfg!(target_arch = "x86_64");
                (x86 && !dc.shape.pixels && dc.pass < dc.k).then_some(dc)
            };
            if let Some(dc) = in_passes(DirectConv::new(isa, tile, panels, &cfg, xs, os, planes)) {
                let mut out = vec![f32::INFINITY; want.len()];
                dc.run(&x, &mut vec![], &p, res, epi, &mut out);
                check(&out, ", in passes");
                pass_runs += 1;
                if isa_is_avx512(isa) {
                    avx512_pass_runs += 1;
                }
            }
            // Every other pair of layouts the plan may read and store in, on the tile
            // it takes where its neighbours are blocked.
            let tile = DirectConv::choose(isa, &cfg, [oh, ow], false);
            let shape = tile.shape;
            let panels: Arc<[f32]> = pack(&wt, &cfg, shape.block, shape.lanes).into();
            let (can_in, can_out) = DirectConv::blocks(isa, shape, &cfg);
            let blocked = |b: bool| if b { Layout::Blocked } else { Layout::Planes };
            for (bi, bo) in [(true, false), (false, true), (true, true)] {
                if (bi && !can_in) || (bo && !can_out) {
                    continue;
                }
                let layouts = (blocked(bi), blocked(bo));
                let dc = DirectConv::new(isa, tile, panels.clone(), &cfg, xs, os, layouts);
                let dc = if bo {
                    in_passes(DirectConv::new(
                        isa,
                        tile,
                        panels.clone(),
                        &cfg,
                        xs,
                        os,
                        layouts,
                    ))
                    .inspect(|_| pass_runs += 1)
                    .unwrap_or(dc)
                } else {
                    dc
                };
                let x = if bi {
                    to_blocked(&x, [n, c, h * w])
                } else {
                    x.clone()
                };
                let r = res.map(|r| {
                    if bo {
                        to_blocked(r, [n, oc, oh * ow])
                    } else {
                        r.to_vec()
                    }
                });
                let mut got = vec![f32::INFINITY; want.len()];
                dc.run(&x, &mut vec![], &p, r.as_deref(), epi, &mut got);
                if bo {
                    got = from_blocked(&got, [n, oc, oh * ow]);
                }
                check(&got, &format!(", layouts {layouts:?}"));
                blocked_runs += 1;
            }
        }
    }
    for &isa in &isas {
        for s in isa.tiles().iter().map(|t| t.shape) {
            assert!(
                tiles_run.contains(&(isa, s.block, s.nr)),
                "no case takes {s:?} on {isa:?}"
            );
        }
    }
    // Every AVX2 CPU runs the blocked layouts on the cases made for them.
    #[cfg(target_arch = "x86_64")]
    if isas.contains(&Isa::Avx2) {
        assert!(blocked_runs >= 8, "{blocked_runs} runs on blocked layouts");
        assert!(pass_runs >= 16, "{pass_runs} runs in passes");
    }
    #[cfg(target_arch = "x86_64")]
    if isas.contains(&Isa::Avx512) {
        assert!(
            avx512_pass_runs >= 8,
            "{avx512_pass_runs} AVX-512 runs in passes"
        );
    }
}
