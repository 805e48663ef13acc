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

/// The AVX2 pixel-vector tile: 6 channels by 16 pixels (12 accumulators, 2 input
/// vectors and a broadcast weight in 16 registers).
#[cfg(target_arch = "x86_64")]
const POINTWISE_AVX2: Shape = Shape {
    block: 6,
    nr: 16,
    pixels: true,
    lanes: 1,
};

/// The pixel-vector tile: 8 channels by 48 pixels (24 accumulators).
#[cfg(target_arch = "x86_64")]
const POINTWISE: Shape = Shape {
    block: 8,
    nr: 48,
    pixels: true,
    lanes: 1,
};

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

/// How an activation is stored between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[n][c][h][w]`, PyTorch's.
    Planes,
    /// `[n][c / 8][h][w][c % 8]`: the order the AVX2 channel tile reads its input in and
    /// can store its output in, kept from one such layer to the next so that neither
    /// copies into it nor transposes out of it (ONNX Runtime's NCHWc).
    Blocked,
    /// `[n][c][h + 2 * pad[0]][w + 2 * pad[1]]` with zero borders, then zeros past the last
    /// plane ([`padded_len`]): the padded copy a stride-1 convolution reads, stored so by
    /// the convolution before it (its only reader), so that neither copies. Planes
    /// otherwise; channel tiles of [`DirectConv::run`] only.
    Padded([usize; 2]),
}

/// Floats past the last plane of a [`Layout::Padded`] value: the reads of a row's last
/// tile past its end (up to `nr - 1` pixels) stay inside, as in a phase copy's slack.
const PADDED_SLACK: usize = 16;

/// Floats of a value of shape `[n, c, h, w]` stored as [`Layout::Padded`] with `pad`.
pub fn padded_len([n, c, h, w]: [usize; 4], [ph, pw]: [usize; 2]) -> usize {
    let wp = w + 2 * pw;
    n * c * (h + 2 * ph) * wp + wp + PADDED_SLACK
}

/// Zero the borders and the slack of `out`, a [`Layout::Padded`] value of shape
/// `[n, c, h, w]`: its slot is shared with other values, so they hold anything.
fn zero_borders(out: &mut [f32], [n, c, h, w]: [usize; 4], [ph, pw]: [usize; 2]) {
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let (body, slack) = out.split_at_mut(n * c * hp * wp);
    slack.fill(0.0);
    super::kernels::par_chunks(body, hp * wp, |_, plane| {
        // The top rows and the first row's left border, then each row's right border
        // with the next row's left one, then the last row's right border and the bottom.
        plane[..ph * wp + pw].fill(0.0);
        for y in ph..ph + h {
            let end = ((y + 1) * wp + pw).min(hp * wp);
            plane[y * wp + pw + w..end].fill(0.0);
        }
        plane[(ph + h) * wp..].fill(0.0);
    });
}

/// Channels per block of [`Layout::Blocked`], which is also the order the AVX2 channel
/// tile reads its interleaved copies in (see [`Shape::lanes`]).
pub const BLOCKED_LANES: usize = 8;

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
    isa: Isa,
    shape: Shape,
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
    fn pointwise(self) -> Option<Shape> {
        match self {
            Isa::Avx512 => Some(POINTWISE),
            Isa::Avx2 => Some(POINTWISE_AVX2),
        }
    }

    /// Tile shapes with a compiled microkernel, best first for wide rows.
    fn shapes(self) -> &'static [Shape] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &[
                Shape {
                    block: 32,
                    nr: 14,
                    pixels: false,
                    lanes: 1,
                },
                Shape {
                    block: 48,
                    nr: 7,
                    pixels: false,
                    lanes: 1,
                },
                Shape {
                    block: 32,
                    nr: 13,
                    pixels: false,
                    lanes: 1,
                },
            ],
            // 16 vector registers: 12 accumulators, two weight vectors and a broadcast
            // (BLIS's 6x16 for Haswell).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &[Shape {
                block: 16,
                nr: 6,
                pixels: false,
                lanes: 1,
            }],
            // V8 has 16 vector registers: 8 accumulators, the weights and the broadcasts
            // fit (8 wide by 5 pixels spilled and ran at half the speed).
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => &[
                Shape {
                    block: 8,
                    nr: 4,
                    pixels: false,
                    lanes: 1,
                },
                Shape {
                    block: 12,
                    nr: 3,
                    pixels: false,
                    lanes: 1,
                },
            ],
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
    pub fn choose(isa: Isa, cfg: &Conv2d, [oh, ow]: [usize; 2], planes: bool) -> Shape {
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
        let mut best = isa.shapes()[0];
        for s in isa.shapes() {
            if eff(s) > eff(&best) + 1e-9 {
                best = *s;
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
            let block = POINTWISE.block;
            let rows_eff = cols * ocg as f64 / (ocg.div_ceil(block) * block) as f64;
            if rows_eff >= eff(&best) - 1e-9 {
                return POINTWISE;
            }
        }
        // The AVX2 channel tile reads its input interleaved by 8 channels, copied so even
        // where it could be read in place (1x1 layers on 7x7 maps: 20-30% faster with the
        // copy): its tiles are too small to hold a channel's reads for long, and on plain
        // planes each tap of a deep layer reads a cache line of its own (VGG-16's
        // 512-channel layers ran at 60% of the rate with their input in L1).
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 && (cfg.in_channels / cfg.groups).is_multiple_of(BLOCKED_LANES) {
            best.lanes = BLOCKED_LANES;
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
        shape: Shape,
        panels: Arc<[f32]>,
        cfg: &Conv2d,
        [n, c, h, w]: [usize; 4],
        [_, oc, oh, ow]: [usize; 4],
        (input, output): (Layout, Layout),
    ) -> DirectConv {
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

    /// Copy `x` into the zero-padded phase planes (interleaved by `lanes` channels).
    fn fill(&self, x: &[f32], buf: &mut [f32]) {
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
        super::kernels::par_chunks(body, per_c * lanes, |nb, dst| {
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
        #[cfg(target_arch = "x86_64")]
        if self.shape.pixels {
            return self.run_pixels(src, p, residual, relu, out);
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 {
            return self.run_flat(src, p, residual, relu, out);
        }
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
        let dst = super::kernels::OutPtr(out.as_mut_ptr());
        // Where the reduction runs in passes, each tile keeps its partial sums in the
        // thread's scratch between passes (`NR * MV` vectors: `nr * block` floats).
        let (k, pass, block) = (self.k, self.pass, self.shape.block);
        let slot = if pass < k { nr * block } else { 0 };
        let sums_len = rows * ow.div_ceil(nr) * per_task * slot;
        super::kernels::par_tasks(&self.plan.list, sums_len, |&(b, g, ob0, y0), sums| {
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
                                self.tile(
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
    fn run_flat(
        &self,
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
        let dst = super::kernels::OutPtr(out.as_mut_ptr());
        let last_tap = self.kofs.iter().max().copied().unwrap_or(0);
        let blocked = self.output == Layout::Blocked;
        // Tiles run in groups of `self.group` (see `set_pass`).
        let (k, pass, group, block) = (self.k, self.pass, self.group, self.shape.block);
        // Where the reduction runs in passes, each tile of the group keeps its partial
        // sums (`nr * block` floats) in the thread's scratch between them.
        let sums_len = nr * block;
        let scratch = if pass < k { group * sums_len } else { 0 };
        super::kernels::par_tasks(&self.plan.list, scratch, |&(b, g, ob0, y0), sums| {
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
                            unsafe { avx2::tile(xs, kofs, panel, &store, sums) }
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
    fn tasks(&self, span: usize, unit: usize) -> Tasks {
        let nb = self.ocg.div_ceil(self.shape.block);
        let panel_len = self.k * self.shape.block;
        let per_task = (l2_panels() / (panel_len * 4)).clamp(1, nb);
        let per_task = nb.div_ceil(nb.div_ceil(per_task));
        let blocks = self.n * self.groups * nb.div_ceil(per_task);
        let want = 8 * super::kernels::threads();
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
    fn geometry(&self) -> Geometry {
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
    fn block<'a>(
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
    fn run_pixels(
        &self,
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
        let dst = super::kernels::OutPtr(out.as_mut_ptr());
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
                        let kernel = match self.isa {
                            Isa::Avx512 => avx512::pointwise,
                            Isa::Avx2 => avx2::pointwise,
                        };
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
        super::kernels::par_tasks(&self.plan.list, 0, |&(b, g, ob0, s0), _| {
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

    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    unsafe fn tile(
        &self,
        x: *const f32,
        k: &[usize],
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        valid: usize,
        live: usize,
        res: Option<*const f32>,
        ep: &Epilogue,
        sums: Sums,
    ) {
        let s = self.shape;
        // Only x86 splits a reduction into passes.
        #[cfg(not(target_arch = "x86_64"))]
        debug_assert!(sums.from.is_none() && sums.to.is_none());
        match (self.isa, s.block, s.nr) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 32, 14) => {
                avx512::tile::<2, 14>(x, k, panel, out, ldo, valid, live, res, ep, sums)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 32, 13) => {
                avx512::tile::<2, 13>(x, k, panel, out, ldo, valid, live, res, ep, sums)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 48, 7) => {
                avx512::tile::<3, 7>(x, k, panel, out, ldo, valid, live, res, ep, sums)
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            (Isa::Simd128, 8, 4) => {
                simd128::tile::<2, 4>(x, k, panel, out, ldo, valid, live, res, ep)
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            (Isa::Simd128, 12, 3) => {
                simd128::tile::<3, 3>(x, k, panel, out, ldo, valid, live, res, ep)
            }
            _ => unreachable!("no microkernel for {s:?}"),
        }
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
mod simd128 {
    use super::Epilogue;
    use std::arch::wasm32::*;

    /// One tile: `NR` output pixels by `MV * 4` output channels, reduced over every tap
    /// (multiply, then add: wasm SIMD has no fused multiply-add), then stored pixel-major
    /// per channel through the epilogue.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    pub unsafe fn tile<const MV: usize, const NR: usize>(
        x: *const f32,
        kofs: &[usize],
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        valid: usize,
        live: usize,
        res: Option<*const f32>,
        ep: &Epilogue,
    ) {
        let mut acc = [[f32x4_splat(0.0); MV]; NR];
        let mut w = panel.as_ptr();
        for &off in kofs {
            let xk = x.add(off);
            let mut wv = [f32x4_splat(0.0); MV];
            for v in 0..MV {
                wv[v] = v128_load(w.add(v * 4) as *const v128);
            }
            for j in 0..NR {
                let b = f32x4_splat(*xk.add(j));
                for v in 0..MV {
                    acc[j][v] = f32x4_add(acc[j][v], f32x4_mul(wv[v], b));
                }
            }
            w = w.add(MV * 4);
        }
        let mut t = [[0f32; 16]; NR];
        for j in 0..NR {
            for v in 0..MV {
                v128_store(t[j].as_mut_ptr().add(v * 4) as *mut v128, acc[j][v]);
            }
        }
        store(&t[..], out, ldo, valid, live, res, ep);
    }

    /// The epilogue from the pixel-major tile `t`, per channel over its run of pixels
    /// (scaling the channel lanes as vectors before the store measured slower in V8).
    #[allow(clippy::needless_range_loop)]
    unsafe fn store(
        t: &[[f32; 16]],
        out: *mut f32,
        ldo: usize,
        valid: usize,
        live: usize,
        res: Option<*const f32>,
        ep: &Epilogue,
    ) {
        for o in 0..live {
            let (scale, shift) = (ep.scale[o], ep.shift[o]);
            let dst = out.add(o * ldo);
            for j in 0..valid {
                let mut y = t[j][o] * scale + shift;
                if let Some(r) = res {
                    y += *r.add(o * ldo + j);
                }
                // A comparison, not f32::max: NaN stays NaN, as in PyTorch.
                if ep.relu && y < 0.0 {
                    y = 0.0;
                }
                *dst.add(j) = y;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Epilogue, Sums};
    use std::arch::x86_64::*;

    /// Floats ahead (4 KiB) that both tiles prefetch their weights. A model's weights do
    /// not stay in cache between runs (ResNet-50's are 100 MB), so each block's first
    /// tile streams its panel from memory at the rate its FMAs consume it, faster than the
    /// hardware prefetcher runs ahead; later tiles find the lines in L2 and the prefetch
    /// costs them nothing. Past a panel's end it fetches the next block's (panels are
    /// contiguous), and past the last one it is dropped (a prefetch never faults). On one
    /// Zen 5 at 2 threads, with the weights cold: ResNet-50's 7x7 layers 10-15% faster,
    /// its 1024-channel 1x1 layers 12%, with hot weights the same; the whole model 4%
    /// (runs alternating with and without, in one process), ResNet-18 2%, VGG-16 the same.
    const WEIGHTS_AHEAD: usize = 1024;

    /// Taps between the prefetches of a tile's output lines and its residual's, spread
    /// over the start of its reduction. Its stores and residual loads go to two lines per
    /// channel, each in a plane of its own: on large maps (VGG's 224x224 and 112x112
    /// layers, ResNet's 56x56 ones at batch 8) those lines have left the caches since the
    /// layer before wrote them, and the epilogue waited for each. One Zen 5 core, VGG's
    /// 224x224 64-channel layer: 16.6 ms without, 15.9 with, 15.7 with every store sent to
    /// one cached row; with a residual 18.4 -> 16.5 ms. All at once at the tile's start
    /// they queued behind each other; in the last 48 taps, worse than none. (A prefetch
    /// for writing, PREFETCHW by inline assembly, was no better than this read prefetch.)
    const STORE_EVERY: usize = 8;

    /// One tile: `nr` output pixels by `MV * 16` output channels, reduced over the taps
    /// `kofs` (from and to `sums` where its reduction runs in passes), then stored
    /// transposed (pixels contiguous per channel) through the epilogue. `valid` pixels and
    /// `live` channels are written.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const MV: usize, const NR: usize>(
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
    ) {
        let mut acc = [[_mm512_setzero_ps(); MV]; NR];
        if let Some(from) = sums.from {
            for (j, a) in acc.iter_mut().enumerate() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(from.add((j * MV + v) * 16));
                }
            }
        }
        // The output lines (each channel's `valid` pixels span two lines at most) and
        // the residual's, one pair per `STORE_EVERY` taps.
        let lines = if sums.to.is_none() { 2 * live } else { 0 };
        let mut w = panel.as_ptr();
        for (i, &off) in kofs.iter().enumerate() {
            let xk = x.add(off);
            if i % STORE_EVERY == 0 && i / STORE_EVERY < lines {
                let line = i / STORE_EVERY;
                let at = (line / 2) * ldo + (line % 2) * (valid - 1);
                _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(at) as *const i8);
                if let Some(r) = res {
                    _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(at) as *const i8);
                }
            }
            for v in 0..MV {
                let ahead = w.wrapping_add(WEIGHTS_AHEAD + 16 * v);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            }
            let mut wv = [_mm512_setzero_ps(); MV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = _mm512_loadu_ps(w.add(v * 16));
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*xk.add(j));
                for v in 0..MV {
                    a[v] = _mm512_fmadd_ps(wv[v], b, a[v]);
                }
            }
            w = w.add(MV * 16);
        }
        if let Some(to) = sums.to {
            for (j, a) in acc.iter().enumerate() {
                for (v, a) in a.iter().enumerate() {
                    _mm512_storeu_ps(to.add((j * MV + v) * 16), *a);
                }
            }
            return;
        }
        let mask = ((1u32 << valid) - 1) as __mmask16;
        let zero = _mm512_setzero_ps();
        for v in 0..MV {
            let mut rows = [zero; 16];
            for j in 0..NR {
                rows[j] = acc[j][v];
            }
            let cols = transpose16(rows);
            for (i, &col) in cols.iter().enumerate() {
                let o = v * 16 + i;
                if o >= live {
                    return;
                }
                let mut y = _mm512_fmadd_ps(
                    col,
                    _mm512_set1_ps(ep.scale[o]),
                    _mm512_set1_ps(ep.shift[o]),
                );
                if let Some(r) = res {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, r.add(o * ldo)));
                }
                if ep.relu {
                    // MAXPS returns its second operand when either is NaN: NaN stays NaN,
                    // as PyTorch's ReLU keeps it.
                    y = _mm512_max_ps(zero, y);
                }
                _mm512_mask_storeu_ps(out.add(o * ldo), mask, y);
            }
        }
    }

    /// The pixel-vector tile of a 1x1 convolution: 8 output channels by `len` (up to 48)
    /// consecutive pixels, reduced over the input channels at `kofs`, stored through the
    /// epilogue without a transpose.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pointwise(
        x: *const f32,
        kofs: &[usize],
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        len: usize,
        live: usize,
        res: Option<*const f32>,
        ep: &Epilogue,
    ) {
        match len.div_ceil(16) {
            3 => pointwise_nv::<3>(x, kofs, panel, out, ldo, len, live, res, ep),
            2 => pointwise_nv::<2>(x, kofs, panel, out, ldo, len, live, res, ep),
            _ => pointwise_nv::<1>(x, kofs, panel, out, ldo, len, live, res, ep),
        }
    }

    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn pointwise_nv<const NV: usize>(
        x: *const f32,
        kofs: &[usize],
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        len: usize,
        live: usize,
        res: Option<*const f32>,
        ep: &Epilogue,
    ) {
        // The last vector's lanes past `len` are neither read nor written.
        let tail = len - 16 * (NV - 1);
        let last = ((1u32 << tail) - 1) as __mmask16;
        let mask = |v: usize| if v == NV - 1 { last } else { !0 };
        let mut acc = [[_mm512_setzero_ps(); NV]; 8];
        // Its output lines and the residual's, one per tap from the first (see
        // `STORE_EVERY`): each channel's vectors and its last pixel's line (ResNet-50's
        // 64 -> 256 layer at batch 8 with its residual, alone: 3.8 -> 2.4 ms).
        let lines = live * (NV + 1);
        let mut w = panel.as_ptr();
        for (i, &off) in kofs.iter().enumerate() {
            let xk = x.add(off);
            if i < lines {
                let (j, q) = (i / (NV + 1), i % (NV + 1));
                let at = j * ldo + if q < NV { 16 * q } else { len - 1 };
                _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(at) as *const i8);
                if let Some(r) = res {
                    _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(at) as *const i8);
                }
            }
            // A tap's 8 weights are half a line.
            if i % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(WEIGHTS_AHEAD) as *const i8);
            }
            let mut xv = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                xv[v] = _mm512_maskz_loadu_ps(mask(v), xk.add(16 * v));
            }
            for j in 0..8 {
                let b = _mm512_set1_ps(*w.add(j));
                for v in 0..NV {
                    acc[j][v] = _mm512_fmadd_ps(xv[v], b, acc[j][v]);
                }
            }
            w = w.add(8);
        }
        let zero = _mm512_setzero_ps();
        for j in 0..live {
            let (s, h) = (_mm512_set1_ps(ep.scale[j]), _mm512_set1_ps(ep.shift[j]));
            for v in 0..NV {
                let mut y = _mm512_fmadd_ps(acc[j][v], s, h);
                let at = j * ldo + 16 * v;
                if let Some(r) = res {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask(v), r.add(at)));
                }
                if ep.relu {
                    y = _mm512_max_ps(zero, y);
                }
                _mm512_mask_storeu_ps(out.add(at), mask(v), y);
            }
        }
    }

    /// `r[j]` lane `i` becomes `c[i]` lane `j`.
    #[inline(always)]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (a0, a1, a2, a3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            u[4 * i] = pd_lo(a0, a2);
            u[4 * i + 1] = pd_hi(a0, a2);
            u[4 * i + 2] = pd_lo(a1, a3);
            u[4 * i + 3] = pd_hi(a1, a3);
        }
        let mut s = [_mm512_setzero_ps(); 16];
        for i in 0..2 {
            for j in 0..4 {
                s[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(u[8 * i + j], u[8 * i + 4 + j]);
                s[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(u[8 * i + j], u[8 * i + 4 + j]);
            }
        }
        let mut c = [_mm512_setzero_ps(); 16];
        for j in 0..8 {
            c[j] = _mm512_shuffle_f32x4::<0x88>(s[j], s[8 + j]);
            c[8 + j] = _mm512_shuffle_f32x4::<0xdd>(s[j], s[8 + j]);
        }
        c
    }

    #[inline(always)]
    unsafe fn pd_lo(a: __m512, b: __m512) -> __m512 {
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    }

    #[inline(always)]
    unsafe fn pd_hi(a: __m512, b: __m512) -> __m512 {
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn transpose16_moves_every_lane() {
            if !std::is_x86_feature_detected!("avx512f") {
                eprintln!("no AVX-512 on this CPU: the kernel it tests is never chosen");
                return;
            }
            unsafe {
                let mut r = [_mm512_setzero_ps(); 16];
                for (j, v) in r.iter_mut().enumerate() {
                    let lanes: Vec<f32> = (0..16).map(|i| (j * 16 + i) as f32).collect();
                    *v = _mm512_loadu_ps(lanes.as_ptr());
                }
                let c = transpose16(r);
                for (i, v) in c.iter().enumerate() {
                    let mut got = [0f32; 16];
                    _mm512_storeu_ps(got.as_mut_ptr(), *v);
                    let want: Vec<f32> = (0..16).map(|j| (j * 16 + i) as f32).collect();
                    assert_eq!(got.to_vec(), want, "column {i}");
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Epilogue, Sums};
    use std::arch::x86_64::*;

    /// `-1` in the first eight lanes: `LANES[8 - n..]` masks the first `n` of eight.
    static LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Where a tile stores: `valid` pixels of `live` channels, `ldo` apart.
    pub struct Store<'a> {
        pub out: *mut f32,
        pub ldo: usize,
        pub valid: usize,
        pub live: usize,
        pub res: Option<*const f32>,
        pub ep: &'a Epilogue<'a>,
        /// Store (and read the residual) in [`super::Layout::Blocked`]: each pixel's 8
        /// channels as one vector, `ldo * 8` floats between blocks.
        pub blocked: bool,
    }

    /// A tile of `valid` pixels (up to 6), each read from its own base in `xs`, by two
    /// vectors of channels: compiled per width. (Three vectors by four pixels needs all
    /// 16 registers and ran VGG-16's 56x56 layers at half the speed.)
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(xs: &[*const f32; 8], kofs: &[usize], panel: &[f32], s: &Store, sums: Sums) {
        let f = match s.valid {
            1 => tile_nr::<2, 1>,
            2 => tile_nr::<2, 2>,
            3 => tile_nr::<2, 3>,
            4 => tile_nr::<2, 4>,
            5 => tile_nr::<2, 5>,
            6 => tile_nr::<2, 6>,
            _ => unreachable!("{} pixels", s.valid),
        };
        f(xs, kofs, panel, s, sums)
    }

    /// Taps ahead that the channel tile prefetches its input.
    const PREFETCH_AHEAD: usize = 32;

    /// One tile: `NR` (up to 8) output pixels by `MV * 8` output channels, reduced over
    /// every tap (each pixel's tap at the same offset from its base), then stored
    /// transposed (pixels contiguous per channel) through the epilogue.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_nr<const MV: usize, const NR: usize>(
        xs: &[*const f32; 8],
        kofs: &[usize],
        panel: &[f32],
        s: &Store,
        sums: Sums,
    ) {
        let xs: [*const f32; NR] = std::array::from_fn(|j| xs[j]);
        let mut acc = [[_mm256_setzero_ps(); MV]; NR];
        if let Some(from) = sums.from {
            for (j, a) in acc.iter_mut().enumerate() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(from.add((j * MV + v) * 8));
                }
            }
        }
        let mut w = panel.as_ptr();
        for (k, &off) in kofs.iter().enumerate() {
            // The input lines of the taps `PREFETCH_AHEAD` on, ahead of their loads: in the
            // interleaved input each run of 8 taps reads 32 bytes per pixel at a new place
            // (the next block of 8 channels, `h * w * 32` bytes on), a stride the hardware
            // does not follow. Every other pixel's line covers all the tile's. On one Zen 3
            // core, 1x1 layers of 2048 input channels ran at 78 GFLOP/s without, 90 with
            // (4096 channels: 62 -> 77); short reductions and 3x3 layers: the same or 1%
            // faster. (Prefetching the weights or the residual ran slower.)
            if k % 8 == 0 {
                if let Some(&o) = kofs.get(k + PREFETCH_AHEAD) {
                    for j in 0..NR {
                        if j % 2 == 0 || j == NR - 1 {
                            _mm_prefetch::<_MM_HINT_T0>(xs[j].wrapping_add(o) as *const i8);
                        }
                    }
                }
            }
            let mut wv = [_mm256_setzero_ps(); MV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = _mm256_loadu_ps(w.add(v * 8));
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*xs[j].add(off));
                for v in 0..MV {
                    a[v] = _mm256_fmadd_ps(wv[v], b, a[v]);
                }
            }
            w = w.add(MV * 8);
        }
        if let Some(to) = sums.to {
            for (j, a) in acc.iter().enumerate() {
                for (v, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(to.add((j * MV + v) * 8), *a);
                }
            }
            return;
        }
        let Store {
            out,
            ldo,
            valid,
            live,
            res,
            ep,
            blocked,
        } = *s;
        let zero = _mm256_setzero_ps();
        if blocked {
            // No transpose: an accumulator is one pixel's vector of 8 channels, whole
            // (blocked outputs have whole blocks of 8).
            for v in 0..MV.min(live / 8) {
                let scale = _mm256_loadu_ps(ep.scale.as_ptr().add(8 * v));
                let shift = _mm256_loadu_ps(ep.shift.as_ptr().add(8 * v));
                for j in 0..NR {
                    let at = (v * ldo + j) * 8;
                    let mut y = _mm256_fmadd_ps(acc[j][v], scale, shift);
                    if let Some(r) = res {
                        y = _mm256_add_ps(y, _mm256_loadu_ps(r.add(at)));
                    }
                    if ep.relu {
                        y = _mm256_max_ps(zero, y);
                    }
                    _mm256_storeu_ps(out.add(at), y);
                }
            }
            return;
        }
        let mask = _mm256_loadu_si256(LANES.as_ptr().add(8 - valid) as *const __m256i);
        for v in 0..MV {
            let mut rows = [zero; 8];
            for j in 0..NR {
                rows[j] = acc[j][v];
            }
            let cols = transpose8(rows);
            for (i, &col) in cols.iter().enumerate() {
                let o = v * 8 + i;
                if o >= live {
                    return;
                }
                let mut y = _mm256_fmadd_ps(
                    col,
                    _mm256_set1_ps(ep.scale[o]),
                    _mm256_set1_ps(ep.shift[o]),
                );
                if let Some(r) = res {
                    y = _mm256_add_ps(y, _mm256_maskload_ps(r.add(o * ldo), mask));
                }
                if ep.relu {
                    // MAXPS returns its second operand when either is NaN: NaN stays NaN.
                    y = _mm256_max_ps(zero, y);
                }
                store_n(out.add(o * ldo), y, valid);
            }
        }
    }

    /// The pixel-vector tile of a 1x1 convolution: 6 output channels by `len` (up to
    /// 16) consecutive pixels, reduced over the input channels at `kofs`, stored through
    /// the epilogue without a transpose.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pointwise(
        x: *const f32,
        kofs: &[usize],
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        len: usize,
        live: usize,
        res: Option<*const f32>,
        ep: &Epilogue,
    ) {
        // Whole tiles load without a mask (its test stays out of the loop).
        let f = match len {
            16 => pointwise_nv::<2, false>,
            9.. => pointwise_nv::<2, true>,
            8 => pointwise_nv::<1, false>,
            _ => pointwise_nv::<1, true>,
        };
        f(x, kofs, panel, out, ldo, len, live, res, ep)
    }

    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pointwise_nv<const NV: usize, const MASKED: bool>(
        x: *const f32,
        kofs: &[usize],
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        len: usize,
        live: usize,
        res: Option<*const f32>,
        ep: &Epilogue,
    ) {
        const CH: usize = 6;
        // The last vector's lanes past `len` are neither read nor written.
        let tail = len - 8 * (NV - 1);
        let mask = _mm256_loadu_si256(LANES.as_ptr().add(8 - tail) as *const __m256i);
        let load = |p: *const f32, v: usize| {
            if MASKED && v == NV - 1 {
                _mm256_maskload_ps(p, mask)
            } else {
                _mm256_loadu_ps(p)
            }
        };
        let mut acc = [[_mm256_setzero_ps(); NV]; CH];
        let mut w = panel.as_ptr();
        for &off in kofs {
            let xk = x.add(off);
            let mut xv = [_mm256_setzero_ps(); NV];
            for v in 0..NV {
                xv[v] = load(xk.add(8 * v), v);
            }
            for j in 0..CH {
                let b = _mm256_broadcast_ss(&*w.add(j));
                for v in 0..NV {
                    acc[j][v] = _mm256_fmadd_ps(xv[v], b, acc[j][v]);
                }
            }
            w = w.add(CH);
        }
        let zero = _mm256_setzero_ps();
        for j in 0..live {
            let (s, h) = (_mm256_set1_ps(ep.scale[j]), _mm256_set1_ps(ep.shift[j]));
            for v in 0..NV {
                let mut y = _mm256_fmadd_ps(acc[j][v], s, h);
                let at = j * ldo + 8 * v;
                if let Some(r) = res {
                    y = _mm256_add_ps(y, load(r.add(at), v));
                }
                if ep.relu {
                    y = _mm256_max_ps(zero, y);
                }
                let n = if v == NV - 1 { tail } else { 8 };
                store_n(out.add(at), y, n);
            }
        }
    }

    /// Store the first `n` lanes of `v` at `p` without a masked store: VMASKMOVPS to
    /// memory is slow on AMD's cores.
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: __m256, n: usize) {
        if n == 8 {
            return _mm256_storeu_ps(p, v);
        }
        let (mut lo, mut p, mut n) = (_mm256_castps256_ps128(v), p, n);
        if n >= 4 {
            _mm_storeu_ps(p, lo);
            lo = _mm256_extractf128_ps::<1>(v);
            p = p.add(4);
            n -= 4;
        }
        if n >= 2 {
            _mm_storel_epi64(p as *mut __m128i, _mm_castps_si128(lo));
            lo = _mm_movehl_ps(lo, lo);
            p = p.add(2);
            n -= 2;
        }
        if n == 1 {
            _mm_store_ss(p, lo);
        }
    }

    /// [`super::interleave`] for strides 1 and 2, eight pixels at a time by an 8x8
    /// transpose: the pixels done (the caller finishes the rest).
    #[target_feature(enable = "avx2")]
    pub unsafe fn interleave(rows: &[&[f32]; 8], sw: usize, dst: &mut [f32]) -> usize {
        let n = dst.len() / 8;
        let len = rows.iter().map(|r| r.len()).min().unwrap_or(0);
        let mut j = 0;
        // Eight pixels read 8 * sw floats of every row.
        while j + 8 <= n && (j + 8) * sw <= len {
            let mut r = [_mm256_setzero_ps(); 8];
            for (c, v) in r.iter_mut().enumerate() {
                let p = rows[c].as_ptr().add(j * sw);
                *v = if sw == 1 {
                    _mm256_loadu_ps(p)
                } else {
                    // The even lanes of 16 floats: [a0 a2 b0 b2 | a4 a6 b4 b6], then the
                    // middle 64-bit lanes swapped.
                    let e =
                        _mm256_shuffle_ps::<0x88>(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(e)))
                };
            }
            let cols = transpose8(r);
            let out = dst.as_mut_ptr().add(j * 8);
            for (i, c) in cols.iter().enumerate() {
                _mm256_storeu_ps(out.add(i * 8), *c);
            }
            j += 8;
        }
        j
    }

    /// `r[j]` lane `i` becomes `c[i]` lane `j`.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let mut t = [_mm256_setzero_ps(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // Per 128-bit half: u[4h + q] holds lane q (and q + 4) of rows 4h..4h+4.
        let mut u = [_mm256_setzero_ps(); 8];
        for h in 0..2 {
            let (a0, a1, a2, a3) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
            u[4 * h] = _mm256_shuffle_ps::<0x44>(a0, a2);
            u[4 * h + 1] = _mm256_shuffle_ps::<0xee>(a0, a2);
            u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(a1, a3);
            u[4 * h + 3] = _mm256_shuffle_ps::<0xee>(a1, a3);
        }
        let mut c = [_mm256_setzero_ps(); 8];
        for q in 0..4 {
            c[q] = _mm256_permute2f128_ps::<0x20>(u[q], u[4 + q]);
            c[4 + q] = _mm256_permute2f128_ps::<0x31>(u[q], u[4 + q]);
        }
        c
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn transpose8_moves_every_lane() {
            if !std::is_x86_feature_detected!("avx2") {
                eprintln!("no AVX2 on this CPU: the kernel it tests is never chosen");
                return;
            }
            // SAFETY: the CPU has AVX2 (checked above); the function is inlined into a
            // caller that enables it.
            #[target_feature(enable = "avx2")]
            unsafe fn check() {
                let mut r = [_mm256_setzero_ps(); 8];
                for (j, v) in r.iter_mut().enumerate() {
                    let lanes: Vec<f32> = (0..8).map(|i| (j * 8 + i) as f32).collect();
                    *v = _mm256_loadu_ps(lanes.as_ptr());
                }
                let c = transpose8(r);
                for (i, v) in c.iter().enumerate() {
                    let mut got = [0f32; 8];
                    _mm256_storeu_ps(got.as_mut_ptr(), *v);
                    let want: Vec<f32> = (0..8).map(|j| (j * 8 + i) as f32).collect();
                    assert_eq!(got.to_vec(), want, "column {i}");
                }
            }
            unsafe { check() }
        }
    }
}

/// Where plane `i` (image `i / c`, channel `i % c`) keeps pixel `p` in the blocked layout
/// `[n][c / 8][hw][8]` (tests).
#[cfg(test)]
fn blocked_index(i: usize, p: usize, c: usize, hw: usize) -> usize {
    let (b, ci) = (i / c, i % c);
    ((b * c / 8 + ci / 8) * hw + p) * 8 + ci % 8
}

/// `[n][c][hw]` to `[n][c / 8][hw][8]` (tests of the blocked layout).
#[cfg(test)]
pub(super) fn to_blocked(x: &[f32], [n, c, hw]: [usize; 3]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for i in 0..n * c {
        for p in 0..hw {
            y[blocked_index(i, p, c, hw)] = x[i * hw + p];
        }
    }
    y
}

/// [`to_blocked`] undone.
#[cfg(test)]
pub(super) fn from_blocked(y: &[f32], [n, c, hw]: [usize; 3]) -> Vec<f32> {
    let mut x = vec![0f32; y.len()];
    for i in 0..n * c {
        for p in 0..hw {
            x[i * hw + p] = y[blocked_index(i, p, c, hw)];
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
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
                                    let xi = ((b * c + g * icg + ci) * h + iy as usize) * w
                                        + ix as usize;
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
                let data: Vec<Vec<f32>> =
                    (0..8).map(|c| noise(len, (c * 100 + n) as u32)).collect();
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
        let read =
            |f: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/{f}"));
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
                let shape = DirectConv::choose(isa, &cfg, [oh, ow], true);
                let panels: Arc<[f32]> = pack(&wt, &cfg, shape.block, shape.lanes).into();
                let planes = (Layout::Planes, Layout::Planes);
                let (xs, os) = ([n, c, h, w], [n, oc, oh, ow]);
                let dc = DirectConv::new(isa, shape, panels.clone(), &cfg, xs, os, planes);
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
                    let pixels =
                        k == 1 && pd == 0 && s == 1 && oh * ow >= PIXELS_MIN && c / g <= 512;
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
                if let Some(dc) =
                    in_passes(DirectConv::new(isa, shape, panels, &cfg, xs, os, planes))
                {
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
                let shape = DirectConv::choose(isa, &cfg, [oh, ow], false);
                let panels: Arc<[f32]> = pack(&wt, &cfg, shape.block, shape.lanes).into();
                let (can_in, can_out) = DirectConv::blocks(isa, shape, &cfg);
                let blocked = |b: bool| if b { Layout::Blocked } else { Layout::Planes };
                for (bi, bo) in [(true, false), (false, true), (true, true)] {
                    if (bi && !can_in) || (bo && !can_out) {
                        continue;
                    }
                    let layouts = (blocked(bi), blocked(bo));
                    let dc = DirectConv::new(isa, shape, panels.clone(), &cfg, xs, os, layouts);
                    let dc = if bo {
                        in_passes(DirectConv::new(
                            isa,
                            shape,
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
            for s in isa.shapes() {
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
}
