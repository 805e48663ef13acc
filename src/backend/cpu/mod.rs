//! The CPU backend: pure Rust. Convolutions run our direct kernels on prepacked weights
//! (`direct`: AVX-512 or AVX2 with FMA natively, chosen at run time; SIMD128 in wasm), else
//! implicit-GEMM tiles on the `gemm` crate; multi-threaded natively, and in wasm where the
//! page allows.

#[cfg(not(target_arch = "wasm32"))]
mod crew;
mod direct;
mod kernels;
mod layout;
mod linear;
mod par;
mod pool;
mod schedule;
mod weights;

use crate::error::{Error, Result};
use crate::graph::{Graph, Value};
use crate::lower::{Kernel, Program, StepParams, Weights};
use crate::plan::MemoryPlan;
use crate::tensor::numel;
use crate::tensor::Tensor;
use direct::{DirectConv, Isa};
use layout::Layout;
use schedule::{layouts, sub_batch, tail_cut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
pub use weights::CpuWeights;

/// Seconds per program step, named by its nodes joined with '+'.
pub type StepTimes = Vec<(String, f64)>;

/// A graph prepared for the CPU: lowered, with its small parameters checked and folded;
/// conv and linear weights are read from the shared [`CpuWeights`].
pub struct CpuModel {
    program: Program,
    /// How each of the program's steps runs here (one per step, in order).
    steps: Vec<CpuStep>,
    weights: Arc<CpuWeights>,
    plan: MemoryPlan,
    /// Floats of the values stored [`Layout::Padded`] (the rest take their shape's).
    padded: HashMap<Value, usize>,
    /// Activation slots and the direct convolutions' input buffer, made at prepare and
    /// reused by every run (no allocation per run but the outputs). Runs at once take one
    /// each, made when none is free: a run never waits on another's, since a pool thread
    /// that waits in a join may be handed the other run's job, which would then wait on
    /// the arena that this very thread holds.
    arenas: Mutex<Vec<Arena>>,
    scratch_len: usize,
    /// Where the batch runs in sub-batches: the plans that run them (then this one's own
    /// steps are empty).
    split: Option<Split>,
}

/// A program step as this backend runs it.
struct CpuStep {
    /// Its folded small parameters (bias, scale and shift) and its weight's key.
    params: StepParams,
    exec: Exec,
    /// The layouts of its first input and its output (see [`layouts`]).
    input: Layout,
    output: Layout,
}

/// What computes a step. (One per layer: the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
enum Exec {
    /// A direct convolution, its weights packed for its tile.
    Direct(DirectConv),
    /// A portable kernel on a convolution's weight in PyTorch's layout, held here because
    /// the shared store holds it packed (plans on the portable kernels beside direct ones).
    Plain(Arc<[f32]>),
    /// A portable kernel on the shared store's weight (if the step has one).
    Shared,
}

/// A batch run as consecutive sub-batches of `size` images (the last of `rest`'s size),
/// up to where a `tail` takes the whole batch.
struct Split {
    size: usize,
    part: Box<CpuModel>,
    rest: Option<Box<CpuModel>>,
    tail: Option<Tail>,
}

/// The steps from `from` on, run once on the whole batch by `model` (planned for those
/// steps only): past this cut, where `seed` is the one value that crosses it, the whole
/// batch's activations fit the cache, and the weights (ResNet-50 at batch 8: from its
/// last stage's second block on, 44 MB) are streamed once instead of once per sub-batch.
struct Tail {
    from: usize,
    seed: Value,
    model: Box<CpuModel>,
}

struct Arena {
    slots: Vec<Vec<f32>>,
    scratch: Vec<f32>,
}

/// An arena taken from a model's free list for one run, given back when dropped.
struct ArenaLoan<'a> {
    model: &'a CpuModel,
    arena: Arena,
}

impl<'a> ArenaLoan<'a> {
    fn take(model: &'a CpuModel) -> Self {
        let free = model.free_arenas().pop();
        let arena = free.unwrap_or_else(|| Arena {
            slots: model.plan.slot_len.iter().map(|&n| vec![0f32; n]).collect(),
            scratch: vec![0f32; model.scratch_len],
        });
        ArenaLoan { model, arena }
    }
}

impl Drop for ArenaLoan<'_> {
    fn drop(&mut self) {
        let arena = std::mem::replace(
            &mut self.arena,
            Arena {
                slots: vec![],
                scratch: vec![],
            },
        );
        self.model.free_arenas().push(arena);
    }
}

/// The name of an instruction set's kernels, as [`kernels`] gives it.
fn isa_name(isa: Isa) -> &'static str {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "AVX-512",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "AVX2",
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128 => "SIMD128",
    }
}

/// The convolution kernels this CPU runs: "AVX-512", "AVX2" (with FMA), "SIMD128" (our
/// direct microkernels), or "portable" (the `gemm` crate's, on CPUs without any of those).
pub fn kernels() -> &'static str {
    available_kernels()[0]
}

/// Every set of convolution kernels this CPU runs, best first; "portable" is always last.
pub fn available_kernels() -> Vec<&'static str> {
    let mut all: Vec<_> = Isa::available().into_iter().map(isa_name).collect();
    all.push("portable");
    all
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

    /// Prepare with one of [`available_kernels`] rather than the best (to test and time
    /// each: "portable" is the path of CPUs without a microkernel here).
    pub fn prepare_kernels(graph: &Graph, weights: &dyn Weights, kernels: &str) -> Result<Self> {
        let isa = match Isa::available()
            .into_iter()
            .find(|&i| isa_name(i) == kernels)
        {
            Some(isa) => Some(isa),
            None if kernels == "portable" => None,
            None => {
                return Err(Error::BadArgument(format!(
                    "this CPU has no '{kernels}' kernels; it runs {}",
                    available_kernels().join(", ")
                )))
            }
        };
        let w = Arc::new(CpuWeights::copied_for(graph, weights, isa.is_some())?);
        Self::prepare_isa(graph, &w, true, isa)
    }

    /// Prepare a plan that reads the model's shared weights (no copy).
    pub fn prepare_shared(graph: &Graph, weights: &Arc<CpuWeights>, fuse: bool) -> Result<Self> {
        Self::prepare_isa(graph, weights, fuse, Isa::detect())
    }

    fn prepare_isa(
        graph: &Graph,
        weights: &Arc<CpuWeights>,
        fuse: bool,
        isa: Option<Isa>,
    ) -> Result<Self> {
        let program = Program::new(graph, fuse);
        let n = program.shape(program.input)[0];
        let size = sub_batch(&program, isa);
        if size < n {
            if let (Some(g), rest) = (graph.with_batch(size), graph.with_batch(n % size)) {
                let part = Box::new(Self::prepare_isa(&g, weights, fuse, isa)?);
                let rest = match rest {
                    Some(r) => Some(Box::new(Self::prepare_isa(&r, weights, fuse, isa)?)),
                    None => None,
                };
                let tail = match tail_cut(&program, isa) {
                    Some((from, seed)) => {
                        let p = program.clone();
                        let model = Box::new(Self::plan_steps(p, weights, isa, from, seed)?);
                        Some(Tail { from, seed, model })
                    }
                    None => None,
                };
                return Ok(CpuModel {
                    // The parts own the plans and slots; this one only splits the batch.
                    plan: MemoryPlan {
                        slot_of: HashMap::new(),
                        slot_len: vec![],
                    },
                    program,
                    steps: vec![],
                    weights: weights.clone(),
                    padded: HashMap::new(),
                    arenas: Mutex::new(vec![]),
                    scratch_len: 0,
                    split: Some(Split {
                        size,
                        part,
                        rest,
                        tail,
                    }),
                });
            }
        }
        let input = program.input;
        Self::plan_steps(program, weights, isa, 0, input)
    }

    /// A model that runs `program`'s steps from `from` on, starting from `seed`.
    fn plan_steps(
        program: Program,
        weights: &Arc<CpuWeights>,
        isa: Option<Isa>,
        from: usize,
        seed: Value,
    ) -> Result<Self> {
        let params = program.params(weights.as_ref())?;
        let layouts = layouts(&program, isa);
        let mut padded = HashMap::new();
        for (step, l) in program.steps.iter().zip(&layouts) {
            if let Layout::Padded(pad) = l.output {
                let len = layout::padded_len(kernels::dims4(program.shape(step.output)), pad);
                padded.insert(step.output, len);
            }
        }
        let len = |v: Value| padded.get(&v).copied().unwrap_or(numel(program.shape(v)));
        let plan = MemoryPlan::sized(&program, from, seed, len);
        let slots = plan.slot_len.iter().map(|&n| vec![0f32; n]).collect();
        let mut steps = Vec::with_capacity(program.steps.len());
        for (i, ((step, l), params)) in program.steps.iter().zip(&layouts).zip(params).enumerate() {
            let exec = match (&step.kernel, isa, l.tile) {
                // Steps before `from` are another plan's: nothing is prepared for them.
                _ if i < from => Exec::Shared,
                (Kernel::Conv { cfg, node, .. }, Some(isa), Some(tile)) => {
                    let xs = program.shape(step.inputs[0]);
                    let os = program.shape(step.output);
                    let panels = weights.packed(&format!("{node}.weight"), cfg, tile.shape)?;
                    let (xs, os) = (kernels::dims4(xs), kernels::dims4(os));
                    let io = (l.input, l.output);
                    Exec::Direct(DirectConv::new(isa, tile, panels, cfg, xs, os, io))
                }
                (Kernel::Conv { cfg, node, .. }, ..) => {
                    match weights.plain(&format!("{node}.weight"), cfg) {
                        Some(w) => Exec::Plain(w),
                        None => Exec::Shared,
                    }
                }
                _ => Exec::Shared,
            };
            steps.push(CpuStep {
                params,
                exec,
                input: l.input,
                output: l.output,
            });
        }
        let scratch_len = steps
            .iter()
            .filter_map(|s| match &s.exec {
                Exec::Direct(d) => Some(d.scratch_len()),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let arena = Arena {
            slots,
            scratch: vec![0f32; scratch_len],
        };
        Ok(CpuModel {
            program,
            steps,
            weights: weights.clone(),
            plan,
            padded,
            arenas: Mutex::new(vec![arena]),
            scratch_len,
            split: None,
        })
    }

    fn free_arenas(&self) -> std::sync::MutexGuard<'_, Vec<Arena>> {
        self.arenas.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn input_shape(&self) -> &[usize] {
        self.program.shape(self.program.input)
    }

    /// Images per sub-batch: a batch whose layers would not fit the last-level cache runs
    /// as consecutive sub-batches (the whole batch where that does not pay).
    pub fn sub_batch(&self) -> usize {
        self.split
            .as_ref()
            .map_or(self.input_shape()[0], |s| s.size)
    }

    /// Where a batch runs in sub-batches: the first step that then runs on the whole
    /// batch, if any (see [`CpuModel::sub_batch`]).
    pub fn whole_batch_from(&self) -> Option<usize> {
        self.split.as_ref()?.tail.as_ref().map(|t| t.from)
    }

    /// Run on `input`; returns the graph's outputs in order.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        in_pool(|| self.run_timed(input, None))
    }

    /// Run on `input`, also timing each program step (its nodes joined, seconds).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_profiled(&self, input: &Tensor) -> Result<(Vec<Tensor>, StepTimes)> {
        let mut times = vec![];
        let out = in_pool(|| self.run_timed(input, Some(&mut times)))?;
        Ok((out, times))
    }

    fn run_timed(&self, input: &Tensor, mut times: Option<&mut StepTimes>) -> Result<Vec<Tensor>> {
        let p = &self.program;
        if input.shape() != self.input_shape() {
            return Err(Error::InputShape {
                expected: self.input_shape().to_vec(),
                got: input.shape().to_vec(),
            });
        }
        // The outputs: the one allocation of a steady-state run.
        let mut results: Vec<Vec<f32>> = p
            .outputs
            .iter()
            .map(|(_, s)| vec![0f32; numel(s)])
            .collect();
        let all = 0..p.steps.len();
        match &self.split {
            None => {
                let mut arena = ArenaLoan::take(self);
                let seed = (p.input, Some(input.data()));
                self.run_into(&mut arena.arena, seed, all, None, &mut results, 0, times)?
            }
            Some(Split {
                size,
                part,
                rest,
                tail,
            }) => {
                let n = self.input_shape()[0];
                let per_image = input.len() / n;
                // The tail's arena takes each sub-batch's share of the seed.
                let mut tail_arena = tail.as_ref().map(|t| ArenaLoan::take(&t.model));
                let head = 0..tail.as_ref().map_or(all.end, |t| t.from);
                for b0 in (0..n).step_by(*size) {
                    let m = if b0 + size <= n {
                        part
                    } else {
                        rest.as_ref().expect("a plan for the rest")
                    };
                    let k = m.input_shape()[0];
                    let x = &input.data()[b0 * per_image..(b0 + k) * per_image];
                    let export = match (tail, tail_arena.as_mut()) {
                        (Some(t), Some(a)) => {
                            let per = numel(&p.shape(t.seed)[1..]);
                            let slot = &mut a.arena.slots[t.model.plan.slot_of[&t.seed]];
                            Some((t.seed, &mut slot[b0 * per..(b0 + k) * per]))
                        }
                        _ => None,
                    };
                    // Steps are the same in every part: their times add up.
                    let mut t = times.as_ref().map(|_| StepTimes::new());
                    let mut arena = ArenaLoan::take(m);
                    let seed = (p.input, Some(x));
                    m.run_into(
                        &mut arena.arena,
                        seed,
                        head.clone(),
                        export,
                        &mut results,
                        b0,
                        t.as_mut(),
                    )?;
                    if let (Some(all), Some(t)) = (times.as_deref_mut(), t) {
                        if all.is_empty() {
                            *all = t;
                        } else {
                            all.iter_mut().zip(t).for_each(|(a, (_, s))| a.1 += s);
                        }
                    }
                }
                if let (Some(t), Some(a)) = (tail, tail_arena.as_mut()) {
                    let steps = t.from..all.end;
                    let seed = (t.seed, None);
                    t.model
                        .run_into(&mut a.arena, seed, steps, None, &mut results, 0, times)?;
                }
            }
        }
        Ok(p.outputs
            .iter()
            .zip(results)
            .map(|((_, shape), data)| Tensor::new(shape.clone(), data).expect("planned shapes"))
            .collect())
    }

    /// Run `steps` of this plan's batch in `arena`, from `seed` (its value, and the data
    /// to put in its slot unless it is there already), writing output `i` at image `b0` of
    /// `results[i]` and, at the end, `export`'s value into its buffer.
    // Instant is native-only: wasm never asks for times.
    #[cfg_attr(target_arch = "wasm32", allow(unused_mut, unused_variables))]
    #[allow(clippy::too_many_arguments)]
    fn run_into(
        &self,
        arena: &mut Arena,
        (seed, data): (Value, Option<&[f32]>),
        steps: std::ops::Range<usize>,
        export: Option<(Value, &mut [f32])>,
        results: &mut [Vec<f32>],
        b0: usize,
        mut times: Option<&mut StepTimes>,
    ) -> Result<()> {
        let p = &self.program;
        let Arena { slots, scratch } = arena;
        let slot = &self.plan.slot_of;
        let len = |v: Value| {
            let padded = self.padded.get(&v).copied();
            padded.unwrap_or_else(|| numel(p.shape(v)))
        };
        if let Some(data) = data {
            slots[slot[&seed]][..data.len()].copy_from_slice(data);
        }
        // Each output is copied out as soon as it is made (the plan does not pin outputs).
        let copy_out = |results: &mut [Vec<f32>], slots: &[Vec<f32>], v: Value| {
            for (r, (ov, shape)) in results.iter_mut().zip(&p.outputs) {
                if *ov == v {
                    let n = numel(shape);
                    r[b0 * n / shape[0]..][..n].copy_from_slice(&slots[slot[ov]][..n]);
                }
            }
        };
        copy_out(results, slots, seed);
        for (step, cs) in p.steps[steps.clone()].iter().zip(&self.steps[steps]) {
            // The direct convolutions hold their weights packed: no lookup for them.
            let weight = match (&cs.exec, &cs.params.weight) {
                (Exec::Direct(_), _) | (_, None) => &[][..],
                (Exec::Plain(w), Some(_)) => &w[..],
                (Exec::Shared, Some(k)) => self
                    .weights
                    .get(k)
                    .map(|t| t.data())
                    .ok_or_else(|| Error::MissingWeight(k.clone()))?,
            };
            // The plan never puts a step's output in the slot of one of its inputs: take
            // the output slot out while the inputs are borrowed.
            let o = slot[&step.output];
            let mut out = std::mem::take(&mut slots[o]);
            // Steps take one or two inputs: on the stack, not a vector per step.
            let mut ins: [(&[f32], &[usize]); 2] = [(&[], &[]); 2];
            assert!(
                step.inputs.len() <= ins.len(),
                "a step takes at most two inputs"
            );
            for (d, &v) in ins.iter_mut().zip(&step.inputs) {
                *d = (&slots[slot[&v]][..len(v)], p.shape(v));
            }
            let ins = &ins[..step.inputs.len()];
            let residual = step.residual.map(|v| &slots[slot[&v]][..len(v)]);
            #[cfg(not(target_arch = "wasm32"))]
            let t0 = std::time::Instant::now();
            let n = len(step.output);
            let (input, output) = (cs.input, cs.output);
            match (&cs.exec, &step.kernel) {
                // Of the other steps `layouts` lets only these read a blocked input.
                (Exec::Direct(d), _) => d.run(
                    ins[0].0,
                    scratch,
                    &cs.params,
                    residual,
                    step.relu,
                    &mut out[..n],
                ),
                (_, Kernel::AdaptiveAvgPool { .. }) if input == Layout::Blocked => {
                    let [b, c, h, w] = kernels::dims4(ins[0].1);
                    pool::global_avg_pool_blocked(ins[0].0, [b, c, h * w], &mut out[..n]);
                }
                (_, Kernel::MaxPool(pool)) if input == Layout::Blocked => {
                    let planes = output == Layout::Planes;
                    let (x, xs) = (ins[0].0, kernels::dims4(ins[0].1));
                    let os = kernels::dims4(p.shape(step.output));
                    pool::max_pool_blocked(x, xs, pool, os, &mut out[..n], planes);
                }
                _ => kernels::run_step(
                    step,
                    &cs.params,
                    weight,
                    ins,
                    residual,
                    p.shape(step.output),
                    &mut out[..n],
                ),
            }
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(t) = times.as_deref_mut() {
                t.push((step.nodes.join("+"), t0.elapsed().as_secs_f64()));
            }
            slots[o] = out;
            copy_out(results, slots, step.output);
        }
        if let Some((v, dst)) = export {
            dst.copy_from_slice(&slots[slot[&v]][..len(v)]);
        }
        Ok(())
    }
}

/// `f` on one of the pool's threads, with the others spinning beside it as its crew
/// ([`crew`]): each parallel step is then handed to threads already awake, instead of
/// from outside the pool (a wake-up and a blocking wait per step, which cost more than
/// ResNet-50's small 7x7 layers take) or to threads rayon has put to sleep. Native only: in
/// the threaded wasm build a panic is a trap of the worker it happens on, and on a pool
/// worker it would never reach the caller (the page hangs instead of reporting it).
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    if spinning() {
        crew::run(f)
    } else {
        // On a pool thread still (each step's split starts inside the pool), the others
        // asleep until rayon wakes them.
        rayon::scope(|_| f())
    }
    #[cfg(target_arch = "wasm32")]
    f()
}

/// 0: not asked; 1: spin; 2: do not.
#[cfg(not(target_arch = "wasm32"))]
static SPIN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether a run's other threads spin beside it for its whole length (the default; ONNX
/// Runtime's `allow_spinning`): the fastest runs, at the cost of every core busy while a
/// run lasts, also in the gaps a short step leaves. Off, they sleep between steps and are
/// woken for each (a few percent slower; kinder to other work on the machine and to
/// batteries). `WEBCNN_CPU_SPIN=0` turns it off for the process; this call overrides that.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_spinning(on: bool) {
    SPIN.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(target_arch = "wasm32"))]
fn spinning() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match SPIN.load(Relaxed) {
        0 => {
            let on = std::env::var("WEBCNN_CPU_SPIN").map_or(true, |v| v.trim() != "0");
            // A racing `set_spinning` wins.
            let _ = SPIN.compare_exchange(0, if on { 1 } else { 2 }, Relaxed, Relaxed);
            SPIN.load(Relaxed) == 1
        }
        s => s == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Conv2d, GraphBuilder};
    use crate::prng::{synth, synth_params};

    #[test]
    fn packing_is_undone_exactly() {
        let cfgs = [
            Conv2d::new(48, 20, 3).padding(1),
            Conv2d::new(64, 64, 3).groups(8),
            Conv2d::new(16, 24, 1),
            Conv2d::new(3, 10, 7).stride(2),
        ];
        for cfg in cfgs {
            let w = synth("c.weight", &cfg.weight_shape(), 9)
                .unwrap()
                .into_data();
            for (block, lanes) in [(8, 1), (16, 1), (16, 8), (32, 1)] {
                if lanes > 1 && !(cfg.in_channels / cfg.groups).is_multiple_of(lanes) {
                    continue;
                }
                let p = direct::pack(&w, &cfg, block, lanes);
                assert_eq!(
                    direct::unpack(&p, &cfg, block, lanes),
                    w,
                    "{cfg:?} {block} {lanes}"
                );
            }
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn without_spinning_a_run_has_no_crew_and_the_same_answer() {
        let model = crate::models::Model::get("resnet18").unwrap();
        let g = model.graph(&[2, 3, 48, 48]).unwrap();
        let m = CpuModel::prepare(&g, &synth_params(&g, 4).unwrap()).unwrap();
        let x = synth("x", &[2, 3, 48, 48], 8).unwrap();
        set_spinning(true);
        let spun = m.run(&x).unwrap();
        assert!(
            in_pool(|| crew::par(1, |_| {}).is_ok()),
            "a crew while spinning"
        );
        set_spinning(false);
        assert!(
            in_pool(|| crew::par(1, |_| {}).is_err()),
            "no crew without spinning"
        );
        let slept = m.run(&x).unwrap();
        set_spinning(true);
        assert_eq!(spun[0].data(), slept[0].data());
    }

    #[test]
    fn packed_convolutions_replace_their_weights_and_other_sizes_still_agree() {
        // ResNet-18 planned at two input sizes (their tiles differ): the weights are held
        // about once, and each plan answers as a private copy's plan does.
        let model = crate::models::Model::get("resnet18").unwrap();
        let g = model.graph(&[1, 3, 64, 64]).unwrap();
        let w = synth_params(&g, 5).unwrap();
        let shared = Arc::new(CpuWeights::new(&g, w.clone()).unwrap());
        let before = shared.bytes();
        for (i, hw) in [64, 96, 40].into_iter().enumerate() {
            let gi = model.graph(&[1, 3, hw, hw]).unwrap();
            let x = synth("x", &[1, 3, hw, hw], 2).unwrap();
            let a = CpuModel::prepare_shared(&gi, &shared, true).unwrap();
            let b = CpuModel::prepare(&gi, &w).unwrap().run(&x).unwrap();
            assert_eq!(a.run(&x).unwrap()[0].data(), b[0].data(), "{hw}x{hw}");
            if i == 0 && Isa::detect().is_some() {
                // Packing pads blocks of output channels: a few percent, not a second copy.
                let after = shared.bytes();
                assert!(after < before * 11 / 10, "{before} -> {after} bytes");
            }
        }
    }

    #[test]
    fn a_blocked_value_crosses_from_the_sub_batches_to_the_whole_batch_tail() {
        #[cfg(target_arch = "x86_64")]
        let avx2 = Isa::available().into_iter().find(|&i| i == Isa::Avx2);
        #[cfg(not(target_arch = "x86_64"))]
        let avx2: Option<Isa> = None;
        let Some(isa) = avx2 else {
            eprintln!("this CPU has no AVX2 kernels: nothing is stored blocked");
            return;
        };
        // 3.5 MB of one image's activations in the first conv: 4 images per sub-batch, so a
        // batch of 7 runs as 4 + 3 up to it; from the strided conv on the whole batch fits
        // the cache and runs at once, from the first conv's output, which AVX2 stores
        // blocked for the strided conv to read.
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[7, 48, 96, 96]).unwrap();
        let c1 = b
            .conv2d("c1", x, Conv2d::new(48, 48, 3).padding(1))
            .unwrap();
        let r1 = b.relu("r1", c1).unwrap();
        let c2 = b
            .conv2d("c2", r1, Conv2d::new(48, 48, 3).stride(2).padding(1))
            .unwrap();
        let c3 = b
            .conv2d("c3", c2, Conv2d::new(48, 48, 3).padding(1))
            .unwrap();
        let p = b.adaptive_avg_pool2d("pool", c3, [2, 2]).unwrap();
        let f = b.flatten("flatten", p, 1).unwrap();
        let fc = b.linear("fc", f, 48 * 4, 10, true).unwrap();
        let g = b.build(&[fc]).unwrap();
        let w = synth_params(&g, 4).unwrap();
        let weights = Arc::new(CpuWeights::copied(&g, &w).unwrap());
        let m = CpuModel::prepare_isa(&g, &weights, true, Some(isa)).unwrap();
        assert_eq!(m.sub_batch(), 4);
        assert_eq!(m.whole_batch_from(), Some(1));
        let program = Program::new(&g, true);
        let l = layouts(&program, Some(isa));
        assert_eq!(l[0].output, Layout::Blocked, "{l:?}");
        assert_eq!(l[1].input, Layout::Blocked, "{l:?}");
        // Each image alone (a batch of 1 is never split) gives the same answers.
        let x = synth("input", &[7, 48, 96, 96], 6).unwrap();
        let outs = m.run(&x).unwrap();
        let one = CpuModel::prepare_isa(&g.with_batch(1).unwrap(), &weights, true, Some(isa));
        let one = one.unwrap();
        let per = 48 * 96 * 96;
        for i in 0..7 {
            let xi = x.data()[i * per..(i + 1) * per].to_vec();
            let want = one
                .run(&Tensor::new(vec![1, 48, 96, 96], xi).unwrap())
                .unwrap();
            assert_eq!(
                &outs[0].data()[i * 10..(i + 1) * 10],
                want[0].data(),
                "image {i}"
            );
        }
    }

    #[test]
    fn padded_values_are_read_in_place_and_their_borders_kept_zero() {
        // c1 -> c2 -> c3 are padded stride-1 layers, each the one reader of the one
        // before; c3's output is read twice (by c4 and as its residual): planes.
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[2, 16, 20, 20]).unwrap();
        let c1 = b
            .conv2d("c1", x, Conv2d::new(16, 32, 3).padding(1))
            .unwrap();
        let r1 = b.relu("r1", c1).unwrap();
        // Rows and columns padded apart: a 3x5 kernel.
        let wide = Conv2d {
            kernel: [3, 5],
            padding: [1, 2],
            ..Conv2d::new(32, 40, 3)
        };
        let c2 = b.conv2d("c2", r1, wide).unwrap();
        let c3 = b
            .conv2d("c3", c2, Conv2d::new(40, 24, 3).padding(2).dilation(2))
            .unwrap();
        let c4 = b
            .conv2d("c4", c3, Conv2d::new(24, 24, 3).padding(1))
            .unwrap();
        let sum = b.add("sum", c4, c3).unwrap();
        let g = b.build(&[sum]).unwrap();
        let w = synth_params(&g, 3).unwrap();
        let weights = Arc::new(CpuWeights::copied(&g, &w).unwrap());
        let program = Program::new(&g, true);
        let x1 = synth("input", &[2, 16, 20, 20], 7).unwrap();
        let x2 = synth("input", &[2, 16, 20, 20], 8).unwrap();
        let portable = CpuModel::prepare_isa(&g, &weights, true, None).unwrap();
        let want = portable.run(&x2).unwrap();
        let mut padded_somewhere = false;
        for isa in Isa::available() {
            let l = layouts(&program, Some(isa));
            let stores = DirectConv::stores_padded(isa, l[0].tile.unwrap().shape);
            let expect = if stores {
                [
                    Layout::Padded([1, 2]),
                    Layout::Padded([2, 2]),
                    Layout::Planes,
                ]
            } else {
                [l[0].output, l[1].output, l[2].output]
            };
            assert_eq!([l[0].output, l[1].output, l[2].output], expect, "{isa:?}");
            if stores {
                assert_eq!(l[1].input, Layout::Padded([1, 2]), "{isa:?}");
                assert_eq!(l[2].input, Layout::Padded([2, 2]), "{isa:?}");
            }
            assert!(l
                .iter()
                .all(|s| !matches!(s.output, Layout::Padded(_)) || stores));
            padded_somewhere |= stores;
            // A second run finds other values' data in the padded values' slots (c3's
            // output shares c1's): it must answer as a fresh plan does.
            let m = CpuModel::prepare_isa(&g, &weights, true, Some(isa)).unwrap();
            m.run(&x1).unwrap();
            let got = m.run(&x2).unwrap();
            let fresh = CpuModel::prepare_isa(&g, &weights, true, Some(isa)).unwrap();
            let again = fresh.run(&x2).unwrap();
            assert!(
                got[0].data() == again[0].data(),
                "{isa:?}: not a fresh plan's answers"
            );
            let (mut err, mut norm) = (0f64, 0f64);
            for (&a, &b) in got[0].data().iter().zip(want[0].data()) {
                err += (a as f64 - b as f64).powi(2);
                norm += (b as f64).powi(2);
            }
            assert!(
                (err / norm).sqrt() < 1e-5,
                "{isa:?}: {}",
                (err / norm).sqrt()
            );
        }
        // AVX-512 and SIMD128 store padded values; AVX2 keeps them blocked instead.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(padded_somewhere, Isa::available().contains(&Isa::Avx512));
    }
}
