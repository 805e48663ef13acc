//! Building a graph: every op checks its input shapes and parameters here, so a
//! graph that builds is one every backend can run.

use super::shape::{conv_out, pool_out};
use super::*;
use std::collections::HashSet;

/// No tensor may have more elements than this (4 TiB of f32): sizes computed from
/// shapes then never overflow.
pub const MAX_ELEMENTS: u64 = 1 << 40;

/// Builds a [`Graph`] node by node. Each method returns the new node's [`Value`] or a
/// [`GraphError`] naming the node.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    names: HashSet<String>,
    input: Option<Value>,
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn shape(&self, v: Value) -> &[usize] {
        &self.nodes[v.0].shape
    }

    fn push(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<Value>,
        shape: Vec<usize>,
    ) -> Result<Value, GraphError> {
        // Every tensor's size fits memory arithmetic: later code multiplies shapes freely
        // (and the GPU kernels index dimensions as u32).
        let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        if count.is_none_or(|c| c > MAX_ELEMENTS) || shape.iter().any(|&d| d > u32::MAX as usize) {
            return Err(err(
                name,
                &op,
                format!("the output shape {shape:?} has more than 2^40 elements"),
            ));
        }
        if !self.names.insert(name.to_string()) {
            return Err(GraphError::DuplicateName(name.to_string()));
        }
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
            shape,
        });
        Ok(Value(self.nodes.len() - 1))
    }

    fn check_inputs(&self, name: &str, inputs: &[Value]) -> Result<(), GraphError> {
        if inputs.iter().any(|v| v.0 >= self.nodes.len()) {
            return Err(GraphError::UnknownValue(name.to_string()));
        }
        Ok(())
    }

    /// The graph input, an NCHW (or N x features) tensor of a fixed shape.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Result<Value, GraphError> {
        if shape.is_empty() || shape.contains(&0) {
            return Err(err(
                name,
                &Op::Input,
                format!("input shape {shape:?} must be non-empty with no zero dimension"),
            ));
        }
        if self.input.is_some() {
            return Err(err(
                name,
                &Op::Input,
                "a graph has exactly one input".into(),
            ));
        }
        let v = self.push(name, Op::Input, vec![], shape.to_vec())?;
        self.input = Some(v);
        Ok(v)
    }

    fn nchw(&self, name: &str, op: &Op, x: Value) -> Result<[usize; 4], GraphError> {
        self.check_inputs(name, &[x])?;
        match *self.shape(x) {
            [n, c, h, w] => Ok([n, c, h, w]),
            ref s => Err(err(
                name,
                op,
                format!("expects an NCHW input, got shape {s:?}"),
            )),
        }
    }

    pub fn conv2d(&mut self, name: &str, x: Value, cfg: Conv2d) -> Result<Value, GraphError> {
        let op = Op::Conv2d(cfg.clone());
        let [n, c, h, w] = self.nchw(name, &op, x)?;
        let c_ = &cfg;
        let positive = [c_.kernel, c_.stride, c_.dilation]
            .iter()
            .flatten()
            .all(|&v| v > 0);
        small(
            name,
            &op,
            [c_.kernel, c_.stride, c_.padding, c_.dilation]
                .iter()
                .flatten(),
        )?;
        small(
            name,
            &op,
            [c_.groups, c_.out_channels, c_.in_channels].iter(),
        )?;
        if !positive || c_.groups == 0 || c_.out_channels == 0 {
            return Err(err(
                name,
                &op,
                "kernel, stride, dilation, groups and out_channels must be positive".into(),
            ));
        }
        if c != c_.in_channels {
            return Err(err(
                name,
                &op,
                format!(
                    "expects {} input channels, got {c} (input shape {:?})",
                    c_.in_channels,
                    self.shape(x)
                ),
            ));
        }
        if !c_.in_channels.is_multiple_of(c_.groups) || !c_.out_channels.is_multiple_of(c_.groups) {
            return Err(err(
                name,
                &op,
                format!(
                    "channels {}->{} are not divisible by groups {}",
                    c_.in_channels, c_.out_channels, c_.groups
                ),
            ));
        }
        let oh = conv_out(h, c_.kernel[0], c_.stride[0], c_.padding[0], c_.dilation[0]);
        let ow = conv_out(w, c_.kernel[1], c_.stride[1], c_.padding[1], c_.dilation[1]);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return Err(err(
                name,
                &op,
                format!(
                    "kernel {:?} (dilation {:?}) is larger than the padded input {h}x{w}",
                    c_.kernel, c_.dilation
                ),
            ));
        };
        self.push(name, op, vec![x], vec![n, c_.out_channels, oh, ow])
    }

    fn pool(&mut self, name: &str, x: Value, op: Op, p: &Pool2d) -> Result<Value, GraphError> {
        let [n, c, h, w] = self.nchw(name, &op, x)?;
        if p.kernel.contains(&0) || p.stride.contains(&0) {
            return Err(err(name, &op, "kernel and stride must be positive".into()));
        }
        small(name, &op, [p.kernel, p.stride, p.padding].iter().flatten())?;
        // padding <= kernel / 2, written so that a huge padding cannot overflow.
        if p.padding[0] > p.kernel[0] / 2 || p.padding[1] > p.kernel[1] / 2 {
            return Err(err(
                name,
                &op,
                format!(
                    "padding {:?} must be at most half the kernel {:?}",
                    p.padding, p.kernel
                ),
            ));
        }
        let oh = pool_out(h, p.kernel[0], p.stride[0], p.padding[0], p.ceil_mode);
        let ow = pool_out(w, p.kernel[1], p.stride[1], p.padding[1], p.ceil_mode);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return Err(err(
                name,
                &op,
                format!(
                    "kernel {:?} is larger than the padded input {h}x{w}",
                    p.kernel
                ),
            ));
        };
        self.push(name, op, vec![x], vec![n, c, oh, ow])
    }

    pub fn max_pool2d(&mut self, name: &str, x: Value, p: Pool2d) -> Result<Value, GraphError> {
        self.pool(name, x, Op::MaxPool2d(p.clone()), &p)
    }

    pub fn avg_pool2d(&mut self, name: &str, x: Value, p: Pool2d) -> Result<Value, GraphError> {
        self.pool(name, x, Op::AvgPool2d(p.clone()), &p)
    }

    pub fn adaptive_avg_pool2d(
        &mut self,
        name: &str,
        x: Value,
        output: [usize; 2],
    ) -> Result<Value, GraphError> {
        let op = Op::AdaptiveAvgPool2d { output };
        let [n, c, _, _] = self.nchw(name, &op, x)?;
        if output.contains(&0) {
            return Err(err(name, &op, "output size must be positive".into()));
        }
        self.push(name, op, vec![x], vec![n, c, output[0], output[1]])
    }

    pub fn local_response_norm(
        &mut self,
        name: &str,
        x: Value,
        lrn: Lrn,
    ) -> Result<Value, GraphError> {
        let op = Op::LocalResponseNorm(lrn.clone());
        let s = self.nchw(name, &op, x)?;
        if lrn.size == 0 {
            return Err(err(name, &op, "size must be positive".into()));
        }
        small(name, &op, [lrn.size].iter())?;
        self.push(name, op, vec![x], s.to_vec())
    }

    pub fn batch_norm2d(
        &mut self,
        name: &str,
        x: Value,
        channels: usize,
        eps: f32,
    ) -> Result<Value, GraphError> {
        let op = Op::BatchNorm2d(BatchNorm2d { channels, eps });
        let s = self.nchw(name, &op, x)?;
        if s[1] != channels {
            return Err(err(
                name,
                &op,
                format!("expects {channels} channels, got {}", s[1]),
            ));
        }
        self.push(name, op, vec![x], s.to_vec())
    }

    pub fn group_norm(
        &mut self,
        name: &str,
        x: Value,
        groups: usize,
        channels: usize,
        eps: f32,
        affine: bool,
    ) -> Result<Value, GraphError> {
        let op = Op::GroupNorm(GroupNorm {
            groups,
            channels,
            eps,
            affine,
        });
        let s = self.nchw(name, &op, x)?;
        if s[1] != channels {
            return Err(err(
                name,
                &op,
                format!("expects {channels} channels, got {}", s[1]),
            ));
        }
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(err(
                name,
                &op,
                format!("{channels} channels are not divisible into {groups} groups"),
            ));
        }
        self.push(name, op, vec![x], s.to_vec())
    }

    pub fn linear(
        &mut self,
        name: &str,
        x: Value,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Value, GraphError> {
        let op = Op::Linear(Linear {
            in_features,
            out_features,
            bias,
        });
        self.check_inputs(name, &[x])?;
        let s = self.shape(x).to_vec();
        if s.len() != 2 || s[1] != in_features {
            return Err(err(
                name,
                &op,
                format!("expects input [N, {in_features}], got {s:?}"),
            ));
        }
        if out_features == 0 {
            return Err(err(name, &op, "out_features must be positive".into()));
        }
        self.push(name, op, vec![x], vec![s[0], out_features])
    }

    pub fn relu(&mut self, name: &str, x: Value) -> Result<Value, GraphError> {
        self.check_inputs(name, &[x])?;
        let s = self.shape(x).to_vec();
        self.push(name, Op::Relu, vec![x], s)
    }

    pub fn add(&mut self, name: &str, a: Value, b: Value) -> Result<Value, GraphError> {
        self.check_inputs(name, &[a, b])?;
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa != sb {
            return Err(err(
                name,
                &Op::Add,
                format!("operand shapes differ: {sa:?} vs {sb:?} (no broadcasting)"),
            ));
        }
        self.push(name, Op::Add, vec![a, b], sa)
    }

    /// `torch.flatten(x, start_dim)`: dims from `start_dim` on become one.
    pub fn flatten(&mut self, name: &str, x: Value, start_dim: usize) -> Result<Value, GraphError> {
        let op = Op::Flatten { start_dim };
        self.check_inputs(name, &[x])?;
        let s = self.shape(x).to_vec();
        // Graphs are batch-major (plans and GPU batch chunks split on dim 0): the batch
        // dimension stays its own, as in every torchvision model (`flatten(x, 1)`).
        if start_dim == 0 || start_dim >= s.len() {
            return Err(err(
                name,
                &op,
                format!(
                    "start_dim {start_dim} must be in 1..{} for shape {s:?} (dim 0 is the batch)",
                    s.len()
                ),
            ));
        }
        let mut out = s[..start_dim].to_vec();
        out.push(s[start_dim..].iter().product());
        self.push(name, op, vec![x], out)
    }

    /// Identity at inference; kept so node names match PyTorch's module paths.
    pub fn dropout(&mut self, name: &str, x: Value) -> Result<Value, GraphError> {
        self.check_inputs(name, &[x])?;
        let s = self.shape(x).to_vec();
        self.push(name, Op::Dropout, vec![x], s)
    }

    pub fn softmax(&mut self, name: &str, x: Value, dim: usize) -> Result<Value, GraphError> {
        let op = Op::Softmax { dim };
        self.check_inputs(name, &[x])?;
        let s = self.shape(x).to_vec();
        if dim == 0 || dim >= s.len() {
            return Err(err(
                name,
                &op,
                format!(
                    "dim {dim} must be in 1..{} for shape {s:?} (dim 0 is the batch)",
                    s.len()
                ),
            ));
        }
        self.push(name, op, vec![x], s)
    }

    /// Finish with the given outputs; nodes they do not need are dropped.
    pub fn build(self, outputs: &[Value]) -> Result<Graph, GraphError> {
        let input = self.input.ok_or(GraphError::NoInput)?;
        if outputs.is_empty() {
            return Err(GraphError::NoOutputs);
        }
        if let Some(v) = outputs.iter().find(|v| v.0 >= self.nodes.len()) {
            return Err(GraphError::UnknownValue(format!("output #{}", v.0)));
        }
        let g = Graph {
            nodes: self.nodes,
            input,
            outputs: vec![],
        };
        Ok(g.pruned(outputs.to_vec()))
    }
}

/// Parameters past u32 are errors: the GPU kernels take them as u32, and no real
/// layer comes near.
fn small<'a>(name: &str, op: &Op, vals: impl Iterator<Item = &'a usize>) -> Result<(), GraphError> {
    match vals.copied().find(|&v| v > u32::MAX as usize) {
        Some(v) => Err(err(name, op, format!("parameter {v} is beyond 2^32 - 1"))),
        None => Ok(()),
    }
}

fn err(node: &str, op: &Op, msg: String) -> GraphError {
    GraphError::Shape {
        node: node.to_string(),
        op: op.kind(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_and_batch_mixing_are_errors_not_overflows() {
        let mut b = GraphBuilder::new();
        let e = b.input("x", &[usize::MAX, 2, 4, 4]).unwrap_err();
        assert!(e.to_string().contains("more than 2^40 elements"), "{e}");
        let x = b.input("x2", &[1, 2, 8, 8]).unwrap();
        let huge = Conv2d::new(2, 2, 3).padding(usize::MAX / 2);
        assert!(b.conv2d("c", x, huge).is_err());
        let wide = Conv2d::new(2, 2, usize::MAX).dilation(2);
        assert!(b.conv2d("c2", x, wide).is_err());
        let p = Pool2d::new(3).padding(1).stride(u32::MAX as usize);
        let pooled = b.max_pool2d("p", x, p).unwrap();
        assert_eq!(b.shape(pooled), [1, 2, 1, 1]);
        let e = b
            .max_pool2d("p2", x, Pool2d::new(3).stride(usize::MAX))
            .unwrap_err();
        assert!(e.to_string().contains("beyond 2^32 - 1"), "{e}");
        for e in [
            b.flatten("f", x, 0).unwrap_err(),
            b.softmax("s", x, 0).unwrap_err(),
        ] {
            assert!(e.to_string().contains("dim 0 is the batch"), "{e}");
        }
    }

    #[test]
    fn shapes_follow_pytorch() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[2, 3, 224, 224]).unwrap();
        let c = b
            .conv2d(
                "conv1",
                x,
                Conv2d::new(3, 64, 7).stride(2).padding(3).bias(false),
            )
            .unwrap();
        assert_eq!(b.shape(c), [2, 64, 112, 112]);
        let p = b
            .max_pool2d("maxpool", c, Pool2d::new(3).stride(2).padding(1))
            .unwrap();
        assert_eq!(b.shape(p), [2, 64, 56, 56]);
        let a = b.adaptive_avg_pool2d("avgpool", p, [1, 1]).unwrap();
        let f = b.flatten("flatten", a, 1).unwrap();
        assert_eq!(b.shape(f), [2, 64]);
        let fc = b.linear("fc", f, 64, 10, true).unwrap();
        let g = b.build(&[fc]).unwrap();
        assert_eq!(g.shape(g.outputs()[0]), [2, 10]);
        let names: Vec<_> = g.params().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["conv1.weight", "fc.weight", "fc.bias"]);
    }

    #[test]
    fn bad_graphs_are_errors_naming_the_node() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 3, 8, 8]).unwrap();
        let e = b.conv2d("features.0", x, Conv2d::new(4, 8, 3)).unwrap_err();
        assert!(
            e.to_string().contains("features.0") && e.to_string().contains("4 input channels"),
            "{e}"
        );
        let e = b.conv2d("c", x, Conv2d::new(3, 8, 11)).unwrap_err();
        assert!(matches!(e, GraphError::Shape { .. }), "{e}");
        let e = b
            .conv2d("g", x, Conv2d::new(3, 8, 3).groups(2))
            .unwrap_err();
        assert!(e.to_string().contains("divisible"), "{e}");
        let e = b.linear("fc", x, 192, 10, true).unwrap_err();
        assert!(e.to_string().contains("fc"), "{e}");
        let e = b
            .max_pool2d("pool", x, Pool2d::new(3).padding(2))
            .unwrap_err();
        assert!(e.to_string().contains("half the kernel"), "{e}");
        let c = b.conv2d("c1", x, Conv2d::new(3, 8, 3)).unwrap();
        let e = b.add("add", x, c).unwrap_err();
        assert!(e.to_string().contains("add"), "{e}");
        assert_eq!(
            b.relu("c1", c).unwrap_err(),
            GraphError::DuplicateName("c1".into())
        );
        let e = b.group_norm("gn", c, 3, 8, 1e-5, true).unwrap_err();
        assert!(e.to_string().contains("gn"), "{e}");
    }

    #[test]
    fn with_outputs_prunes_to_the_requested_features() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[1, 3, 8, 8]).unwrap();
        let c = b.conv2d("c", x, Conv2d::new(3, 4, 3)).unwrap();
        let r = b.relu("r", c).unwrap();
        let f = b.flatten("f", r, 1).unwrap();
        let g = b.build(&[f]).unwrap();
        let h = g.with_outputs(&["c"]).unwrap();
        assert_eq!(h.nodes().len(), 2);
        assert_eq!(h.shape(h.outputs()[0]), [1, 4, 6, 6]);
        let e = g.with_outputs(&["rr"]).unwrap_err();
        assert_eq!(
            e,
            GraphError::UnknownNode("rr".into(), vec!["r".into(), "c".into(), "f".into()])
        );
        assert_eq!(
            e.to_string(),
            "no node named 'rr' in the graph; nearest: r, c, f"
        );
    }
}
