//! Backends run lowered programs; they know ops, never models.

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
/// Built without the `gpu` feature: the GPU backend's types, none of which can be made
/// (opening a device says why), so that the engine compiles unchanged and runs on the CPU.
#[cfg(not(feature = "gpu"))]
#[path = "gpu_off.rs"]
pub mod gpu;

/// What activations and weights are stored as on the device; kernels compute in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    /// Half floats (the adapter's `shader-f16`): half the memory and bandwidth, about
    /// 1e-3 relative error per value.
    F16,
}

impl Precision {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}
