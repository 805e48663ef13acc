//! `shaders/pool.wgsl`: max, average and adaptive average pooling, one invocation per
//! output element.

use super::{buffers, params, Shader};

params! {
    /// `total` outputs of `oh x ow` per plane, from planes of `h x w`. Adaptive pooling
    /// reads only the first five.
    struct Params {
        total: u32, h: u32, w: u32, oh: u32,
        ow: u32, kh: u32, kw: u32, sh: u32,
        sw: u32, ph: u32, pw: u32, count_include_pad: u32,
    }
}

buffers! {
    struct Buffers { x: Read, y: ReadWrite }
}

pub(crate) static FAMILY: Shader<Params, Buffers> =
    Shader::new("pool", include_str!("../../../../shaders/pool.wgsl"), &[]);
