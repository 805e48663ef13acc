//! `shaders/norm.wgsl`: local response norm, inference batch norm and group norm (the last
//! two with the residual and ReLU epilogue).

use super::{buffers, params, Shader};

params! {
    /// `total` elements of `c` channels of `hw` pixels. LRN reads `size`, `alpha`, `beta`
    /// and `k`; group norm `eps` and `groups`.
    struct Params {
        total: u32, c: u32, hw: u32, size: u32,
        alpha: f32, beta: f32, k: f32, eps: f32,
        groups: u32, has_res: u32, relu: u32, _pad: u32,
    }
}

buffers! {
    /// Per-channel `scale` and `shift` (norms), `res` (any buffer without a residual).
    struct Buffers { x: Read, scale: Read, shift: Read, res: Read, y: ReadWrite }
}

pub(crate) static FAMILY: Shader<Params, Buffers> =
    Shader::new("norm", include_str!("../../../../shaders/norm.wgsl"), &[]);
