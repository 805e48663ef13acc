//! `shaders/elementwise.wgsl`: residual add (+ ReLU), ReLU and softmax that did not fuse
//! into a producer.

use super::{buffers, params, Shader};

params! {
    /// `total` elements (softmax: rows) ; softmax runs along `dim_len` with `inner`
    /// elements between consecutive entries.
    struct Params {
        total: u32, relu: u32, dim_len: u32, inner: u32,
    }
}

buffers! {
    /// `b` is any buffer for the one-input ops.
    struct Buffers { a: Read, b: Read, y: ReadWrite }
}

pub(crate) static FAMILY: Shader<Params, Buffers> = Shader::new(
    "elementwise",
    include_str!("../../../../shaders/elementwise.wgsl"),
    &[],
);
