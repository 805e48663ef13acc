//! A graph prepared for one input shape: every buffer, uniform and bind group made once,
//! so a run is one upload, one command encoder, one submit and one read-back.

use super::context::GpuContext;
use super::kernels::{self, conv, Bind, Buffers, Family, Shader, Uniform};
use super::tuning;
use super::weights::{from_device, to_device, upload, Chunk, GpuWeights};
use super::Kernels;
use super::OneShot;
use crate::error::{Error, Result};
use crate::graph::{Graph, Value};
use crate::lower::{Kernel, Program, Step, StepParams, Weights};
use crate::plan::MemoryPlan;
use crate::tensor::{numel, Tensor};
use std::sync::Arc;
use wgpu::util::DeviceExt;

mod chunks;
mod convs;
mod steps;

use chunks::{batch_chunk, chunk_stride};
use convs::conv_work;
use steps::StepIo;

/// Device memory of a prepared model, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Activation slots shared by liveness (the plan's peak), input and outputs included.
    pub activations: u64,
    /// Scratch beyond the activations: staging for batch chunks and the read-back buffer.
    pub workspace: u64,
    /// Per-channel parameters this plan uploaded itself (biases, folded norm scales);
    /// conv and linear weights are the model's shared [`GpuWeights`].
    pub params: u64,
    /// Images per batch chunk (every activation of a chunk fits one storage binding).
    pub batch_chunk: usize,
    /// Dispatches launched per run.
    pub dispatches: usize,
    /// Layers whose weights were split across several bindings.
    pub split_layers: usize,
    /// Convolutions run by Winograd F(2x2, 3x3), 1x1 ones as a plain GEMM, and others
    /// directly on the GEMM's k-major weights (register-blocked set).
    pub winograd_layers: usize,
    pub gemm_layers: usize,
    pub direct_layers: usize,
    /// Tiled convolutions split along k (too few tiles to fill the device).
    pub k_split_layers: usize,
}

impl MemoryReport {
    /// Peak activation + workspace bytes.
    pub fn peak(&self) -> u64 {
        self.activations + self.workspace
    }
}

/// How [`GpuModel::time_steps`] timed the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepClock {
    /// The GPU's timestamps at the start and end of each step's compute pass.
    Timestamps,
    /// The host's clock around a submit of the step alone (the adapter has no timestamp
    /// queries): includes submit and wake-up overhead.
    WallTime,
}

struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    /// The program step it belongs to (for per-layer profiles, native only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    step: usize,
}

/// A buffer-to-buffer copy: batch chunks in and out of the activation slots.
struct Copy {
    src: wgpu::Buffer,
    src_off: u64,
    dst: wgpu::Buffer,
    dst_off: u64,
    size: u64,
}

enum Cmd {
    Copy(Copy),
    Pass(Vec<Dispatch>),
}

pub struct GpuModel {
    /// The model's weights (and through them the device) this plan binds.
    weights: Arc<GpuWeights>,
    input_shape: Vec<usize>,
    output_shapes: Vec<Vec<usize>>,
    /// Each program step's nodes, joined (for profiles, native only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    step_names: Vec<String>,
    upload: wgpu::Buffer,
    readback: wgpu::Buffer,
    cmds: Vec<Cmd>,
    report: MemoryReport,
}

/// A dispatch before the uniform buffer exists: its uniform words and its buffers in
/// binding order (1, 2, ..).
struct Pending {
    family: &'static Family,
    entry: &'static str,
    params: Vec<u32>,
    binds: Vec<Bind>,
    groups: [u32; 3],
    step: usize,
}

enum PendingCmd {
    Copy(Copy),
    Dispatch(Pending),
}

/// A step's parameters on the device: the shared weight chunks (whole rows or whole conv
/// groups), and the plan's own per-channel vectors.
struct Uploaded {
    /// The conv or linear weight's name.
    key: Option<String>,
    chunks: Vec<Chunk>,
    bias: Option<wgpu::Buffer>,
    scale: Option<wgpu::Buffer>,
}

impl GpuModel {
    /// Prepare `graph` on `ctx` with a private upload of the weights it needs.
    pub async fn prepare(ctx: &GpuContext, graph: &Graph, weights: &dyn Weights) -> Result<Self> {
        Self::prepare_with(ctx, graph, weights, true).await
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn prepare_blocking(
        ctx: &GpuContext,
        graph: &Graph,
        weights: &dyn Weights,
    ) -> Result<Self> {
        pollster::block_on(Self::prepare(ctx, graph, weights))
    }

    /// `fuse: false` runs every node as its own step (to test the fusions).
    // wgpu handles are single-threaded in wasm; natively GpuWeights is Send + Sync.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn prepare_with(
        ctx: &GpuContext,
        graph: &Graph,
        weights: &dyn Weights,
        fuse: bool,
    ) -> Result<Self> {
        let program = Program::new(graph, fuse);
        // A plan that cannot fit fails before any weight is uploaded.
        batch_chunk(&program, ctx.binding_limit(), ctx.elem_bytes())?;
        let shared = Arc::new(GpuWeights::upload(ctx, graph, weights).await?);
        Self::build(program, &shared).await
    }

    /// Prepare a plan for `graph` that binds the model's shared weights: it owns only its
    /// activations, per-channel parameters and dispatches.
    pub async fn prepare_shared(
        graph: &Graph,
        weights: &Arc<GpuWeights>,
        fuse: bool,
    ) -> Result<Self> {
        Self::build(Program::new(graph, fuse), weights).await
    }

    async fn build(program: Program, weights: &Arc<GpuWeights>) -> Result<Self> {
        tune(weights.context(), &program).await?;
        Self::build_with(program, weights, None).await
    }

    /// [`Self::build`] with every convolution on `force`, if given (no tuning).
    async fn build_with(
        program: Program,
        weights: &Arc<GpuWeights>,
        force: Option<Kernels>,
    ) -> Result<Self> {
        let ctx = weights.context();
        let params = program.params(weights.as_ref())?;
        ctx.scoped("preparing the graph", || {
            let mut b = Builder::new(ctx, weights);
            b.force = force;
            b.build(&program, &params)
        })
        .await
    }

    pub fn memory(&self) -> &MemoryReport {
        &self.report
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    pub fn context(&self) -> &GpuContext {
        self.weights.context()
    }

    fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        encode(&self.cmds, enc)
    }

    /// The batch chunks: (first image, images).
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (n, chunk) = (self.input_shape[0], self.report.batch_chunk.max(1));
        (0..n).step_by(chunk).map(move |b0| (b0, chunk.min(n - b0)))
    }

    fn check_alive(&self) -> Result<()> {
        match self.context().lost() {
            Some(why) => Err(Error::DeviceLost(why)),
            None => Ok(()),
        }
    }

    /// Run on `input`; returns the graph's outputs in order.
    pub async fn run(&mut self, input: &Tensor) -> Result<Vec<Tensor>> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(Error::InputShape {
                expected: self.input_shape.clone(),
                got: input.shape().to_vec(),
            });
        }
        self.check_alive()?;
        let s = &self.context().shared;
        let scope = s.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let precision = self.context().precision();
        let elem = precision.bytes();
        // Chunk by chunk, as `Builder::build` lays them out.
        let per_image = numel(&self.input_shape[1..]);
        let stride = chunk_stride(self.report.batch_chunk, per_image * elem);
        for (c, (b0, nb)) in self.chunks().enumerate() {
            let off = c * stride;
            let x = &input.data()[b0 * per_image..(b0 + nb) * per_image];
            s.queue
                .write_buffer(&self.upload, off as u64, &to_device(precision, x));
        }
        let mut enc = s
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward"),
            });
        self.encode(&mut enc);
        s.queue.submit([enc.finish()]);
        let done = OneShot::new();
        let send = done.sender();
        self.readback.slice(..).map_async(wgpu::MapMode::Read, send);
        #[cfg(not(target_arch = "wasm32"))]
        if let Err(e) = super::context::wait(&s.device) {
            // The map is still pending: cancel it, or the next run's map of this buffer
            // fails and reads as a lost device.
            self.readback.unmap();
            self.check_alive()?;
            return Err(e);
        }
        let mapped = done.await;
        let scope_err = scope.pop().await;
        // Our buffers are never destroyed while mapped: a failed map means the device went
        // away (its lost callback may come later), whatever else was reported.
        if let Err(e) = &mapped {
            self.check_alive()?;
            return Err(Error::DeviceLost(format!("reading results back: {e}")));
        }
        if let Some(e) = scope_err {
            self.readback.unmap();
            self.check_alive()?;
            return Err(Error::Gpu(format!("running the graph: {e}")));
        }
        // Unmapped whatever the read gives, so that a failed read leaves the buffer
        // ready for the next run.
        let outputs = self.read_mapped(precision);
        self.readback.unmap();
        let outputs = outputs?;
        self.check_alive()?;
        Ok(self
            .output_shapes
            .iter()
            .zip(outputs)
            .map(|(shape, data)| Tensor::new(shape.clone(), data).expect("planned shapes"))
            .collect())
    }

    /// The outputs from the mapped read-back buffer, chunk by chunk as `Builder::build`
    /// lays them out.
    fn read_mapped(&self, precision: super::Precision) -> Result<Vec<Vec<f32>>> {
        let elem = precision.bytes();
        let view = self
            .readback
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading results back: {e}")))?;
        let mut off = 0;
        Ok(self
            .output_shapes
            .iter()
            .map(|shape| {
                let pi = numel(&shape[1..]) * elem;
                let stride = chunk_stride(self.report.batch_chunk, pi);
                let mut v = Vec::with_capacity(numel(shape));
                for (_, nb) in self.chunks() {
                    v.extend(from_device(precision, &view[off..off + nb * pi]));
                    off += stride;
                }
                v
            })
            .collect())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_blocking(&mut self, input: &Tensor) -> Result<Vec<Tensor>> {
        pollster::block_on(self.run(input))
    }

    /// Seconds per pass of each program step on the device (for `bench --profile`), and
    /// how they were measured. With timestamp queries: whole forward passes with each
    /// step's dispatches in a compute pass of their own, timed by the GPU between the
    /// pass's start and end, median of `iters`. Without: each step's dispatches encoded
    /// `iters` times in one submit, timed by the host. Inputs are whatever the buffers
    /// hold, which does not change the work.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time_steps(&self, iters: usize) -> Result<(Vec<(String, f64)>, StepClock)> {
        self.check_alive()?;
        if self.context().has_timestamps() {
            return Ok((self.time_steps_on_device(iters)?, StepClock::Timestamps));
        }
        let s = &self.context().shared;
        let mut out = vec![];
        for (i, name) in self.step_names.iter().enumerate() {
            let mut enc = s.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                for _ in 0..iters.max(1) {
                    for c in &self.cmds {
                        let Cmd::Pass(ds) = c else { continue };
                        for d in ds.iter().filter(|d| d.step == i) {
                            pass.set_pipeline(&d.pipeline);
                            pass.set_bind_group(0, &d.bind_group, &[]);
                            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                        }
                    }
                }
            }
            let t = std::time::Instant::now();
            s.queue.submit([enc.finish()]);
            super::context::wait(&s.device)?;
            out.push((
                name.clone(),
                t.elapsed().as_secs_f64() / iters.max(1) as f64,
            ));
        }
        Ok((out, StepClock::WallTime))
    }

    /// [`Self::time_steps`] with timestamp queries.
    #[cfg(not(target_arch = "wasm32"))]
    fn time_steps_on_device(&self, iters: usize) -> Result<Vec<(String, f64)>> {
        let s = &self.context().shared;
        // Runs of consecutive dispatches of one step: a timed pass each.
        let runs: Vec<&[Dispatch]> = self
            .cmds
            .iter()
            .filter_map(|c| match c {
                Cmd::Pass(ds) => Some(ds.chunk_by(|a, b| a.step == b.step)),
                Cmd::Copy(_) => None,
            })
            .flatten()
            .collect();
        // A query set holds at most 4096 queries: passes in batches of 2048.
        const PASSES: usize = wgpu::QUERY_SET_MAX_QUERIES as usize / 2;
        let period = s.queue.get_timestamp_period() as f64 * 1e-9;
        let mut samples = vec![vec![]; self.step_names.len()];
        for _ in 0..iters.max(1) {
            let mut per_step = vec![0f64; self.step_names.len()];
            for batch in runs.chunks(PASSES) {
                let queries = (2 * batch.len()) as u32;
                let set = s.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("step timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: queries,
                });
                let bytes = queries as u64 * 8;
                let resolve = s.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let read = s.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps read-back"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut enc = s.device.create_command_encoder(&Default::default());
                for (i, run) in batch.iter().enumerate() {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &set,
                            beginning_of_pass_write_index: Some(2 * i as u32),
                            end_of_pass_write_index: Some(2 * i as u32 + 1),
                        }),
                    });
                    for d in *run {
                        pass.set_pipeline(&d.pipeline);
                        pass.set_bind_group(0, &d.bind_group, &[]);
                        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                    }
                }
                enc.resolve_query_set(&set, 0..queries, &resolve, 0);
                enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
                s.queue.submit([enc.finish()]);
                read.slice(..).map_async(wgpu::MapMode::Read, |_| ());
                super::context::wait(&s.device)?;
                let ticks: Vec<u64> = {
                    let view = read
                        .slice(..)
                        .get_mapped_range()
                        .map_err(|e| Error::Gpu(format!("reading timestamps: {e}")))?;
                    bytemuck::cast_slice(&view).to_vec()
                };
                for (run, t) in batch.iter().zip(ticks.chunks_exact(2)) {
                    per_step[run[0].step] += t[1].saturating_sub(t[0]) as f64 * period;
                }
            }
            for (v, t) in samples.iter_mut().zip(per_step) {
                v.push(t);
            }
        }
        Ok(self
            .step_names
            .iter()
            .zip(samples)
            .map(|(n, mut v)| {
                v.sort_by(f64::total_cmp);
                (n.clone(), v[v.len() / 2])
            })
            .collect())
    }

    /// Seconds per forward pass on the device, `iters` passes in one submission timed from
    /// it until the device is done (natively [`Self::time_device`]; in browsers by
    /// `performance.now()` around the queue's work-done promise).
    async fn time_pass(&self, iters: usize) -> Result<f64> {
        #[cfg(not(target_arch = "wasm32"))]
        return self.time_device(iters);
        #[cfg(target_arch = "wasm32")]
        {
            self.check_alive()?;
            let s = &self.context().shared;
            let mut enc = s.device.create_command_encoder(&Default::default());
            for _ in 0..iters {
                self.encode(&mut enc);
            }
            let t = now_ms();
            s.queue.submit([enc.finish()]);
            let done = OneShot::new();
            let tx = done.sender();
            s.queue.on_submitted_work_done(move || tx(()));
            done.await;
            self.check_alive()?;
            Ok((now_ms() - t) / 1e3 / iters.max(1) as f64)
        }
    }

    /// Seconds per forward pass on the device alone: `iters` passes encoded in one
    /// submit, no upload or read-back (for benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time_device(&self, iters: usize) -> Result<f64> {
        self.check_alive()?;
        let s = &self.context().shared;
        let mut enc = s.device.create_command_encoder(&Default::default());
        for _ in 0..iters {
            self.encode(&mut enc);
        }
        let t = std::time::Instant::now();
        s.queue.submit([enc.finish()]);
        super::context::wait(&s.device)?;
        Ok(t.elapsed().as_secs_f64() / iters.max(1) as f64)
    }
}

fn encode(cmds: &[Cmd], enc: &mut wgpu::CommandEncoder) {
    for c in cmds {
        match c {
            Cmd::Copy(c) => enc.copy_buffer_to_buffer(&c.src, c.src_off, &c.dst, c.dst_off, c.size),
            Cmd::Pass(ds) => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                for d in ds {
                    pass.set_pipeline(&d.pipeline);
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
        }
    }
}

struct Builder<'a> {
    ctx: &'a GpuContext,
    weights: &'a Arc<GpuWeights>,
    limit: u64,
    max_groups: u32,
    /// The linear kernels (per adapter, or as the context's options force, where the
    /// device can run them); convolutions choose per layer shape.
    variant: Kernels,
    /// Every convolution on this kernel (when timing them).
    force: Option<Kernels>,
    pending: Vec<PendingCmd>,
    /// Dispatches run once, when the plan is made: weights into a kernel's form.
    prologue: Vec<PendingCmd>,
    /// The derived weights the prologue makes, shared once it is queued.
    derived: Vec<(String, wgpu::Buffer)>,
    /// The special convolutions' scratch: the GEMM's input (im2col copies, Winograd's
    /// transformed input) and Winograd's products, shared by all of them.
    scratch: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// Per program step, a convolution's kernel, decided once at the batch chunk's size
    /// for every chunk (a smaller last chunk must not pick a kernel whose scratch the
    /// plan did not make).
    conv_kernels: Vec<Option<(Kernels, Option<conv::Special>)>>,
    /// Per program step, a tiled convolution's split along k: (slices, products each).
    conv_splits: Vec<(usize, usize)>,
    /// The split convolutions' partial sums, shared by all of them.
    split_scratch: Option<wgpu::Buffer>,
    dummy: wgpu::Buffer,
    report: MemoryReport,
    /// The step whose dispatches are being planned.
    step: usize,
}

impl<'a> Builder<'a> {
    fn new(ctx: &'a GpuContext, weights: &'a Arc<GpuWeights>) -> Self {
        let dummy = ctx.shared.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Builder {
            ctx,
            weights,
            limit: ctx.binding_limit(),
            max_groups: ctx.shared.limits.max_compute_workgroups_per_dimension,
            variant: Kernels::choose(ctx.kernels(), &ctx.shared.limits),
            force: None,
            pending: vec![],
            prologue: vec![],
            derived: vec![],
            scratch: None,
            conv_kernels: vec![],
            conv_splits: vec![],
            split_scratch: None,
            dummy,
            report: MemoryReport::default(),
            step: 0,
        }
    }

    fn device(&self) -> &wgpu::Device {
        &self.ctx.shared.device
    }

    fn storage(&self, label: &str, len: usize, extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * self.ctx.elem_bytes()).next_multiple_of(4) as u64,
            usage: wgpu::BufferUsages::STORAGE | extra,
            mapped_at_creation: false,
        })
    }

    fn upload(&mut self, label: &str, data: &[f32]) -> wgpu::Buffer {
        let buf = upload(self.ctx, label, data);
        self.report.params += buf.size();
        buf
    }

    /// Workgroup grid for `count` workgroups, folded into 2D past the per-dimension limit.
    fn fold(&self, count: usize, what: &str) -> Result<[usize; 3]> {
        let m = self.max_groups as usize;
        kernels::fold(count, m)
            .ok_or_else(|| Error::DeviceLimit(format!("{what}: {count} workgroups exceed {m}x{m}")))
    }

    fn build(mut self, program: &Program, params: &[StepParams]) -> Result<GpuModel> {
        let input_shape = program.shape(program.input).to_vec();
        let n = input_shape[0];
        let elem = self.ctx.elem_bytes();
        let per_image = |v| (numel(&program.shape(v)[1..]) * elem) as u64;
        let chunk = batch_chunk(program, self.limit, elem)?;
        let plan = MemoryPlan::new(program, chunk);
        let slots: Vec<wgpu::Buffer> = plan
            .slot_len
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                self.storage(
                    &format!("slot {i}"),
                    len,
                    wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                )
            })
            .collect();
        self.report.activations = plan.bytes();
        self.report.batch_chunk = chunk;
        self.plan_convs(program, chunk);

        let uploaded = program
            .steps
            .iter()
            .zip(params)
            .map(|(s, p)| self.upload_step(s, p))
            .collect::<Result<Vec<_>>>()?;

        let in_slot = &slots[plan.slot_of[&program.input]];
        let chunks = n.div_ceil(chunk);
        let chunk_bytes = |v| chunk_stride(chunk, per_image(v) as usize) as u64;
        let max_buf = self.ctx.shared.limits.max_buffer_size;
        let upload = if chunks == 1 {
            in_slot.clone()
        } else {
            let bytes = chunk_bytes(program.input) * chunks as u64;
            if bytes > max_buf {
                return Err(Error::DeviceLimit(format!(
                    "input of {bytes} bytes exceeds the {max_buf}-byte buffer limit"
                )));
            }
            self.report.workspace += bytes;
            self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("input"),
                size: bytes,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let out_bytes: Vec<u64> = program
            .outputs
            .iter()
            .map(|(v, _)| chunk_bytes(*v) * chunks as u64)
            .collect();
        let total_out: u64 = out_bytes.iter().sum();
        if total_out > max_buf {
            return Err(Error::DeviceLimit(format!(
                "outputs of {total_out} bytes exceed the {max_buf}-byte buffer limit"
            )));
        }
        self.report.workspace += total_out;
        let out_off: Vec<u64> = out_bytes
            .iter()
            .scan(0, |acc, b| {
                let o = *acc;
                *acc += b;
                Some(o)
            })
            .collect();
        let readback = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: total_out.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        for c in 0..chunks {
            let b0 = c * chunk;
            let nb = chunk.min(n - b0);
            if chunks > 1 {
                let pi = per_image(program.input);
                self.pending.push(PendingCmd::Copy(Copy {
                    src: upload.clone(),
                    src_off: c as u64 * chunk_bytes(program.input),
                    dst: in_slot.clone(),
                    dst_off: 0,
                    size: (nb as u64 * pi).next_multiple_of(4),
                }));
            }
            // Each output is copied out as soon as it is made, so its slot can be reused
            // after its last reader (the memory plan does not pin outputs).
            let copy_out = |pending: &mut Vec<PendingCmd>, v: Value| {
                for (k, (ov, shape)) in program.outputs.iter().enumerate() {
                    if *ov != v {
                        continue;
                    }
                    let pi = (numel(&shape[1..]) * elem) as u64;
                    pending.push(PendingCmd::Copy(Copy {
                        src: slots[plan.slot_of[ov]].clone(),
                        src_off: 0,
                        dst: readback.clone(),
                        dst_off: out_off[k] + c as u64 * chunk_bytes(*ov),
                        size: (nb as u64 * pi).next_multiple_of(4),
                    }));
                }
            };
            copy_out(&mut self.pending, program.input);
            for (i, (step, up)) in program.steps.iter().zip(&uploaded).enumerate() {
                self.step = i;
                let bind = |v| {
                    let len = numel(&program.shape(v)[1..]) * nb;
                    Bind::first(&slots[plan.slot_of[&v]], len, elem)
                };
                let io = StepIo {
                    xs: program.shape(step.inputs[0]).to_vec(),
                    os: program.shape(step.output).to_vec(),
                    what: step.nodes.join("+"),
                    relu: step.relu as u32,
                    ins: step.inputs.iter().map(|&v| bind(v)).collect(),
                    res: step.residual.map(bind),
                    out: bind(step.output),
                    nb,
                };
                self.dispatch_step(program, step, up, io)?;
                copy_out(&mut self.pending, step.output);
            }
        }
        let pending = std::mem::take(&mut self.pending);
        let cmds = self.finish(pending);
        let prologue = std::mem::take(&mut self.prologue);
        if !prologue.is_empty() {
            let once = self.finish(prologue);
            let mut enc = self.device().create_command_encoder(&Default::default());
            encode(&once, &mut enc);
            self.ctx.shared.queue.submit([enc.finish()]);
            // Queued before any run of any plan: later plans may bind them.
            self.weights
                .remember_derived(std::mem::take(&mut self.derived));
        }
        Ok(GpuModel {
            weights: self.weights.clone(),
            input_shape,
            output_shapes: program.outputs.iter().map(|(_, s)| s.clone()).collect(),
            step_names: program.steps.iter().map(|s| s.nodes.join("+")).collect(),
            upload,
            readback,
            cmds,
            report: self.report,
        })
    }

    fn upload_step(&mut self, step: &Step, p: &StepParams) -> Result<Uploaded> {
        let name = &step.nodes[0];
        let mut up = Uploaded {
            key: p.weight.clone(),
            chunks: vec![],
            bias: None,
            scale: None,
        };
        if let Some(key) = &p.weight {
            up.chunks = self.weights.chunks(key)?.to_vec();
            if up.chunks.len() > 1 {
                self.report.split_layers += 1;
            }
        }
        match &step.kernel {
            Kernel::Conv { .. } => {
                // The conv epilogue reads `scale[oc]` then `bias[oc]` from one binding.
                let affine: Vec<f32> = p.scale.iter().chain(&p.bias).copied().collect();
                up.bias = Some(self.upload(name, &affine));
            }
            Kernel::Linear { .. } => {
                up.bias = Some(self.upload(name, &p.bias));
            }
            Kernel::BatchNorm { .. } | Kernel::GroupNorm { .. } => {
                up.scale = Some(self.upload(name, &p.scale));
                up.bias = Some(self.upload(name, &p.bias));
            }
            _ => {}
        }
        Ok(up)
    }

    /// Queue `entry` of `shader` over `grid` workgroups, with the family's own params and
    /// buffers.
    fn push<P: Uniform, B: Buffers>(
        &mut self,
        shader: &'static Shader<P, B>,
        entry: &'static str,
        params: &P,
        buffers: B,
        grid: [usize; 3],
        what: &str,
    ) -> Result<()> {
        let d = self.pending_dispatch(shader, entry, params, buffers, grid, what)?;
        self.report.dispatches += 1;
        self.pending.push(PendingCmd::Dispatch(d));
        Ok(())
    }

    fn pending_dispatch<P: Uniform, B: Buffers>(
        &self,
        shader: &'static Shader<P, B>,
        entry: &'static str,
        params: &P,
        buffers: B,
        grid: [usize; 3],
        what: &str,
    ) -> Result<Pending> {
        let m = self.max_groups as usize;
        if grid.iter().any(|&g| g > m) {
            let [x, y, z] = grid;
            return Err(Error::DeviceLimit(format!(
                "'{what}': {entry} grid {x}x{y}x{z} exceeds {m} per dimension"
            )));
        }
        Ok(Pending {
            family: &shader.family,
            entry,
            params: kernels::words(params),
            binds: buffers.into_binds(),
            groups: grid.map(|g| g as u32),
            step: self.step,
        })
    }

    /// Queue `step`'s dispatches: each op family's own method says how (convs.rs,
    /// steps.rs).
    fn dispatch_step(
        &mut self,
        program: &Program,
        step: &Step,
        up: &Uploaded,
        io: StepIo,
    ) -> Result<()> {
        match &step.kernel {
            Kernel::Conv { cfg, .. } => self.conv_step(program, step, up, cfg, io),
            Kernel::Linear { cfg, .. } => self.linear_step(up, cfg, &io),
            Kernel::MaxPool(pl) => self.pool_step("max_pool", pl, &io),
            Kernel::AvgPool(pl) => self.pool_step("avg_pool", pl, &io),
            Kernel::AdaptiveAvgPool { output } => self.adaptive_pool_step(*output, &io),
            Kernel::Lrn(l) => self.lrn_step(l, &io),
            Kernel::BatchNorm { .. } | Kernel::GroupNorm { .. } => {
                let scale = up.scale.as_ref().expect("norm scale");
                let shift = up.bias.as_ref().expect("norm shift");
                let groups = match &step.kernel {
                    Kernel::GroupNorm { cfg, .. } => Some((cfg.groups, cfg.eps)),
                    _ => None,
                };
                self.norm_step((scale, shift), groups, &io)
            }
            Kernel::Add => self.elementwise_step("add", &io),
            Kernel::Relu => self.elementwise_step("relu", &io),
            Kernel::Softmax { dim } => self.softmax_step(*dim, &io),
        }
    }

    /// Write every dispatch's uniforms into one buffer and make the bind groups.
    fn finish(&mut self, pending: Vec<PendingCmd>) -> Vec<Cmd> {
        let align = self
            .ctx
            .shared
            .limits
            .min_uniform_buffer_offset_alignment
            .max(16) as usize
            / 4;
        let mut words: Vec<u32> = vec![];
        let mut offsets = vec![];
        for p in &pending {
            if let PendingCmd::Dispatch(d) = p {
                offsets.push(words.len() * 4);
                words.extend(&d.params);
                words.resize(words.len().div_ceil(align) * align, 0);
            }
        }
        if words.is_empty() {
            words.push(0);
        }
        let uniforms = self
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("uniforms"),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut cmds: Vec<Cmd> = vec![];
        let mut offsets = offsets.into_iter();
        for p in pending {
            match p {
                PendingCmd::Copy(c) => cmds.push(Cmd::Copy(c)),
                PendingCmd::Dispatch(d) => {
                    let pipeline = self.ctx.pipeline(d.family, d.entry);
                    let (_, layout) = self.ctx.family(d.family);
                    let off = offsets.next().expect("one offset per dispatch") as u64;
                    let uniform = wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniforms,
                            offset: off,
                            size: wgpu::BufferSize::new(d.params.len() as u64 * 4),
                        }),
                    };
                    let buffers = d
                        .binds
                        .iter()
                        .enumerate()
                        .map(|(i, b)| wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &b.buf,
                                offset: b.offset,
                                size: wgpu::BufferSize::new(b.size),
                            }),
                        });
                    let entries: Vec<_> = std::iter::once(uniform).chain(buffers).collect();
                    let bind_group = self.device().create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(d.entry),
                        layout: &layout,
                        entries: &entries,
                    });
                    let dispatch = Dispatch {
                        pipeline,
                        bind_group,
                        groups: d.groups,
                        step: d.step,
                    };
                    match cmds.last_mut() {
                        Some(Cmd::Pass(v)) => v.push(dispatch),
                        _ => cmds.push(Cmd::Pass(vec![dispatch])),
                    }
                }
            }
        }
        cmds
    }
}

/// Time every convolution kernel on each layer shape of `program` that its context wants
/// measured, and remember the fastest (see [`super::Tuning`]). A kernel that cannot run a
/// shape is skipped; a shape none runs is left to the table (and to the real build's
/// error).
async fn tune(ctx: &GpuContext, program: &Program) -> Result<()> {
    let nb = batch_chunk(program, ctx.binding_limit(), ctx.elem_bytes())?;
    let mut measured = false;
    for step in &program.steps {
        let Kernel::Conv { cfg, .. } = &step.kernel else {
            continue;
        };
        let (xs, os) = (program.shape(step.inputs[0]), program.shape(step.output));
        let shape = [nb, xs[1], xs[2], xs[3]];
        let key = tuning::shape_key(cfg, shape, ctx.precision());
        if ctx.conv_choice(&key, cfg, conv_work(cfg, os, nb)).is_some() {
            continue;
        }
        if let Some((v, times)) = fastest_conv(ctx, cfg, shape).await {
            ctx.shared.tuner.remember(key, v, times);
            measured = true;
        }
    }
    if measured {
        ctx.shared.tuner.save();
    }
    Ok(())
}

/// Passes timed per submission while tuning: enough for about this many seconds, so that
/// on fast GPUs (layers of tens of microseconds) the submission's own cost does not decide.
const TUNE_SPAN_S: f64 = 2e-3;
const TUNE_MAX_PASSES: usize = 64;

/// The fastest kernel on one convolution (synthetic weights and input: the work does not
/// depend on the values), by the best of a few timed submissions after a warm-up, and
/// every applicable kernel's seconds per pass.
#[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
async fn fastest_conv(
    ctx: &GpuContext,
    cfg: &crate::graph::Conv2d,
    shape: [usize; 4],
) -> Option<(Kernels, Vec<(Kernels, f64)>)> {
    let graph = {
        let mut b = crate::graph::GraphBuilder::new();
        let x = b.input("x", &shape).ok()?;
        let y = b.conv2d("conv", x, cfg.clone()).ok()?;
        b.build(&[y]).ok()?
    };
    let w = crate::prng::synth_params(&graph, 1).ok()?;
    let weights = Arc::new(GpuWeights::upload(ctx, &graph, &w).await.ok()?);
    let mut times = vec![];
    for v in Kernels::ALL {
        if !v.supports(&ctx.shared.limits) || !v.applies(cfg) {
            continue;
        }
        let program = Program::new(&graph, true);
        let Ok(m) = GpuModel::build_with(program, &weights, Some(v)).await else {
            continue;
        };
        let Ok(first) = m.time_pass(1).await else {
            continue;
        };
        let passes = ((TUNE_SPAN_S / first.max(1e-9)).ceil() as usize).clamp(1, TUNE_MAX_PASSES);
        let mut t = f64::INFINITY;
        for _ in 0..2 {
            t = t.min(m.time_pass(passes).await.unwrap_or(f64::INFINITY));
        }
        if t.is_finite() {
            times.push((v, t));
        }
    }
    let best = times.iter().min_by(|a, b| a.1.total_cmp(&b.1))?.0;
    Some((best, times))
}

/// Milliseconds from the page's (or worker's) `performance.now()`, else the wall clock.
#[cfg(target_arch = "wasm32")]
fn now_ms() -> f64 {
    use wasm_bindgen::JsCast;
    let get = |o: &wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).ok();
    get(&js_sys::global(), "performance")
        .and_then(|p| {
            let now: js_sys::Function = get(&p, "now")?.dyn_into().ok()?;
            now.call0(&p).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now)
}
