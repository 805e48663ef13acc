//! Weights read as their bytes arrive, chunk by chunk (a download, a file read in pieces):
//! a safetensors file's tensors are converted to f32 as their bytes come and nothing else
//! is kept, so loading holds the tensors and one chunk, not the file beside them. A
//! PyTorch checkpoint (a zip, whose directory is at its end, or a legacy pickle) is kept
//! whole and read at the end.

use super::{pth, TensorMap, WeightsError};
use crate::tensor::Tensor;

/// The longest header accepted (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Where a safetensors file's tensors may go instead of the reader's map: a device they
/// are written to as their values arrive, so that the reader never holds them.
pub trait Sink {
    /// Once the header is read: every tensor's key (as the file names it) and shape, in
    /// the order of their bytes. Returns the keys whose values go to [`Sink::values`].
    fn header(
        &mut self,
        tensors: &[(String, Vec<usize>)],
    ) -> Result<std::collections::HashSet<String>, WeightsError>;
    /// Values `at..at + values.len()` (row-major) of a tensor [`Sink::header`] took, in order.
    fn values(&mut self, key: &str, at: usize, values: &[f32]) -> Result<(), WeightsError>;
}

/// Every tensor into the reader's map.
pub struct Keep;

impl Sink for Keep {
    fn header(
        &mut self,
        _: &[(String, Vec<usize>)],
    ) -> Result<std::collections::HashSet<String>, WeightsError> {
        Ok(Default::default())
    }
    fn values(&mut self, key: &str, _: usize, _: &[f32]) -> Result<(), WeightsError> {
        unreachable!("'{key}' was not diverted")
    }
}

/// A weights file fed in pieces: [`Reader::push`] each chunk, then [`Reader::finish`].
pub struct Reader<S: Sink = Keep> {
    /// The file's length where known (a download's Content-Length, a file's size): bounds
    /// what the header may claim before any data arrives.
    total: Option<u64>,
    received: u64,
    state: State,
    sink: S,
}

enum State {
    /// Fewer than 8 bytes so far: the format is not known yet.
    Start(Vec<u8>),
    /// A PyTorch checkpoint, kept whole.
    Whole(Vec<u8>),
    /// A safetensors header of `len` bytes, being gathered.
    Header {
        len: u64,
        bytes: Vec<u8>,
    },
    Data(Data),
    /// An error was returned; it is returned again.
    Failed(WeightsError),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    F32,
    F16,
    BF16,
    F64,
    /// Integer bookkeeping (`num_batches_tracked`): its bytes are passed over.
    Skip,
}

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::F16 | Kind::BF16 => 2,
            Kind::F32 => 4,
            Kind::F64 => 8,
            Kind::Skip => 1,
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Kind::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Kind::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Kind::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Kind::F64 => f64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as f32,
            Kind::Skip => 0.0,
        }
    }
}

struct Entry {
    key: String,
    kind: Kind,
    shape: Vec<usize>,
    /// Its values go to the sink.
    divert: bool,
    /// Byte offsets in the data section.
    start: u64,
    end: u64,
}

struct Data {
    /// In the order of their bytes.
    entries: Vec<Entry>,
    /// The entry being filled.
    next: usize,
    /// Data bytes consumed.
    pos: u64,
    /// The end of the data section.
    end: u64,
    /// Bytes of one value split between two chunks.
    carry: Vec<u8>,
    values: Vec<f32>,
    /// Values of the entry being filled already handed to the sink.
    emitted: usize,
    out: TensorMap,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new(None)
    }
}

impl Reader {
    /// A reader for a file of `total` bytes, if known.
    pub fn new(total: Option<u64>) -> Reader {
        Reader::with_sink(total, Keep)
    }
}

impl<S: Sink> Reader<S> {
    /// A reader that offers a safetensors file's tensors to `sink` (a checkpoint's, read
    /// whole at the end, all stay in the map).
    pub fn with_sink(total: Option<u64>, sink: S) -> Reader<S> {
        Reader {
            total,
            received: 0,
            state: State::Start(Vec::with_capacity(8)),
            sink,
        }
    }

    /// The sink, to ask it how it is doing.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// The next bytes of the file. An error is final: every later call returns it too.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), WeightsError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        self.received += chunk.len() as u64;
        if let Some(total) = self.total.filter(|&t| self.received > t) {
            return self.fail(WeightsError::Io(format!(
                "more than the {total} bytes announced arrived"
            )));
        }
        match self.consume(chunk) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: WeightsError) -> Result<(), WeightsError> {
        self.state = State::Failed(e.clone());
        Err(e)
    }

    fn consume(&mut self, mut chunk: &[u8]) -> Result<(), WeightsError> {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Start(first) => {
                    let take = (8 - first.len()).min(chunk.len());
                    first.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if first.len() == 8 {
                        let first = std::mem::take(first);
                        self.state = self.begin(first)?;
                    }
                }
                State::Whole(bytes) => {
                    bytes.extend_from_slice(chunk);
                    return Ok(());
                }
                State::Header { len, bytes } => {
                    let take = ((*len as usize) - bytes.len()).min(chunk.len());
                    bytes.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if bytes.len() as u64 == *len {
                        let (len, header) = (*len, std::mem::take(bytes));
                        let mut data = self.header(len, &header)?;
                        let list: Vec<(String, Vec<usize>)> = data
                            .entries
                            .iter()
                            .filter(|e| e.kind != Kind::Skip)
                            .map(|e| (e.key.clone(), e.shape.clone()))
                            .collect();
                        let divert = self.sink.header(&list)?;
                        for e in &mut data.entries {
                            e.divert = e.kind != Kind::Skip && divert.contains(&e.key);
                        }
                        data.settle()?;
                        self.state = State::Data(data);
                    }
                }
                State::Data(d) => {
                    let used = d.feed(chunk, &mut self.sink)?;
                    chunk = &chunk[used..];
                    if !chunk.is_empty() {
                        return Err(WeightsError::NotSafetensors(format!(
                            "{} bytes follow the tensor data",
                            chunk.len()
                        )));
                    }
                }
                State::Failed(e) => return Err(e.clone()),
            }
        }
        Ok(())
    }

    /// The state after the first 8 bytes.
    fn begin(&self, first: Vec<u8>) -> Result<State, WeightsError> {
        if pth::looks_like(&first) {
            let mut bytes = Vec::new();
            // A known length is reserved at once: no copies while it grows.
            if let Some(t) = self.total {
                bytes
                    .try_reserve_exact(t as usize)
                    .map_err(|_| too_big(t))?;
            }
            bytes.extend_from_slice(&first);
            return Ok(State::Whole(bytes));
        }
        let len = u64::from_le_bytes(first[..8].try_into().expect("8 bytes"));
        if let Some(total) = self.total.filter(|&t| len.saturating_add(8) > t) {
            return Err(beyond(len, total));
        }
        if len > MAX_HEADER {
            return Err(WeightsError::NotSafetensors(format!(
                "header length {len} is beyond the {MAX_HEADER} bytes a header may have (not a safetensors file?)"
            )));
        }
        Ok(State::Header {
            len,
            bytes: Vec::with_capacity(len as usize),
        })
    }

    /// Parse and check the header; the data section's plan.
    fn header(&self, len: u64, header: &[u8]) -> Result<Data, WeightsError> {
        if let Some(k) = super::duplicate_key(header) {
            return Err(WeightsError::NotSafetensors(format!(
                "the header names '{k}' twice"
            )));
        }
        let not_json = || WeightsError::NotSafetensors("the header is not safetensors JSON".into());
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(header).map_err(|_| not_json())?;
        let mut entries = Vec::with_capacity(map.len());
        for (key, v) in map {
            if key == "__metadata__" {
                let ok = v
                    .as_object()
                    .is_some_and(|m| m.values().all(|s| s.is_string()));
                if !ok {
                    return Err(not_json());
                }
                continue;
            }
            let info: Info = serde_json::from_value(v).map_err(|_| not_json())?;
            let (bits, kind) = dtype(&info.dtype).ok_or_else(|| {
                WeightsError::NotSafetensors(format!(
                    "tensor '{key}' has an unknown dtype '{}'",
                    info.dtype
                ))
            })?;
            let kind = match kind {
                Some(k) => k,
                None if key.ends_with("num_batches_tracked") => Kind::Skip,
                None => {
                    return Err(WeightsError::UnsupportedDtype {
                        key,
                        dtype: info.dtype,
                    })
                }
            };
            let [start, end] = info.data_offsets;
            let bytes = info
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .and_then(|n| n.checked_mul(bits))
                .filter(|b| b % 8 == 0)
                .map(|b| b / 8);
            if end < start || bytes != Some(end - start) {
                return Err(WeightsError::NotSafetensors(format!(
                    "tensor '{key}': shape {:?} of {} does not fill its {} bytes",
                    info.shape,
                    info.dtype,
                    end.saturating_sub(start)
                )));
            }
            let shape = info
                .shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<Result<_, _>>()
                .map_err(|_| too_big(end - start))?;
            entries.push(Entry {
                key,
                kind,
                shape,
                divert: false,
                start,
                end,
            });
        }
        // The format's rule: the tensors' bytes follow one another from offset 0, no gaps.
        entries.sort_by_key(|e| (e.start, e.end));
        let mut at = 0;
        for e in &entries {
            if e.start != at {
                return Err(WeightsError::NotSafetensors(format!(
                    "tensor '{}' starts at byte {} of the data, expected {at}",
                    e.key, e.start
                )));
            }
            at = e.end;
        }
        if let Some(total) = self.total {
            if 8 + len + at != total {
                return Err(WeightsError::Truncated(format!(
                    "the header describes {} bytes, the file has {total}",
                    8 + len + at
                )));
            }
        }
        Ok(Data {
            entries,
            next: 0,
            pos: 0,
            end: at,
            carry: Vec::with_capacity(8),
            values: Vec::new(),
            emitted: 0,
            out: TensorMap::new(),
        })
    }

    /// The tensors, once every byte has been pushed, and what was unwrapped (checkpoints).
    pub fn finish(self) -> Result<(TensorMap, Vec<String>), WeightsError> {
        self.finish_with_sink().map(|(w, n, _)| (w, n))
    }

    /// [`Reader::finish`], also giving the sink back (it holds what it took). A sink's
    /// tensors are not in the map.
    pub fn finish_with_sink(self) -> Result<(TensorMap, Vec<String>, S), WeightsError> {
        let Reader {
            total,
            received: got,
            state,
            sink,
        } = self;
        if let Some(t) = total.filter(|&t| t != got) {
            return Err(WeightsError::Truncated(format!(
                "got {got} of the file's {t} bytes"
            )));
        }
        let (w, notices) = match state {
            State::Start(first) if pth::looks_like(&first) => pth::load(&first)?,
            State::Start(_) => {
                return Err(WeightsError::NotSafetensors(format!(
                    "{got} bytes is too short for a header"
                )))
            }
            State::Whole(bytes) => pth::load(&bytes)?,
            State::Header { len, .. } => return Err(beyond(len, got)),
            State::Data(d) if d.pos < d.end => {
                return Err(WeightsError::Truncated(format!(
                    "tensor data ends past the file's {got} bytes"
                )))
            }
            State::Data(d) => (d.out, vec![]),
            State::Failed(e) => return Err(e),
        };
        Ok((w, notices, sink))
    }
}

impl Data {
    /// Take what `chunk` has of the data section; returns the bytes used. The values of a
    /// diverted tensor go to `sink` as they are decoded.
    fn feed<S: Sink>(&mut self, chunk: &[u8], sink: &mut S) -> Result<usize, WeightsError> {
        let mut used = 0;
        let mut out = Vec::new();
        while used < chunk.len() && self.next < self.entries.len() {
            let e = &self.entries[self.next];
            let take = (e.end - self.pos).min((chunk.len() - used) as u64) as usize;
            let mut part = &chunk[used..used + take];
            used += take;
            self.pos += take as u64;
            if e.kind != Kind::Skip {
                let (size, kind) = (e.kind.size(), e.kind);
                // A diverted tensor's values are decoded into a scratch buffer per chunk.
                let dst = if e.divert { &mut out } else { &mut self.values };
                if !self.carry.is_empty() {
                    let n = (size - self.carry.len()).min(part.len());
                    self.carry.extend_from_slice(&part[..n]);
                    part = &part[n..];
                    if self.carry.len() == size {
                        dst.push(kind.decode(&self.carry));
                        self.carry.clear();
                    }
                }
                let whole = part.len() / size * size;
                dst.extend(part[..whole].chunks_exact(size).map(|b| kind.decode(b)));
                self.carry.extend_from_slice(&part[whole..]);
                if e.divert && !out.is_empty() {
                    sink.values(&e.key, self.emitted, &out)?;
                    self.emitted += out.len();
                    out.clear();
                }
            }
            self.settle()?;
        }
        Ok(used)
    }

    /// Store the tensors whose bytes are all in (empty ones at once) and make room for the
    /// next one's values.
    fn settle(&mut self) -> Result<(), WeightsError> {
        while let Some(e) = self.entries.get(self.next) {
            if self.pos < e.end {
                if self.values.capacity() == 0 && e.kind != Kind::Skip && !e.divert {
                    let n = (e.end - e.start) / e.kind.size() as u64;
                    // Reserved exactly: the values never move while they arrive.
                    let n = usize::try_from(n).map_err(|_| too_big(e.end - e.start))?;
                    self.values
                        .try_reserve_exact(n)
                        .map_err(|_| too_big(e.end - e.start))?;
                }
                return Ok(());
            }
            if e.kind != Kind::Skip && !e.divert {
                let values = std::mem::take(&mut self.values);
                let t = Tensor::new(e.shape.clone(), values)
                    .map_err(|err| WeightsError::Truncated(format!("tensor '{}': {err}", e.key)))?;
                self.out.insert(e.key.clone(), t);
            }
            self.emitted = 0;
            self.next += 1;
        }
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Info {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// A dtype's bits, and how it converts to f32 (None: not a float).
fn dtype(name: &str) -> Option<(u64, Option<Kind>)> {
    Some(match name {
        "F32" => (32, Some(Kind::F32)),
        "F16" => (16, Some(Kind::F16)),
        "BF16" => (16, Some(Kind::BF16)),
        "F64" => (64, Some(Kind::F64)),
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => (8, None),
        "I16" | "U16" => (16, None),
        "I32" | "U32" => (32, None),
        "I64" | "U64" => (64, None),
        "F4" => (4, None),
        "F6_E2M3" | "F6_E3M2" => (6, None),
        "C64" => (64, None),
        _ => return None,
    })
}

fn beyond(len: u64, total: u64) -> WeightsError {
    WeightsError::NotSafetensors(format!(
        "header length {len} is beyond the file's {total} bytes (truncated, or not a safetensors file)"
    ))
}

fn too_big(bytes: u64) -> WeightsError {
    WeightsError::Io(format!(
        "{bytes} bytes of weights do not fit in the memory this process can allocate"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> (TensorMap, Vec<u8>) {
        let mut w = TensorMap::new();
        w.insert(
            "a.weight".into(),
            Tensor::new([2, 3], (0..6).map(|i| i as f32 * 0.5 - 1.0).collect()).unwrap(),
        );
        w.insert("a.bias".into(), Tensor::new([2], vec![3.0, -4.0]).unwrap());
        w.insert("empty".into(), Tensor::new([0, 4], vec![]).unwrap());
        let bytes = super::super::save_safetensors_as(&w, super::super::StoreAs::BF16);
        (w, bytes)
    }

    #[test]
    fn any_split_of_the_bytes_reads_the_same_tensors() {
        let (w, bytes) = file();
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            for total in [Some(bytes.len() as u64), None] {
                let mut r = Reader::new(total);
                for c in bytes.chunks(step) {
                    r.push(c).unwrap();
                }
                let (got, notices) = r.finish().unwrap();
                assert_eq!(got, w, "chunks of {step}");
                assert!(notices.is_empty());
            }
        }
    }

    /// Takes the tensors named, collecting their values as they come.
    #[derive(Default)]
    struct Take(std::collections::HashSet<String>, TensorMap, Vec<String>);

    impl Sink for Take {
        fn header(
            &mut self,
            tensors: &[(String, Vec<usize>)],
        ) -> Result<std::collections::HashSet<String>, WeightsError> {
            for (k, shape) in tensors {
                self.2.push(k.clone());
                if self.0.contains(k) {
                    self.1.insert(k.clone(), Tensor::zeros(shape.clone()));
                }
            }
            Ok(self.0.clone())
        }
        fn values(&mut self, key: &str, at: usize, values: &[f32]) -> Result<(), WeightsError> {
            let t = self.1.get_mut(key).expect("taken");
            t.data_mut()[at..at + values.len()].copy_from_slice(values);
            Ok(())
        }
    }

    #[test]
    fn a_sink_gets_the_tensors_it_takes_and_the_map_the_rest() {
        let (w, bytes) = file();
        for step in [1, 3, 5, 64, bytes.len()] {
            let take = ["a.weight", "empty"]
                .map(String::from)
                .into_iter()
                .collect();
            let mut r = Reader::with_sink(
                Some(bytes.len() as u64),
                Take(take, TensorMap::new(), vec![]),
            );
            for c in bytes.chunks(step) {
                r.push(c).unwrap();
            }
            let (kept, _, sink) = r.finish_with_sink().unwrap();
            assert_eq!(
                kept.keys().collect::<Vec<_>>(),
                ["a.bias"],
                "chunks of {step}"
            );
            assert_eq!(kept["a.bias"], w["a.bias"]);
            assert_eq!(sink.1["a.weight"], w["a.weight"], "chunks of {step}");
            assert_eq!(sink.1["empty"], w["empty"]);
            // In the order of their bytes (sorted keys, as save_safetensors writes them).
            assert_eq!(sink.2, ["a.bias", "a.weight", "empty"]);
        }
    }

    #[test]
    fn a_short_or_long_stream_is_an_error() {
        let (_, bytes) = file();
        let mut r = Reader::new(None);
        r.push(&bytes[..bytes.len() - 1]).unwrap();
        let e = r.finish().unwrap_err();
        assert!(matches!(e, WeightsError::Truncated(_)), "{e}");
        let mut r = Reader::new(None);
        let mut long = bytes.clone();
        long.push(0);
        let e = r.push(&long).unwrap_err();
        assert!(
            e.to_string().contains("1 bytes follow the tensor data"),
            "{e}"
        );
        // The error sticks.
        assert_eq!(r.push(&[]).unwrap_err(), e);
        // A known length: refused as soon as the header disagrees with it.
        let mut r = Reader::new(Some(bytes.len() as u64 + 5));
        let e = r.push(&bytes[..bytes.len() - 10]).unwrap_err();
        assert!(matches!(e, WeightsError::Truncated(_)), "{e}");
        let mut r = Reader::new(Some(bytes.len() as u64));
        r.push(&bytes).unwrap();
        let e = r.push(&[1]).unwrap_err();
        assert!(e.to_string().contains("announced"), "{e}");
    }
}
