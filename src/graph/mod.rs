//! The graph IR: NCHW f32 tensors, PyTorch-named nodes, shapes fixed when the graph is built.
//!
//! Nothing here knows about GPUs or weights' values; parameters are named by their
//! PyTorch state-dict keys (`<node name>.weight`, ...) and resolved by the backends.

mod builder;
pub mod shape;

pub use builder::GraphBuilder;

use std::collections::HashMap;

/// A value in a graph: the output of node `Value.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub usize);

#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
}

impl Conv2d {
    /// A square `k`x`k` convolution, stride 1, no padding, with bias (PyTorch's defaults).
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Conv2d {
            in_channels,
            out_channels,
            kernel: [k, k],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel[0],
            self.kernel[1],
        ]
    }
}

/// Max or average pooling window (PyTorch's MaxPool2d / AvgPool2d arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct Pool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub ceil_mode: bool,
    /// AvgPool2d only: padded zeros count in the divisor (PyTorch's default, true).
    pub count_include_pad: bool,
}

impl Pool2d {
    /// A square window; stride defaults to the kernel size as in PyTorch.
    pub fn new(k: usize) -> Self {
        Pool2d {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
            ceil_mode: false,
            count_include_pad: true,
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    pub fn ceil_mode(mut self, c: bool) -> Self {
        self.ceil_mode = c;
        self
    }
    pub fn count_include_pad(mut self, c: bool) -> Self {
        self.count_include_pad = c;
        self
    }
}

/// LocalResponseNorm with PyTorch's semantics (alpha is divided by `size`).
#[derive(Clone, Debug, PartialEq)]
pub struct Lrn {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm2d {
    pub channels: usize,
    pub eps: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupNorm {
    pub groups: usize,
    pub channels: usize,
    pub eps: f32,
    pub affine: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Input,
    Conv2d(Conv2d),
    MaxPool2d(Pool2d),
    AvgPool2d(Pool2d),
    AdaptiveAvgPool2d { output: [usize; 2] },
    LocalResponseNorm(Lrn),
    BatchNorm2d(BatchNorm2d),
    GroupNorm(GroupNorm),
    Linear(Linear),
    Relu,
    Add,
    Flatten { start_dim: usize },
    Dropout,
    Softmax { dim: usize },
}

impl Op {
    /// The PyTorch-ish name of the op, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d(_) => "conv2d",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d",
            Op::LocalResponseNorm(_) => "local_response_norm",
            Op::BatchNorm2d(_) => "batch_norm2d",
            Op::GroupNorm(_) => "group_norm",
            Op::Linear(_) => "linear",
            Op::Relu => "relu",
            Op::Add => "add",
            Op::Flatten { .. } => "flatten",
            Op::Dropout => "dropout",
            Op::Softmax { .. } => "softmax",
        }
    }

    /// The parameter leaves (`weight`, `bias`, ...) with their shapes.
    pub fn params(&self) -> Vec<(&'static str, Vec<usize>)> {
        match self {
            Op::Conv2d(c) => {
                let mut v = vec![("weight", c.weight_shape())];
                if c.bias {
                    v.push(("bias", vec![c.out_channels]));
                }
                v
            }
            Op::BatchNorm2d(b) => ["weight", "bias", "running_mean", "running_var"]
                .into_iter()
                .map(|l| (l, vec![b.channels]))
                .collect(),
            Op::GroupNorm(g) if g.affine => {
                vec![("weight", vec![g.channels]), ("bias", vec![g.channels])]
            }
            Op::Linear(l) => {
                let mut v = vec![("weight", vec![l.out_features, l.in_features])];
                if l.bias {
                    v.push(("bias", vec![l.out_features]));
                }
                v
            }
            _ => vec![],
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The module path, e.g. `layer1.0.conv1`: parameters are `<name>.<leaf>`.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Value>,
    pub shape: Vec<usize>,
}

/// A parameter the graph needs: state-dict key and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

fn nearest_hint(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("; nearest: {}", names.join(", "))
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + (ca != cb) as usize)
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Errors found while building or editing a graph; each names the node concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("node '{node}' ({op}): {msg}")]
    Shape {
        node: String,
        op: &'static str,
        msg: String,
    },
    #[error("node name '{0}' is used twice")]
    DuplicateName(String),
    #[error("node '{0}': input value belongs to no node of this graph")]
    UnknownValue(String),
    #[error("no node named '{name}' in the graph{hint}", name = .0, hint = nearest_hint(.1))]
    UnknownNode(String, Vec<String>),
    #[error("the graph has no input")]
    NoInput,
    #[error("the graph has no outputs")]
    NoOutputs,
}

/// A built graph: topologically ordered nodes (node `i` produces `Value(i)`),
/// one input and named outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    nodes: Vec<Node>,
    input: Value,
    outputs: Vec<Value>,
}

impl Graph {
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn node(&self, v: Value) -> &Node {
        &self.nodes[v.0]
    }
    pub fn input(&self) -> Value {
        self.input
    }
    pub fn input_shape(&self) -> &[usize] {
        &self.nodes[self.input.0].shape
    }
    pub fn outputs(&self) -> &[Value] {
        &self.outputs
    }
    pub fn shape(&self, v: Value) -> &[usize] {
        &self.nodes[v.0].shape
    }

    /// The node named `name`, or else the output of the module `name` (the last node
    /// whose name starts with `name.`), as torchvision's feature extractor resolves it.
    pub fn find(&self, name: &str) -> Option<Value> {
        let prefix = format!("{name}.");
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .or_else(|| self.nodes.iter().rposition(|n| n.name.starts_with(&prefix)))
            .map(Value)
    }

    /// Multiply-accumulates of the convolutions and linear layers (saturating: a graph
    /// with absurd parameters says u64::MAX rather than wrapping).
    pub fn macs(&self) -> u64 {
        let prod = |v: &[usize]| v.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        self.nodes
            .iter()
            .map(|n| match &n.op {
                Op::Conv2d(c) => prod(&[
                    prod(&n.shape) as usize,
                    c.in_channels / c.groups.max(1),
                    c.kernel[0],
                    c.kernel[1],
                ]),
                Op::Linear(l) => prod(&[n.shape[0], l.in_features, l.out_features]),
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Every parameter the graph reads, in node order.
    pub fn params(&self) -> Vec<ParamSpec> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.op.params()
                    .into_iter()
                    .map(move |(leaf, shape)| ParamSpec {
                        name: format!("{}.{leaf}", n.name),
                        shape,
                    })
            })
            .collect()
    }

    /// The same graph for batches of `n` images. Graphs are batch-major (the builder keeps
    /// dimension 0 the batch through every op: no flatten or softmax over it), so only the
    /// batch dimension changes; `None` for `n` = 0.
    pub fn with_batch(&self, n: usize) -> Option<Graph> {
        let batch = self.input_shape().first().copied()?;
        if n == 0
            || self
                .nodes
                .iter()
                .any(|node| node.shape.first() != Some(&batch))
        {
            return None;
        }
        let mut g = self.clone();
        for node in &mut g.nodes {
            node.shape[0] = n;
        }
        Some(g)
    }

    /// The same graph returning the named nodes' outputs instead (feature extraction),
    /// with the nodes no output needs removed.
    pub fn with_outputs(&self, names: &[&str]) -> Result<Graph, GraphError> {
        if names.is_empty() {
            return Err(GraphError::NoOutputs);
        }
        let outs = names
            .iter()
            .map(|n| {
                self.find(n)
                    .ok_or_else(|| GraphError::UnknownNode(n.to_string(), self.nearest(n, 5)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.pruned(outs))
    }

    /// The names of up to `k` nodes closest to `name` (edit distance), closest first.
    pub fn nearest(&self, name: &str, k: usize) -> Vec<String> {
        let mut v: Vec<(usize, &str)> = self
            .nodes
            .iter()
            .filter(|n| !matches!(n.op, Op::Input))
            .map(|n| (edit_distance(name, &n.name), n.name.as_str()))
            .collect();
        v.sort();
        v.into_iter().take(k).map(|(_, n)| n.to_string()).collect()
    }

    /// Keep only the nodes `outputs` depend on (and the input), renumbered.
    fn pruned(&self, outputs: Vec<Value>) -> Graph {
        let mut keep = vec![false; self.nodes.len()];
        keep[self.input.0] = true;
        for o in &outputs {
            keep[o.0] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if keep[i] {
                for v in &self.nodes[i].inputs {
                    keep[v.0] = true;
                }
            }
        }
        let mut remap = HashMap::new();
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if keep[i] {
                remap.insert(i, nodes.len());
                let mut n = n.clone();
                n.inputs = n.inputs.iter().map(|v| Value(remap[&v.0])).collect();
                nodes.push(n);
            }
        }
        Graph {
            input: Value(remap[&self.input.0]),
            outputs: outputs.iter().map(|v| Value(remap[&v.0])).collect(),
            nodes,
        }
    }

    /// How many nodes read each value (graph outputs count as a reader).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0; self.nodes.len()];
        for n in &self.nodes {
            for v in &n.inputs {
                uses[v.0] += 1;
            }
        }
        for o in &self.outputs {
            uses[o.0] += 1;
        }
        uses
    }
}
