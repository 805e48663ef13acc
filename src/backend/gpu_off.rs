//! The GPU backend's face when webcnn is built without the `gpu` feature (no wgpu): the
//! same names, but a device never opens, so every other type here has no value and each
//! method is unreachable by construction (`match *self {}`). `Device::Auto` runs on the
//! CPU with a notice; `Device::Gpu` fails saying how to get the GPU backend.

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::lower::Weights;
use crate::tensor::Tensor;
use std::sync::Arc;

pub use crate::backend::Precision;

/// How a GPU would be opened; nothing to choose without the backend.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {}

/// An open GPU device: none can be opened in this build.
#[derive(Clone)]
pub enum GpuContext {}

impl GpuContext {
    pub async fn new(_opts: GpuOptions) -> Result<Self> {
        Err(Error::NoAdapter(
            "this build of webcnn has no GPU backend (build it with the `gpu` feature)".into(),
        ))
    }
    pub fn error_scopes(&self) -> ErrorScopes {
        match *self {}
    }
    pub fn lost(&self) -> Option<String> {
        match *self {}
    }
    pub async fn reopen(&self) -> Result<Self> {
        match *self {}
    }
    pub fn is_software(&self) -> bool {
        match *self {}
    }
    pub fn adapter_name(&self) -> &str {
        match *self {}
    }
    pub fn precision(&self) -> Precision {
        match *self {}
    }
    pub fn describe(&self) -> String {
        match *self {}
    }
}

pub enum ErrorScopes {}

impl ErrorScopes {
    pub async fn finish(self) -> Option<String> {
        match self {}
    }
}

/// What a plan holds on the device.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryReport {
    pub params: u64,
}

pub enum GpuWeights {}

impl GpuWeights {
    pub async fn upload(ctx: &GpuContext, _graph: &Graph, _weights: &dyn Weights) -> Result<Self> {
        match *ctx {}
    }
    pub fn stream(ctx: &GpuContext, _graph: &Graph) -> Result<GpuStream> {
        match *ctx {}
    }
    pub fn context(&self) -> &GpuContext {
        match *self {}
    }
    pub async fn read_row(&self, _key: &str, _row: usize) -> Result<Vec<f32>> {
        match *self {}
    }
    pub fn device_bytes(&self) -> u64 {
        match *self {}
    }
    pub fn derived_bytes(&self) -> u64 {
        match *self {}
    }
    pub fn host_bytes(&self) -> u64 {
        match *self {}
    }
}

pub enum GpuStream {}

impl GpuStream {
    pub fn takes(&self, _key: &str) -> bool {
        match *self {}
    }
    pub fn write(&mut self, _key: &str, _at: usize, _values: &[f32]) -> Result<()> {
        match *self {}
    }
    pub fn unsettled(&self) -> bool {
        match *self {}
    }
    pub async fn settle(ctx: &GpuContext) -> Result<()> {
        match *ctx {}
    }
    pub fn settled(&mut self) {
        match *self {}
    }
    pub async fn finish(self, _graph: &Graph, _small: &dyn Weights) -> Result<GpuWeights> {
        match self {}
    }
}

pub enum GpuModel {}

impl GpuModel {
    pub async fn prepare_shared(
        _graph: &Graph,
        weights: &Arc<GpuWeights>,
        _fuse: bool,
    ) -> Result<Self> {
        match **weights {}
    }
    pub async fn run(&mut self, _input: &Tensor) -> Result<Vec<Tensor>> {
        match *self {}
    }
    pub fn memory(&self) -> &MemoryReport {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{Device, Session, Target};
    use crate::graph::GraphBuilder;
    use crate::tensor::Tensor;

    #[test]
    fn auto_runs_on_the_cpu_and_the_gpu_says_how_to_get_it() {
        let auto = pollster::block_on(Target::open(Device::Auto)).unwrap();
        assert!(auto.gpu_context().is_none());
        let notice = auto.notice.expect("a notice saying why");
        assert!(notice.contains("`gpu` feature"), "{notice}");
        let err = pollster::block_on(Target::open(Device::Gpu)).err().unwrap();
        assert!(err.to_string().contains("`gpu` feature"), "{err}");
        // A session on `Auto` runs on the CPU.
        let mut g = GraphBuilder::new();
        let x = g.input("x", &[1, 1, 2, 2]).unwrap();
        let y = g.relu("relu", x).unwrap();
        let graph = g.build(&[y]).unwrap();
        let mut s = Session::new_blocking(&graph, Default::default(), Device::Auto).unwrap();
        assert!(!s.is_gpu());
        let input = Tensor::new(vec![1, 1, 2, 2], vec![-1.0, 2.0, -3.0, 4.0]).unwrap();
        let out = s.run_blocking(&input).unwrap();
        assert_eq!(out[0].data(), &[0.0, 2.0, 0.0, 4.0]);
    }
}
