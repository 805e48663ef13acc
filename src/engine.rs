//! The one API the front ends (CLI, wasm, demo) share: a graph with weights prepared on
//! the GPU or the CPU, run on tensors; and classification helpers.

use crate::backend::cpu::{CpuModel, CpuWeights};
use crate::backend::gpu::{GpuContext, GpuModel, GpuOptions, GpuWeights, MemoryReport};
use crate::error::Result;
use crate::graph::Graph;
use crate::lower::Weights;
use crate::tensor::Tensor;
use crate::weights::TensorMap;
use std::sync::Arc;

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

/// Where models run: an open GPU device, or the CPU. The one place that turns a
/// [`Device`] request into a backend (the CLI and the JS API both use it).
#[derive(Clone)]
pub struct Target {
    gpu: Option<GpuContext>,
    /// Set when `Device::Auto` fell back to the CPU: why.
    pub notice: Option<String>,
}

impl Target {
    /// Open `device`: `Gpu` fails without an adapter; `Auto` takes the GPU unless there is
    /// none or it is a software renderer (which the CPU backend outruns 10-20x), and then
    /// runs on the CPU with a notice saying why.
    pub async fn open(device: Device) -> Result<Target> {
        Self::open_with(device, GpuOptions::default()).await
    }

    /// [`Target::open`] with the GPU opened with `opts` (on the CPU they do not apply).
    pub async fn open_with(device: Device, opts: GpuOptions) -> Result<Target> {
        match device {
            Device::Cpu => Ok(Target::cpu()),
            Device::Gpu => Ok(Target::gpu(GpuContext::new(opts).await?)),
            Device::Auto => match GpuContext::new(opts).await {
                Ok(c) if c.is_software() => Ok(Target {
                    gpu: None,
                    notice: Some(format!(
                        "the GPU adapter '{}' is a software renderer, slower than the CPU backend; running on the CPU (ask for the GPU device to use it anyway)",
                        c.adapter_name()
                    )),
                }),
                Ok(c) => Ok(Target::gpu(c)),
                Err(e) => Ok(Target {
                    gpu: None,
                    notice: Some(format!("{e}; running on the CPU backend instead")),
                }),
            },
        }
    }

    pub fn cpu() -> Target {
        Target {
            gpu: None,
            notice: None,
        }
    }

    pub fn gpu(ctx: GpuContext) -> Target {
        Target {
            gpu: Some(ctx),
            notice: None,
        }
    }

    pub fn gpu_context(&self) -> Option<&GpuContext> {
        self.gpu.as_ref()
    }
}

/// A model's weights prepared on one device, loaded once.
enum Store {
    Gpu(Arc<GpuWeights>),
    Cpu(Arc<CpuWeights>),
}

/// A graph (requested outputs, input shape) prepared over the shared weights: it owns
/// only its activations and dispatches.
// Without the `gpu` feature the GPU variant is empty (it has no values).
#[cfg_attr(not(feature = "gpu"), allow(clippy::large_enum_variant))]
enum Plan {
    Gpu(GpuModel),
    Cpu(CpuModel),
}

/// A plan's identity: the whole graph it was made for (every node's op, parameters and
/// shape, and the requested outputs), so that two graphs that agree in input shape and
/// output names (ResNet-50 and its caffe variant) never share a plan.
type PlanKey = Graph;

/// Plans kept per session; the least recently used one is dropped beyond this.
const MAX_PLANS: usize = 6;

/// Weight bytes of a session: on the device (GPU buffers; the CPU's arrays count as its
/// device) and the host copies kept beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightBytes {
    pub device: u64,
    pub host: u64,
    /// Weights the device also keeps in a kernel's form (Winograd's), once per model.
    pub derived: u64,
}

/// Where a session gets its weights again when its GPU device is lost.
pub type Reload = Arc<dyn Fn() -> Result<TensorMap> + Send + Sync>;

/// A model loaded on one backend: its weights once, and plans for the graphs run on it
/// (the model's own, other outputs, other input sizes), made on first use and reused.
/// A lost GPU device fails the run in flight with `Error::DeviceLost`; with a weights
/// source ([`Session::with_reload`]) the next run opens a new device and loads again.
pub struct Session {
    /// Shared, so a run can hold it while the session prepares a plan.
    graph: Arc<Graph>,
    store: Store,
    /// Most recently used last.
    plans: Vec<(PlanKey, Plan)>,
    /// Set when `Device::Auto` fell back to the CPU: why.
    pub notice: Option<String>,
    reload: Option<Reload>,
}

impl Session {
    /// Load `weights` for `graph` on `target`. On the GPU the host tensors are dropped
    /// once uploaded (only per-channel vectors stay); on the CPU they are the one copy.
    // wgpu handles are single-threaded in wasm; natively GpuWeights is Send + Sync.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn load(graph: &Graph, weights: TensorMap, target: &Target) -> Result<Session> {
        let store = match &target.gpu {
            Some(ctx) => Store::Gpu(Arc::new(GpuWeights::upload(ctx, graph, &weights).await?)),
            None => Store::Cpu(Arc::new(CpuWeights::new(graph, weights)?)),
        };
        Ok(Session {
            graph: Arc::new(graph.clone()),
            store,
            plans: vec![],
            notice: target.notice.clone(),
            reload: None,
        })
    }

    /// A session over weights already on `target`'s GPU ([`crate::load::StreamLoad`]).
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub fn with_gpu_weights(graph: &Graph, weights: GpuWeights, target: &Target) -> Session {
        Session {
            graph: Arc::new(graph.clone()),
            store: Store::Gpu(Arc::new(weights)),
            plans: vec![],
            notice: target.notice.clone(),
            reload: None,
        }
    }

    /// Where to get the weights again if the GPU device is lost (the file they came
    /// from, the synthetic seed): the next run then re-creates the device and reloads.
    pub fn with_reload(mut self, reload: Reload) -> Session {
        self.reload = Some(reload);
        self
    }

    /// After a lost device: a new one, the weights loaded on it, every plan made again.
    // wgpu handles are single-threaded in wasm; natively GpuWeights is Send + Sync.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    async fn recover(&mut self) -> Result<()> {
        let Store::Gpu(w) = &self.store else {
            return Ok(());
        };
        let Some(why) = w.context().lost() else {
            return Ok(());
        };
        let Some(reload) = self.reload.clone() else {
            return Err(crate::Error::DeviceLost(format!(
                "{why}; this session has no weights source to reload from (Session::with_reload): load the model again"
            )));
        };
        let ctx = w.context().reopen().await?;
        let weights = reload()?;
        let store = Store::Gpu(Arc::new(
            GpuWeights::upload(&ctx, &self.graph, &weights).await?,
        ));
        self.plans.clear();
        self.store = store;
        log::warn!("the GPU device was lost ({why}); the model runs on a new device");
        Ok(())
    }

    /// Open `device` and load in one step.
    pub async fn new(graph: &Graph, weights: TensorMap, device: Device) -> Result<Session> {
        Self::new_with(graph, weights, device, GpuOptions::default()).await
    }

    /// [`Session::new`] with the GPU (where it is used) opened with `opts`.
    pub async fn new_with(
        graph: &Graph,
        weights: TensorMap,
        device: Device,
        opts: GpuOptions,
    ) -> Result<Session> {
        let target = Target::open_with(device, opts).await?;
        let mut s = Self::load(graph, weights, &target).await?;
        s.prepare(graph).await?;
        Ok(s)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(graph: &Graph, weights: TensorMap, device: Device) -> Result<Session> {
        pollster::block_on(Self::new(graph, weights, device))
    }

    /// The graph the weights were loaded for.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The plan for `graph` (same parameters as the loaded graph; any outputs and input
    /// shape), made now if there is none.
    async fn prepare(&mut self, graph: &Graph) -> Result<&mut Plan> {
        // Compared without allocating (this runs on every run): the input shape and the
        // outputs first, which tell most plans apart at once.
        let found = self.plans.iter().position(|(key, _)| {
            key.input_shape() == graph.input_shape()
                && key.outputs() == graph.outputs()
                && key.nodes() == graph.nodes()
        });
        let i = match found {
            Some(i) => i,
            None => {
                let plan = match &self.store {
                    Store::Gpu(w) => Plan::Gpu(GpuModel::prepare_shared(graph, w, true).await?),
                    Store::Cpu(w) => Plan::Cpu(CpuModel::prepare_shared(graph, w, true)?),
                };
                if self.plans.len() >= MAX_PLANS {
                    self.plans.remove(0);
                }
                self.plans.push((graph.clone(), plan));
                self.plans.len() - 1
            }
        };
        let entry = self.plans.remove(i);
        self.plans.push(entry);
        Ok(&mut self.plans.last_mut().expect("just pushed").1)
    }

    /// Run the loaded graph on `x`.
    pub async fn run(&mut self, x: &Tensor) -> Result<Vec<Tensor>> {
        let g = self.graph.clone();
        self.run_graph(&g, x).await
    }

    /// Run `graph` (the loaded model with other outputs or another input shape) on `x`.
    pub async fn run_graph(&mut self, graph: &Graph, x: &Tensor) -> Result<Vec<Tensor>> {
        self.recover().await?;
        match self.prepare(graph).await? {
            Plan::Gpu(m) => m.run(x).await,
            Plan::Cpu(m) => m.run(x),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_blocking(&mut self, x: &Tensor) -> Result<Vec<Tensor>> {
        pollster::block_on(self.run(x))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_graph_blocking(&mut self, graph: &Graph, x: &Tensor) -> Result<Vec<Tensor>> {
        pollster::block_on(self.run_graph(graph, x))
    }

    /// "GPU: <adapter>" or "CPU".
    pub fn backend_name(&self) -> String {
        match &self.store {
            Store::Gpu(w) => format!("GPU: {}", w.context().describe()),
            Store::Cpu(_) => "CPU".to_string(),
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self.store, Store::Gpu(_))
    }

    /// The GPU device the weights live on.
    pub fn gpu_context(&self) -> Option<&GpuContext> {
        match &self.store {
            Store::Gpu(w) => Some(w.context()),
            Store::Cpu(_) => None,
        }
    }

    /// GPU memory of the most recently used plan (None on the CPU).
    pub fn memory(&self) -> Option<&MemoryReport> {
        match self.plans.last() {
            Some((_, Plan::Gpu(m))) => Some(m.memory()),
            _ => None,
        }
    }

    /// Weight bytes: the shared weights plus what every plan uploaded itself.
    pub fn weight_bytes(&self) -> WeightBytes {
        match &self.store {
            Store::Gpu(w) => WeightBytes {
                device: w.device_bytes()
                    + self
                        .plans
                        .iter()
                        .map(|(_, p)| match p {
                            Plan::Gpu(m) => m.memory().params,
                            Plan::Cpu(_) => 0,
                        })
                        .sum::<u64>(),
                host: w.host_bytes(),
                derived: w.derived_bytes(),
            },
            Store::Cpu(w) => WeightBytes {
                device: 0,
                host: w.bytes(),
                derived: 0,
            },
        }
    }

    /// Row `row` of the weight matrix `key` (a linear layer's weights for one class).
    pub async fn weight_row(&self, key: &str, row: usize) -> Result<Vec<f32>> {
        match &self.store {
            Store::Gpu(w) => w.read_row(key, row).await,
            Store::Cpu(w) => {
                let t = w
                    .get(key)
                    .filter(|t| t.shape().len() >= 2 && row < t.shape()[0])
                    .ok_or_else(|| crate::Error::MissingWeight(format!("{key} row {row}")))?;
                let n = t.len() / t.shape()[0];
                Ok(t.data()[row * n..(row + 1) * n].to_vec())
            }
        }
    }

    /// Plans currently prepared.
    pub fn plan_count(&self) -> usize {
        self.plans.len()
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
/// A single logit is a binary classifier's (trained with a sigmoid, as
/// `BCEWithLogitsLoss` does): its probability is the sigmoid's, not a softmax's 1.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    if let [z] = logits {
        return vec![(0, (1.0 / (1.0 + (-*z as f64).exp())) as f32)];
    }
    let p = softmax(logits);
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, p[i])).collect()
}
