//! `shaders/linear.wgsl`: fully connected layers (+ bias, ReLU), a workgroup reduction per
//! output, or one (four) outputs per invocation.

use super::{buffers, params, Shader};
use crate::backend::gpu::Kernels;

params! {
    /// One dispatch: the weight chunk of rows `n_base..n_base + rows`.
    struct Params {
        batch: u32, k: u32, n_total: u32, rows: u32,
        n_base: u32, relu: u32, _pad0: u32, _pad1: u32,
    }
}

buffers! {
    /// `x4` and `wt4` are `x` and `wt` as vectors (`linear_rb4`).
    struct Buffers {
        x: Read, wt: Read, bias: Read, y: ReadWrite,
        x4: Read vec4<S>, wt4: Read vec4<S>,
    }
}

/// Invocations per workgroup of `linear_rb` (one output row each) and `linear_rb4` (four).
const LINEAR_RB_ROWS: usize = 64;

pub(crate) static FAMILY: Shader<Params, Buffers> = Shader::new(
    "linear",
    include_str!("../../../../shaders/linear.wgsl"),
    &[("LINEAR_RB_ROWS", LINEAR_RB_ROWS)],
);

/// The entry point and the workgroups (before folding) for `rows` outputs of `k` inputs:
/// the linear kernels follow the convolution's choice (tiled: a 256-invocation reduction
/// per row; register-blocked: four rows per invocation), reading whole vectors along k
/// where k is a multiple of 4.
pub(crate) fn plan(variant: Kernels, rows: usize, k: usize) -> (&'static str, usize) {
    match variant {
        Kernels::Tiled | Kernels::TiledLarge | Kernels::TiledSmall | Kernels::TiledWinograd
            if k.is_multiple_of(4) =>
        {
            ("linear_v4", rows)
        }
        Kernels::Tiled | Kernels::TiledLarge | Kernels::TiledSmall | Kernels::TiledWinograd => {
            ("linear", rows)
        }
        Kernels::RegisterBlocked if k.is_multiple_of(4) => {
            ("linear_rb4", rows.div_ceil(4 * LINEAR_RB_ROWS))
        }
        Kernels::RegisterBlocked => ("linear_rb", rows.div_ceil(LINEAR_RB_ROWS)),
    }
}
