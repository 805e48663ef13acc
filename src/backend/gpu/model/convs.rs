//! Convolution steps: the kernel each layer shape runs on (the table's, measured, or
//! forced), the split along k, the special kernels of the register-blocked set and the
//! weight forms they read, and how each is dispatched.

use super::steps::{u, StepIo};
use super::{Builder, PendingCmd, Uploaded};
use crate::backend::gpu::kernels::{self, conv, Bind};
use crate::backend::gpu::tuning;
use crate::backend::gpu::weights::Chunk;
use crate::backend::gpu::Kernels;
use crate::error::Result;
use crate::graph::Conv2d;
use crate::lower::{Kernel, Program, Step};
use crate::tensor::numel;

impl Builder<'_> {
    /// A convolution step: on a special kernel where one was planned, else tiled (split
    /// along k where planned: each slice's plain sums into the scratch, then
    /// `conv_split_sum` adds them with the epilogue), one dispatch per weight chunk.
    pub(super) fn conv_step(
        &mut self,
        program: &Program,
        step: &Step,
        up: &Uploaded,
        cfg: &Conv2d,
        io: StepIo,
    ) -> Result<()> {
        let (xs, os, nb, what) = (&io.xs, &io.os, io.nb, &io.what);
        let (relu, has_res, total, x) = (io.relu, io.has_res(), io.total(), io.x());
        let (icg, ocg) = (xs[1] / cfg.groups, os[1] / cfg.groups);
        let affine = up.bias.clone().expect("conv bias");
        let (v, special) = self.conv_kernels[self.step].expect("planned for every conv");
        if let Some(sp) = special {
            return self.special_conv(program, step, up, sp, nb, (x, io.res), io.out);
        }
        let res = self.res_or_dummy(&io);
        let max = self.max_groups as usize;
        let (splits, k_chunk) = self.conv_splits[self.step];
        let dummy = Bind::whole(&self.dummy);
        let sums = (splits > 1).then(|| {
            let scratch = self.split_scratch.as_ref().expect("sized for every split");
            let len = splits * total * self.f32_slots();
            Bind::first(scratch, len, self.ctx.elem_bytes())
        });
        for ch in &up.chunks {
            let prm = conv::Params {
                icg: u(icg),
                ocg: u(ocg),
                g_count: u(ch.groups),
                g_base: u(ch.group),
                k: u(icg * cfg.kernel[0] * cfg.kernel[1]),
                has_res,
                relu,
                m_base: u(ch.row),
                m_count: u(ch.rows),
                plain: sums.is_some() as u32,
                splits: u(splits),
                k_chunk: u(k_chunk),
                ..conv::Params::layer(cfg, xs, os, nb)
            };
            let (affine, res, y) = match &sums {
                Some(s) => (dummy.clone(), dummy.clone(), s.clone()),
                None => (Bind::whole(&affine), res.clone(), io.out.clone()),
            };
            let bufs = conv::Buffers {
                x: x.clone(),
                wt: Bind::whole(&ch.buf),
                affine,
                res,
                y,
                x4: dummy.clone(),
                wt4: dummy.clone(),
            };
            let [gx, gy, gz] = v.grid(os[2] * os[3], ch.rows, nb * ch.groups, max);
            let grid = [gx, gy, gz * splits];
            self.push(&conv::FAMILY, v.entry(), &prm, bufs, grid, what)?;
        }
        if let Some(sums) = sums {
            let prm = conv::Params {
                has_res,
                relu,
                splits: u(splits),
                ..conv::Params::layer(cfg, xs, os, nb)
            };
            let bufs = conv::Buffers {
                x: sums,
                wt: dummy.clone(),
                affine: Bind::whole(&affine),
                res,
                y: io.out.clone(),
                x4: dummy.clone(),
                wt4: dummy,
            };
            let grid = self.per_element(total, what)?;
            self.push(&conv::FAMILY, "conv_split_sum", &prm, bufs, grid, what)?;
        }
        Ok(())
    }

    /// The kernel a convolution step runs on at `nb` images: the variant (forced, else
    /// measured, else the table's), and on the register-blocked set the special kernel
    /// for its shape, where the device can hold what that needs.
    pub(super) fn conv_kernel(
        &self,
        program: &Program,
        step: &Step,
        nb: usize,
    ) -> (Kernels, Option<conv::Special>) {
        let Kernel::Conv { cfg, .. } = &step.kernel else {
            unreachable!("a convolution step")
        };
        let (xs, os) = (program.shape(step.inputs[0]), program.shape(step.output));
        let key = tuning::shape_key(cfg, [nb, xs[1], xs[2], xs[3]], self.ctx.precision());
        // Not measured (wasm, or timing failed): the table's choice.
        let v = self
            .force
            .or_else(|| self.ctx.conv_choice(&key, cfg, conv_work(cfg, os, nb)))
            .unwrap_or(self.variant);
        let shape = |s: &[usize]| [s[1], s[2], s[3]];
        let special = match v {
            Kernels::Tiled | Kernels::TiledLarge | Kernels::TiledSmall => return (v, None),
            Kernels::TiledWinograd => {
                conv::tiled_winograd(cfg, xs[1], [os[2], os[3]]).map(conv::Special::Winograd)
            }
            Kernels::RegisterBlocked => conv::special(cfg, shape(xs), [os[2], os[3]]),
        };
        let special = special.filter(|sp| {
            // Its buffers within one binding, and the weights in one chunk.
            let fits = |n: usize| (n * self.ctx.elem_bytes()) as u64 <= self.limit;
            let (a, b) = sp.scratch_len(nb);
            self.whole_weights(step) && fits(a) && fits(b) && fits(sp.weight_len())
        });
        if v == Kernels::TiledWinograd && special.is_none() {
            // Not a Winograd layer (or too large for it): tiled.
            let limits = &self.ctx.shared.limits;
            return (Kernels::choose(Kernels::Tiled, limits), None);
        }
        (v, special)
    }

    /// Choose every convolution's kernel for chunks of `nb` images, count the special
    /// ones, and make the scratch they share (the GEMM's input: im2col copies or
    /// Winograd's transformed input; and Winograd's products), as large as the largest
    /// needs.
    pub(super) fn plan_convs(&mut self, program: &Program, nb: usize) {
        self.conv_kernels = program
            .steps
            .iter()
            .map(|step| {
                matches!(step.kernel, Kernel::Conv { .. })
                    .then(|| self.conv_kernel(program, step, nb))
            })
            .collect();
        let (mut al, mut bl) = (0, 0);
        for &(_, sp) in self.conv_kernels.iter().flatten() {
            let Some(sp) = sp else {
                continue;
            };
            match sp {
                conv::Special::Winograd(_) => self.report.winograd_layers += 1,
                conv::Special::Gemm(_) => self.report.gemm_layers += 1,
                conv::Special::Direct { .. } => self.report.direct_layers += 1,
            }
            let (a, b) = sp.scratch_len(nb);
            al = al.max(a);
            bl = bl.max(b);
        }
        if al + bl > 0 {
            self.report.workspace += ((al + bl) * self.ctx.elem_bytes()) as u64;
            let a = self.storage("gemm input", al, wgpu::BufferUsages::empty());
            let b = self.storage("winograd products", bl, wgpu::BufferUsages::empty());
            self.scratch = Some((a, b));
        }
        self.conv_splits = program
            .steps
            .iter()
            .zip(&self.conv_kernels)
            .map(|(step, k)| match k {
                Some((v, None)) => self.conv_split(program, step, *v, nb),
                _ => (1, 0),
            })
            .collect();
        let partials = program
            .steps
            .iter()
            .zip(&self.conv_splits)
            .filter(|(_, &(s, _))| s > 1)
            .map(|(step, &(s, _))| s * nb * numel(&program.shape(step.output)[1..]))
            .max()
            .map(|sums| sums * self.f32_slots());
        if let Some(len) = partials {
            self.report.k_split_layers = self.conv_splits.iter().filter(|s| s.0 > 1).count();
            self.report.workspace += (len * self.ctx.elem_bytes()) as u64;
            self.split_scratch =
                Some(self.storage("k-split sums", len, wgpu::BufferUsages::empty()));
        }
    }

    /// Whether a conv step's weights are one chunk (the special kernels and the split
    /// along k read them whole).
    pub(super) fn whole_weights(&self, step: &Step) -> bool {
        self.weights
            .chunks(&format!("{}.weight", step.nodes[0]))
            .is_ok_and(|c| c.len() == 1)
    }

    /// Stored values per f32: the split layers' partial sums keep about f32 precision in
    /// f16 models as the sum of two f16 (see `f32_pack` in the generated WGSL header).
    pub(super) fn f32_slots(&self) -> usize {
        4 / self.ctx.elem_bytes()
    }

    /// A tiled convolution's split along k at `nb` images: the variant's rule, where the
    /// weights are one chunk and the (f32) partial sums fit one binding.
    pub(super) fn conv_split(
        &self,
        program: &Program,
        step: &Step,
        v: Kernels,
        nb: usize,
    ) -> (usize, usize) {
        let Kernel::Conv { cfg, .. } = &step.kernel else {
            return (1, 0);
        };
        let (xs, os) = (program.shape(step.inputs[0]), program.shape(step.output));
        let k = xs[1] / cfg.groups * cfg.kernel[0] * cfg.kernel[1];
        let (s, chunk) = v.split_k(conv_work(cfg, os, nb), k);
        let bytes = (s * nb * numel(&os[1..]) * 4) as u64;
        if s > 1 && self.whole_weights(step) && bytes <= self.limit {
            (s, chunk)
        } else {
            (1, 0)
        }
    }

    /// A convolution on a special kernel: Winograd F(2x2, 3x3) (input transform, 16
    /// GEMMs, output transform with the epilogue), a GEMM with the epilogue (on the
    /// input, or on its im2col copy), or the direct kernel on the GEMM's weights.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn special_conv(
        &mut self,
        program: &Program,
        step: &Step,
        up: &Uploaded,
        sp: conv::Special,
        nb: usize,
        (x, res): (Bind, Option<Bind>),
        out: Bind,
    ) -> Result<()> {
        let what = step.nodes.join("+");
        let Kernel::Conv { cfg, .. } = &step.kernel else {
            unreachable!("a convolution step")
        };
        let (xs, os) = (program.shape(step.inputs[0]), program.shape(step.output));
        let key = up.key.as_deref().expect("a conv weight");
        let weights = Bind::whole(&self.derived_weights(key, &up.chunks[0], sp, &what)?);
        let dummy = Bind::whole(&self.dummy);
        let (a, b) = match sp.scratch_len(nb) {
            (0, 0) => (dummy.clone(), dummy.clone()),
            (a_len, b_len) => {
                let (a, b) = self.scratch.as_ref().expect("sized for every layer");
                let elem = self.ctx.elem_bytes();
                (Bind::first(a, a_len, elem), Bind::first(b, b_len, elem))
            }
        };
        let u = |v: usize| v as u32;
        let has_res = res.is_some() as u32;
        let oc = os[1];
        let layer = conv::Params {
            has_res,
            relu: step.relu as u32,
            m_count: u(oc),
            ..conv::Params::layer(cfg, xs, os, nb)
        };
        let affine = Bind::whole(up.bias.as_ref().expect("conv bias"));
        let bufs = |x: Bind, affine: Bind, res: Bind, y: Bind, gemm: bool| conv::Buffers {
            x4: if gemm { x.clone() } else { dummy.clone() },
            wt4: if gemm { weights.clone() } else { dummy.clone() },
            x,
            wt: dummy.clone(),
            affine,
            res,
            y,
        };
        let per_element = |b: &Self, n: usize| b.fold(n.div_ceil(kernels::WG), &what);
        let max = self.max_groups as usize;
        match sp {
            conv::Special::Winograd(wd) => {
                let grid = per_element(self, nb * wd.c * wd.t4)?;
                let bs = bufs(x, dummy.clone(), dummy.clone(), a.clone(), false);
                self.push(&conv::FAMILY, "wino_input", &layer, bs, grid, &what)?;
                // `oc` = `m_count`: the GEMM's rows are whole layers (conv_store's layout).
                let products = conv::Params {
                    k: u(wd.c),
                    p: u(wd.t4),
                    p4: u(wd.t4),
                    oc: u(oc),
                    m_count: u(oc),
                    g_count: 16,
                    plain: 1,
                    ..Default::default()
                };
                if wd.tiled {
                    // A 1x1 convolution of 16 groups (one per transform element) from
                    // [image][element][c][t4] to [image][element][oc][t4].
                    let prm = conv::Params {
                        c: u(16 * wd.c),
                        h: 1,
                        w: u(wd.t4),
                        oc: u(16 * oc),
                        oh: 1,
                        ow: u(wd.t4),
                        kh: 1,
                        kw: 1,
                        sh: 1,
                        sw: 1,
                        dh: 1,
                        dw: 1,
                        icg: u(wd.c),
                        ocg: u(oc),
                        g_count: 16,
                        k: u(wd.c),
                        p: u(wd.t4),
                        m_count: u(oc),
                        batch: u(nb),
                        plain: 1,
                        ..Default::default()
                    };
                    let limits = &self.ctx.shared.limits;
                    let v = Kernels::product_tiles(limits, [wd.t4, oc, nb * 16]);
                    let bs = conv::Buffers {
                        wt: weights.clone(),
                        ..bufs(a, dummy.clone(), dummy.clone(), b.clone(), false)
                    };
                    let grid = v.grid(wd.t4, oc, nb * 16, max);
                    self.push(&conv::FAMILY, v.entry(), &prm, bs, grid, &what)?;
                } else {
                    let (entry, grid) = conv::gemm_plan(wd.t4, oc, nb * 16, max);
                    let bs = bufs(a, dummy.clone(), dummy.clone(), b.clone(), true);
                    self.push(&conv::FAMILY, entry, &products, bs, grid, &what)?;
                }
                let grid = per_element(self, nb * oc * wd.tiles)?;
                let bs = bufs(b, affine, res.unwrap_or(dummy.clone()), out, false);
                self.push(&conv::FAMILY, "wino_output", &layer, bs, grid, &what)
            }
            conv::Special::Gemm(g) => {
                let input = if g.im2col {
                    let prm = conv::Params {
                        k: u(g.k),
                        p4: u(g.p4),
                        ..layer
                    };
                    let grid = per_element(self, nb * g.k * os[2])?;
                    let bs = bufs(x, dummy.clone(), dummy.clone(), a.clone(), false);
                    self.push(&conv::FAMILY, "im2col", &prm, bs, grid, &what)?;
                    a
                } else {
                    x
                };
                let prm = conv::Params {
                    k: u(g.k),
                    p: u(g.p),
                    p4: u(g.p4),
                    oc: u(oc),
                    m_count: u(oc),
                    g_count: 1,
                    has_res,
                    relu: step.relu as u32,
                    ..Default::default()
                };
                let (entry, grid) = conv::gemm_plan(g.p4, oc, nb, max);
                let bs = bufs(input, affine, res.unwrap_or(dummy.clone()), out, true);
                self.push(&conv::FAMILY, entry, &prm, bs, grid, &what)
            }
            conv::Special::Direct { .. } => {
                let grid = conv::gemm_grid(os[2] * os[3], oc, nb, max);
                let bs = conv::Buffers {
                    wt4: weights.clone(),
                    ..bufs(x, affine, res.unwrap_or(dummy.clone()), out, false)
                };
                self.push(&conv::FAMILY, "conv2d_rbk", &layer, bs, grid, &what)
            }
        }
    }

    /// The form of conv weight `key` (in one chunk) that `sp` reads: the model's, else
    /// made by a dispatch in this plan's prologue.
    pub(super) fn derived_weights(
        &mut self,
        key: &str,
        chunk: &Chunk,
        sp: conv::Special,
        what: &str,
    ) -> Result<wgpu::Buffer> {
        let (entry, form) = sp.weight_form();
        let name = format!("{key}#{form}");
        if let Some(b) = self.weights.derived(&name) {
            return Ok(b);
        }
        if let Some((_, b)) = self.derived.iter().find(|(k, _)| *k == name) {
            return Ok(b.clone());
        }
        let buf = self.storage(&name, sp.weight_len(), wgpu::BufferUsages::empty());
        let (c, oc, k) = match sp {
            conv::Special::Gemm(conv::Gemm { k, oc, .. }) | conv::Special::Direct { k, oc } => {
                (0, oc, k)
            }
            conv::Special::Winograd(w) => (w.c, w.oc, 0),
        };
        let tiled = matches!(sp, conv::Special::Winograd(w) if w.tiled);
        let prm = conv::Params {
            c: c as u32,
            k: k as u32,
            m_count: oc as u32,
            // Winograd's weights for the tiled kernel: [element][oc][c].
            plain: tiled as u32,
            ..Default::default()
        };
        let dummy = Bind::whole(&self.dummy);
        let bufs = conv::Buffers {
            x: dummy.clone(),
            wt: Bind::whole(&chunk.buf),
            affine: dummy.clone(),
            res: dummy.clone(),
            y: Bind::whole(&buf),
            x4: dummy.clone(),
            wt4: dummy,
        };
        let n = oc * c.max(k);
        let grid = self.fold(n.div_ceil(kernels::WG), what)?;
        let d = self.pending_dispatch(&conv::FAMILY, entry, &prm, bufs, grid, what)?;
        self.prologue.push(PendingCmd::Dispatch(d));
        self.derived.push((name, buf.clone()));
        Ok(buf)
    }
}

/// What a convolution with output shape `os` makes at `nb` images: pixels by channels
/// per each of its (image, group) planes.
pub(super) fn conv_work(cfg: &crate::graph::Conv2d, os: &[usize], nb: usize) -> [usize; 3] {
    [os[2] * os[3], os[1] / cfg.groups, nb * cfg.groups]
}
