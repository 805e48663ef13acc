//! `shaders/conv.wgsl`: convolution with the epilogue (per-channel scale and shift,
//! residual, ReLU), as a tiled implicit GEMM or a register-blocked direct kernel.

use super::{buffers, params, Family, Uniform};
use crate::backend::gpu::Kernels;

params! {
    /// One dispatch: a layer's shape, and the weight chunk it covers (groups
    /// `g_base..g_base + g_count`, and in each the output channels `m_base..m_base + m_count`).
    /// `batch` counts images (Winograd transforms); `plain` skips the epilogue (the
    /// Winograd products).
    struct Params {
        c: u32, h: u32, w: u32, oc: u32,
        oh: u32, ow: u32, kh: u32, kw: u32,
        sh: u32, sw: u32, ph: u32, pw: u32,
        dh: u32, dw: u32, icg: u32, ocg: u32,
        g_count: u32, g_base: u32, k: u32, p: u32,
        has_res: u32, relu: u32, m_base: u32, m_count: u32,
        batch: u32, plain: u32, _pad0: u32, _pad1: u32,
    }
}

buffers! {
    /// `affine[oc]` is the scale, `affine[oc_total + oc]` the shift; `res` is any buffer
    /// when `has_res` is 0. `x4` and `wt4` are `x` and `wt` again as vectors, for the
    /// 1x1 kernel (any 16-byte buffer for the others).
    struct Buffers {
        x: Read, wt: Read, affine: Read, res: Read, y: ReadWrite,
        x4: Read vec4<f32>, wt4: Read vec4<f32>,
    }
}

/// The tiled kernel's output tile (channels by pixels) and reduction slice; its 256
/// invocations each hold 4x4 of the tile.
const TM: usize = 64;
const TN: usize = 64;
const TK: usize = 16;
/// The register-blocked kernel: channels by pixels per invocation (its `vec4`s fix both
/// at 4; 8 channels measured slower on lavapipe, whose 16 AVX2 registers hold one
/// scalar of every lane each), and invocations per workgroup.
const RB_M: usize = 4;
const RB_P: usize = 4;
const RB_WG: usize = 64;

pub(crate) static FAMILY: Family = Family {
    name: "conv",
    body: include_str!("../../../../shaders/conv.wgsl"),
    params: Params::WGSL,
    params_size: std::mem::size_of::<Params>() as u64,
    buffers: <Buffers as super::Buffers>::DECL,
    consts: &[
        ("TM", TM),
        ("TN", TN),
        ("TK", TK),
        ("RB_M", RB_M),
        ("RB_P", RB_P),
        ("RB_WG", RB_WG),
    ],
};

/// The convolution kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Variant {
    Tiled,
    RegisterBlocked,
}

/// How a layer runs on the register-blocked set: a 1x1, stride-1 convolution as a plain
/// GEMM, a 3x3 stride-1 one by Winograd, the others by the direct kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Special {
    Gemm1x1,
    Winograd(Winograd),
}

/// A Winograd F(2x2, 3x3) layer: 2x2 output tiles, `tiles_w` per row, `tiles` per image,
/// padded to `t4` (the products' vector loads take 4 tiles at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Winograd {
    pub tiles: usize,
    pub t4: usize,
    pub c: usize,
    pub oc: usize,
}

impl Winograd {
    /// Floats of the transformed input and of the products for `n` images, and of the
    /// transformed weights.
    pub fn input_len(&self, n: usize) -> usize {
        n * 16 * self.c * self.t4
    }
    pub fn product_len(&self, n: usize) -> usize {
        n * 16 * self.oc * self.t4
    }
    pub fn weight_len(&self) -> usize {
        16 * self.oc * self.c
    }
}

/// The special kernel for a convolution with `c` input and `oc` output channels and an
/// `oh` x `ow` output, where one applies. Both take whole vectors of 4 input channels
/// from a weight row, so they need channels in multiples of 4 (and one group).
pub(crate) fn special(
    cfg: &crate::graph::Conv2d,
    c: usize,
    oh: usize,
    ow: usize,
) -> Option<Special> {
    let unit =
        cfg.stride == [1, 1] && cfg.dilation == [1, 1] && cfg.groups == 1 && c.is_multiple_of(4);
    if !unit {
        return None;
    }
    if cfg.kernel == [1, 1] && cfg.padding == [0, 0] && (oh * ow).is_multiple_of(4) {
        return Some(Special::Gemm1x1);
    }
    if cfg.kernel == [3, 3] {
        let tiles = oh.div_ceil(2) * ow.div_ceil(2);
        return Some(Special::Winograd(Winograd {
            tiles,
            t4: tiles.next_multiple_of(4),
            c,
            oc: cfg.out_channels,
        }));
    }
    None
}

/// Workgroups of `conv1x1_rb` for `pixels` (a multiple of 4) by `rows` channels, per
/// each of `planes` (image, group) pairs.
pub(crate) fn gemm_grid(pixels: usize, rows: usize, planes: usize) -> [usize; 3] {
    [(pixels / RB_P).div_ceil(RB_WG), rows.div_ceil(RB_M), planes]
}

impl Variant {
    /// The variant for a kernel set, or the other one where the device cannot run it.
    pub fn choose(kernels: Kernels, limits: &wgpu::Limits) -> Variant {
        let want = match kernels {
            Kernels::Tiled => Variant::Tiled,
            Kernels::RegisterBlocked => Variant::RegisterBlocked,
        };
        if want.supports(limits) {
            want
        } else {
            Variant::RegisterBlocked
        }
    }

    /// Whether the device's limits allow the variant: the tiled kernel needs 256
    /// invocations per workgroup and 8 KiB of workgroup memory, which downlevel
    /// (WebGPU compatibility-mode, GLES) adapters may not give.
    pub fn supports(self, limits: &wgpu::Limits) -> bool {
        match self {
            Variant::Tiled => {
                limits.max_compute_invocations_per_workgroup >= 256
                    && limits.max_compute_workgroup_size_x >= 16
                    && limits.max_compute_workgroup_size_y >= 16
                    && limits.max_compute_workgroup_storage_size as usize >= 2 * TK * TM.max(TN) * 4
            }
            Variant::RegisterBlocked => {
                limits.max_compute_invocations_per_workgroup as usize >= RB_WG
                    && limits.max_compute_workgroup_size_x as usize >= RB_WG
            }
        }
    }

    // Measuring and its cache are native-only.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub const ALL: [Variant; 2] = [Variant::Tiled, Variant::RegisterBlocked];

    /// The kernel set's name (as `--gpu-kernels` spells it).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn name(self) -> &'static str {
        match self {
            Variant::Tiled => "tiled",
            Variant::RegisterBlocked => "register-blocked",
        }
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn from_name(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    pub fn kernels(self) -> Kernels {
        match self {
            Variant::Tiled => Kernels::Tiled,
            Variant::RegisterBlocked => Kernels::RegisterBlocked,
        }
    }

    pub fn entry(self) -> &'static str {
        match self {
            Variant::Tiled => "conv2d",
            Variant::RegisterBlocked => "conv2d_rb",
        }
    }

    /// Workgroups for `pixels` outputs by `rows` channels, per each of `planes` (image,
    /// group) pairs.
    pub fn grid(self, pixels: usize, rows: usize, planes: usize) -> [usize; 3] {
        match self {
            Variant::Tiled => [pixels.div_ceil(TN), rows.div_ceil(TM), planes],
            Variant::RegisterBlocked => {
                [pixels.div_ceil(RB_P * RB_WG), rows.div_ceil(RB_M), planes]
            }
        }
    }
}
