//! Running a planned direct convolution: the input's phase copy, the tasks over threads,
//! and each tile's call into the instruction set's microkernel.

use super::*;

impl DirectConv {
    /// Copy `x` into the zero-padded phase planes (interleaved by `lanes` channels).
    pub(super) fn fill(&self, x: &[f32], buf: &mut [f32]) {
        let (h, w) = (self.h, self.w);
        let ([sh, sw], [ph, pw]) = (self.stride, self.padding);
        let (hph, wph) = (self.hph, self.wph);
        let lanes = self.shape.lanes;
        let per_c = self.cstride();
        #[cfg(target_arch = "x86_64")]
        let avx2 = self.isa == Isa::Avx2;
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        let (body, slack) = buf.split_at_mut(self.n * self.c * per_c);
        slack.fill(0.0);
        let blocked = self.input == Layout::Blocked;
        crate::backend::cpu::par::par_chunks(body, per_c * lanes, |nb, dst| {
            let plane = |c8: usize| &x[(nb * lanes + c8) * h * w..(nb * lanes + c8 + 1) * h * w];
            // A blocked input holds these `lanes` channels as one plane of pixel vectors.
            let block = &x[nb * lanes * h * w..(nb + 1) * lanes * h * w];
            for (pi, &(py, px)) in self.phases.iter().enumerate() {
                for (i, row) in dst[pi * hph * wph * lanes..(pi + 1) * hph * wph * lanes]
                    .chunks_exact_mut(wph * lanes)
                    .enumerate()
                {
                    let iy = (i * sh + py) as isize - ph as isize;
                    if iy < 0 || iy as usize >= h {
                        row.fill(0.0);
                        continue;
                    }
                    let iy = iy as usize;
                    // Output column j is padded column j * sw + px, input column
                    // j * sw + px - pw: inside the input for j in lo..hi.
                    let lo = pw.saturating_sub(px).div_ceil(sw).min(wph);
                    let hi = (w + pw).saturating_sub(px).div_ceil(sw).min(wph).max(lo);
                    row[..lo * lanes].fill(0.0);
                    row[hi * lanes..].fill(0.0);
                    if lo == hi {
                        continue;
                    }
                    let first = lo * sw + px - pw;
                    let dst = &mut row[lo * lanes..hi * lanes];
                    if blocked {
                        let src = &block[(iy * w + first) * lanes..(iy + 1) * w * lanes];
                        if sw == 1 {
                            dst.copy_from_slice(&src[..dst.len()]);
                        } else {
                            let pixels = src.chunks(lanes).step_by(sw);
                            for (d, s) in dst.chunks_exact_mut(lanes).zip(pixels) {
                                d.copy_from_slice(s);
                            }
                        }
                        continue;
                    }
                    if lanes > 1 {
                        debug_assert_eq!(lanes, 8);
                        let rows =
                            std::array::from_fn(|c8| &plane(c8)[iy * w + first..(iy + 1) * w]);
                        interleave(rows, sw, dst, avx2);
                        continue;
                    }
                    let srow = &plane(0)[iy * w..(iy + 1) * w];
                    match sw {
                        1 => dst.copy_from_slice(&srow[first..first + dst.len()]),
                        2 => gather::<2>(dst, &srow[first..]),
                        4 => gather::<4>(dst, &srow[first..]),
                        _ => dst
                            .iter_mut()
                            .zip(srow[first..].iter().step_by(sw))
                            .for_each(|(d, &v)| *d = v),
                    }
                }
            }
        });
    }

    /// Run on `x` (`[n, c, h, w]`), writing `out` (`[n, oc, oh, ow]`) through the
    /// epilogue. `scratch` grows to [`Self::scratch_len`] once and is reused.
    pub fn run(
        &self,
        x: &[f32],
        scratch: &mut Vec<f32>,
        p: &StepParams,
        residual: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
    ) {
        let src: &[f32] = if self.in_place {
            x
        } else {
            let len = self.scratch_len();
            if scratch.len() < len {
                scratch.resize(len, 0.0);
            }
            self.fill(x, &mut scratch[..len]);
            &scratch[..len]
        };
        // The tile's kind picks the run loop; the loop calls its microkernel (wasm has
        // one kind).
        #[cfg_attr(
            not(target_arch = "x86_64"),
            allow(clippy::infallible_destructuring_match)
        )]
        let kernel = match self.kernel {
            Kernel::Run(kernel) => kernel,
            #[cfg(target_arch = "x86_64")]
            Kernel::Pointwise(kernel) => {
                return self.run_pixels(kernel, src, p, residual, relu, out)
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Gather(kernel) => return self.run_flat(kernel, src, p, residual, relu, out),
        };
        // Only AVX2 interleaves its input, and it runs flat tiles.
        debug_assert_eq!(self.shape.lanes, 1);
        let Geometry {
            nb,
            image,
            gstride,
            pix: _,
            oc,
            per_task,
            run: rows,
        } = self.geometry();
        let (oh, ow, nr) = (self.oh, self.ow, self.shape.nr);
        let (plane, row, first) = self.out_geometry();
        if let Layout::Padded(pad) = self.output {
            assert!(residual.is_none(), "a padded output takes no residual");
            zero_borders(out, [self.n, oc, oh, ow], pad);
        }
        let dst = crate::backend::cpu::par::OutPtr(out.as_mut_ptr());
        // Where the reduction runs in passes, each tile keeps its partial sums in the
        // thread's scratch between passes (`NR * MV` vectors: `nr * block` floats).
        let (k, pass, block) = (self.k, self.pass, self.shape.block);
        let slot = if pass < k { nr * block } else { 0 };
        let sums_len = rows * ow.div_ceil(nr) * per_task * slot;
        crate::backend::cpu::par::par_tasks(&self.plan.list, sums_len, |&(b, g, ob0, y0), sums| {
            let base = b * image + g * gstride;
            for t0 in (0..k).step_by(pass) {
                let taps = t0..(t0 + pass).min(k);
                let mut at_sums = 0;
                for oy in y0..(y0 + rows).min(oh) {
                    for ox in (0..ow).step_by(nr) {
                        let valid = nr.min(ow - ox);
                        let xoff = base + oy * self.wph + ox;
                        debug_assert!(xoff + self.kofs[self.k - 1] + valid - 1 < src.len());
                        for ob in ob0..(ob0 + per_task).min(nb) {
                            let (panel, o0, ep) = self.block(p, g, ob, relu);
                            let panel = &panel[taps.start * block..taps.end * block];
                            let part = &mut sums[at_sums..at_sums + slot];
                            at_sums += slot;
                            let part = Sums {
                                from: (taps.start > 0).then_some(part.as_ptr()),
                                to: (taps.end < k).then_some(part.as_mut_ptr()),
                            };
                            let live = ep.scale.len();
                            let at = (b * oc + o0) * plane + first + oy * row + ox;
                            debug_assert!(at + (live - 1) * plane + valid <= out_len(self));
                            // SAFETY: the reads stay inside `src` (its slack, or `max_read` when
                            // in place); this task alone writes rows o0..o0+live of image b at
                            // pixels at..at+valid, all inside `out`; the partial sums are this
                            // tile's own `slot` floats of the thread's scratch.
                            unsafe {
                                kernel(
                                    src.as_ptr().add(xoff),
                                    &self.kofs[taps.clone()],
                                    panel,
                                    dst.at(at),
                                    plane,
                                    valid,
                                    live,
                                    residual.map(|r| r.as_ptr().add(at)),
                                    &ep,
                                    part,
                                )
                            }
                        }
                    }
                }
            }
        });
    }

    /// [`Self::run`] for the AVX2 channel tile, whose tiles are runs of consecutive
    /// output pixels across row ends (each pixel read from its own base): no tile is cut
    /// short by a row's end, which on 7x7 maps wasted 5 of every 12 pixels.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn run_flat(
        &self,
        kernel: GatherFn,
        src: &[f32],
        p: &StepParams,
        residual: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
    ) {
        let Geometry {
            nb,
            image,
            gstride,
            pix,
            oc,
            per_task,
            run: rows,
        } = self.geometry();
        let Shape { nr, lanes, .. } = self.shape;
        let (oh, ow, wph) = (self.oh, self.ow, self.wph);
        let dst = crate::backend::cpu::par::OutPtr(out.as_mut_ptr());
        let last_tap = self.kofs.iter().max().copied().unwrap_or(0);
        let blocked = self.output == Layout::Blocked;
        // Tiles run in groups of `self.group` (see `set_pass`).
        let (k, pass, group, block) = (self.k, self.pass, self.group, self.shape.block);
        // Where the reduction runs in passes, each tile of the group keeps its partial
        // sums (`nr * block` floats) in the thread's scratch between them.
        let sums_len = nr * block;
        let scratch = if pass < k { group * sums_len } else { 0 };
        crate::backend::cpu::par::par_tasks(&self.plan.list, scratch, |&(b, g, ob0, y0), sums| {
            let base = b * image + g * gstride;
            let (q0, q1) = (y0 * ow, (y0 + rows).min(oh) * ow);
            // The task's pixels in as few tiles as `nr` allows, of widths that differ by
            // one at most: a narrow last tile (7x7 maps end every image with a 1-pixel
            // one) has too few accumulators to hide the FMA's latency, and took 2/3 of a
            // whole tile's time. Every pixel's sum runs in the same order in any tile,
            // so the answers do not depend on how a batch splits into tasks.
            let all = (q1 - q0).div_ceil(nr);
            let edge = |t: usize| q0 + t * (q1 - q0) / all;
            for t0 in (0..all).step_by(group) {
                // Each tile's first pixel, width and pixel bases.
                let mut tiles = [(0, 0, [src.as_ptr(); 8]); MAX_GROUP];
                let mut count = 0;
                for t in t0..(t0 + group).min(all) {
                    let (q, valid) = (edge(t), edge(t + 1) - edge(t));
                    debug_assert!((1..=nr).contains(&valid));
                    let xs = &mut tiles[count].2;
                    for (j, x) in xs.iter_mut().enumerate().take(valid) {
                        let (oy, ox) = ((q + j) / ow, (q + j) % ow);
                        let at = base + (oy * wph + ox) * lanes;
                        debug_assert!(at + last_tap < src.len());
                        // SAFETY: every tap of this pixel reads inside `src` (its slack,
                        // or `max_read` when in place).
                        *x = unsafe { src.as_ptr().add(at) };
                    }
                    (tiles[count].0, tiles[count].1) = (q, valid);
                    count += 1;
                }
                for ob in ob0..(ob0 + per_task).min(nb) {
                    let (panel, o0, ep) = self.block(p, g, ob, relu);
                    let live = ep.scale.len();
                    for k0 in (0..k).step_by(pass) {
                        let k1 = (k0 + pass).min(k);
                        let (kofs, panel) = (&self.kofs[k0..k1], &panel[k0 * block..k1 * block]);
                        for (t, (q, valid, xs)) in tiles[..count].iter().enumerate() {
                            let (q, valid) = (*q, *valid);
                            // Blocked, channel block `o0 / 8 + v` holds pixel `q + j` at
                            // `(v * pix + j) * 8` from here (`o0` is a multiple of 8).
                            let at =
                                (b * oc + o0) * pix + if blocked { q * BLOCKED_LANES } else { q };
                            debug_assert!(
                                if blocked {
                                    at + (live - BLOCKED_LANES) * pix + valid * BLOCKED_LANES
                                } else {
                                    at + (live - 1) * pix + valid
                                } <= out_len(self)
                            );
                            let store = avx2::Store {
                                out: dst.at(at),
                                ldo: pix,
                                valid,
                                live,
                                res: residual.map(|r| r.as_ptr().wrapping_add(at)),
                                ep: &ep,
                                blocked,
                            };
                            let part = sums.as_mut_ptr().wrapping_add(t * sums_len);
                            let sums = Sums {
                                from: (k0 > 0).then_some(part.cast_const()),
                                to: (k1 < k).then_some(part),
                            };
                            debug_assert!(pass == k || (t + 1) * sums_len <= scratch);
                            // SAFETY: as above; this task alone writes channels o0..o0+live
                            // of image b at pixels q..q+valid, all inside `out`, and tile
                            // t's partial sums, inside this thread's scratch.
                            unsafe { kernel(xs, kofs, panel, &store, sums) }
                        }
                    }
                }
            }
        });
    }

    /// Tasks over every image and group: runs of channel blocks whose weight panels fit
    /// in half of L2 (each input tile is read once for all the blocks of its task, from
    /// L1, rather than once per block), by runs of `span` output rows or pixels in
    /// multiples of `unit`, split until every thread has several tasks.
    pub(super) fn tasks(&self, span: usize, unit: usize) -> Tasks {
        let nb = self.ocg.div_ceil(self.shape.block);
        let panel_len = self.k * self.shape.block;
        let per_task = (l2_panels() / (panel_len * 4)).clamp(1, nb);
        let per_task = nb.div_ceil(nb.div_ceil(per_task));
        let blocks = self.n * self.groups * nb.div_ceil(per_task);
        let want = 8 * crate::backend::cpu::par::threads();
        let splits = want.div_ceil(blocks).clamp(1, span.div_ceil(unit));
        let run = span.div_ceil(splits).next_multiple_of(unit);
        let mut list = Vec::with_capacity(blocks * splits);
        for b in 0..self.n {
            for g in 0..self.groups {
                for ob in (0..nb).step_by(per_task) {
                    for s0 in (0..span).step_by(run) {
                        list.push((b, g, ob, s0));
                    }
                }
            }
        }
        Tasks {
            per_task,
            run,
            list,
        }
    }

    /// What every run loop derives from the plan's shapes.
    pub(super) fn geometry(&self) -> Geometry {
        Geometry {
            nb: self.ocg.div_ceil(self.shape.block),
            image: self.c * self.cstride(),
            gstride: self.icg * self.cstride(),
            pix: self.oh * self.ow,
            oc: self.ocg * self.groups,
            per_task: self.plan.per_task,
            run: self.plan.run,
        }
    }

    /// Block `ob` of group `g`: its weight panel, first output channel and epilogue (over
    /// its live channels).
    pub(super) fn block<'a>(
        &'a self,
        p: &'a StepParams,
        g: usize,
        ob: usize,
        relu: bool,
    ) -> (&'a [f32], usize, Epilogue<'a>) {
        let block = self.shape.block;
        let nb = self.ocg.div_ceil(block);
        let panel_len = self.k * block;
        let pi = (g * nb + ob) * panel_len;
        let o0 = g * self.ocg + ob * block;
        let live = block.min(self.ocg - ob * block);
        let ep = Epilogue {
            scale: &p.scale[o0..o0 + live],
            shift: &p.bias[o0..o0 + live],
            relu,
        };
        (&self.panels[pi..pi + panel_len], o0, ep)
    }

    /// [`Self::run`] for the pixel-vector 1x1 kernel: tasks over runs of pixels by runs
    /// of 8-channel blocks; each run of 48 input pixels is read for all of its blocks.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn run_pixels(
        &self,
        kernel: PointwiseFn,
        src: &[f32],
        p: &StepParams,
        residual: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
    ) {
        let Geometry {
            nb,
            image,
            gstride,
            pix,
            oc,
            per_task,
            run,
        } = self.geometry();
        let nr = self.shape.nr;
        let dst = crate::backend::cpu::par::OutPtr(out.as_mut_ptr());
        let (flat, ow, wph) = (self.flat(), self.ow, self.wph);
        // One tile: `len` pixels from output pixel `q`, read at input offset `xoff`.
        let tile =
            |b: usize, g: usize, obs: std::ops::Range<usize>, xoff: usize, q: usize, len: usize| {
                for ob in obs {
                    let (panel, o0, ep) = self.block(p, g, ob, relu);
                    let live = ep.scale.len();
                    let at = (b * oc + o0) * pix + q;
                    debug_assert!(at + (live - 1) * pix + len <= out_len(self));
                    // SAFETY: the kernel reads `len` pixels from each tap's run at xoff (inside
                    // `src`, masked past `len`) and writes rows o0..o0+live of image b at pixels
                    // q..q+len, which only this task writes.
                    unsafe {
                        kernel(
                            src.as_ptr().add(xoff),
                            &self.kofs,
                            panel,
                            dst.at(at),
                            pix,
                            len,
                            live,
                            residual.map(|r| r.as_ptr().add(at)),
                            &ep,
                        )
                    }
                }
            };
        crate::backend::cpu::par::par_tasks(&self.plan.list, 0, |&(b, g, ob0, s0), _| {
            let base = b * image + g * gstride;
            let obs = ob0..(ob0 + per_task).min(nb);
            if flat && run * self.k * 4 <= L2_INPUT_RUN {
                // The task's input stays in L2: each block sweeps all of it, so that its
                // output and residual rows are read and written as a few long streams
                // (ResNet-50's first expanding 1x1 layers at batch 8: 15% faster).
                for ob in obs {
                    for q in (s0..(s0 + run).min(pix)).step_by(nr) {
                        tile(b, g, ob..ob + 1, base + q, q, nr.min(pix - q));
                    }
                }
            } else if flat {
                for q in (s0..(s0 + run).min(pix)).step_by(nr) {
                    tile(b, g, obs.clone(), base + q, q, nr.min(pix - q));
                }
            } else {
                // Runs of `run` output rows; tiles stop at each row's end.
                for oy in s0..(s0 + run).min(self.oh) {
                    for ox in (0..ow).step_by(nr) {
                        tile(
                            b,
                            g,
                            obs.clone(),
                            base + oy * wph + ox,
                            oy * ow + ox,
                            nr.min(ow - ox),
                        );
                    }
                }
            }
        });
    }
}
