//! The one API the front ends (CLI, wasm, demo) share: a graph with weights prepared on
//! the GPU or the CPU, run on tensors; and classification helpers.

use crate::backend::cpu::CpuModel;
use crate::backend::gpu::{GpuContext, GpuModel, GpuOptions, MemoryReport};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::lower::Weights;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The GPU if an adapter is found, else the CPU (with a notice).
    #[default]
    Auto,
    Gpu,
    Cpu,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "gpu" => Ok(Device::Gpu),
            "cpu" => Ok(Device::Cpu),
            _ => Err(format!("unknown device '{s}' (auto, gpu or cpu)")),
        }
    }
}

enum Backend {
    Gpu(GpuModel),
    Cpu(CpuModel),
}

/// A prepared model on one backend.
pub struct Session {
    backend: Backend,
    /// Set when `Device::Auto` fell back to the CPU: why.
    pub notice: Option<String>,
}

impl Session {
    /// Open a GPU context for `device` (None for the CPU); `Auto` falls back with a notice.
    pub async fn context(device: Device) -> (Option<GpuContext>, Option<String>, Option<Error>) {
        match device {
            Device::Cpu => (None, None, None),
            Device::Gpu => match GpuContext::new(GpuOptions::default()).await {
                Ok(c) => (Some(c), None, None),
                Err(e) => (None, None, Some(e)),
            },
            Device::Auto => match GpuContext::new(GpuOptions::default()).await {
                Ok(c) => (Some(c), None, None),
                Err(e) => (
                    None,
                    Some(format!("{e}; running on the CPU backend instead")),
                    None,
                ),
            },
        }
    }

    /// Prepare `graph` on `ctx` (the GPU) or on the CPU when `ctx` is None.
    pub async fn prepare(
        graph: &Graph,
        weights: &dyn Weights,
        ctx: Option<&GpuContext>,
    ) -> Result<Session> {
        let backend = match ctx {
            Some(c) => Backend::Gpu(GpuModel::prepare(c, graph, weights).await?),
            None => Backend::Cpu(CpuModel::prepare(graph, weights)?),
        };
        Ok(Session {
            backend,
            notice: None,
        })
    }

    /// Open the device and prepare in one step.
    pub async fn new(graph: &Graph, weights: &dyn Weights, device: Device) -> Result<Session> {
        let (ctx, notice, err) = Self::context(device).await;
        if let Some(e) = err {
            return Err(e);
        }
        let mut s = Self::prepare(graph, weights, ctx.as_ref()).await?;
        s.notice = notice;
        Ok(s)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(graph: &Graph, weights: &dyn Weights, device: Device) -> Result<Session> {
        pollster::block_on(Self::new(graph, weights, device))
    }

    pub async fn run(&mut self, x: &Tensor) -> Result<Vec<Tensor>> {
        match &mut self.backend {
            Backend::Gpu(m) => m.run(x).await,
            Backend::Cpu(m) => m.run(x),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_blocking(&mut self, x: &Tensor) -> Result<Vec<Tensor>> {
        pollster::block_on(self.run(x))
    }

    /// "GPU: <adapter>" or "CPU".
    pub fn backend_name(&self) -> String {
        match &self.backend {
            Backend::Gpu(m) => format!("GPU: {}", m.context().describe()),
            Backend::Cpu(_) => "CPU".to_string(),
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self.backend, Backend::Gpu(_))
    }

    /// GPU memory of the prepared model (None on the CPU).
    pub fn memory(&self) -> Option<&MemoryReport> {
        match &self.backend {
            Backend::Gpu(m) => Some(m.memory()),
            Backend::Cpu(_) => None,
        }
    }
}

/// Softmax of one row of logits, in f64 for stable probabilities.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// The `k` most probable classes of one row of logits: (class, probability), best first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let p = softmax(logits);
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, p[i])).collect()
}
