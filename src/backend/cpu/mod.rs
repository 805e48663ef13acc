//! The CPU backend: pure Rust, im2col + GEMM (the `gemm` crate) for convolutions and
//! linear layers, multi-threaded natively and single-threaded in wasm.

mod kernels;

use crate::error::{Error, Result};
use crate::graph::{Graph, Value};
use crate::lower::{param, Program, StepParams, Weights};
use crate::plan::MemoryPlan;
use crate::tensor::numel;
use crate::tensor::Tensor;
use crate::weights::TensorMap;
use std::sync::{Arc, Mutex};

/// A model's weights on the CPU: the one host copy every plan of the model reads,
/// checked against the model's graph. (Conv weights stay in PyTorch's `[oc, ic/g, kh, kw]`
/// layout: the GEMM's own packing of them per tile measured faster than reading a
/// column-major copy in place.)
pub struct CpuWeights {
    tensors: TensorMap,
}

impl Weights for CpuWeights {
    fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }
}

impl CpuWeights {
    /// Check `w` against `graph`'s parameters and take it over; keys the graph does not
    /// use are dropped.
    pub fn new(graph: &Graph, mut w: TensorMap) -> Result<Self> {
        let mut tensors = TensorMap::new();
        for p in graph.params() {
            param(&w, &p)?;
            let t = w.remove(&p.name).expect("checked");
            tensors.insert(p.name, t);
        }
        Ok(CpuWeights { tensors })
    }

    /// A checked copy of the parameters `graph` needs from `w` (one-off models and tests).
    pub fn copied(graph: &Graph, w: &dyn Weights) -> Result<Self> {
        let tensors = graph
            .params()
            .into_iter()
            .map(|p| Ok((p.name.clone(), param(w, &p)?.clone())))
            .collect::<Result<TensorMap>>()?;
        Ok(CpuWeights { tensors })
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.len() as u64 * 4).sum()
    }
}

/// Seconds per program step, named by its nodes joined with '+'.
pub type StepTimes = Vec<(String, f64)>;

/// A graph prepared for the CPU: lowered, with its small parameters checked and folded;
/// conv and linear weights are read from the shared [`CpuWeights`].
pub struct CpuModel {
    program: Program,
    params: Vec<StepParams>,
    weights: Arc<CpuWeights>,
    plan: MemoryPlan,
    /// Activation slots, made at prepare and reused by every run (no allocation per run
    /// but the outputs).
    arena: Mutex<Vec<Vec<f32>>>,
}

impl CpuModel {
    /// Prepare with a private copy of the weights `graph` needs.
    pub fn prepare(graph: &Graph, weights: &dyn Weights) -> Result<Self> {
        Self::prepare_with(graph, weights, true)
    }

    /// `fuse: false` runs every node as its own step (to test the fusions).
    pub fn prepare_with(graph: &Graph, weights: &dyn Weights, fuse: bool) -> Result<Self> {
        Self::prepare_shared(graph, &Arc::new(CpuWeights::copied(graph, weights)?), fuse)
    }

    /// Prepare a plan that reads the model's shared weights (no copy).
    pub fn prepare_shared(graph: &Graph, weights: &Arc<CpuWeights>, fuse: bool) -> Result<Self> {
        let program = Program::new(graph, fuse);
        let params = program.params(weights.as_ref())?;
        let batch = program.shape(program.input)[0];
        let plan = MemoryPlan::new(&program, batch);
        let arena = plan.slot_len.iter().map(|&n| vec![0f32; n]).collect();
        Ok(CpuModel {
            program,
            params,
            weights: weights.clone(),
            plan,
            arena: Mutex::new(arena),
        })
    }

    pub fn input_shape(&self) -> &[usize] {
        self.program.shape(self.program.input)
    }

    /// Run on `input`; returns the graph's outputs in order.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        self.run_timed(input, None)
    }

    /// Run on `input`, also timing each program step (its nodes joined, seconds).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_profiled(&self, input: &Tensor) -> Result<(Vec<Tensor>, StepTimes)> {
        let mut times = vec![];
        let out = self.run_timed(input, Some(&mut times))?;
        Ok((out, times))
    }

    // Instant is native-only: wasm never asks for times.
    #[cfg_attr(target_arch = "wasm32", allow(unused_mut, unused_variables))]
    fn run_timed(&self, input: &Tensor, mut times: Option<&mut StepTimes>) -> Result<Vec<Tensor>> {
        let p = &self.program;
        if input.shape() != self.input_shape() {
            return Err(Error::InputShape {
                expected: self.input_shape().to_vec(),
                got: input.shape().to_vec(),
            });
        }
        let mut guard = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        let slots: &mut Vec<Vec<f32>> = &mut guard;
        let slot = &self.plan.slot_of;
        let len = |v: Value| numel(p.shape(v));
        slots[slot[&p.input]][..input.len()].copy_from_slice(input.data());
        // Each output is copied out as soon as it is made (the plan does not pin outputs).
        let mut results: Vec<Vec<f32>> = vec![vec![]; p.outputs.len()];
        let copy_out = |results: &mut Vec<Vec<f32>>, slots: &[Vec<f32>], v: Value| {
            for (r, (ov, shape)) in results.iter_mut().zip(&p.outputs) {
                if *ov == v {
                    *r = slots[slot[ov]][..numel(shape)].to_vec();
                }
            }
        };
        copy_out(&mut results, slots, p.input);
        for (step, params) in p.steps.iter().zip(&self.params) {
            let weight = match &params.weight {
                Some(k) => self
                    .weights
                    .get(k)
                    .map(|t| t.data())
                    .ok_or_else(|| Error::MissingWeight(k.clone()))?,
                None => &[][..],
            };
            // The plan never puts a step's output in the slot of one of its inputs: take
            // the output slot out while the inputs are borrowed.
            let o = slot[&step.output];
            let mut out = std::mem::take(&mut slots[o]);
            let ins: Vec<(&[f32], &[usize])> = step
                .inputs
                .iter()
                .map(|&v| (&slots[slot[&v]][..len(v)], p.shape(v)))
                .collect();
            let residual = step.residual.map(|v| &slots[slot[&v]][..len(v)]);
            #[cfg(not(target_arch = "wasm32"))]
            let t0 = std::time::Instant::now();
            let n = len(step.output);
            kernels::run_step(
                step,
                params,
                weight,
                &ins,
                residual,
                p.shape(step.output),
                &mut out[..n],
            );
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(t) = times.as_deref_mut() {
                t.push((step.nodes.join("+"), t0.elapsed().as_secs_f64()));
            }
            slots[o] = out;
            copy_out(&mut results, slots, step.output);
        }
        Ok(p.outputs
            .iter()
            .zip(results)
            .map(|((_, shape), data)| Tensor::new(shape.clone(), data).expect("planned shapes"))
            .collect())
    }
}
