//! ONNX models of classic CNNs as graphs: a `ModelProto` (read by prost with types generated
//! from ONNX's own `onnx.proto`, kept beside this file, from the onnx 1.23.2 package) becomes
//! our graph IR and a weights map keyed the way the graph's nodes ask for them.
//!
//! Our nodes are named by the ONNX value they make (unique in any valid model), so
//! `features` takes ONNX value names. The graph is built per input shape: a symbolic batch
//! dimension takes the batch of the input, and the small integer subgraphs older exports
//! compute a `Reshape`'s target with (`Shape` / `Gather` / `Unsqueeze` / `Concat`) are
//! evaluated as the graph is built. Every node is checked when the model is read, before
//! any weight reaches a device: an operator or attribute we do not run is an error naming
//! the operator, the node and what is supported.

/// ONNX's protobuf messages, generated from its `onnx.proto` (scripts/gen-onnx-proto): for
/// programs that build or inspect a model before handing its bytes to [`OnnxModel`].
#[allow(clippy::all, clippy::pedantic, dead_code, missing_docs, rustdoc::all)]
pub mod proto;

use crate::graph::{Conv2d, Graph, GraphBuilder, GraphError, Lrn, Pool2d, Value};
use crate::tensor::Tensor;
use prost::Message;
use std::collections::{HashMap, HashSet};

/// The operators this importer turns into graph nodes (others are an error).
pub const SUPPORTED: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "LRN",
    "Gemm",
    "MatMul",
    "Add",
    "Flatten",
    "Reshape",
    "Dropout",
    "Identity",
    "Softmax",
    "Constant",
    "Cast",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Concat",
];

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not a readable ONNX model: {0}")]
    Format(String),
    #[error("ONNX operator '{op}' (node '{node}') is not supported; webcnn runs {}", SUPPORTED.join(", "))]
    Unsupported { op: String, node: String },
    /// A supported operator with an attribute or input we do not run.
    #[error("ONNX node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("ONNX node '{node}': {source}")]
    Graph { node: String, source: GraphError },
}

type Result<T, E = OnnxError> = std::result::Result<T, E>;

impl OnnxError {
    /// The same error, its message naming the file it came from.
    pub fn in_file(self, path: &std::path::Path) -> OnnxError {
        match self {
            OnnxError::Format(m) => OnnxError::Format(format!("{}: {m}", path.display())),
            e => e,
        }
    }
}

/// A value while the graph is built: a graph node's output, or a constant (an initializer
/// that is not a weight, a `Constant`, an integer subgraph's result).
#[derive(Clone, Debug)]
enum Val {
    Node(Value),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
}

/// An initializer: its shape, and its values where it is small or while weights are taken.
struct Init {
    shape: Vec<usize>,
    data: Option<InitData>,
}

#[derive(Clone)]
enum InitData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// Initializers up to this many values stay after reading (shapes, scalars, biases of a
/// MatMul + Add); larger ones are weights, moved into [`OnnxModel::weights`].
const SMALL: usize = 64;

/// An ONNX model read and checked: its graph for any batch, and its weights.
pub struct OnnxModel {
    graph: proto::GraphProto,
    opset: i64,
    input: String,
    /// The input's dimensions; `None` where symbolic (the batch).
    input_dims: Vec<Option<usize>>,
    inits: HashMap<String, Init>,
    /// The weights, keyed as the graph's nodes ask for them (`{node}.weight`, ...).
    pub weights: HashMap<String, Tensor>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("input", &self.input)
            .field("input_dims", &self.input_dims)
            .field("opset", &self.opset)
            .field("nodes", &self.graph.node.len())
            .finish()
    }
}

/// Where an initializer kept in an external file is read: `(location, offset, length)`
/// to its bytes (the location as the model names it, relative to the model's folder).
pub type External<'a> = &'a dyn Fn(&str, u64, Option<u64>) -> std::io::Result<Vec<u8>>;

fn format(msg: impl Into<String>) -> OnnxError {
    OnnxError::Format(msg.into())
}

/// ONNX's tensor element types that initializers may have here.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;

fn dims(t: &proto::TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d <= u32::MAX as usize)
                .ok_or_else(|| format(format!("tensor '{}' has dimension {d}", t.name())))
        })
        .collect()
}

/// An initializer's values, from its typed fields, its raw bytes (`inline`: `t.raw_data`,
/// taken out of it by a caller that owns it) or an external file.
fn tensor_data(
    t: &proto::TensorProto,
    inline: Option<Vec<u8>>,
    external: Option<External>,
) -> Result<InitData> {
    let name = t.name();
    let shape = dims(t)?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or_else(|| format(format!("tensor '{name}' of shape {shape:?} is too large")))?;
    let raw: Option<Vec<u8>> = if t.data_location == Some(1) {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key() == k)
                .map(|e| e.value().to_string())
        };
        let location = get("location")
            .ok_or_else(|| format(format!("tensor '{name}' is external but names no file")))?;
        let num = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format(format!("tensor '{name}': {k} '{v}'")))
                })
                .transpose()
        };
        let read = external.ok_or_else(|| {
            format(format!(
                "tensor '{name}' is kept in '{location}' beside the model: read the model from its file"
            ))
        })?;
        let bytes = read(&location, num("offset")?.unwrap_or(0), num("length")?)
            .map_err(|e| format(format!("tensor '{name}': external data '{location}': {e}")))?;
        Some(bytes)
    } else {
        inline
    };
    let width = match t.data_type() {
        FLOAT | INT32 => 4,
        INT64 | DOUBLE => 8,
        FLOAT16 => 2,
        d => {
            return Err(format(format!(
                "tensor '{name}' has element type {d}; webcnn reads float, float16, double, int32 and int64"
            )))
        }
    };
    let count = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format(format!(
                "tensor '{name}' of shape {shape:?} holds {len} values, not {n}"
            )))
        }
    };
    if let Some(raw) = raw {
        count(raw.len() / width).and(if raw.len() % width == 0 {
            Ok(())
        } else {
            Err(format(format!("tensor '{name}': {} bytes", raw.len())))
        })?;
        let words = |w: usize| raw.chunks_exact(w);
        return Ok(match t.data_type() {
            FLOAT => InitData::F32(
                words(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect(),
            ),
            FLOAT16 => InitData::F32(
                words(2)
                    .map(|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32())
                    .collect(),
            ),
            DOUBLE => InitData::F32(
                words(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            INT32 => InitData::I64(
                words(4)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                    .collect(),
            ),
            _ => InitData::I64(
                words(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            ),
        });
    }
    let data = match t.data_type() {
        FLOAT => InitData::F32(t.float_data.clone()),
        DOUBLE => InitData::F32(t.double_data.iter().map(|&d| d as f32).collect()),
        // float16 values sit in int32_data, one per entry.
        FLOAT16 => InitData::F32(
            t.int32_data
                .iter()
                .map(|&b| half::f16::from_bits(b as u16).to_f32())
                .collect(),
        ),
        INT32 => InitData::I64(t.int32_data.iter().map(|&v| v as i64).collect()),
        _ => InitData::I64(t.int64_data.clone()),
    };
    count(match &data {
        InitData::F32(v) => v.len(),
        InitData::I64(v) => v.len(),
    })?;
    Ok(data)
}

impl OnnxModel {
    /// Reads a model file's bytes (initializers in external files are an error).
    pub fn parse(bytes: &[u8]) -> Result<OnnxModel> {
        OnnxModel::parse_with(bytes, None)
    }

    /// Reads a model whose initializers may sit in external files, read by `external`.
    pub fn parse_with(bytes: &[u8], external: Option<External>) -> Result<OnnxModel> {
        OnnxModel::from_proto(OnnxModel::decode(bytes)?, external)
    }

    /// The protobuf message of a model file's bytes, not yet checked.
    pub fn decode(bytes: &[u8]) -> Result<proto::ModelProto> {
        proto::ModelProto::decode(bytes).map_err(|e| format(e.to_string()))
    }

    /// The external files a decoded model's initializers are kept in, by the names the
    /// model gives them (relative to its folder), each once, in order of first use.
    pub fn external_files(model: &proto::ModelProto) -> Vec<String> {
        let mut files: Vec<String> = vec![];
        let inits = model.graph.iter().flat_map(|g| &g.initializer);
        for t in inits.filter(|t| t.data_location == Some(1)) {
            let location = t.external_data.iter().find(|e| e.key() == "location");
            if let Some(l) = location.map(|e| e.value().to_string()) {
                if !files.contains(&l) {
                    files.push(l);
                }
            }
        }
        files
    }

    /// Reads a decoded model (see [`OnnxModel::parse_with`]).
    pub fn from_proto(model: proto::ModelProto, external: Option<External>) -> Result<OnnxModel> {
        let mut graph = model
            .graph
            .ok_or_else(|| format("the model holds no graph"))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map_or(1, |o| o.version());
        if !(7..=25).contains(&opset) {
            return Err(format(format!(
                "opset {opset}: webcnn reads ONNX opsets 7 to 25"
            )));
        }
        let mut inits = HashMap::new();
        let mut data = HashMap::new();
        // Each initializer's bytes are converted and dropped in turn.
        for mut t in std::mem::take(&mut graph.initializer) {
            let shape = dims(&t)?;
            let inline = t.raw_data.take();
            data.insert(t.name().to_string(), tensor_data(&t, inline, external)?);
            inits.insert(t.name().to_string(), Init { shape, data: None });
        }
        let input = graph
            .input
            .iter()
            .find(|i| !inits.contains_key(i.name()))
            .ok_or_else(|| format("the graph has no input that is not an initializer"))?;
        let shape = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(proto::type_proto::Value::TensorType(t)) => t.shape.as_ref(),
            _ => None,
        }
        .ok_or_else(|| format(format!("input '{}' has no tensor shape", input.name())))?;
        let input_dims = shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                    match v <= 1 << 16 {
                        true => Ok(Some(v as usize)),
                        false => Err(format(format!("input dimension {v} is beyond 65536"))),
                    }
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        if input_dims.len() != 4 || input_dims[1..].iter().any(Option::is_none) {
            return Err(format(format!(
                "input '{}' is not [N, C, H, W] with fixed C, H and W",
                input.name()
            )));
        }
        let mut m = OnnxModel {
            input: input.name().to_string(),
            graph,
            opset,
            input_dims,
            inits,
            weights: HashMap::new(),
        };
        // One build with the initializers' values takes the weights (and checks every node).
        let mut taken = Taken {
            data,
            weights: HashMap::new(),
            pending: vec![],
        };
        m.build(&m.input_shape(1), Some(&mut taken))?;
        taken.finish()?;
        m.weights = taken.weights;
        // What the builds still need: small constants.
        for (name, init) in m.inits.iter_mut() {
            if let Some(d) = taken.data.remove(name) {
                let n = match &d {
                    InitData::F32(v) => v.len(),
                    InitData::I64(v) => v.len(),
                };
                if n <= SMALL {
                    init.data = Some(d);
                }
            }
        }
        Ok(m)
    }

    /// The input's shape at batch `n` (a fixed batch stays as the model says).
    pub fn input_shape(&self, n: usize) -> Vec<usize> {
        self.input_dims.iter().map(|d| d.unwrap_or(n)).collect()
    }

    /// The name of the graph's input.
    pub fn input_name(&self) -> &str {
        &self.input
    }

    /// The graph for an input of `shape`.
    pub fn graph(&self, shape: &[usize]) -> Result<Graph> {
        self.build(shape, None)
    }

    fn build(&self, shape: &[usize], taken: Option<&mut Taken>) -> Result<Graph> {
        let want = self.input_shape(shape.first().copied().unwrap_or(1));
        if shape != want.as_slice() && self.input_dims[0].is_some() {
            return Err(OnnxError::Graph {
                node: self.input.clone(),
                source: GraphError::Shape {
                    node: self.input.clone(),
                    op: "Input",
                    msg: format!("the model takes {want:?}, not {shape:?}"),
                },
            });
        }
        let mut b = GraphBuilder::new();
        let x = b
            .input(&self.input, shape)
            .map_err(|source| OnnxError::Graph {
                node: self.input.clone(),
                source,
            })?;
        let mut env: HashMap<String, Val> = HashMap::new();
        env.insert(self.input.clone(), Val::Node(x));
        for (name, init) in &self.inits {
            let d = init
                .data
                .as_ref()
                .or_else(|| taken.as_ref().and_then(|t| t.data.get(name)));
            match d {
                Some(InitData::I64(v)) => env.insert(name.clone(), Val::Ints(v.clone())),
                Some(InitData::F32(v)) if v.len() <= SMALL => {
                    env.insert(name.clone(), Val::Floats(v.clone()))
                }
                _ => None,
            };
        }
        let mut cx = Cx {
            b,
            env,
            inits: &self.inits,
            taken,
            opset: self.opset,
            bias_free: HashMap::new(),
            alias: HashMap::new(),
        };
        for n in &self.graph.node {
            cx.node(n)?;
        }
        let outputs = self
            .graph
            .output
            .iter()
            .map(|o| match cx.env.get(o.name()) {
                Some(Val::Node(v)) => Ok(*v),
                _ => Err(format(format!(
                    "output '{}' is no value the graph computes",
                    o.name()
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        cx.b.build(&outputs).map_err(|source| OnnxError::Graph {
            node: "(outputs)".into(),
            source,
        })
    }
}

/// The initializers' values while the first build takes the weights out of them.
struct Taken {
    data: HashMap<String, InitData>,
    weights: HashMap<String, Tensor>,
    /// The weights the build asked for, made once it is done ([`Taken::finish`]).
    pending: Vec<Pending>,
}

/// Initializer `from`, changed by `f`, becomes weight `key` of `shape`.
struct Pending {
    from: String,
    key: String,
    shape: Vec<usize>,
    f: Box<dyn FnOnce(Vec<f32>) -> Vec<f32>>,
}

impl Taken {
    /// Makes the weights asked for. Each initializer's values move into the last weight
    /// made from it (a weight shared by two nodes is copied for the others), so the model's
    /// values are never held twice; small ones stay, as later builds read them as constants.
    fn finish(&mut self) -> Result<()> {
        let last: HashMap<&str, usize> = self
            .pending
            .iter()
            .enumerate()
            .map(|(i, p)| (p.from.as_str(), i))
            .collect();
        let last: HashSet<usize> = last.into_values().collect();
        for (i, p) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let Some(InitData::F32(v)) = self.data.get(&p.from) else {
                unreachable!("checked when it was asked for")
            };
            let values = if last.contains(&i) && v.len() > SMALL {
                match self.data.remove(&p.from) {
                    Some(InitData::F32(v)) => v,
                    _ => unreachable!("just read"),
                }
            } else {
                v.clone()
            };
            let t = Tensor::new(p.shape, (p.f)(values))
                .map_err(|e| format(format!("{}: {e}", p.from)))?;
            self.weights.insert(p.key, t);
        }
        Ok(())
    }
}

/// One build's state.
struct Cx<'a> {
    b: GraphBuilder,
    env: HashMap<String, Val>,
    inits: &'a HashMap<String, Init>,
    taken: Option<&'a mut Taken>,
    opset: i64,
    /// Linear layers made by a MatMul whose bias no Add has given yet: value -> node.
    bias_free: HashMap<Value, String>,
    /// Values that name an initializer: its `Cast` to float (a half-precision weight), an
    /// `Identity` of it (exporters write one where two initializers were equal).
    alias: HashMap<String, String>,
}

fn attr<'n>(n: &'n proto::NodeProto, name: &str) -> Option<&'n proto::AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}

fn ints(n: &proto::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn int(n: &proto::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).and_then(|a| a.i).unwrap_or(default)
}

fn float(n: &proto::NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).and_then(|a| a.f).unwrap_or(default)
}

fn string(n: &proto::NodeProto, name: &str) -> Option<String> {
    attr(n, name).and_then(|a| {
        a.s.as_ref()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    })
}

impl Cx<'_> {
    fn fail(n: &proto::NodeProto, msg: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: node_name(n),
            op: n.op_type().to_string(),
            msg: msg.into(),
        }
    }

    fn graph_err(n: &proto::NodeProto) -> impl FnOnce(GraphError) -> OnnxError + '_ {
        move |source| OnnxError::Graph {
            node: node_name(n),
            source,
        }
    }

    fn get(&self, n: &proto::NodeProto, i: usize) -> Result<&Val> {
        let name = n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Self::fail(n, format!("input {i} is missing")))?;
        self.env.get(name).ok_or_else(|| {
            Self::fail(
                n,
                format!(
                    "input '{name}' is no value made before this node (or a weight it cannot take)"
                ),
            )
        })
    }

    fn node_in(&self, n: &proto::NodeProto, i: usize) -> Result<Value> {
        match self.get(n, i)? {
            Val::Node(v) => Ok(*v),
            _ => Err(Self::fail(
                n,
                format!("input {i} is a constant; webcnn takes a computed tensor there"),
            )),
        }
    }

    fn consts(&self, n: &proto::NodeProto, i: usize) -> Result<Vec<i64>> {
        match self.get(n, i)? {
            Val::Ints(v) => Ok(v.clone()),
            _ => Err(Self::fail(
                n,
                format!("input {i} must be a constant integer tensor"),
            )),
        }
    }

    /// An optional scalar float input (Clip's bounds): `None` where absent.
    fn scalar(&self, n: &proto::NodeProto, i: usize) -> Result<Option<f32>> {
        if n.input.get(i).is_none_or(|s| s.is_empty()) {
            return Ok(None);
        }
        match self.get(n, i)? {
            Val::Floats(v) if v.len() == 1 => Ok(Some(v[0])),
            _ => Err(Self::fail(
                n,
                format!("input {i} must be a constant scalar"),
            )),
        }
    }

    /// A weight input's name and shape (an initializer).
    fn weight(&self, n: &proto::NodeProto, i: usize) -> Result<(String, Vec<usize>)> {
        let name = n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Self::fail(n, format!("input {i} (a weight) is missing")))?;
        let name = self.alias.get(name).unwrap_or(name);
        let init = self.inits.get(name).ok_or_else(|| {
            Self::fail(
                n,
                format!("input '{name}' must be an initializer (a weight)"),
            )
        })?;
        Ok((name.clone(), init.shape.clone()))
    }

    /// Initializer `from` (changed by `f`) becomes the weight `key`, on the build that takes
    /// weights (made when it is done: [`Taken::finish`]); the others only name it.
    fn take(
        &mut self,
        from: &str,
        key: String,
        shape: Vec<usize>,
        f: impl FnOnce(Vec<f32>) -> Vec<f32> + 'static,
    ) -> Result<()> {
        let Some(t) = self.taken.as_deref_mut() else {
            return Ok(());
        };
        if !matches!(t.data.get(from), Some(InitData::F32(_))) {
            return Err(format(format!(
                "initializer '{from}' is not a float tensor"
            )));
        }
        t.pending.push(Pending {
            from: from.to_string(),
            key,
            shape,
            f: Box::new(f),
        });
        Ok(())
    }

    /// Where `n`'s input is an initializer (or names one), its output `name` names it too.
    /// True when that is all: a weight-sized initializer is no value in `env`.
    fn alias_initializer(&mut self, n: &proto::NodeProto, name: &str) -> bool {
        let from = n.input.first().cloned().unwrap_or_default();
        let init = self.alias.get(&from).cloned();
        let Some(init) = init.or_else(|| self.inits.contains_key(&from).then(|| from.clone()))
        else {
            return false;
        };
        self.alias.insert(name.to_string(), init);
        !self.env.contains_key(&from)
    }

    fn set(&mut self, n: &proto::NodeProto, v: Val) -> Result<()> {
        let out = n
            .output
            .first()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Self::fail(n, "it has no output"))?;
        self.env.insert(out.clone(), v);
        Ok(())
    }

    fn node(&mut self, n: &proto::NodeProto) -> Result<()> {
        if !n.domain().is_empty() && n.domain() != "ai.onnx" {
            return Err(OnnxError::Unsupported {
                op: format!("{}.{}", n.domain(), n.op_type()),
                node: node_name(n),
            });
        }
        let name = n.output.first().cloned().unwrap_or_default();
        match n.op_type() {
            "Identity" | "Dropout" => {
                if self.alias_initializer(n, &name) {
                    return Ok(());
                }
                let v = self.get(n, 0)?.clone();
                self.set(n, v)
            }
            "Constant" => {
                let t = attr(n, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| Self::fail(n, "only a tensor 'value' is supported"))?;
                let v = match tensor_data(t, t.raw_data.clone(), None)? {
                    InitData::F32(v) => Val::Floats(v),
                    InitData::I64(v) => Val::Ints(v),
                };
                self.set(n, v)
            }
            "Cast" => {
                if int(n, "to", 0) as i32 != FLOAT {
                    return Err(Self::fail(n, "only a cast to float is supported"));
                }
                // A weight read as float already: the cast's output names it.
                if self.alias_initializer(n, &name) {
                    return Ok(());
                }
                let v = match self.get(n, 0)?.clone() {
                    Val::Ints(v) => Val::Floats(v.iter().map(|&i| i as f32).collect()),
                    v => v,
                };
                self.set(n, v)
            }
            "Shape" => {
                let x = self.node_in(n, 0)?;
                let s: Vec<i64> = self.b.shape(x).iter().map(|&d| d as i64).collect();
                self.set(n, Val::Ints(s))
            }
            "Gather" => {
                let data = self.consts(n, 0)?;
                let idx = self.consts(n, 1)?;
                if int(n, "axis", 0) != 0 {
                    return Err(Self::fail(n, "only axis 0 of a constant vector"));
                }
                let len = data.len() as i64;
                let out = idx
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + len } else { i };
                        data.get(j as usize)
                            .copied()
                            .filter(|_| (0..len).contains(&j))
                    })
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| {
                        Self::fail(n, format!("indices {idx:?} outside {len} values"))
                    })?;
                self.set(n, Val::Ints(out))
            }
            // Scalars and vectors are both flat here: unsqueezing keeps the values.
            "Unsqueeze" => {
                let v = self.consts(n, 0)?;
                self.set(n, Val::Ints(v))
            }
            "Concat" => {
                let mut out = vec![];
                for i in 0..n.input.len() {
                    out.extend(self.consts(n, i)?);
                }
                self.set(n, Val::Ints(out))
            }
            "Conv" => self.conv(n, &name),
            "BatchNormalization" => {
                let x = self.node_in(n, 0)?;
                let c = self.b.shape(x).get(1).copied().unwrap_or(0);
                for (i, key) in ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .enumerate()
                {
                    let (w, shape) = self.weight(n, i + 1)?;
                    if shape != [c] {
                        return Err(Self::fail(
                            n,
                            format!("'{w}' has shape {shape:?}, not [{c}]"),
                        ));
                    }
                    self.take(&w, format!("{name}.{key}"), shape, |v| v)?;
                }
                let eps = float(n, "epsilon", 1e-5);
                let v = self
                    .b
                    .batch_norm2d(&name, x, c, eps)
                    .map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "Relu" => {
                let x = self.node_in(n, 0)?;
                let v = self.b.relu(&name, x).map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "Clip" => {
                let (lo, hi) = if self.opset < 11 {
                    (float(n, "min", f32::MIN), float(n, "max", f32::MAX))
                } else {
                    (
                        self.scalar(n, 1)?.unwrap_or(f32::MIN),
                        self.scalar(n, 2)?.unwrap_or(f32::MAX),
                    )
                };
                if lo != 0.0 || hi < f32::MAX {
                    return Err(Self::fail(
                        n,
                        format!("only Clip(0, inf) (a ReLU) is supported, not Clip({lo}, {hi})"),
                    ));
                }
                let x = self.node_in(n, 0)?;
                let v = self.b.relu(&name, x).map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "MaxPool" | "AveragePool" => {
                let x = self.node_in(n, 0)?;
                if n.output.len() > 1 && !n.output[1].is_empty() {
                    return Err(Self::fail(n, "MaxPool's indices output is not supported"));
                }
                let p = self.pool(n, x)?;
                let v = if n.op_type() == "MaxPool" {
                    self.b.max_pool2d(&name, x, p)
                } else {
                    self.b.avg_pool2d(&name, x, p)
                }
                .map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "GlobalAveragePool" => {
                let x = self.node_in(n, 0)?;
                let v = self
                    .b
                    .adaptive_avg_pool2d(&name, x, [1, 1])
                    .map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            // torch's dynamo exporter writes adaptive average pooling to 1x1 as a mean
            // over H and W (axes an input from opset 18, an attribute before).
            "ReduceMean" => {
                let x = self.node_in(n, 0)?;
                let rank = self.b.shape(x).len() as i64;
                let axes = match self.opset >= 18 {
                    true if n.input.get(1).is_some_and(|s| !s.is_empty()) => self.consts(n, 1)?,
                    true => vec![],
                    false => ints(n, "axes").unwrap_or_default(),
                };
                let mut axes: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + rank } else { a })
                    .collect();
                axes.sort_unstable();
                if rank != 4 || axes != [2, 3] {
                    return Err(Self::fail(
                        n,
                        format!("only a mean over H and W of [N, C, H, W] (axes [2, 3]), not axes {axes:?}"),
                    ));
                }
                // Without the kept dimensions: the pool, then a flatten named as the output.
                let keep = int(n, "keepdims", 1) != 0;
                let pool = if keep {
                    name.clone()
                } else {
                    format!("{name}/pool")
                };
                let mut v = self
                    .b
                    .adaptive_avg_pool2d(&pool, x, [1, 1])
                    .map_err(Self::graph_err(n))?;
                if !keep {
                    v = self.b.flatten(&name, v, 1).map_err(Self::graph_err(n))?;
                }
                self.set(n, Val::Node(v))
            }
            "LRN" => {
                let x = self.node_in(n, 0)?;
                let size = int(n, "size", 0);
                if size <= 0 {
                    return Err(Self::fail(n, "attribute 'size' must be positive"));
                }
                // ONNX's LRN divides alpha by size, as PyTorch's does.
                let lrn = Lrn {
                    size: size as usize,
                    alpha: float(n, "alpha", 1e-4),
                    beta: float(n, "beta", 0.75),
                    k: float(n, "bias", 1.0),
                };
                let v = self
                    .b
                    .local_response_norm(&name, x, lrn)
                    .map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "Flatten" => {
                let x = self.node_in(n, 0)?;
                let rank = self.b.shape(x).len() as i64;
                let axis = int(n, "axis", 1);
                let axis = if axis < 0 { axis + rank } else { axis };
                if axis != 1 {
                    return Err(Self::fail(
                        n,
                        format!("only axis 1 (keep the batch), not {axis}"),
                    ));
                }
                let v = self.b.flatten(&name, x, 1).map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "Reshape" => {
                let x = self.node_in(n, 0)?;
                let target = if self.opset < 5 {
                    ints(n, "shape").unwrap_or_default()
                } else {
                    self.consts(n, 1)?
                };
                let s = self.b.shape(x).to_vec();
                let batch = s[0] as i64;
                let rest: usize = s[1..].iter().product();
                // [N, -1], [N, rest], [0, -1], [-1, rest]: flatten, keeping the batch.
                // With `allowzero` a 0 is a zero-sized dimension, not "copy the input's".
                let copy = int(n, "allowzero", 0) == 0;
                let flat = match target.as_slice() {
                    [a, b] => {
                        (*a == batch || (*a == 0 && copy) || (*a == -1 && *b == rest as i64))
                            && (*b == -1 || *b == rest as i64)
                    }
                    _ => false,
                };
                if !flat {
                    return Err(Self::fail(
                        n,
                        format!("only a reshape to [N, -1] is supported; this one takes {s:?} to {target:?}"),
                    ));
                }
                let v = self.b.flatten(&name, x, 1).map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "Softmax" => {
                let x = self.node_in(n, 0)?;
                let rank = self.b.shape(x).len() as i64;
                let axis = int(n, "axis", if self.opset < 13 { 1 } else { -1 });
                let axis = if axis < 0 { axis + rank } else { axis };
                // Before opset 13 Softmax flattens from `axis`: the same on [N, C].
                if rank != 2 || axis != 1 {
                    return Err(Self::fail(n, "only a softmax over the classes of [N, C]"));
                }
                let v = self.b.softmax(&name, x, 1).map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            "Gemm" => self.gemm(n, &name),
            "MatMul" => self.matmul(n, &name),
            "Add" => self.add(n, &name),
            op => Err(OnnxError::Unsupported {
                op: op.to_string(),
                node: node_name(n),
            }),
        }
    }

    /// Symmetric padding from `pads` / `auto_pad` for a window of `kernel` at `stride`
    /// (and `dilation`) over `size`.
    fn pads(
        n: &proto::NodeProto,
        size: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<[usize; 2]> {
        let auto = string(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
        let pads: Vec<i64> = match auto.as_str() {
            "NOTSET" => ints(n, "pads").unwrap_or_else(|| vec![0; 4]),
            "VALID" => vec![0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = vec![0i64; 4];
                for i in 0..2 {
                    let out = size[i].div_ceil(stride[i]).max(1);
                    let span = (kernel[i].max(1) - 1).saturating_mul(dilation[i]) + 1;
                    let total = ((out - 1) * stride[i])
                        .saturating_add(span)
                        .saturating_sub(size[i]) as i64;
                    let (small, big) = (total / 2, total - total / 2);
                    (p[i], p[i + 2]) = if auto == "SAME_UPPER" {
                        (small, big)
                    } else {
                        (big, small)
                    };
                }
                p
            }
            a => return Err(Self::fail(n, format!("auto_pad '{a}'"))),
        };
        match pads.as_slice() {
            [t, l, b, r] if t == b && l == r && *t >= 0 && *l >= 0 => {
                Ok([*t as usize, *l as usize])
            }
            p => Err(Self::fail(
                n,
                format!(
                    "pads {p:?}: only the same padding on both sides of each axis is supported"
                ),
            )),
        }
    }

    fn pair(n: &proto::NodeProto, name: &str, default: usize) -> Result<[usize; 2]> {
        match ints(n, name).as_deref() {
            None => Ok([default; 2]),
            Some([a, b]) if (1..=1 << 16).contains(a) && (1..=1 << 16).contains(b) => {
                Ok([*a as usize, *b as usize])
            }
            Some(v) => Err(Self::fail(
                n,
                format!("{name} {v:?}: two values from 1 to 65536 expected (2-D)"),
            )),
        }
    }

    fn pool(&self, n: &proto::NodeProto, x: Value) -> Result<Pool2d> {
        let kernel = Self::pair(n, "kernel_shape", 0)?;
        if kernel.contains(&0) {
            return Err(Self::fail(n, "kernel_shape is required"));
        }
        let stride = Self::pair(n, "strides", 1)?;
        if Self::pair(n, "dilations", 1)? != [1, 1] {
            return Err(Self::fail(n, "dilated pooling is not supported"));
        }
        let s = self.b.shape(x);
        let size = [
            s.get(2).copied().unwrap_or(0),
            s.get(3).copied().unwrap_or(0),
        ];
        let padding = Self::pads(n, size, kernel, stride, [1, 1])?;
        Ok(Pool2d {
            kernel,
            stride,
            padding,
            ceil_mode: int(n, "ceil_mode", 0) != 0,
            count_include_pad: int(n, "count_include_pad", 0) != 0,
        })
    }

    fn conv(&mut self, n: &proto::NodeProto, name: &str) -> Result<()> {
        let x = self.node_in(n, 0)?;
        let (w, ws) = self.weight(n, 1)?;
        let [o, i_g, kh, kw] = ws[..] else {
            return Err(Self::fail(
                n,
                format!("weight '{w}' has shape {ws:?}; only 2-D convolutions run"),
            ));
        };
        if [o, i_g, kh, kw].iter().any(|d| !(1..=1 << 16).contains(d)) {
            return Err(Self::fail(n, format!("weight '{w}' has shape {ws:?}")));
        }
        if let Some(k) = ints(n, "kernel_shape") {
            if k != [kh as i64, kw as i64] {
                return Err(Self::fail(
                    n,
                    format!("kernel_shape {k:?} does not match weight {ws:?}"),
                ));
            }
        }
        let groups = int(n, "group", 1);
        let groups = usize::try_from(groups)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| Self::fail(n, format!("group {groups}")))?;
        let stride = Self::pair(n, "strides", 1)?;
        let dilation = Self::pair(n, "dilations", 1)?;
        let s = self.b.shape(x);
        let size = [
            s.get(2).copied().unwrap_or(0),
            s.get(3).copied().unwrap_or(0),
        ];
        let padding = Self::pads(n, size, [kh, kw], stride, dilation)?;
        let bias = n.input.get(2).is_some_and(|b| !b.is_empty());
        let cfg = Conv2d {
            in_channels: i_g * groups,
            out_channels: o,
            kernel: [kh, kw],
            stride,
            padding,
            dilation,
            groups,
            bias,
        };
        self.take(&w, format!("{name}.weight"), ws.clone(), |v| v)?;
        if bias {
            let (bn, bs) = self.weight(n, 2)?;
            if bs != [o] {
                return Err(Self::fail(
                    n,
                    format!("bias '{bn}' has shape {bs:?}, not [{o}]"),
                ));
            }
            self.take(&bn, format!("{name}.bias"), bs, |v| v)?;
        }
        let v = self.b.conv2d(name, x, cfg).map_err(Self::graph_err(n))?;
        self.set(n, Val::Node(v))
    }

    /// `Gemm(A, B, C)` = alpha * A' * B' + beta * C as a linear layer: B' is the weight
    /// (PyTorch's layout with transB = 1), alpha and beta folded into it.
    fn gemm(&mut self, n: &proto::NodeProto, name: &str) -> Result<()> {
        let x = self.node_in(n, 0)?;
        if int(n, "transA", 0) != 0 {
            return Err(Self::fail(n, "transA = 1 is not supported"));
        }
        let trans_b = int(n, "transB", 0) != 0;
        let (alpha, beta) = (float(n, "alpha", 1.0), float(n, "beta", 1.0));
        let (w, ws) = self.weight(n, 1)?;
        let [r, c] = ws[..] else {
            return Err(Self::fail(
                n,
                format!("weight '{w}' has shape {ws:?}, not 2-D"),
            ));
        };
        let (out, inp) = if trans_b { (r, c) } else { (c, r) };
        self.take(&w, format!("{name}.weight"), vec![out, inp], move |v| {
            let mut t = if trans_b { v } else { transpose(&v, r, c) };
            t.iter_mut().for_each(|x| *x *= alpha);
            t
        })?;
        let bias = n.input.get(2).is_some_and(|b| !b.is_empty());
        if bias {
            let (bn, bs) = self.weight(n, 2)?;
            let numel: usize = bs.iter().product();
            if numel != out && numel != 1 {
                return Err(Self::fail(
                    n,
                    format!("C '{bn}' of shape {bs:?} is no bias of {out} outputs"),
                ));
            }
            self.take(&bn, format!("{name}.bias"), vec![out], move |v| {
                (0..out)
                    .map(|i| beta * v[if v.len() == 1 { 0 } else { i }])
                    .collect()
            })?;
        }
        let v = self
            .b
            .linear(name, x, inp, out, bias)
            .map_err(Self::graph_err(n))?;
        self.set(n, Val::Node(v))
    }

    /// `MatMul(X, W)` with W an initializer [K, N]: a linear layer without bias (an `Add`
    /// of a constant bias after it is folded in by [`Cx::add`]).
    fn matmul(&mut self, n: &proto::NodeProto, name: &str) -> Result<()> {
        let x = self.node_in(n, 0)?;
        let (w, ws) = self.weight(n, 1)?;
        let [k, out] = ws[..] else {
            return Err(Self::fail(
                n,
                format!("weight '{w}' has shape {ws:?}, not 2-D"),
            ));
        };
        self.take(&w, format!("{name}.weight"), vec![out, k], move |v| {
            transpose(&v, k, out)
        })?;
        // A bias of zeros until an Add gives one (the layer always has a bias here).
        if let Some(t) = self.taken.as_deref_mut() {
            let zeros = Tensor::new(vec![out], vec![0.0; out]).expect("shape");
            t.weights.insert(format!("{name}.bias"), zeros);
        }
        let v = self
            .b
            .linear(name, x, k, out, true)
            .map_err(Self::graph_err(n))?;
        self.bias_free.insert(v, name.to_string());
        self.set(n, Val::Node(v))
    }

    fn add(&mut self, n: &proto::NodeProto, name: &str) -> Result<()> {
        // A weight-sized initializer is no value in `env` (only small constants are): it is
        // the constant side, read through a Cast where there is one.
        let side = |cx: &Self, i: usize| -> Result<Option<Value>> {
            let input = n.input.get(i).filter(|s| !s.is_empty());
            let init = input.map(|s| cx.alias.get(s).unwrap_or(s));
            match input.and_then(|s| cx.env.get(s)) {
                Some(Val::Node(v)) => Ok(Some(*v)),
                Some(_) => Ok(None),
                None if init.is_some_and(|s| cx.inits.contains_key(s)) => Ok(None),
                None => cx.get(n, i).map(|_| None),
            }
        };
        let (a, b) = (side(self, 0)?, side(self, 1)?);
        match (a, b) {
            (Some(a), Some(b)) => {
                let v = self.b.add(name, a, b).map_err(Self::graph_err(n))?;
                self.set(n, Val::Node(v))
            }
            // A bias after a MatMul: folded into that linear layer.
            (Some(x), None) | (None, Some(x)) => {
                let Some(producer) = self.bias_free.remove(&x) else {
                    return Err(Self::fail(
                        n,
                        "an Add of a constant is supported only as the bias of a MatMul",
                    ));
                };
                let i = usize::from(a.is_some());
                let bias = &n.input[i];
                let bias = self.alias.get(bias).unwrap_or(bias).clone();
                let out = self.b.shape(x).last().copied().unwrap_or(0);
                let numel: usize = self
                    .inits
                    .get(&bias)
                    .map_or(0, |i| i.shape.iter().product());
                if numel != out {
                    return Err(Self::fail(
                        n,
                        format!("'{bias}' is no bias of {out} outputs"),
                    ));
                }
                self.take(&bias, format!("{producer}.bias"), vec![out], |v| v)?;
                self.set(n, Val::Node(x))
            }
            (None, None) => Err(Self::fail(n, "adding two constants is not supported")),
        }
    }
}

/// The ONNX node's name for messages: its name, else its first output.
fn node_name(n: &proto::NodeProto) -> String {
    match n.name() {
        "" => n.output.first().cloned().unwrap_or_default(),
        s => s.to_string(),
    }
}

/// `v` ([rows, cols], row-major) transposed.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}
