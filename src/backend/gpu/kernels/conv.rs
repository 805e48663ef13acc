//! `shaders/conv.wgsl`: convolution with the epilogue (per-channel scale and shift,
//! residual, ReLU), as a tiled implicit GEMM or a register-blocked direct kernel.

use super::{buffers, params, Shader};
use crate::backend::gpu::Kernels;

params! {
    /// One dispatch: a layer's shape, and the weight chunk it covers (groups
    /// `g_base..g_base + g_count`, and in each the output channels `m_base..m_base + m_count`).
    /// The GEMM path: `batch` counts images (transforms, im2col), `p4` is the row length
    /// of the GEMM's input (pixels or tiles rounded up to 4), `plain` skips the epilogue
    /// (Winograd's products). A tiled layer split along k runs `splits` slices of `k_chunk`.
    struct Params {
        c: u32, h: u32, w: u32, oc: u32,
        oh: u32, ow: u32, kh: u32, kw: u32,
        sh: u32, sw: u32, ph: u32, pw: u32,
        dh: u32, dw: u32, icg: u32, ocg: u32,
        g_count: u32, g_base: u32, k: u32, p: u32,
        has_res: u32, relu: u32, m_base: u32, m_count: u32,
        batch: u32, plain: u32, p4: u32, splits: u32,
        k_chunk: u32, _pad0: u32, _pad1: u32, _pad2: u32,
    }
}

buffers! {
    /// `affine[oc]` is the scale, `affine[oc_total + oc]` the shift; `res` is any buffer
    /// when `has_res` is 0. `x4` and `wt4` are the GEMM's input and derived weights as
    /// vectors (any 16-byte buffer for the other entries).
    struct Buffers {
        x: Read, wt: Read, affine: Read, res: Read, y: ReadWrite,
        x4: Read vec4<S>, wt4: Read vec4<S>,
    }
}

/// The tiled kernel's output tile (channels by pixels) and reduction slice; its 256
/// invocations each hold 4x4 of the tile.
const TM: usize = 64;
const TN: usize = 64;
const TK: usize = 16;
/// The small-tile kernel's: 64 invocations of 4x4, twice as deep, so that its slices fill
/// about the same workgroup memory (the two entries share it).
const TM_S: usize = 32;
const TN_S: usize = 32;
const TK_S: usize = 32;
/// The large-tile kernel's: 256 invocations of 8x8, 8 deep (the same workgroup memory).
const TM_L: usize = 128;
const TN_L: usize = 128;
const TK_L: usize = 8;
/// Vectors of workgroup memory for the weights' tile (rows padded by one vector against
/// bank conflicts) and the input's, as large as any tile size needs.
const A_TILE: usize = max(
    max(TK * (TM / 4 + 1), TK_S * (TM_S / 4 + 1)),
    TK_L * (TM_L / 4 + 1),
);
const B_TILE: usize = max(max(TK * TN / 4, TK_S * TN_S / 4), TK_L * TN_L / 4);
/// Bytes of workgroup memory the tiled kernels take.
const TILE_BYTES: usize = (A_TILE + B_TILE) * 16;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}
// Each invocation loads one pixel column of the input tile: invocations fill whole rows.
const _: () = assert!(
    (TM / 4 * TN / 4).is_multiple_of(TN)
        && (TM_S / 4 * TN_S / 4).is_multiple_of(TN_S)
        && (TM_L / 8 * TN_L / 8).is_multiple_of(TN_L)
);
/// The tiled set's Winograd products take the small tiles where the 64x64 ones would make
/// fewer workgroups than this: about two per compute unit of the largest GPUs.
const SMALL_TILES_BELOW: usize = 256;
/// The static table runs 3x3 stride-1 layers of at least this many input channels per
/// group and multiply-adds per dispatch by Winograd on GPUs, on the tiled set's products
/// for maps of TILED_WINOGRAD_FROM pixels or more (see [`Kernels::for_layer`]).
const WINOGRAD_FROM_C: usize = 16;
const WINOGRAD_FROM_MACS: usize = 256 << 20;
const TILED_WINOGRAD_FROM: usize = 112 * 112;
/// A tiled layer making fewer workgroups than SPLIT_BELOW is split along k into up to
/// MAX_SPLITS slices of at least MIN_SPLIT_K, towards SPLIT_TARGET workgroups: at batch 1
/// ResNet-50's last stages make 8-32 tiles of k = 1024-4608 products, and an H200 (132
/// compute units) ran them at a few percent of its rate. (Targets of 128 to 2048 ran
/// ResNet-18 and -50 there within the noise of each other.)
const SPLIT_BELOW: usize = 256;
const SPLIT_TARGET: usize = 512;
const MIN_SPLIT_K: usize = 128;
const MAX_SPLITS: usize = 32;

/// The register-blocked kernel: channels by pixels per invocation (its `vec4`s fix both
/// at 4; 8 channels measured slower on lavapipe, whose 16 AVX2 registers hold one
/// scalar of every lane each), and invocations per workgroup.
const RB_M: usize = 4;
const RB_P: usize = 4;
const RB_WG: usize = 64;
/// The GEMM kernel's channels per invocation (by RB_P pixels).
const GEMM_M: usize = 8;
/// Rows of at least this many pixels take the GEMM kernel with twice the pixels: below,
/// too few invocations are left (a 7x7 map's 16 Winograd tiles ran 50% slower).
const GEMM_WIDE_FROM: usize = 64;

pub(crate) static FAMILY: Shader<Params, Buffers> = Shader::new(
    "conv",
    include_str!("../../../../shaders/conv.wgsl"),
    &[
        ("TM", TM),
        ("TN", TN),
        ("TK", TK),
        ("TM_S", TM_S),
        ("TN_S", TN_S),
        ("TK_S", TK_S),
        ("TM_L", TM_L),
        ("TN_L", TN_L),
        ("TK_L", TK_L),
        ("A_TILE", A_TILE),
        ("B_TILE", B_TILE),
        ("RB_M", RB_M),
        ("RB_P", RB_P),
        ("RB_WG", RB_WG),
        ("GEMM_M", GEMM_M),
    ],
);

impl Params {
    /// A layer's shapes (`xs` in, `os` out, NCHW) at `nb` images; the chunk, epilogue and
    /// GEMM fields are left zero.
    pub fn layer(cfg: &crate::graph::Conv2d, xs: &[usize], os: &[usize], nb: usize) -> Params {
        let u = |v: usize| v as u32;
        Params {
            c: u(xs[1]),
            h: u(xs[2]),
            w: u(xs[3]),
            oc: u(os[1]),
            oh: u(os[2]),
            ow: u(os[3]),
            kh: u(cfg.kernel[0]),
            kw: u(cfg.kernel[1]),
            sh: u(cfg.stride[0]),
            sw: u(cfg.stride[1]),
            ph: u(cfg.padding[0]),
            pw: u(cfg.padding[1]),
            dh: u(cfg.dilation[0]),
            dw: u(cfg.dilation[1]),
            p: u(os[2] * os[3]),
            batch: u(nb),
            ..Default::default()
        }
    }
}

/// How a layer runs on the register-blocked set: an ungrouped 3x3 stride-1 convolution by
/// Winograd, an ungrouped 1x1 one as a GEMM (on the input itself where it has stride 1,
/// no padding and pixels in fours, else on an im2col copy), any other ungrouped one
/// directly on the GEMM's k-major weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Special {
    Gemm(Gemm),
    Winograd(Winograd),
    /// `conv2d_rbk`: `k` products per output, `oc` channels.
    Direct {
        k: usize,
        oc: usize,
    },
}

/// A convolution as a GEMM: `k` products per output, `oc` channels, `p` pixels per image
/// in rows of `p4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gemm {
    pub k: usize,
    pub oc: usize,
    pub p: usize,
    pub p4: usize,
    pub im2col: bool,
}

impl Gemm {
    /// Floats of the im2col copy for `n` images (none on the input itself).
    pub fn col_len(&self, n: usize) -> usize {
        if self.im2col {
            n * self.k * self.p4
        } else {
            0
        }
    }
}

/// A Winograd F(2x2, 3x3) layer: 2x2 output tiles, `tiles` per image, padded to `t4`
/// (the products' vector loads take 4 tiles at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Winograd {
    pub tiles: usize,
    pub t4: usize,
    pub c: usize,
    pub oc: usize,
    /// The products on the tiled kernel (weights [element][oc][c], a grouped 1x1
    /// convolution of 16 groups), else on `gemm_rb` (weights [element][c][oc4]).
    pub tiled: bool,
}

impl Winograd {
    /// Floats of the transformed input and of the products for `n` images.
    pub fn input_len(&self, n: usize) -> usize {
        n * 16 * self.c * self.t4
    }
    pub fn product_len(&self, n: usize) -> usize {
        n * 16 * self.oc * self.t4
    }
}

impl Special {
    /// Floats of the derived weights: k-major, channels padded to 4 (Winograd: one such
    /// matrix per transform element).
    pub fn weight_len(&self) -> usize {
        match *self {
            Special::Gemm(Gemm { k, oc, .. }) | Special::Direct { k, oc } => {
                k * oc.next_multiple_of(4)
            }
            Special::Winograd(w) if w.tiled => 16 * w.c * w.oc,
            Special::Winograd(w) => 16 * w.c * w.oc.next_multiple_of(4),
        }
    }

    /// Floats of the two scratch buffers (the GEMM's input, Winograd's products) for `n`
    /// images.
    pub fn scratch_len(&self, n: usize) -> (usize, usize) {
        match self {
            Special::Gemm(g) => (g.col_len(n), 0),
            Special::Winograd(w) => (w.input_len(n), w.product_len(n)),
            Special::Direct { .. } => (0, 0),
        }
    }

    /// The entry that makes the derived weights, and the name they are kept under.
    pub fn weight_form(&self) -> (&'static str, &'static str) {
        match self {
            Special::Gemm(_) | Special::Direct { .. } => ("gemm_weights", "gemm"),
            Special::Winograd(w) if w.tiled => ("wino_weights", "winograd-tiled"),
            Special::Winograd(_) => ("wino_weights", "winograd"),
        }
    }
}

/// The special kernel for an ungrouped convolution from `c` x `h` x `w` to `oh` x `ow` on
/// the register-blocked set.
pub(crate) fn special(
    cfg: &crate::graph::Conv2d,
    [c, h, w]: [usize; 3],
    [oh, ow]: [usize; 2],
) -> Option<Special> {
    if cfg.groups != 1 {
        return None;
    }
    let unit = cfg.stride == [1, 1] && cfg.dilation == [1, 1];
    if winograd_shape(cfg) {
        let tiles = oh.div_ceil(2) * ow.div_ceil(2);
        return Some(Special::Winograd(Winograd {
            tiles,
            t4: tiles.next_multiple_of(4),
            c,
            oc: cfg.out_channels,
            tiled: false,
        }));
    }
    // Larger kernels run directly: an im2col copy cost more than it saved on lavapipe
    // (ResNet-50's stem: 80 against 39 ms; its stride-2 3x3 layers: 31 against 28).
    if cfg.kernel != [1, 1] {
        return Some(Special::Direct {
            k: c * cfg.kernel[0] * cfg.kernel[1],
            oc: cfg.out_channels,
        });
    }
    let p = oh * ow;
    let direct = unit && cfg.padding == [0, 0] && p.is_multiple_of(4);
    debug_assert!(!direct || p == h * w);
    Some(Special::Gemm(Gemm {
        k: c * cfg.kernel[0] * cfg.kernel[1],
        oc: cfg.out_channels,
        p,
        p4: p.next_multiple_of(4),
        im2col: !direct,
    }))
}

/// Whether Winograd F(2x2, 3x3) computes the convolution: ungrouped, 3x3, stride 1, no
/// dilation.
pub(crate) fn winograd_shape(cfg: &crate::graph::Conv2d) -> bool {
    cfg.groups == 1 && cfg.kernel == [3, 3] && cfg.stride == [1, 1] && cfg.dilation == [1, 1]
}

/// The tiled set's Winograd layer, where the device can hold what it needs (checked by
/// the caller).
pub(crate) fn tiled_winograd(
    cfg: &crate::graph::Conv2d,
    c: usize,
    [oh, ow]: [usize; 2],
) -> Option<Winograd> {
    winograd_shape(cfg).then(|| {
        let tiles = oh.div_ceil(2) * ow.div_ceil(2);
        Winograd {
            tiles,
            t4: tiles.next_multiple_of(4),
            c,
            oc: cfg.out_channels,
            tiled: true,
        }
    })
}

/// Workgroups of the register-blocked kernels for `pixels` outputs by `rows` channels,
/// per each of `planes` (image, group) pairs: blocks of RB_P x RB_M, numbered flat and
/// folded into x-y past `max` per dimension (see `rb_block` in the WGSL).
pub(crate) fn rb_grid(pixels: usize, rows: usize, planes: usize, max: usize) -> [usize; 3] {
    let blocks = pixels.div_ceil(RB_P) * rows.div_ceil(RB_M);
    // Beyond max x max: the push reports the grid as over the limit.
    let [x, y, _] = super::fold(blocks.div_ceil(RB_WG), max).unwrap_or([max + 1, 1, 1]);
    [x, y, planes]
}

/// The GEMM kernel for `pixels` (per row, a multiple of 4) by `rows` channels, per each
/// of `planes`: `gemm_rb`, or `gemm_rb_wide` (twice the pixels per block) on rows of at
/// least GEMM_WIDE_FROM pixels; its entry and workgroups.
pub(crate) fn gemm_plan(
    pixels: usize,
    rows: usize,
    planes: usize,
    max: usize,
) -> (&'static str, [usize; 3]) {
    if pixels >= GEMM_WIDE_FROM {
        // Blocks of 2 RB_P pixels: as many as RB_P blocks of half the pixels.
        let wide = pixels.div_ceil(2 * RB_P) * RB_P;
        ("gemm_rb_wide", gemm_grid(wide, rows, planes, max))
    } else {
        ("gemm_rb", gemm_grid(pixels, rows, planes, max))
    }
}

/// Workgroups for `pixels` outputs by `rows` channels per each of `planes`, in blocks of
/// RB_P pixels x GEMM_M channels (`gemm_rb`, `conv2d_rbk`), numbered as [`rb_grid`]
/// numbers its blocks.
pub(crate) fn gemm_grid(pixels: usize, rows: usize, planes: usize, max: usize) -> [usize; 3] {
    // RB_M-channel blocks of a layer with rows / GEMM_M * RB_M channels.
    rb_grid(pixels, rows.div_ceil(GEMM_M) * RB_M, planes, max)
}

impl Kernels {
    /// The set for a forced kernel set, or the next one in [`Self::ALL`] the device can
    /// run (64x64 tiles, 128x128, 32x32, register-blocked).
    pub fn choose(kernels: Kernels, limits: &wgpu::Limits) -> Kernels {
        let from = Kernels::ALL.iter().position(|&v| v == kernels).unwrap_or(0);
        Kernels::ALL[from..]
            .iter()
            .copied()
            .find(|v| v.supports(limits))
            .unwrap_or(Kernels::RegisterBlocked)
    }

    /// The static table's variant for a layer making `work` (pixels by channels per each
    /// of (image, group) planes): the set's, except on GPUs (the tiled set), by what an
    /// H200 measured at batches 1 and 8:
    /// - 3x3 stride-1 layers of WINOGRAD_FROM_C input channels or more by Winograd where
    ///   they are heavy (WINOGRAD_FROM_MACS), on the tiled set's products for maps of
    ///   TILED_WINOGRAD_FROM pixels or more, else on the register-blocked set's. Lighter
    ///   ones (ResNet's at batch 1) ran fastest on 64x64 tiles split along k: 0.08 ms
    ///   against 0.18 by Winograd at 7x7 by 512.
    /// - Layers on 4 input channels or fewer (RGB stems) on 32x32 tiles: AlexNet's ran in
    ///   0.11 ms against 0.41 on 64x64 tiles, VGG's first 0.35 against 0.58.
    /// - Everything else on 64x64 tiles, split along k where they make few
    ///   ([`Self::split_k`]).
    pub fn for_layer(
        kernels: Kernels,
        limits: &wgpu::Limits,
        cfg: &crate::graph::Conv2d,
        [pixels, rows, planes]: [usize; 3],
    ) -> Kernels {
        let v = Kernels::choose(kernels, limits);
        if v != Kernels::Tiled {
            return v;
        }
        let c = cfg.in_channels / cfg.groups.max(1);
        if winograd_shape(cfg) && c >= WINOGRAD_FROM_C {
            let macs = pixels * rows * planes * c * 9;
            if macs >= WINOGRAD_FROM_MACS {
                if pixels >= TILED_WINOGRAD_FROM {
                    return Kernels::TiledWinograd;
                }
                if Kernels::RegisterBlocked.supports(limits) {
                    return Kernels::RegisterBlocked;
                }
            }
            return v;
        }
        if c <= 4 && Kernels::TiledSmall.supports(limits) {
            return Kernels::TiledSmall;
        }
        v
    }

    /// The tile size for the Winograd products on the tiled kernel, a grouped 1x1
    /// convolution of `pixels` (tiles) by `rows` per each of `planes`: 32x32 tiles where
    /// 64x64 ones would make too few workgroups to fill a GPU.
    pub fn product_tiles(limits: &wgpu::Limits, [pixels, rows, planes]: [usize; 3]) -> Kernels {
        let v = Kernels::choose(Kernels::Tiled, limits);
        let tiles = pixels.div_ceil(TN) * rows.div_ceil(TM) * planes;
        if v == Kernels::Tiled && tiles < SMALL_TILES_BELOW && Kernels::TiledSmall.supports(limits)
        {
            Kernels::TiledSmall
        } else {
            v
        }
    }

    /// Whether the device's limits allow the variant: the tiled kernels need 256 (small
    /// tiles: 64) invocations per workgroup and 8.5 KiB of workgroup memory, which
    /// downlevel (WebGPU compatibility-mode, GLES) adapters may not give.
    pub fn supports(self, limits: &wgpu::Limits) -> bool {
        // Tiles of tm x tn outputs, `per` x `per` per invocation.
        let tiled = |tm: usize, tn: usize, per: usize| {
            let (x, y) = (tn / per, tm / per);
            limits.max_compute_invocations_per_workgroup as usize >= x * y
                && limits.max_compute_workgroup_size_x as usize >= x
                && limits.max_compute_workgroup_size_y as usize >= y
                && limits.max_compute_workgroup_storage_size as usize >= TILE_BYTES
        };
        match self {
            Kernels::Tiled => tiled(TM, TN, 4),
            Kernels::TiledLarge => tiled(TM_L, TN_L, 8),
            Kernels::TiledSmall | Kernels::TiledWinograd => tiled(TM_S, TN_S, 4),
            Kernels::RegisterBlocked => {
                limits.max_compute_invocations_per_workgroup as usize >= RB_WG
                    && limits.max_compute_workgroup_size_x as usize >= RB_WG
            }
        }
    }

    /// Whether the variant is a kernel of its own on a convolution (Winograd only on 3x3
    /// stride-1 ungrouped ones; elsewhere it is the tiled kernel, not worth timing twice).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn applies(self, cfg: &crate::graph::Conv2d) -> bool {
        self != Kernels::TiledWinograd || winograd_shape(cfg)
    }

    pub fn entry(self) -> &'static str {
        match self {
            Kernels::Tiled => "conv2d",
            Kernels::TiledLarge => "conv2d_large",
            // Where it does not apply, the chooser hands such layers a tiled variant.
            Kernels::TiledSmall | Kernels::TiledWinograd => "conv2d_small",
            Kernels::RegisterBlocked => "conv2d_rb",
        }
    }

    /// The tile's output channels, pixels and reduction slice (tiled variants).
    fn tile(self) -> Option<[usize; 3]> {
        match self {
            Kernels::Tiled => Some([TM, TN, TK]),
            Kernels::TiledLarge => Some([TM_L, TN_L, TK_L]),
            Kernels::TiledSmall => Some([TM_S, TN_S, TK_S]),
            Kernels::TiledWinograd | Kernels::RegisterBlocked => None,
        }
    }

    /// How a tiled layer of `pixels` by `rows` per each of `planes`, `k` products per
    /// output, is split along k: (slices, products per slice); (1, k) unsplit.
    pub fn split_k(self, [pixels, rows, planes]: [usize; 3], k: usize) -> (usize, usize) {
        let Some([tm, tn, tk]) = self.tile() else {
            return (1, k);
        };
        let tiles = pixels.div_ceil(tn) * rows.div_ceil(tm) * planes;
        if tiles >= SPLIT_BELOW {
            return (1, k);
        }
        let want = SPLIT_TARGET
            .div_ceil(tiles)
            .min(k / MIN_SPLIT_K)
            .min(MAX_SPLITS);
        if want < 2 {
            return (1, k);
        }
        // Whole reduction slices per split; the last split may be shorter.
        let chunk = k.div_ceil(want).next_multiple_of(tk);
        (k.div_ceil(chunk), chunk)
    }

    /// Workgroups for `pixels` outputs by `rows` channels, per each of `planes` (image,
    /// group) pairs, with at most `max` per dimension.
    pub fn grid(self, pixels: usize, rows: usize, planes: usize, max: usize) -> [usize; 3] {
        match self {
            Kernels::Tiled | Kernels::TiledLarge | Kernels::TiledSmall => {
                let [tm, tn, _] = self.tile().expect("a tiled variant");
                [pixels.div_ceil(tn), rows.div_ceil(tm), planes]
            }
            Kernels::TiledWinograd => [pixels.div_ceil(TN_S), rows.div_ceil(TM_S), planes],
            Kernels::RegisterBlocked => rb_grid(pixels, rows, planes, max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_gpus_winograd_on_3x3_and_64x64_tiles_split_along_k_elsewhere() {
        use crate::graph::Conv2d;
        let limits = wgpu::Limits::default();
        let gpu = |cfg: &Conv2d, hw: usize, n: usize| {
            let work = [hw * hw, cfg.out_channels / cfg.groups, n * cfg.groups];
            Kernels::for_layer(Kernels::Tiled, &limits, cfg, work)
        };
        let three = |c: usize, oc: usize| Conv2d::new(c, oc, 3).padding(1);
        // ResNet's 3x3 layers at batch 1 (116M multiply-adds): tiled, split along k; at
        // batch 8 by Winograd.
        assert_eq!(gpu(&three(512, 512), 7, 1), Kernels::Tiled);
        assert_eq!(gpu(&three(64, 64), 56, 1), Kernels::Tiled);
        assert_eq!(gpu(&three(512, 512), 7, 8), Kernels::RegisterBlocked);
        // VGG's: Winograd, its products on the tiled set from 112x112.
        assert_eq!(gpu(&three(512, 512), 14, 1), Kernels::RegisterBlocked);
        assert_eq!(gpu(&three(256, 512), 28, 1), Kernels::RegisterBlocked);
        assert_eq!(gpu(&three(64, 128), 112, 1), Kernels::TiledWinograd);
        // RGB stems on 32x32 tiles (VGG's 3x3 one too); strided and 1x1 layers tiled.
        assert_eq!(gpu(&three(3, 64), 224, 1), Kernels::TiledSmall);
        assert_eq!(
            gpu(&Conv2d::new(3, 64, 11).stride(4).padding(2), 55, 1),
            Kernels::TiledSmall
        );
        assert_eq!(
            gpu(&Conv2d::new(256, 256, 3).stride(2).padding(1), 7, 1),
            Kernels::Tiled
        );
        assert_eq!(gpu(&Conv2d::new(1024, 256, 1), 14, 1), Kernels::Tiled);
        // ResNet-50's last 1x1 layers at batch 1: 7x7 by 512 makes 8 tiles of k 2048,
        // split into 16 slices of 128.
        assert_eq!(Kernels::Tiled.split_k([49, 512, 1], 2048), (16, 128));
        // 14x14 by 256, k = 2304: 16 tiles, 18 slices of 128.
        assert_eq!(Kernels::Tiled.split_k([196, 256, 1], 2304), (18, 128));
        // Odd k: whole 16-deep slices, the last one shorter.
        assert_eq!(Kernels::Tiled.split_k([9, 40, 2], 1170), (9, 144));
        // 128x128 tiles: fewer of them, whole 8-deep slices.
        assert_eq!(Kernels::TiledLarge.split_k([49, 512, 1], 2048), (16, 128));
        assert_eq!(Kernels::TiledLarge.split_k([9, 40, 2], 1170), (9, 136));
        assert_eq!(Kernels::TiledLarge.grid(300, 200, 2, 65535), [3, 2, 2]);
        // Enough tiles, or too short a k: whole.
        assert_eq!(Kernels::Tiled.split_k([224 * 224, 64, 8], 576), (1, 576));
        assert_eq!(Kernels::Tiled.split_k([49, 64, 1], 200), (1, 200));
        assert_eq!(
            Kernels::RegisterBlocked.split_k([49, 512, 1], 2048),
            (1, 2048)
        );
        // The Winograd products on the tiled kernel take small tiles where large ones
        // would be few.
        assert_eq!(
            Kernels::product_tiles(&limits, [16, 512, 16]),
            Kernels::TiledSmall
        );
        assert_eq!(
            Kernels::product_tiles(&limits, [3136, 64, 128]),
            Kernels::Tiled
        );
        // Forced sets and the register-blocked one are taken as they are.
        let forced = |k| Kernels::choose(k, &limits);
        assert_eq!(forced(Kernels::Tiled), Kernels::Tiled);
        assert_eq!(forced(Kernels::TiledSmall), Kernels::TiledSmall);
        assert_eq!(forced(Kernels::TiledLarge), Kernels::TiledLarge);
        let rb = Kernels::for_layer(
            Kernels::RegisterBlocked,
            &limits,
            &three(64, 64),
            [49, 64, 1],
        );
        assert_eq!(rb, Kernels::RegisterBlocked);
        // Limits below 256 invocations per workgroup keep the small tiles.
        let low = wgpu::Limits {
            max_compute_invocations_per_workgroup: 128,
            ..limits.clone()
        };
        assert_eq!(Kernels::choose(Kernels::Tiled, &low), Kernels::TiledSmall);
        assert_eq!(
            Kernels::choose(Kernels::TiledLarge, &low),
            Kernels::TiledSmall
        );
        let no_workgroup_memory = wgpu::Limits {
            max_compute_workgroup_storage_size: 0,
            ..limits.clone()
        };
        let v = Kernels::for_layer(
            Kernels::Tiled,
            &no_workgroup_memory,
            &Conv2d::new(64, 64, 1),
            [49, 64, 1],
        );
        assert_eq!(v, Kernels::RegisterBlocked);
        for v in Kernels::ALL {
            assert_eq!(Kernels::from_name(v.name()), Some(v));
            let g = v.grid(49, 2048, 1, 65535);
            assert!(g.iter().all(|&d| d >= 1), "{v:?}: {g:?}");
        }
    }
}
