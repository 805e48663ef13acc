//! A model's weights on one GPU device, uploaded once and shared by every plan of the
//! model (other outputs, input sizes, batch sizes): conv and linear weights live only in
//! device buffers; the small per-channel tensors (biases, norm parameters) stay on the
//! host, where each plan folds them into the few floats it uploads itself.

use super::context::GpuContext;
use super::kernels::Precision;
use super::OneShot;
use crate::error::{Error, Result};
use crate::graph::{Graph, Op};
use crate::lower::{is_matrix, param, Weights};
use crate::tensor::Tensor;
use crate::weights::TensorMap;
use std::collections::HashMap;
use std::sync::Mutex;

/// Where one buffer's values lie in a weight tensor (see [`Chunk`]).
struct Span {
    range: std::ops::Range<usize>,
    group: usize,
    groups: usize,
    row: usize,
    rows: usize,
}

impl Span {
    fn chunk(self, buf: wgpu::Buffer) -> Chunk {
        Chunk {
            buf,
            group: self.group,
            groups: self.groups,
            row: self.row,
            rows: self.rows,
        }
    }
}

/// Weights written to the device as a file's values arrive ([`GpuWeights::stream`]):
/// [`GpuStream::write`] each run of values, [`GpuStream::settle`] when
/// [`GpuStream::unsettled`] says so, then [`GpuStream::finish`] with the small tensors.
pub struct GpuStream {
    w: GpuWeights,
    /// Each matrix's buffers' value ranges, in the order of its chunks.
    spans: HashMap<String, Vec<std::ops::Range<usize>>>,
    /// Values written per matrix.
    written: HashMap<String, usize>,
}

impl GpuStream {
    /// Whether `key` is one of the weights written to the device.
    pub fn takes(&self, key: &str) -> bool {
        self.spans.contains_key(key)
    }

    /// Values `at..at + values.len()` of the matrix `key`, written where they land.
    pub fn write(&mut self, key: &str, at: usize, values: &[f32]) -> Result<()> {
        let (Some(spans), Some(chunks)) = (self.spans.get(key), self.w.matrices.get(key)) else {
            return Err(Error::MissingWeight(key.to_string()));
        };
        let end = at + values.len();
        for (range, chunk) in spans.iter().zip(chunks) {
            let (lo, hi) = (at.max(range.start), end.min(range.end));
            if lo >= hi {
                continue;
            }
            let part = &values[lo - at..hi - at];
            let offset = ((lo - range.start) * 4) as u64;
            self.w
                .ctx
                .shared
                .queue
                .write_buffer(&chunk.buf, offset, bytemuck::cast_slice(part));
        }
        *self.written.entry(key.to_string()).or_default() += values.len();
        self.w.unsettled += (values.len() * 4) as u64;
        Ok(())
    }

    /// Whether enough was written since the device last caught up to wait for it now.
    pub fn unsettled(&self) -> bool {
        self.w.unsettled >= SETTLE_BYTES
    }

    /// Wait until the device has taken what was written (its staging memory is free).
    pub async fn settle(ctx: &GpuContext) -> Result<()> {
        ctx.settle().await
    }

    /// The writes so far are settled.
    pub fn settled(&mut self) {
        self.w.unsettled = 0;
    }

    pub fn context(&self) -> &GpuContext {
        &self.w.ctx
    }

    /// The weights, once every matrix was written whole, with the small tensors of
    /// `graph` from `small` (checked against its shapes).
    pub async fn finish(mut self, graph: &Graph, small: &dyn Weights) -> Result<GpuWeights> {
        for p in graph.params() {
            if let Some(spans) = self.spans.get(&p.name) {
                let want = spans.last().map_or(0, |r| r.end);
                let got = self.written.get(&p.name).copied().unwrap_or(0);
                if got != want {
                    return Err(Error::MissingWeight(format!(
                        "{} ({got} of {want} values arrived)",
                        p.name
                    )));
                }
            } else {
                let t = param(small, &p)?;
                self.w.small.insert(p.name, t.clone());
            }
        }
        self.w.ctx.settle().await?;
        self.w.unsettled = 0;
        Ok(self.w)
    }
}

/// Part of a weight tensor in one buffer: `groups` conv groups from `group`, and in each
/// of them `rows` output rows from `row` (Linear: one group).
#[derive(Clone)]
pub(crate) struct Chunk {
    pub buf: wgpu::Buffer,
    pub group: usize,
    pub groups: usize,
    pub row: usize,
    pub rows: usize,
}

pub struct GpuWeights {
    ctx: GpuContext,
    /// Conv and linear weights in chunks that each fit one storage binding.
    matrices: HashMap<String, Vec<Chunk>>,
    /// The other (rank-1) tensors, on the host.
    small: TensorMap,
    shapes: HashMap<String, Vec<usize>>,
    device_bytes: u64,
    /// Bytes written since the device last caught up (while uploading).
    unsettled: u64,
    /// Weights in the form a kernel wants (Winograd's transformed kernels), made on the
    /// device by the first plan that needs them and shared by the others.
    derived: Mutex<HashMap<String, wgpu::Buffer>>,
}

impl Weights for GpuWeights {
    fn get(&self, key: &str) -> Option<&Tensor> {
        self.small.get(key)
    }
    fn shape(&self, key: &str) -> Option<&[usize]> {
        self.shapes.get(key).map(|s| s.as_slice())
    }
}

impl GpuWeights {
    /// Upload every parameter of `graph` from `weights` (checked against the graph's
    /// shapes). The caller may drop its host tensors afterwards.
    pub async fn upload(ctx: &GpuContext, graph: &Graph, weights: &dyn Weights) -> Result<Self> {
        ctx.scoped_async(
            "uploading the weights",
            Self::upload_all(ctx, graph, weights),
        )
        .await
    }

    async fn upload_all(ctx: &GpuContext, graph: &Graph, weights: &dyn Weights) -> Result<Self> {
        let mut w = GpuWeights::empty(ctx);
        for p in graph.params() {
            let t = param(weights, &p)?;
            w.shapes.insert(p.name.clone(), p.shape.clone());
            if !is_matrix(graph, &p.name) {
                w.small.insert(p.name, t.clone());
                continue;
            }
            let mut chunks = vec![];
            for span in w.spans(graph, &p.name, t.len())? {
                let data = &t.data()[span.range.clone()];
                let buf = upload_settled(&w.ctx, &p.name, data, &mut w.unsettled).await?;
                w.device_bytes += buf.size();
                chunks.push(span.chunk(buf));
            }
            w.matrices.insert(p.name, chunks);
        }
        w.ctx.settle().await?;
        w.unsettled = 0;
        Ok(w)
    }

    fn empty(ctx: &GpuContext) -> Self {
        GpuWeights {
            ctx: ctx.clone(),
            matrices: HashMap::new(),
            small: TensorMap::new(),
            shapes: HashMap::new(),
            device_bytes: 0,
            unsettled: 0,
            derived: Mutex::new(HashMap::new()),
        }
    }

    /// How the matrix `name` of `graph` (`len` values: `groups` x `rows` x `row_len`) is
    /// split into buffers that each fit one binding: whole groups where a group fits, else
    /// runs of rows within a group. Each span is a contiguous range of the values.
    fn spans(&self, graph: &Graph, name: &str, len: usize) -> Result<Vec<Span>> {
        let node = graph.node(graph.find(&name[..name.len() - 7]).expect("a matrix"));
        let (groups, rows) = match &node.op {
            Op::Conv2d(c) => (c.groups, c.out_channels / c.groups),
            Op::Linear(l) => (1, l.out_features),
            _ => unreachable!("is_matrix"),
        };
        let limit = self.ctx.binding_limit();
        let row_len = len / (groups * rows).max(1);
        let row_bytes = (row_len * self.ctx.elem_bytes()) as u64;
        let group_bytes = row_bytes * rows as u64;
        let range =
            |g: usize, r: usize, n: usize| (g * rows + r) * row_len..(g * rows + r + n) * row_len;
        let mut spans = vec![];
        if group_bytes <= limit {
            let per = ((limit / group_bytes.max(1)) as usize).clamp(1, groups.max(1));
            for g in (0..groups).step_by(per) {
                let n = per.min(groups - g);
                spans.push(Span {
                    range: range(g, 0, n * rows),
                    group: g,
                    groups: n,
                    row: 0,
                    rows,
                });
            }
        } else {
            let per = (limit / row_bytes) as usize;
            if per == 0 {
                return Err(Error::DeviceLimit(format!(
                    "'{name}': one weight row of {row_bytes} bytes exceeds the {limit}-byte storage binding limit"
                )));
            }
            for g in 0..groups {
                for r in (0..rows).step_by(per) {
                    let n = per.min(rows - r);
                    spans.push(Span {
                        range: range(g, r, n),
                        group: g,
                        groups: 1,
                        row: r,
                        rows: n,
                    });
                }
            }
        }
        Ok(spans)
    }

    /// Device buffers for every conv and linear weight of `graph`, made from its shapes,
    /// for a file's values to be written into as they arrive ([`GpuStream`]). Needs f32
    /// storage (values are written where they land, without conversion).
    pub fn stream(ctx: &GpuContext, graph: &Graph) -> Result<GpuStream> {
        if ctx.precision() != Precision::F32 {
            return Err(Error::BadArgument(
                "weights stream to the device at f32 precision only".into(),
            ));
        }
        let mut w = GpuWeights::empty(ctx);
        let mut spans = HashMap::new();
        for p in graph.params() {
            w.shapes.insert(p.name.clone(), p.shape.clone());
            if !is_matrix(graph, &p.name) {
                continue;
            }
            let len = p.shape.iter().product();
            let mut chunks = vec![];
            let mut ranges = vec![];
            for span in w.spans(graph, &p.name, len)? {
                let buf = storage(ctx, &p.name, span.range.len());
                w.device_bytes += buf.size();
                ranges.push(span.range.clone());
                chunks.push(span.chunk(buf));
            }
            w.matrices.insert(p.name.clone(), chunks);
            spans.insert(p.name, ranges);
        }
        Ok(GpuStream {
            w,
            spans,
            written: HashMap::new(),
        })
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The device buffers of a conv or linear weight.
    pub(crate) fn chunks(&self, key: &str) -> Result<&[Chunk]> {
        self.matrices
            .get(key)
            .map(|c| c.as_slice())
            .ok_or_else(|| Error::MissingWeight(key.to_string()))
    }

    /// Row `row` of a linear weight (or output channel of an ungrouped conv), read back
    /// from the device.
    pub async fn read_row(&self, key: &str, row: usize) -> Result<Vec<f32>> {
        let chunk = self
            .chunks(key)?
            .iter()
            .find(|c| c.group == 0 && c.groups == 1 && (c.row..c.row + c.rows).contains(&row))
            .ok_or_else(|| Error::MissingWeight(format!("{key} row {row}")))?;
        let row_len = self.shapes[key][1..].iter().product::<usize>();
        let elem = self.ctx.elem_bytes();
        // Copies move whole 4-byte words: at half precision an odd row takes the next value.
        let (off, bytes) = word_range((row - chunk.row) * row_len * elem, row_len * elem);
        let s = &self.ctx.shared;
        let staging = s.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weight row"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = s.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&chunk.buf, off, &staging, 0, bytes);
        let skip = (row - chunk.row) * row_len * elem - off as usize;
        s.queue.submit([enc.finish()]);
        let done = OneShot::new();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, done.sender());
        #[cfg(not(target_arch = "wasm32"))]
        super::context::wait(&s.device)?;
        // A failed map means the device went away (see `GpuModel::run`).
        done.await
            .map_err(|e| Error::DeviceLost(format!("reading a weight row: {e}")))?;
        let v = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading a weight row: {e}")))
            .map(|view| from_device(self.ctx.precision(), &view[skip..skip + row_len * elem]))?;
        staging.unmap();
        Ok(v)
    }

    /// Bytes of weights in device buffers.
    pub fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    /// The derived form of `key`, if a plan made it.
    pub(crate) fn derived(&self, key: &str) -> Option<wgpu::Buffer> {
        self.derived.lock().unwrap().get(key).cloned()
    }

    /// Keep derived weights that a plan made (and has filled: its commands are queued).
    pub(crate) fn remember_derived(&self, made: Vec<(String, wgpu::Buffer)>) {
        self.derived.lock().unwrap().extend(made);
    }

    /// Bytes of derived weights on the device (one form per kernel that reads a weight:
    /// usually one, two where plans for different batches chose different kernels).
    pub fn derived_bytes(&self) -> u64 {
        self.derived
            .lock()
            .unwrap()
            .values()
            .map(|b| b.size())
            .sum()
    }

    /// Bytes of weights kept on the host (the rank-1 tensors).
    pub fn host_bytes(&self) -> u64 {
        self.small.values().map(|t| t.len() as u64 * 4).sum()
    }
}

/// The 4-byte words that hold bytes `start..start + len`: (offset, size).
fn word_range(start: usize, len: usize) -> (u64, u64) {
    let s = start / 4 * 4;
    (s as u64, ((start + len).next_multiple_of(4) - s) as u64)
}

/// `data` as the device stores it (f32, or f16 at half precision), padded to whole 4-byte
/// words (what buffer copies and bindings move).
pub(crate) fn to_device(precision: Precision, data: &[f32]) -> Vec<u8> {
    let mut b = match precision {
        Precision::F32 => bytemuck::cast_slice(data).to_vec(),
        Precision::F16 => data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
    };
    b.resize(b.len().next_multiple_of(4), 0);
    b
}

/// Stored values back as f32.
pub(crate) fn from_device(precision: Precision, bytes: &[u8]) -> Vec<f32> {
    match precision {
        Precision::F32 => bytemuck::pod_collect_to_vec(bytes),
        Precision::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// A storage buffer holding `data` (one value when empty: bindings cannot be empty).
pub(crate) fn upload(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    let buf = storage(ctx, label, data.len());
    for (offset, piece) in pieces(ctx.precision(), data) {
        write(ctx, &buf, offset, piece);
    }
    buf
}

/// Values per write: no copy of a whole tensor is made on the way (in browsers the pieces
/// pass through the page's transfer buffers, not a mapping as large as the tensor).
const PIECE: usize = 1 << 20;

/// Written data waits in staging memory (in browsers, in the page's transfer buffers)
/// until the device takes it: [`upload_settled`] waits for the device every this many
/// bytes, so that staging never holds the whole model.
const SETTLE_BYTES: u64 = 4 << 20;

/// [`upload`] for large tensors: `unsettled` counts the bytes written since the device
/// last caught up.
async fn upload_settled(
    ctx: &GpuContext,
    label: &str,
    data: &[f32],
    unsettled: &mut u64,
) -> Result<wgpu::Buffer> {
    let buf = storage(ctx, label, data.len());
    for (offset, piece) in pieces(ctx.precision(), data) {
        write(ctx, &buf, offset, piece);
        *unsettled += (piece.len() * ctx.elem_bytes()) as u64;
        if *unsettled >= SETTLE_BYTES {
            ctx.settle().await?;
            *unsettled = 0;
        }
    }
    Ok(buf)
}

/// An uninitialised storage buffer for `len` values (at least one).
fn storage(ctx: &GpuContext, label: &str, len: usize) -> wgpu::Buffer {
    let size = match ctx.precision() {
        Precision::F32 => len.max(1) * 4,
        Precision::F16 => (len.max(1) * 2).next_multiple_of(4),
    };
    ctx.shared.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size as u64,
        // COPY_SRC: a weight row can be read back (class activation maps).
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// `data` in pieces of [`PIECE`] values, with their byte offsets on the device.
fn pieces(precision: Precision, data: &[f32]) -> impl Iterator<Item = (u64, &[f32])> {
    let elem = match precision {
        Precision::F32 => 4,
        Precision::F16 => 2,
    };
    data.chunks(PIECE)
        .enumerate()
        .map(move |(i, p)| ((i * PIECE * elem) as u64, p))
}

fn write(ctx: &GpuContext, buf: &wgpu::Buffer, offset: u64, piece: &[f32]) {
    let q = &ctx.shared.queue;
    match ctx.precision() {
        Precision::F32 => q.write_buffer(buf, offset, bytemuck::cast_slice(piece)),
        Precision::F16 => q.write_buffer(buf, offset, &to_device(Precision::F16, piece)),
    }
}
