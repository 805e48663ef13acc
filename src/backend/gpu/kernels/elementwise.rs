//! `shaders/elementwise.wgsl`: residual add (+ ReLU), ReLU and softmax that did not fuse
//! into a producer.

use super::{buffers, params, Family, Uniform};

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

pub(crate) static FAMILY: Family = Family {
    name: "elementwise",
    body: include_str!("../../../../shaders/elementwise.wgsl"),
    params: Params::WGSL,
    params_size: std::mem::size_of::<Params>() as u64,
    buffers: <Buffers as super::Buffers>::DECL,
    consts: &[],
};
