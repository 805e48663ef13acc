//! Lowering a graph to the steps a backend runs: aliases (flatten, dropout) removed,
//! BatchNorm after a convolution folded into it, and residual Add / ReLU fused into
//! the kernel that produces their input. Both backends run the same steps, so a
//! fusion is tested once for both.

use crate::error::{Error, Result};
use crate::graph::{Conv2d, Graph, GroupNorm, Linear, Lrn, Op, ParamSpec, Pool2d, Value};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Named host tensors, keyed by PyTorch state-dict names.
pub trait Weights {
    fn get(&self, key: &str) -> Option<&Tensor>;
    /// The shape of `key`, also for a tensor that lives only on a device (GPU weights
    /// keep conv and linear weights off the host).
    fn shape(&self, key: &str) -> Option<&[usize]> {
        self.get(key).map(|t| t.shape())
    }
}

impl Weights for HashMap<String, Tensor> {
    fn get(&self, key: &str) -> Option<&Tensor> {
        HashMap::get(self, key)
    }
}

/// The tensor of parameter `p`, checked against the shape the graph expects.
pub fn param<'a>(w: &'a dyn Weights, p: &ParamSpec) -> Result<&'a Tensor> {
    let t = w
        .get(&p.name)
        .ok_or_else(|| Error::MissingWeight(p.name.clone()))?;
    if t.shape() != p.shape.as_slice() {
        return Err(Error::WeightShape {
            key: p.name.clone(),
            expected: p.shape.clone(),
            got: t.shape().to_vec(),
        });
    }
    Ok(t)
}

/// Whether `key` is a conv or linear weight: the large tensors a backend keeps where it
/// computes (device buffers), shared by every plan of a model.
pub fn is_matrix(graph: &Graph, key: &str) -> bool {
    key.strip_suffix(".weight")
        .and_then(|n| graph.find(n))
        .is_some_and(|v| matches!(graph.node(v).op, Op::Conv2d(_) | Op::Linear(_)))
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// Convolution (BatchNorm folded in when `bn` names it).
    Conv {
        cfg: Conv2d,
        node: String,
        bn: Option<(String, f32)>,
    },
    Linear {
        cfg: Linear,
        node: String,
    },
    MaxPool(Pool2d),
    AvgPool(Pool2d),
    AdaptiveAvgPool {
        output: [usize; 2],
    },
    Lrn(Lrn),
    /// Standalone inference BatchNorm: a per-channel scale and shift.
    BatchNorm {
        node: String,
        eps: f32,
    },
    GroupNorm {
        cfg: GroupNorm,
        node: String,
    },
    /// `inputs[0] + inputs[1]`.
    Add,
    Relu,
    Softmax {
        dim: usize,
    },
}

/// One kernel launch: `output = epilogue(kernel(inputs))`, where the epilogue adds
/// `residual` (if any) and then applies ReLU (if `relu`).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The graph nodes this step computes, first to last (for messages and profiles).
    pub nodes: Vec<String>,
    pub kernel: Kernel,
    pub inputs: Vec<Value>,
    pub residual: Option<Value>,
    pub relu: bool,
    pub output: Value,
}

/// Steps in execution order over "stored" values (graph values that are not aliases).
#[derive(Clone, Debug)]
pub struct Program {
    pub steps: Vec<Step>,
    pub input: Value,
    /// Stored value and shape of each graph output (an output may be an alias).
    pub outputs: Vec<(Value, Vec<usize>)>,
    shapes: HashMap<Value, Vec<usize>>,
}

impl Program {
    pub fn shape(&self, v: Value) -> &[usize] {
        &self.shapes[&v]
    }

    /// Lower `graph`; with `fuse` false every node is its own step (for testing fusion).
    pub fn new(graph: &Graph, fuse: bool) -> Program {
        let nodes = graph.nodes();
        // Flatten and Dropout share their input's storage.
        let mut store: Vec<Value> = (0..nodes.len()).map(Value).collect();
        for (i, n) in nodes.iter().enumerate() {
            if matches!(n.op, Op::Flatten { .. } | Op::Dropout) {
                store[i] = store[n.inputs[0].0];
            }
        }
        let mut consumers: Vec<Vec<usize>> = vec![vec![]; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            for v in &n.inputs {
                consumers[v.0].push(i);
            }
        }
        let is_output: Vec<bool> = (0..nodes.len())
            .map(|i| graph.outputs().contains(&Value(i)))
            .collect();
        // The one node reading value `i`, if nothing else (nor the caller) needs it.
        let sole = |i: usize| -> Option<usize> {
            (fuse && !is_output[i] && consumers[i].len() == 1).then(|| consumers[i][0])
        };

        let mut fused = vec![false; nodes.len()];
        let mut pending: Vec<(usize, Step)> = vec![];
        for (i, n) in nodes.iter().enumerate() {
            if fused[i] || matches!(n.op, Op::Input | Op::Flatten { .. } | Op::Dropout) {
                continue;
            }
            let mut names = vec![n.name.clone()];
            let mut last = i;
            let kernel = match &n.op {
                Op::Conv2d(cfg) => {
                    let mut bn = None;
                    if let Some(j) = sole(i).filter(|&j| !fused[j]) {
                        if let Op::BatchNorm2d(b) = &nodes[j].op {
                            bn = Some((nodes[j].name.clone(), b.eps));
                            names.push(nodes[j].name.clone());
                            fused[j] = true;
                            last = j;
                        }
                    }
                    Kernel::Conv {
                        cfg: cfg.clone(),
                        node: n.name.clone(),
                        bn,
                    }
                }
                Op::Linear(cfg) => Kernel::Linear {
                    cfg: cfg.clone(),
                    node: n.name.clone(),
                },
                Op::MaxPool2d(p) => Kernel::MaxPool(p.clone()),
                Op::AvgPool2d(p) => Kernel::AvgPool(p.clone()),
                Op::AdaptiveAvgPool2d { output } => Kernel::AdaptiveAvgPool { output: *output },
                Op::LocalResponseNorm(l) => Kernel::Lrn(l.clone()),
                Op::BatchNorm2d(b) => Kernel::BatchNorm {
                    node: n.name.clone(),
                    eps: b.eps,
                },
                Op::GroupNorm(g) => Kernel::GroupNorm {
                    cfg: g.clone(),
                    node: n.name.clone(),
                },
                Op::Add => Kernel::Add,
                Op::Relu => Kernel::Relu,
                Op::Softmax { dim } => Kernel::Softmax { dim: *dim },
                Op::Input | Op::Flatten { .. } | Op::Dropout => unreachable!("skipped above"),
            };
            // Epilogue: residual add (kernels with a per-element output), then ReLU.
            let mut residual = None;
            let takes_residual = matches!(
                kernel,
                Kernel::Conv { .. } | Kernel::BatchNorm { .. } | Kernel::GroupNorm { .. }
            );
            if takes_residual {
                if let Some(j) = sole(last).filter(|&j| !fused[j]) {
                    if nodes[j].op == Op::Add {
                        let other = nodes[j].inputs.iter().copied().find(|v| v.0 != last);
                        if let Some(other) = other {
                            residual = Some(store[other.0]);
                            names.push(nodes[j].name.clone());
                            fused[j] = true;
                            last = j;
                        }
                    }
                }
            }
            let mut relu = false;
            if !matches!(kernel, Kernel::Relu | Kernel::Softmax { .. }) {
                if let Some(j) = sole(last).filter(|&j| !fused[j]) {
                    if nodes[j].op == Op::Relu {
                        relu = true;
                        names.push(nodes[j].name.clone());
                        fused[j] = true;
                        last = j;
                    }
                }
            }
            pending.push((
                last,
                Step {
                    nodes: names,
                    kernel,
                    inputs: n.inputs.iter().map(|v| store[v.0]).collect(),
                    residual,
                    relu,
                    output: Value(last),
                },
            ));
        }
        // A fused step runs where its last node stood, so its residual is ready.
        pending.sort_by_key(|(last, _)| *last);
        let steps: Vec<Step> = pending.into_iter().map(|(_, s)| s).collect();
        let mut shapes = HashMap::new();
        shapes.insert(graph.input(), graph.input_shape().to_vec());
        for s in &steps {
            shapes.insert(s.output, graph.shape(s.output).to_vec());
        }
        Program {
            steps,
            input: graph.input(),
            outputs: graph
                .outputs()
                .iter()
                .map(|v| (store[v.0], graph.shape(*v).to_vec()))
                .collect(),
            shapes,
        }
    }
}

/// Host parameters of one step, in the layout the kernels read. The large conv / linear
/// weight is named, not copied: it stays where the model's weights live (shared by every
/// plan), and a folded BatchNorm becomes a per-channel scale in the epilogue, so the
/// same weight tensor serves plans that fold it and plans that do not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepParams {
    /// Conv `[OC, IC/g, KH, KW]` / Linear `[OUT, IN]`: the state-dict key, shape checked.
    pub weight: Option<String>,
    /// Conv / Linear bias (zeros when absent; BN shift folded in); BatchNorm shift;
    /// GroupNorm beta.
    pub bias: Vec<f32>,
    /// Conv: per-output-channel scale (folded BatchNorm, else ones); BatchNorm scale;
    /// GroupNorm gamma.
    pub scale: Vec<f32>,
}

fn check_shape(w: &dyn Weights, key: &str, shape: &[usize]) -> Result<()> {
    let got = w
        .shape(key)
        .ok_or_else(|| Error::MissingWeight(key.to_string()))?;
    if got != shape {
        return Err(Error::WeightShape {
            key: key.to_string(),
            expected: shape.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}

fn fetch<'a>(w: &'a dyn Weights, key: String, shape: &[usize]) -> Result<&'a [f32]> {
    check_shape(w, &key, shape)?;
    w.get(&key)
        .map(|t| t.data())
        .ok_or(Error::MissingWeight(key))
}

/// BatchNorm as `y = x * scale + shift`, computed in f64.
fn bn_affine(w: &dyn Weights, node: &str, c: usize, eps: f32) -> Result<(Vec<f64>, Vec<f64>)> {
    let g = fetch(w, format!("{node}.weight"), &[c])?;
    let b = fetch(w, format!("{node}.bias"), &[c])?;
    let m = fetch(w, format!("{node}.running_mean"), &[c])?;
    let v = fetch(w, format!("{node}.running_var"), &[c])?;
    let scale: Vec<f64> = (0..c)
        .map(|i| g[i] as f64 / (v[i] as f64 + eps as f64).sqrt())
        .collect();
    let shift = (0..c)
        .map(|i| b[i] as f64 - m[i] as f64 * scale[i])
        .collect();
    Ok((scale, shift))
}

impl Program {
    /// Every step's parameters, fetched, checked and folded.
    pub fn params(&self, w: &dyn Weights) -> Result<Vec<StepParams>> {
        self.steps
            .iter()
            .map(|s| s.params(w, self.shape(s.inputs[0])))
            .collect()
    }
}

impl Step {
    /// Fetch, check and fold this step's parameters.
    pub fn params(&self, w: &dyn Weights, input_shape: &[usize]) -> Result<StepParams> {
        let mut p = StepParams::default();
        match &self.kernel {
            Kernel::Conv { cfg, node, bn } => {
                let key = format!("{node}.weight");
                check_shape(w, &key, &cfg.weight_shape())?;
                p.weight = Some(key);
                let oc = cfg.out_channels;
                let mut bias = vec![0f64; oc];
                if cfg.bias {
                    let b = fetch(w, format!("{node}.bias"), &[oc])?;
                    bias.iter_mut().zip(b).for_each(|(d, &s)| *d = s as f64);
                }
                if let Some((bn_node, eps)) = bn {
                    let (scale, shift) = bn_affine(w, bn_node, oc, *eps)?;
                    p.scale = scale.iter().map(|&s| s as f32).collect();
                    p.bias = (0..oc)
                        .map(|o| (bias[o] * scale[o] + shift[o]) as f32)
                        .collect();
                } else {
                    p.scale = vec![1.0; oc];
                    p.bias = bias.iter().map(|&b| b as f32).collect();
                }
            }
            Kernel::Linear { cfg, node } => {
                let key = format!("{node}.weight");
                check_shape(w, &key, &[cfg.out_features, cfg.in_features])?;
                p.weight = Some(key);
                p.bias = if cfg.bias {
                    fetch(w, format!("{node}.bias"), &[cfg.out_features])?.to_vec()
                } else {
                    vec![0.0; cfg.out_features]
                };
            }
            Kernel::BatchNorm { node, eps } => {
                let (scale, shift) = bn_affine(w, node, input_shape[1], *eps)?;
                p.scale = scale.iter().map(|&v| v as f32).collect();
                p.bias = shift.iter().map(|&v| v as f32).collect();
            }
            Kernel::GroupNorm { cfg, node } => {
                let c = cfg.channels;
                if cfg.affine {
                    p.scale = fetch(w, format!("{node}.weight"), &[c])?.to_vec();
                    p.bias = fetch(w, format!("{node}.bias"), &[c])?.to_vec();
                } else {
                    p.scale = vec![1.0; c];
                    p.bias = vec![0.0; c];
                }
            }
            _ => {}
        }
        Ok(p)
    }
}
