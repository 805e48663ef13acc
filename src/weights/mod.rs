//! Weights: `.safetensors` files (f32 / f16 / bf16, converted on load) keyed by PyTorch
//! state-dict names, timm's published checkpoints (key mapping), synthetic weights from
//! the golden PRNG, and checks against a graph that name the first problem.

#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod pth;
pub mod stream;

use crate::graph::Graph;
use crate::models::Model;
use crate::tensor::Tensor;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
#[cfg(not(target_arch = "wasm32"))]
use std::path::PathBuf;

pub type TensorMap = HashMap<String, Tensor>;

/// Everything that can be wrong with a weights file, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    #[error("not a safetensors file (nor a PyTorch checkpoint): {0}")]
    NotSafetensors(String),
    #[error("truncated safetensors file: {0}")]
    Truncated(String),
    #[error("PyTorch checkpoint: {0}")]
    Checkpoint(String),
    #[error("tensor '{key}' has dtype {dtype}, supported are F32, F16, BF16 and F64")]
    UnsupportedDtype { key: String, dtype: String },
    #[error("missing weight '{key}' (expected shape {shape:?}){hint}")]
    Missing {
        key: String,
        shape: Vec<usize>,
        hint: String,
    },
    #[error(
        "unexpected weight '{0}': the model has no such parameter (weights for another model?)"
    )]
    Unexpected(String),
    #[error("weight '{key}' has shape {got:?}, expected {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error(
        "bad weights source '{0}': use a .safetensors or .pth path, synthetic:SEED or hf:REPO"
    )]
    BadSource(String),
    #[error("{0}")]
    Io(String),
    #[error("download failed: {0}")]
    Download(String),
}

/// Parse a `.safetensors` file into f32 tensors.
pub fn load_safetensors(bytes: &[u8]) -> Result<TensorMap, WeightsError> {
    if pth::looks_like(bytes) {
        return Err(WeightsError::NotSafetensors(
            "this is a PyTorch checkpoint (use weights::read)".into(),
        ));
    }
    Ok(read_raw(bytes)?.0)
}

/// A whole file through the [`stream::Reader`] (the one parser of every weights file).
fn read_raw(bytes: &[u8]) -> Result<(TensorMap, Vec<String>), WeightsError> {
    let mut r = stream::Reader::new(Some(bytes.len() as u64));
    r.push(bytes)?;
    r.finish()
}

/// The first key that a JSON object header repeats, if any (not JSON: None, for the
/// parser to report).
fn duplicate_key(header: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if dup.is_none() && !seen.insert(k.clone()) {
                    dup = Some(k);
                }
            }
            Ok(dup)
        }
    }
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(Keys)
        .ok()
        .flatten()
}

/// Serialise f32 tensors as `.safetensors` (sorted keys).
pub fn save_safetensors(tensors: &TensorMap) -> Vec<u8> {
    save_safetensors_as(tensors, StoreAs::F32)
}

/// The element type [`save_safetensors_as`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAs {
    F32,
    /// Half the size; values rounded to nearest (f16 overflows to infinity past 65504).
    F16,
    /// Half the size, f32's range, 8 bits of mantissa.
    BF16,
}

impl std::str::FromStr for StoreAs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(StoreAs::F32),
            "f16" => Ok(StoreAs::F16),
            "bf16" => Ok(StoreAs::BF16),
            _ => Err(format!("unknown dtype '{s}' (f32, f16 or bf16)")),
        }
    }
}

/// Serialise tensors as `.safetensors` with their values stored `as` (sorted keys).
pub fn save_safetensors_as(tensors: &TensorMap, dtype: StoreAs) -> Vec<u8> {
    let encode = |t: &Tensor| -> Vec<u8> {
        match dtype {
            StoreAs::F32 => t.data().iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoreAs::F16 => t
                .data()
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            StoreAs::BF16 => t
                .data()
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    };
    let st = match dtype {
        StoreAs::F32 => Dtype::F32,
        StoreAs::F16 => Dtype::F16,
        StoreAs::BF16 => Dtype::BF16,
    };
    let sorted: BTreeMap<&String, Vec<u8>> = tensors.iter().map(|(k, t)| (k, encode(t))).collect();
    let views = sorted.iter().map(|(k, bytes)| {
        let view = safetensors::tensor::TensorView::new(st, tensors[*k].shape().to_vec(), bytes)
            .expect("shape matches data");
        (k.as_str(), view)
    });
    safetensors::serialize(views, None).expect("tensors serialise")
}

/// Tensor shapes by key (a file's header).
pub type ShapeMap = HashMap<String, Vec<usize>>;

/// [`map_timm_keys`] for one tensor of a file whose keys are `keys`: its key and shape in
/// torchvision's terms (the values are the same, row-major).
pub fn timm_key(key: &str, shape: &[usize], has_pre_logits: bool) -> (String, Vec<usize>) {
    if has_pre_logits {
        let renames = [
            ("pre_logits.fc1.", "classifier.0."),
            ("pre_logits.fc2.", "classifier.3."),
            ("head.fc.", "classifier.6."),
        ];
        for (from, to) in renames {
            if let Some(leaf) = key
                .strip_prefix(from)
                .filter(|l| *l == "weight" || *l == "bias")
            {
                let shape = match shape {
                    &[rows, ..] if leaf == "weight" && shape.len() == 4 && rows > 0 => {
                        vec![rows, shape.iter().product::<usize>() / rows]
                    }
                    _ => shape.to_vec(),
                };
                return (format!("{to}{leaf}"), shape);
            }
        }
    }
    (key.to_string(), shape.to_vec())
}

/// Rename timm's checkpoint keys to torchvision's where they differ: timm's VGG keeps
/// the classifier as 7x7 and 1x1 convolutions (`pre_logits.fc1`, `pre_logits.fc2`) and
/// `head.fc`. ResNet keys already match.
pub fn map_timm_keys(w: TensorMap) -> TensorMap {
    if !w.contains_key("pre_logits.fc1.weight") {
        return w;
    }
    w.into_iter()
        .map(|(k, t)| {
            let (key, shape) = timm_key(&k, t.shape(), true);
            // Other ranks (a broken file) pass through for the shape check to name.
            let t = if shape != t.shape() {
                t.reshape(shape).expect("same count")
            } else {
                t
            };
            (key, t)
        })
        .collect()
}

/// Check `w` against every parameter of `graph`: the first missing, unexpected or
/// mis-shaped key is the error. `num_batches_tracked` is ignored. NaN / Inf values are
/// returned as warnings (the keys holding them).
pub fn check(graph: &Graph, w: &TensorMap) -> Result<Vec<String>, WeightsError> {
    let shapes = w
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().to_vec()))
        .collect();
    check_shapes(graph, &shapes)?;
    let mut bad: Vec<String> = w
        .iter()
        .filter(|(_, t)| t.data().iter().any(|v| !v.is_finite()))
        .map(|(k, _)| k.clone())
        .collect();
    bad.sort();
    Ok(bad)
}

/// [`check`]'s key and shape checks from shapes alone (a file's header, before its data).
pub fn check_shapes(graph: &Graph, shapes: &ShapeMap) -> Result<(), WeightsError> {
    let params = graph.params();
    for p in &params {
        match shapes.get(&p.name) {
            None => {
                let hint = match shapes
                    .keys()
                    .find(|k| k.ends_with(&p.name) && *k != &p.name)
                {
                    Some(k) => format!("; the file has '{k}' (strip a prefix?)"),
                    None => String::new(),
                };
                return Err(WeightsError::Missing {
                    key: p.name.clone(),
                    shape: p.shape.clone(),
                    hint,
                });
            }
            Some(s) if s != &p.shape => {
                return Err(WeightsError::Shape {
                    key: p.name.clone(),
                    expected: p.shape.clone(),
                    got: s.clone(),
                })
            }
            _ => {}
        }
    }
    let mut extra: Vec<&String> = shapes
        .keys()
        .filter(|k| !k.ends_with("num_batches_tracked") && !params.iter().any(|p| &&p.name == k))
        .collect();
    extra.sort();
    match extra.first() {
        Some(k) => Err(WeightsError::Unexpected(k.to_string())),
        None => Ok(()),
    }
}

/// Where weights come from, as written on a command line or in a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The golden PRNG's weights (untrained).
    Synthetic(u64),
    /// A Hugging Face Hub repository (`owner/name`) at a revision (a branch, tag or
    /// commit; `main` unless `hf:OWNER/NAME@REV`): its `model.safetensors` (else
    /// `pytorch_model.bin`) and its timm `config.json`, if it has one.
    Hub { repo: String, revision: String },
    /// A weights file, or a folder laid out as a Hub repository.
    File(String),
}

impl std::str::FromStr for Source {
    type Err = WeightsError;
    fn from_str(s: &str) -> Result<Self, WeightsError> {
        if let Some(seed) = s.strip_prefix("synthetic:") {
            return seed
                .parse()
                .map(Source::Synthetic)
                .map_err(|_| WeightsError::BadSource(s.into()));
        }
        if s == "synthetic" {
            return Ok(Source::Synthetic(1));
        }
        if let Some(spec) = s.strip_prefix("hf:") {
            let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
            // The Hub's own rule for names; it also keeps the cache path inside the cache
            // (no '..', no separators, nothing a file system reads specially).
            let part_ok = |p: &str| {
                (1..=96).contains(&p.len())
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && p.as_bytes()[0].is_ascii_alphanumeric()
                    && !p.contains("..")
                    && !p.contains("--")
            };
            if repo.split('/').count() != 2 || !repo.split('/').all(part_ok) || !part_ok(revision) {
                return Err(WeightsError::BadSource(s.into()));
            }
            return Ok(Source::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            });
        }
        if s.is_empty() {
            return Err(WeightsError::BadSource(s.into()));
        }
        Ok(Source::File(s.to_string()))
    }
}

/// The tensors of any weights file by their state-dict names: `.safetensors`, or a
/// PyTorch checkpoint (`.pth` / `.pt` / `.bin`, wrappers unwrapped); timm's keys mapped.
/// Also returns notices saying what was unwrapped or renamed.
pub fn read(bytes: &[u8]) -> Result<(TensorMap, Vec<String>), WeightsError> {
    let (w, notices) = read_raw(bytes)?;
    Ok((map_timm_keys(w), notices))
}

/// Weights for `graph` from raw bytes (safetensors or a PyTorch checkpoint): parsed, timm
/// keys mapped, checked.
pub fn from_bytes(graph: &Graph, bytes: &[u8]) -> Result<(TensorMap, Vec<String>), WeightsError> {
    let (w, _) = read(bytes)?;
    let warnings = check(graph, &w)?;
    Ok((w, warnings))
}

/// A model with its weights: the head fitted to them (any class count, or none), checked.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub model: Model,
    pub tensors: TensorMap,
    /// Keys holding NaN or Inf (they run, and the outputs they reach are NaN too).
    pub non_finite: Vec<String>,
    /// What the reader unwrapped or renamed, for the user to see.
    pub notices: Vec<String>,
}

/// Fit `model`'s head to `tensors` ([`Model::fit_head`]) and check every parameter.
pub fn fit(model: Model, tensors: TensorMap, notices: Vec<String>) -> Result<Loaded, WeightsError> {
    let model = model.fit_head(&tensors);
    let non_finite = check(&model.default_graph(1), &tensors)?;
    Ok(Loaded {
        model,
        tensors,
        non_finite,
        notices,
    })
}

/// [`read`] then [`fit`]: a user's file for a model id.
pub fn from_bytes_for(model: Model, bytes: &[u8]) -> Result<Loaded, WeightsError> {
    let (w, notices) = read(bytes)?;
    fit(model, w, notices)
}

/// Synthetic weights for `graph` (every key has a PRNG rule).
pub fn synthetic(graph: &Graph, seed: u64) -> TensorMap {
    crate::prng::synth_params(graph, seed).expect("every model parameter has a synthesis rule")
}

/// The zoo model for weights: `model_id` where given (a `config` must agree with it), else
/// the architecture the timm `config` names.
pub fn resolve_model(
    model_id: Option<&str>,
    config: Option<&crate::models::HubConfig>,
) -> Result<Model, crate::Error> {
    match (model_id, config) {
        (Some(m), Some(c)) if c.model_id() != m => Err(crate::Error::BadArgument(format!(
            "the weights' config.json says architecture '{}', not '{m}'",
            c.architecture
        ))),
        (Some(m), _) => Ok(Model::get(m)?),
        (None, Some(c)) => Model::get(c.model_id()).map_err(|_| {
            crate::Error::BadArgument(format!(
                "the weights' config.json names architecture '{}', which webcnn does not have; it has {}",
                c.architecture,
                crate::models::ids().join(", ")
            ))
        }),
        (None, None) => Err(crate::Error::BadArgument(
            "name the model (--model ID): the weights come without a config.json naming their architecture".into(),
        )),
    }
}

/// Where a model's files are: the weights, and timm's `config.json` beside them if any.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    pub weights: PathBuf,
    pub config: Option<PathBuf>,
}

/// The files weights come from: a file as it is; a folder's (or a Hub repository's)
/// `model.safetensors`, else `pytorch_model.bin`, and its `config.json`. `None` for
/// synthetic weights.
#[cfg(not(target_arch = "wasm32"))]
pub fn locate(source: &Source, progress: hub::OnProgress) -> Result<Option<Files>, WeightsError> {
    const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
    match source {
        Source::Synthetic(_) => Ok(None),
        Source::Hub { repo, revision } => {
            let config = hub::fetch(repo, revision, "config.json", None)?;
            for f in WEIGHTS {
                if let Some(weights) = hub::fetch(repo, revision, f, progress)? {
                    return Ok(Some(Files { weights, config }));
                }
            }
            Err(WeightsError::Download(format!(
                "'{repo}' (at {revision}) has neither {} (HTTP 404)",
                WEIGHTS.join(" nor ")
            )))
        }
        Source::File(p) => {
            let p = PathBuf::from(p);
            if !p.is_dir() {
                return Ok(Some(Files {
                    weights: p,
                    config: None,
                }));
            }
            let config = Some(p.join("config.json")).filter(|c| c.is_file());
            let weights = WEIGHTS
                .iter()
                .map(|f| p.join(f))
                .find(|f| f.is_file())
                .ok_or_else(|| {
                    WeightsError::Io(format!(
                        "{}: a folder with neither {}",
                        p.display(),
                        WEIGHTS.join(" nor ")
                    ))
                })?;
            Ok(Some(Files { weights, config }))
        }
    }
}

/// Weights for `model` from `source` (native: reads files and folders, downloads `hf:`
/// repos), its head fitted to them; synthetic weights keep the model's head. A
/// `config.json` beside the weights is not read here ([`load_for`] reads it).
#[cfg(not(target_arch = "wasm32"))]
pub fn load(
    source: &Source,
    model: Model,
    progress: hub::OnProgress,
) -> Result<Loaded, WeightsError> {
    let Some(files) = locate(source, progress)? else {
        let seed = match source {
            Source::Synthetic(s) => *s,
            _ => unreachable!("only synthetic weights have no files"),
        };
        let tensors = synthetic(&model.default_graph(1), seed);
        return Ok(Loaded {
            model,
            tensors,
            non_finite: vec![],
            notices: vec![],
        });
    };
    let (w, notices) = read_file(&files.weights)?;
    fit(model, map_timm_keys(w), notices)
}

/// A weights file's tensors, read in pieces: a safetensors file is never held whole
/// beside its tensors. Refused before reading when the tensors cannot fit in memory.
#[cfg(not(target_arch = "wasm32"))]
fn read_file(path: &std::path::Path) -> Result<(TensorMap, Vec<String>), WeightsError> {
    use std::io::Read;
    let io = |e: std::io::Error| WeightsError::Io(format!("reading {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    // f32 tensors take the file's size (f16 / bf16 files twice that).
    if let Some(avail) = available_memory().filter(|&a| size > a) {
        return Err(WeightsError::Io(format!(
            "{}: {size} bytes of weights need at least that much memory, and {avail} bytes are available",
            path.display()
        )));
    }
    let mut reader = stream::Reader::new(Some(size));
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        reader.push(&buf[..n]).map_err(|e| in_file(path, e))?;
    }
    reader.finish().map_err(|e| in_file(path, e))
}

/// A read error that says which file (the parser's own errors name no file).
#[cfg(not(target_arch = "wasm32"))]
fn in_file(path: &std::path::Path, e: WeightsError) -> WeightsError {
    match e {
        WeightsError::Io(m) => WeightsError::Io(format!("{}: {m}", path.display())),
        e => e,
    }
}

/// A user's model from `source`: the architecture from `model_id`, else from the timm
/// `config.json` beside the weights (a Hub repository or folder), which also gives the
/// class names and the eval transform; the head fitted to the weights.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_for(
    source: &Source,
    model_id: Option<&str>,
    progress: hub::OnProgress,
) -> Result<Loaded, crate::Error> {
    use crate::models::HubConfig;
    // An ONNX file is its own architecture (given as the weights or as the model).
    let onnx = match (source, model_id) {
        (_, Some(m)) if is_onnx(m) => Some(m),
        (Source::File(p), _) if is_onnx(p) => Some(p.as_str()),
        _ => None,
    };
    if let Some(path) = onnx {
        if let Some(m) = model_id.filter(|m| !is_onnx(m)) {
            return Err(crate::Error::BadArgument(format!(
                "{path} is an ONNX model, which brings its own architecture: leave out --model {m}"
            )));
        }
        return load_onnx(std::path::Path::new(path));
    }
    let files = locate(source, progress)?;
    let config = match files.as_ref().and_then(|f| f.config.as_ref()) {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| WeightsError::Io(format!("reading {}: {e}", path.display())))?;
            Some(
                HubConfig::parse(&text)
                    .map_err(|e| crate::Error::BadArgument(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let model = resolve_model(model_id, config.as_ref())?;
    let mut loaded = match files {
        Some(f) => {
            let (w, notices) = read_file(&f.weights)?;
            fit(model, map_timm_keys(w), notices)?
        }
        None => load(source, model, progress)?,
    };
    if let Some(c) = config {
        loaded.model = c.apply(loaded.model)?;
    }
    Ok(loaded)
}

/// Whether `path` names an ONNX model (by its extension).
pub fn is_onnx(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".onnx")
}

/// An ONNX model file as a [`Model`] named by the file's stem, with its weights; initializers
/// kept in external files are read from beside it (only there: a location may not leave
/// the model's folder).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_onnx(path: &std::path::Path) -> Result<Loaded, crate::Error> {
    use std::io::{Read, Seek, SeekFrom};
    let bytes =
        std::fs::read(path).map_err(|e| WeightsError::Io(format!("{}: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let external = |location: &str, offset: u64, len: Option<u64>| -> std::io::Result<Vec<u8>> {
        let rel = std::path::Path::new(location);
        let inside = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(std::io::Error::other(
                "the location leaves the model's folder",
            ));
        }
        let mut f = std::fs::File::open(dir.join(rel))?;
        let size = f.metadata()?.len();
        let len = len.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(std::io::Error::other(format!(
                "{len} bytes at {offset} are past the file's {size}"
            )));
        }
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf)?;
        Ok(buf)
    };
    let id = path
        .file_stem()
        .map_or("onnx".into(), |s| s.to_string_lossy().into_owned());
    onnx_loaded(&id, &bytes, Some(&external)).map_err(|e| match e {
        crate::Error::Onnx(e) => crate::Error::Onnx(e.in_file(path)),
        e => e,
    })
}

/// An ONNX model's bytes as the [`Model`] `id` with its weights; initializers kept in
/// external files come from `external` (none: such a model is an error naming the file).
pub fn onnx_loaded(
    id: &str,
    bytes: &[u8],
    external: Option<crate::onnx::External<'_>>,
) -> Result<Loaded, crate::Error> {
    onnx_model_loaded(id, crate::onnx::OnnxModel::parse_with(bytes, external)?)
}

/// A read ONNX model as the [`Model`] `id` with its weights.
pub fn onnx_model_loaded(id: &str, mut m: crate::onnx::OnnxModel) -> Result<Loaded, crate::Error> {
    let tensors = std::mem::take(&mut m.weights);
    let model = Model::from_onnx(id, std::sync::Arc::new(m))?;
    // The importer made the weights for the graph: the check it shares with every other
    // source confirms that, and lists the weights holding NaN or Inf.
    let non_finite = check(&model.default_graph(1), &tensors)?;
    Ok(Loaded {
        model,
        tensors,
        non_finite,
        notices: vec![],
    })
}

/// Memory the system can still give this process (Linux's MemAvailable), if known.
#[cfg(not(target_arch = "wasm32"))]
fn available_memory() -> Option<u64> {
    proc_kb("/proc/meminfo", "MemAvailable:")
}

/// A `key:  N kB` line of a /proc file (`/proc/meminfo`, `/proc/self/status`), in bytes;
/// None where there is no such file or line (other systems).
#[cfg(not(target_arch = "wasm32"))]
pub fn proc_kb(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
