//! webcnn: classic CNN backbones on WebGPU (wgpu) and the CPU.

pub mod backend;
pub mod engine;
pub mod error;
pub mod graph;
pub mod load;
pub mod lower;
pub mod models;
#[cfg(all(not(target_arch = "wasm32"), feature = "npy"))]
pub mod npy;
pub mod onnx;
pub mod plan;
pub mod preprocess;
pub mod prng;
pub mod tasks;
pub mod tensor;
// What the two JS bindings (wasm, the Node addon) share.
#[cfg(any(all(target_arch = "wasm32", feature = "gpu"), feature = "node"))]
pub mod binding;
// The JS API drives the GPU backend (WebGPU) as well as the CPU one.
#[cfg(all(target_arch = "wasm32", feature = "gpu"))]
pub mod wasm;
// The native Node addon over the same calls (napi-rs).
#[cfg(all(not(target_arch = "wasm32"), feature = "node"))]
pub mod node;
pub mod weights;

pub use error::{Error, ErrorCode, Result};
pub use graph::{Graph, GraphBuilder, GraphError, Value};
pub use lower::Weights;
pub use tensor::Tensor;
