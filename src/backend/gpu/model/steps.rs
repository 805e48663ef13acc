//! How each op family's step is dispatched, but convolutions ([`super::convs`]): its
//! uniforms, its buffers in binding order, its entry point and grid.

use super::{Builder, Uploaded};
use crate::backend::gpu::kernels::{self, elementwise, linear, norm, pool, Bind};
use crate::error::Result;
use crate::graph::{Linear, Lrn, Pool2d};

/// What a step's dispatches read and write, at `nb` images of a batch chunk.
pub(super) struct StepIo {
    /// Its first input's shape and its output's (whole batch).
    pub xs: Vec<usize>,
    pub os: Vec<usize>,
    /// The step's nodes, for errors.
    pub what: String,
    pub relu: u32,
    /// The inputs' bindings, the residual's and the output's, for `nb` images.
    pub ins: Vec<Bind>,
    pub res: Option<Bind>,
    pub out: Bind,
    pub nb: usize,
}

impl StepIo {
    /// Output values for the chunk's images.
    pub fn total(&self) -> usize {
        crate::tensor::numel(&self.os[1..]) * self.nb
    }
    pub fn x(&self) -> Bind {
        self.ins[0].clone()
    }
    pub fn has_res(&self) -> u32 {
        self.res.is_some() as u32
    }
}

pub(super) fn u(v: usize) -> u32 {
    v as u32
}

impl Builder<'_> {
    /// One invocation per output element.
    pub(super) fn per_element(&self, n: usize, what: &str) -> Result<[usize; 3]> {
        self.fold(n.div_ceil(kernels::WG), what)
    }

    /// The residual's binding, or an unused one.
    pub(super) fn res_or_dummy(&self, io: &StepIo) -> Bind {
        io.res.clone().unwrap_or_else(|| Bind::whole(&self.dummy))
    }

    pub(super) fn linear_step(&mut self, up: &Uploaded, cfg: &Linear, io: &StepIo) -> Result<()> {
        let bias = up.bias.as_ref().expect("linear bias");
        for ch in &up.chunks {
            let prm = linear::Params {
                batch: u(io.nb),
                k: u(cfg.in_features),
                n_total: u(cfg.out_features),
                rows: u(ch.rows),
                n_base: u(ch.row),
                relu: io.relu,
                ..Default::default()
            };
            let bufs = linear::Buffers {
                x: io.x(),
                wt: Bind::whole(&ch.buf),
                bias: Bind::whole(bias),
                y: io.out.clone(),
                x4: io.x(),
                wt4: Bind::whole(&ch.buf),
            };
            let (entry, groups) = linear::plan(self.variant, ch.rows, cfg.in_features);
            let grid = self.fold(groups, &io.what)?;
            self.push(&linear::FAMILY, entry, &prm, bufs, grid, &io.what)?;
        }
        Ok(())
    }

    /// Max or average pooling (`entry`), windows as `pl` gives them.
    pub(super) fn pool_step(
        &mut self,
        entry: &'static str,
        pl: &Pool2d,
        io: &StepIo,
    ) -> Result<()> {
        let (xs, os, total) = (&io.xs, &io.os, io.total());
        let prm = pool::Params {
            total: u(total),
            h: u(xs[2]),
            w: u(xs[3]),
            oh: u(os[2]),
            ow: u(os[3]),
            kh: u(pl.kernel[0]),
            kw: u(pl.kernel[1]),
            sh: u(pl.stride[0]),
            sw: u(pl.stride[1]),
            ph: u(pl.padding[0]),
            pw: u(pl.padding[1]),
            count_include_pad: pl.count_include_pad as u32,
        };
        let grid = self.per_element(total, &io.what)?;
        let bufs = pool::Buffers {
            x: io.x(),
            y: io.out.clone(),
        };
        self.push(&pool::FAMILY, entry, &prm, bufs, grid, &io.what)
    }

    pub(super) fn adaptive_pool_step(&mut self, output: [usize; 2], io: &StepIo) -> Result<()> {
        let total = io.total();
        let prm = pool::Params {
            total: u(total),
            h: u(io.xs[2]),
            w: u(io.xs[3]),
            oh: u(output[0]),
            ow: u(output[1]),
            ..Default::default()
        };
        let grid = self.per_element(total, &io.what)?;
        let bufs = pool::Buffers {
            x: io.x(),
            y: io.out.clone(),
        };
        self.push(
            &pool::FAMILY,
            "adaptive_avg_pool",
            &prm,
            bufs,
            grid,
            &io.what,
        )
    }

    pub(super) fn lrn_step(&mut self, l: &Lrn, io: &StepIo) -> Result<()> {
        let (xs, total) = (&io.xs, io.total());
        let prm = norm::Params {
            total: u(total),
            c: u(xs[1]),
            hw: u(xs[2] * xs[3]),
            size: u(l.size),
            alpha: l.alpha,
            beta: l.beta,
            k: l.k,
            ..Default::default()
        };
        let grid = self.per_element(total, &io.what)?;
        let dummy = Bind::whole(&self.dummy);
        let bufs = norm::Buffers {
            x: io.x(),
            scale: dummy.clone(),
            shift: dummy,
            res: self.res_or_dummy(io),
            y: io.out.clone(),
        };
        self.push(&norm::FAMILY, "lrn", &prm, bufs, grid, &io.what)
    }

    /// BatchNorm (`groups` None: per channel, unfolded) or GroupNorm, with the residual
    /// and ReLU fused.
    pub(super) fn norm_step(
        &mut self,
        (scale, shift): (&wgpu::Buffer, &wgpu::Buffer),
        groups: Option<(usize, f32)>,
        io: &StepIo,
    ) -> Result<()> {
        let (xs, total) = (&io.xs, io.total());
        let (entry, groups, eps, grid) = match groups {
            Some((groups, eps)) => (
                "group_norm",
                groups,
                eps,
                self.fold(io.nb * groups, &io.what)?,
            ),
            None => ("batch_norm", 1, 0.0, self.per_element(total, &io.what)?),
        };
        let prm = norm::Params {
            total: u(total),
            c: u(xs[1]),
            hw: u(xs[2] * xs[3]),
            eps,
            groups: u(groups),
            has_res: io.has_res(),
            relu: io.relu,
            ..Default::default()
        };
        let bufs = norm::Buffers {
            x: io.x(),
            scale: Bind::whole(scale),
            shift: Bind::whole(shift),
            res: self.res_or_dummy(io),
            y: io.out.clone(),
        };
        self.push(&norm::FAMILY, entry, &prm, bufs, grid, &io.what)
    }

    /// `add` (of the step's two inputs, then ReLU where fused) or a lone `relu`.
    pub(super) fn elementwise_step(&mut self, entry: &'static str, io: &StepIo) -> Result<()> {
        let total = io.total();
        let (b, relu) = match entry {
            "add" => (io.ins[1].clone(), io.relu),
            _ => (Bind::whole(&self.dummy), 0),
        };
        let prm = elementwise::Params {
            total: u(total),
            relu,
            ..Default::default()
        };
        let grid = self.per_element(total, &io.what)?;
        let bufs = elementwise::Buffers {
            a: io.x(),
            b,
            y: io.out.clone(),
        };
        self.push(&elementwise::FAMILY, entry, &prm, bufs, grid, &io.what)
    }

    /// Softmax along `dim`: one invocation per row.
    pub(super) fn softmax_step(&mut self, dim: usize, io: &StepIo) -> Result<()> {
        let dim_len = io.xs[dim];
        let inner: usize = io.xs[dim + 1..].iter().product();
        let rows = io.total() / dim_len;
        let prm = elementwise::Params {
            total: u(rows),
            relu: 0,
            dim_len: u(dim_len),
            inner: u(inner),
        };
        let grid = self.per_element(rows, &io.what)?;
        let bufs = elementwise::Buffers {
            a: io.x(),
            b: Bind::whole(&self.dummy),
            y: io.out.clone(),
        };
        self.push(&elementwise::FAMILY, "softmax", &prm, bufs, grid, &io.what)
    }
}
