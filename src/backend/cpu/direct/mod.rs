//! Direct convolution with prepacked weights, vectorised over output channels.
//!
//! The input is copied once per run into zero-padded planes, split by stride phase
//! (`x[c][phase][row][col]` with `phase = (row % sh, col % sw)` of the padded input), so
//! that every kernel tap reads a run of consecutive floats for consecutive output
//! pixels, whatever the stride. A tile is `nr` consecutive output pixels of one row by
//! one block of output channels; the microkernel keeps its `nr x block` accumulators in
//! registers for the whole reduction, reading one packed weight vector per tap and
//! broadcasting one input float per pixel, then transposes the tile to NCHW and applies
//! the epilogue (scale, shift, residual, ReLU) on the way out. No im2col, no packing of
//! activations, and the weights are packed once, when a plan is prepared. Where the layer
//! before is a channel-tile convolution read by this one only, it stores its output straight
//! into those padded planes ([`Layout::Padded`]) and nothing is copied.
//!
//! The AVX2 channel tile reads its copy interleaved by 8 channels ([`Shape::lanes`]), and
//! between such layers the plan keeps activations in that order ([`Layout::Blocked`]): a
//! tile then stores each pixel's channels as one vector, with no transpose, and the next
//! layer's copy moves whole vectors, or is skipped for 1x1 stride-1 layers.

#[cfg(target_arch = "x86_64")]
use super::layout::BLOCKED_LANES;
use super::layout::{padded_len, zero_borders, Layout};
use crate::graph::Conv2d;
use crate::lower::StepParams;
use std::sync::Arc;

/// Bytes of weight panels one task cycles through: half of a 1 MiB L2, or three quarters
/// of a smaller one ([`l2_panels`]).
const L2_PANELS: usize = 512 * 1024;

/// Bytes of a pixel-vector task's input that stay in L2 while each of its channel blocks
/// sweeps them (a quarter of a typical 1 MiB L2).
#[cfg(target_arch = "x86_64")]
const L2_INPUT_RUN: usize = 256 * 1024;

/// The smallest map (pixels) for the pixel-vector 1x1 kernel: on 7x7 maps its 48-pixel
/// tiles would idle.
#[cfg(target_arch = "x86_64")]
const PIXELS_MIN: usize = 14 * 14;

/// This core's L2 in bytes, where the OS or CPUID says, else a typical 1 MiB.
fn l2_bytes() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let l2 = gemm_common::cache::CACHE_INFO[1].cache_bytes;
        if l2 > 0 {
            return l2;
        }
    }
    1 << 20
}

/// [`L2_PANELS`], or three quarters of this core's L2 where that is less: a task's input
/// rows and output stream through L2 beside its panels (on Zen 3's 512 KiB, ResNet-50's
/// 14x14 3x3 layers ran 10% slower with three 147 KiB panels per task than with two).
fn l2_panels() -> usize {
    L2_PANELS.min(l2_bytes() / 4 * 3)
}

/// Bytes of input a group of AVX2 channel tiles reads (see [`DirectConv::run_flat`]): a
/// quarter of this core's L2, at most [`L2_INPUT_RUN`].
#[cfg(target_arch = "x86_64")]
fn l2_group_input() -> usize {
    L2_INPUT_RUN.min(l2_bytes() / 4)
}

/// Bytes of weights per pass where a channel tile's reduction runs in passes (see
/// [`DirectConv::new`]): on AVX2, 576 taps of a 16-channel block, 64 input channels of a
/// 3x3 layer; on AVX-512, 189 taps of a 48-channel block.
#[cfg(target_arch = "x86_64")]
const PASS_PANEL: usize = 36 * 1024;

/// Input channels per group of an image layer (RGB, RGBA): see [`DirectConv::choose`].
#[cfg(target_arch = "x86_64")]
const STEM_CHANNELS: usize = 4;

/// The most AVX2 channel tiles in one group (bounds the list of their pixel bases).
#[cfg(target_arch = "x86_64")]
const MAX_GROUP: usize = 128;

/// What the microkernel needs to know about one tile shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Output channels per block: a multiple of the vector width, or with `pixels`, the
    /// channels per tile.
    pub block: usize,
    /// Output pixels per tile.
    pub nr: usize,
    /// Vectors over output pixels instead of channels: no transpose, and each tap reads
    /// its input as vectors. For 1x1 convolutions without padding, whose pixels are one
    /// contiguous run per channel (in place, or after the stride's phase copy), tiles run
    /// over row ends; for others (image layers) they stop at each row's end.
    pub pixels: bool,
    /// Input channels interleaved per pixel in the phase copy (1: planes as they are;
    /// 8: `[channel / 8][phase][row][col][channel % 8]`), so that a tile's taps read a
    /// few cache lines per 8 channels, and consecutive tiles the same lines. The taps
    /// and the packed weights follow the same order.
    pub lanes: usize,
}

/// A channel tile's microkernel: `valid` pixels from the base `x` (taps at `kofs`) by
/// `live` channels of `panel`, stored `ldo` apart at `out` through the epilogue (or into
/// `sums` where the reduction runs in passes).
type RunFn = unsafe fn(
    x: *const f32,
    kofs: &[usize],
    panel: &[f32],
    out: *mut f32,
    ldo: usize,
    valid: usize,
    live: usize,
    res: Option<*const f32>,
    ep: &Epilogue,
    sums: Sums,
);

/// A pixel-vector microkernel: `live` channels by `len` consecutive pixels.
#[cfg(target_arch = "x86_64")]
type PointwiseFn = unsafe fn(
    x: *const f32,
    kofs: &[usize],
    panel: &[f32],
    out: *mut f32,
    ldo: usize,
    len: usize,
    live: usize,
    res: Option<*const f32>,
    ep: &Epilogue,
);

/// AVX2's channel tile: a base per pixel (`xs`), stored as [`avx2::Store`] says.
#[cfg(target_arch = "x86_64")]
type GatherFn =
    unsafe fn(xs: &[*const f32; 8], kofs: &[usize], panel: &[f32], s: &avx2::Store, sums: Sums);

/// How a tile's microkernel is called; the run loop follows it.
#[derive(Clone, Copy)]
enum Kernel {
    /// Channel vectors from one base per tile (AVX-512, SIMD128).
    Run(RunFn),
    /// Channel vectors from a base per pixel (AVX2).
    #[cfg(target_arch = "x86_64")]
    Gather(GatherFn),
    /// Pixel vectors (1x1 convolutions, image layers).
    #[cfg(target_arch = "x86_64")]
    Pointwise(PointwiseFn),
}

/// A tile shape bound to the microkernel compiled for it. Each instruction set's file
/// lists its tiles (`TILES`, and `POINTWISE` where it has one), and only they are chosen
/// from: a shape cannot be planned without its kernel.
#[derive(Clone, Copy)]
pub struct Tile {
    pub shape: Shape,
    kernel: Kernel,
}

impl std::fmt::Debug for Tile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shape.fmt(f)
    }
}

/// A convolution's weights in the microkernel's layout: per group and block of output
/// channels, `[k][block]` with `k = (ci, ky, kx)` as PyTorch orders them, or with
/// `lanes` > 1, `(ci / lanes, ky, kx, ci % lanes)` as the interleaved input is read;
/// zero-padded past the group's last channel.
pub fn pack(weight: &[f32], cfg: &Conv2d, block: usize, lanes: usize) -> Vec<f32> {
    let g = cfg.groups;
    let ocg = cfg.out_channels / g;
    let icg = cfg.in_channels / g;
    let khw = cfg.kernel[0] * cfg.kernel[1];
    let k = icg * khw;
    let nb = ocg.div_ceil(block);
    // The source index (PyTorch's order) of each tap.
    let order: Vec<usize> = (0..k)
        .map(|t| {
            let (cb, rest) = (t / (khw * lanes), t % (khw * lanes));
            let (tap, c8) = (rest / lanes, rest % lanes);
            (cb * lanes + c8) * khw + tap
        })
        .collect();
    let mut out = vec![0f32; g * nb * k * block];
    for gi in 0..g {
        for o in 0..ocg {
            let (b, lane) = (o / block, o % block);
            let panel = (gi * nb + b) * k * block;
            let src = &weight[(gi * ocg + o) * k..(gi * ocg + o + 1) * k];
            for (t, &kk) in order.iter().enumerate() {
                out[panel + t * block + lane] = src[kk];
            }
        }
    }
    out
}

/// [`pack`]'s inverse: the weight in PyTorch's order again (the padding lanes dropped).
pub fn unpack(panels: &[f32], cfg: &Conv2d, block: usize, lanes: usize) -> Vec<f32> {
    let g = cfg.groups;
    let ocg = cfg.out_channels / g;
    let icg = cfg.in_channels / g;
    let khw = cfg.kernel[0] * cfg.kernel[1];
    let k = icg * khw;
    let nb = ocg.div_ceil(block);
    let mut out = vec![0f32; cfg.out_channels * k];
    for gi in 0..g {
        for o in 0..ocg {
            let (b, lane) = (o / block, o % block);
            let panel = (gi * nb + b) * k * block;
            let dst = &mut out[(gi * ocg + o) * k..(gi * ocg + o + 1) * k];
            for t in 0..k {
                let (cb, rest) = (t / (khw * lanes), t % (khw * lanes));
                let (tap, c8) = (rest / lanes, rest % lanes);
                dst[(cb * lanes + c8) * khw + tap] = panels[panel + t * block + lane];
            }
        }
    }
    out
}

/// One convolution planned for the direct kernel: geometry fixed at prepare (the plan's
/// shapes never change), packed weights shared between plans of the same model.
pub struct DirectConv {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    isa: Isa,
    shape: Shape,
    /// The shape's microkernel: which run loop, and what it calls per tile.
    kernel: Kernel,
    panels: Arc<[f32]>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    groups: usize,
    icg: usize,
    ocg: usize,
    oh: usize,
    ow: usize,
    k: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    /// Used stride phases `(py, px)`, in buffer order.
    phases: Vec<(usize, usize)>,
    /// Rows and columns of one phase plane.
    hph: usize,
    wph: usize,
    /// Offset of tap `k` from a pixel's base, inside one group's channels.
    kofs: Vec<usize>,
    /// Read the input in place (stride 1, no padding): no copy.
    in_place: bool,
    /// How the input is stored, and how the output is to be.
    input: Layout,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    output: Layout,
    /// The tasks of a run.
    plan: Tasks,
    /// Taps per pass of a channel tile's reduction ([`Self::k`] where it runs whole), a
    /// multiple of one block of input channels' taps: see [`Self::set_pass`].
    pass: usize,
    /// AVX2 channel tiles per group (see [`Self::run_flat`]), fixed by [`Self::pass`].
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    group: usize,
}

/// Partial sums of a channel tile whose reduction runs in passes: its accumulators start
/// from `from` (else zero) and, where `to` is given, end there as they are, not through
/// the epilogue. Each holds the tile's `NR * MV` vectors, pixel-major.
#[derive(Clone, Copy)]
struct Sums {
    from: Option<*const f32>,
    to: Option<*mut f32>,
}

/// The instruction sets with a microkernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA (x86 CPUs without AVX-512: most laptops and older servers).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// wasm SIMD128 (the wasm builds enable it at compile time).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
}

impl Isa {
    /// The best one this CPU runs, if any.
    pub fn detect() -> Option<Isa> {
        Self::available().first().copied()
    }

    /// Every one this CPU runs, best first.
    #[allow(clippy::vec_init_then_push)]
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut all = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                all.push(Isa::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                all.push(Isa::Avx2);
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        all.push(Isa::Simd128);
        all
    }

    /// The pixel-vector tile, where this ISA has one.
    #[cfg(target_arch = "x86_64")]
    fn pointwise(self) -> Option<Tile> {
        match self {
            Isa::Avx512 => Some(avx512::POINTWISE),
            Isa::Avx2 => Some(avx2::POINTWISE),
        }
    }

    /// The channel tiles, best first for wide rows.
    fn tiles(self) -> &'static [Tile] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &avx512::TILES,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &avx2::TILES,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => &simd128::TILES,
        }
    }
}

impl DirectConv {
    /// The tile shape for `cfg` with output `[oh, ow]`: pixel vectors for 1x1
    /// convolutions on maps of 14x14 and up, and for image layers whose rows they tile
    /// as well, where the CPU has that kernel; else the channel-vector shape that wastes
    /// the least on partial tiles and blocks (ties go to the first). `planes`: the layer
    /// reads and stores planes whatever its tile (else AVX2 prefers the channel tile
    /// wherever it can read blocked, to keep its neighbours blocked).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub fn choose(isa: Isa, cfg: &Conv2d, [oh, ow]: [usize; 2], planes: bool) -> Tile {
        #[cfg(target_arch = "x86_64")]
        if let Some(pointwise) = isa.pointwise() {
            // AVX2's tile reads 64 bytes of every input channel: past 512 channels they
            // no longer stay in L1 for the next block, and the interleaved channel tile
            // wins (ResNet-50's 1024-channel 14x14 layers: 20% faster). It also wins on
            // strided 1x1 layers, whose input is copied either way (ResNet-50's
            // downsampling layers: 5-15% faster), and where its neighbours then keep
            // their activations blocked.
            let icg = cfg.in_channels / cfg.groups;
            let blocks = icg.is_multiple_of(BLOCKED_LANES) && !planes;
            let avx2_channels = isa == Isa::Avx2 && (icg > 512 || cfg.stride != [1, 1] || blocks);
            if cfg.kernel == [1, 1]
                && cfg.padding == [0, 0]
                && oh * ow >= PIXELS_MIN
                && !avx2_channels
            {
                return pointwise;
            }
        }
        let ocg = cfg.out_channels / cfg.groups;
        let eff = |s: &Shape| {
            let cols = ow as f64 / (ow.div_ceil(s.nr) * s.nr) as f64;
            cols * ocg as f64 / (ocg.div_ceil(s.block) * s.block) as f64
        };
        let mut best = isa.tiles()[0];
        for t in isa.tiles() {
            if eff(&t.shape) > eff(&best.shape) + 1e-9 {
                best = *t;
            }
        }
        // An image layer's reduction (3 channels: 27 taps for VGG's, 147 for ResNet's
        // stem) is too short for the channel tile's transpose to pay: pixel vectors along
        // each output row, where they waste no more lanes (ResNet's stem 1.43 -> 1.20 ms,
        // VGG's first layer 2.7 -> 1.7 ms on one Zen 5 core; AlexNet's 55-wide rows lose).
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && cfg.in_channels / cfg.groups <= STEM_CHANNELS {
            // Each row's tiles end in a vector of 16 pixels, partly masked.
            let cols = ow as f64 / (ow.div_ceil(16) * 16) as f64;
            let block = avx512::POINTWISE.shape.block;
            let rows_eff = cols * ocg as f64 / (ocg.div_ceil(block) * block) as f64;
            if rows_eff >= eff(&best.shape) - 1e-9 {
                return avx512::POINTWISE;
            }
        }
        // The AVX2 channel tile reads its input interleaved by 8 channels, copied so even
        // where it could be read in place (1x1 layers on 7x7 maps: 20-30% faster with the
        // copy): its tiles are too small to hold a channel's reads for long, and on plain
        // planes each tap of a deep layer reads a cache line of its own (VGG-16's
        // 512-channel layers ran at 60% of the rate with their input in L1).
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 && (cfg.in_channels / cfg.groups).is_multiple_of(BLOCKED_LANES) {
            best.shape.lanes = BLOCKED_LANES;
        }
        best
    }

    /// Whether a plan for `shape` can read its input, and store its output, in
    /// [`Layout::Blocked`]: AVX2 channel tiles reading interleaved copies, and storing
    /// whole blocks of channels per group.
    pub fn blocks(isa: Isa, shape: Shape, cfg: &Conv2d) -> (bool, bool) {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 && !shape.pixels {
            let ocg = cfg.out_channels / cfg.groups;
            return (
                shape.lanes == BLOCKED_LANES,
                ocg.is_multiple_of(BLOCKED_LANES),
            );
        }
        let _ = (isa, shape, cfg);
        (false, false)
    }

    /// Whether a plan for `shape` can store its output as [`Layout::Padded`]: the
    /// channel tiles of [`Self::run`], which store each row's pixels apart.
    pub fn stores_padded(isa: Isa, shape: Shape) -> bool {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 {
            return false;
        }
        let _ = isa;
        !shape.pixels && shape.lanes == 1
    }

    /// Whether a plan for `shape` can read its input as [`Layout::Padded`] with `cfg`'s
    /// padding: a channel tile on planes, at stride 1, with padding.
    pub fn reads_padded(shape: Shape, cfg: &Conv2d) -> bool {
        !shape.pixels && shape.lanes == 1 && cfg.stride == [1, 1] && cfg.padding != [0, 0]
    }

    /// Plan `cfg` on input `[n, c, h, w]` and output `[n, oc, oh, ow]` with `panels`
    /// packed by [`pack`] for `shape.block`, reading and writing activations in the
    /// layouts given (`Blocked` only where [`Self::blocks`] allows it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: Isa,
        tile: Tile,
        panels: Arc<[f32]>,
        cfg: &Conv2d,
        [n, c, h, w]: [usize; 4],
        [_, oc, oh, ow]: [usize; 4],
        (input, output): (Layout, Layout),
    ) -> DirectConv {
        let shape = tile.shape;
        let (can_in, can_out) = Self::blocks(isa, shape, cfg);
        assert!(
            input != Layout::Blocked || can_in,
            "{shape:?} reads planes only"
        );
        assert!(
            output != Layout::Blocked || can_out,
            "{shape:?} stores planes only"
        );
        let groups = cfg.groups;
        let (icg, ocg) = (c / groups, oc / groups);
        let [kh, kw] = cfg.kernel;
        let ([sh, sw], [ph, pw], [dh, dw]) = (cfg.stride, cfg.padding, cfg.dilation);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let lanes = shape.lanes;
        debug_assert_eq!(icg % lanes, 0);
        // A padded input is the copy itself, stored by the layer before.
        let padded = matches!(input, Layout::Padded(_));
        assert!(
            !padded || (input == Layout::Padded(cfg.padding) && Self::reads_padded(shape, cfg)),
            "{shape:?} cannot read {input:?} for {cfg:?}"
        );
        assert!(
            !matches!(output, Layout::Padded(_)) || Self::stores_padded(isa, shape),
            "{shape:?} cannot store padded planes on {isa:?}"
        );
        // A blocked input is the copy's own layout when there is one phase and no padding.
        let in_place = padded
            || ((lanes == 1 || input == Layout::Blocked)
                && cfg.stride == [1, 1]
                && cfg.padding == [0, 0]);
        let (hph, wph) = if in_place && !padded {
            (h, w)
        } else {
            (hp.div_ceil(sh), wp.div_ceil(sw))
        };
        let mut phases = vec![];
        for ky in 0..kh {
            for kx in 0..kw {
                let p = ((ky * dh) % sh, (kx * dw) % sw);
                if !phases.contains(&p) {
                    phases.push(p);
                }
            }
        }
        let plane = hph * wph;
        let cstride = phases.len() * plane;
        // Taps in the packed weights' order: (ci, ky, kx), or (ci / lanes, ky, kx,
        // ci % lanes) on the interleaved copy, where a block of `lanes` channels holds
        // its phases' pixels `lanes` floats apart.
        let mut kofs = Vec::with_capacity(icg * kh * kw);
        for cb in 0..icg / lanes {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (r, q) = (ky * dh, kx * dw);
                    let pi = phases.iter().position(|&p| p == (r % sh, q % sw));
                    let pi = pi.expect("every tap's phase is listed");
                    let at = cb * lanes * cstride + (pi * plane + (r / sh) * wph + q / sw) * lanes;
                    kofs.extend((0..lanes).map(|c8| at + c8));
                }
            }
        }
        let mut d = DirectConv {
            isa,
            shape,
            kernel: tile.kernel,
            panels,
            n,
            c,
            h,
            w,
            groups,
            icg,
            ocg,
            oh,
            ow,
            k: icg * kh * kw,
            stride: cfg.stride,
            padding: cfg.padding,
            phases,
            hph,
            wph,
            kofs,
            in_place,
            input,
            output,
            plan: Tasks {
                per_task: 0,
                run: 0,
                list: vec![],
            },
            pass: 0,
            group: 1,
        };
        // Where one block's panel passes half of L2, it shares L2 badly with the input
        // rows its tiles read: the AVX2 channel tile then reduces in passes of about
        // `PASS_PANEL` of weights over a group of tiles, its partial sums kept between
        // passes (on Zen 3, VGG-16's 512-channel 3x3 layers 5-7% faster on one core,
        // ResNet-50's stride-2 one 15%). The AVX-512 tile does so on strided layers only,
        // whose tiles read each channel from four phase planes: ResNet-50's stride-2
        // 512-channel layer at batch 8, 8% faster on Zen 5 (stride-1 layers ran 0-3% slower
        // in passes, with their weights hot or cold).
        #[cfg(target_arch = "x86_64")]
        let big = !shape.pixels && d.k * shape.block * 4 > l2_bytes() / 2;
        #[cfg(target_arch = "x86_64")]
        let pass = if big && (isa == Isa::Avx2 || cfg.stride != [1, 1]) {
            let per_block = lanes * kh * kw;
            per_block * (PASS_PANEL / (shape.block * 4) / per_block).max(1)
        } else {
            d.k
        };
        #[cfg(not(target_arch = "x86_64"))]
        let pass = d.k;
        d.set_pass(pass);
        // The tasks depend on shapes only: listed once, here.
        d.plan = if shape.pixels && d.flat() {
            d.tasks(oh * ow, shape.nr)
        } else {
            d.tasks(oh, 1)
        };
        // In place, the reads past a row's end must stay inside the input itself; else
        // they go to the copy's slack (the planes are the same either way). A padded
        // input has that slack.
        if padded {
            assert!(d.max_read() <= padded_len([n, c, h, w], cfg.padding));
        } else if d.in_place && !shape.pixels && d.max_read() > n * c * h * w {
            d.in_place = false;
        }
        d
    }

    /// Sets the taps per pass of a channel tile's reduction (at most [`Self::k`]), and the
    /// AVX2 tiles per group that follow from it: a group's input (`nr` pixels by one
    /// pass's taps per tile) fills a quarter of L2. Tiles run in groups whose input stays
    /// in L2 while each block's weights sweep them: a block's panel is then read once per
    /// group, not once per 6 pixels, and its output and residual rows are written and
    /// read as long runs rather than 6 pixels per block. On Zen 3, groups of a quarter of
    /// L2 ran ResNet-50's layers 3-10% faster than groups that fit L1 in one-core
    /// profiles, 1-2% in whole runs.
    fn set_pass(&mut self, taps: usize) {
        self.pass = taps.clamp(1, self.k.max(1));
        #[cfg(target_arch = "x86_64")]
        {
            let tile = self.shape.nr * self.pass * 4;
            self.group = (l2_group_input() / tile).clamp(1, MAX_GROUP);
        }
    }

    /// Consecutive output pixels sit at consecutive input offsets for every tap, across
    /// rows too (a 1x1 convolution without padding, in place or after the phase copy):
    /// pixel tiles may then run over row ends.
    fn flat(&self) -> bool {
        self.wph == self.ow
    }

    /// Input floats between channels: every used phase plane of one channel.
    fn cstride(&self) -> usize {
        self.phases.len() * self.hph * self.wph
    }

    /// Where [`Self::run`] stores output pixel `(y, x)` of a channel: `(plane, row, first)`,
    /// at `channel * plane + first + y * row + x` (planes, or [`Layout::Padded`]).
    fn out_geometry(&self) -> (usize, usize, usize) {
        match self.output {
            Layout::Padded([ph, pw]) => {
                let row = self.ow + 2 * pw;
                ((self.oh + 2 * ph) * row, row, ph * row + pw)
            }
            _ => (self.oh * self.ow, self.ow, 0),
        }
    }

    /// Floats of the phase buffer (all images), 0 when the input is read in place. The
    /// last tile of a row reads up to `nr - 1` pixels past the row: slack after the last
    /// plane keeps those reads inside the buffer.
    pub fn scratch_len(&self) -> usize {
        if self.in_place {
            0
        } else {
            self.n * self.c * self.cstride() + (self.shape.nr + self.wph) * self.shape.lanes
        }
    }

    /// The highest input offset any tile reads, plus one.
    fn max_read(&self) -> usize {
        let nr = self.shape.nr;
        // A row's reads end with its last tile's `nr` pixels, or with the row itself where
        // the kernels are compiled per tail width (AVX2) and read only its pixels.
        #[allow(unused_mut)]
        let mut row_end = self.ow.div_ceil(nr) * nr;
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 {
            row_end = self.ow;
        }
        (self.n - 1) * self.c * self.cstride()
            + (self.groups - 1) * self.icg * self.cstride()
            + self.kofs.iter().max().copied().unwrap_or(0)
            + ((self.oh - 1) * self.wph + row_end - 1) * self.shape.lanes
            + 1
    }
}

/// `dst[j * 8 + c] = rows[c][j * sw]`: eight channels' rows interleaved per pixel. `avx2`
/// says that the CPU has AVX2 (known once per layer: an [`Isa`] is only made where the CPU
/// runs it).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn interleave(rows: [&[f32]; 8], sw: usize, dst: &mut [f32], avx2: bool) {
    let n = dst.len() / 8;
    for r in &rows {
        assert!(n == 0 || r.len() > (n - 1) * sw);
    }
    #[allow(unused_mut)]
    let mut j = 0;
    #[cfg(target_arch = "x86_64")]
    if avx2 && (sw == 1 || sw == 2) {
        debug_assert!(std::is_x86_feature_detected!("avx2"));
        // SAFETY: the CPU has AVX2; every read is checked against the rows' lengths and
        // every write against `dst`'s inside the function.
        j = unsafe { avx2::interleave(&rows, sw, dst) };
    }
    for j in j..n {
        for (c, r) in rows.iter().enumerate() {
            dst[j * 8 + c] = r[j * sw];
        }
    }
}

/// `dst[j] = src[j * S]`, with the stride a constant so that the copy vectorises.
#[inline(always)]
fn gather<const S: usize>(dst: &mut [f32], src: &[f32]) {
    let Some((last, body)) = dst.split_last_mut() else {
        return;
    };
    *last = src[body.len() * S];
    for (d, s) in body.iter_mut().zip(src.chunks_exact(S)) {
        *d = s[0];
    }
}

/// The quantities a run loop works with (see [`DirectConv::geometry`]).
struct Geometry {
    /// Blocks of output channels per group.
    nb: usize,
    /// Input floats per image and per group, in the buffer the kernels read.
    image: usize,
    gstride: usize,
    /// Output pixels per channel and output channels.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pix: usize,
    oc: usize,
    /// Blocks per task, and output rows or pixels per task.
    per_task: usize,
    run: usize,
}

/// Tasks of a convolution: `(image, group, first block, first row or pixel)`, each over
/// `per_task` blocks and `run` rows or pixels.
struct Tasks {
    per_task: usize,
    run: usize,
    list: Vec<(usize, usize, usize, usize)>,
}

fn out_len(d: &DirectConv) -> usize {
    let shape = [d.n, d.ocg * d.groups, d.oh, d.ow];
    match d.output {
        Layout::Padded(pad) => padded_len(shape, pad),
        _ => shape.iter().product(),
    }
}

/// Per-channel affine transform and ReLU applied as a tile is stored.
pub struct Epilogue<'a> {
    scale: &'a [f32],
    shift: &'a [f32],
    relu: bool,
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;

mod run;
#[cfg(test)]
mod tests;
