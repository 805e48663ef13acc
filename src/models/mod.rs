//! The model zoo: every backbone as a graph whose node names are PyTorch's module paths,
//! so state-dict keys, feature names and error messages all speak the user's names.

mod alexnet;
mod config;
mod resnet;
mod vgg;

pub use config::HubConfig;
pub use resnet::{Variant as ResNetVariant, Width as ResNetWidth};

use crate::graph::{Graph, GraphBuilder, GraphError, Op};
use std::sync::Arc;

pub use crate::preprocess::{CropMode, Interpolation, Preprocess};

/// torchvision's ImageNet eval transform: `Resize(256)` + `CenterCrop(224)`, bilinear.
pub fn imagenet() -> Preprocess {
    Preprocess::resize_crop(256, 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
}

/// The names of a classifier's classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Labels {
    ImageNet1k,
    Cifar10,
    /// `class 0` .. `class N-1`: a head of another size, with no names given.
    Numbered(usize),
    /// The user's own names (a fine-tuned head), one per class.
    Custom(Arc<[String]>),
}

impl Labels {
    pub fn names(&self) -> Vec<String> {
        match self {
            Labels::ImageNet1k => include_str!("imagenet_classes.txt")
                .lines()
                .map(String::from)
                .collect(),
            Labels::Cifar10 => include_str!("cifar10_classes.txt")
                .lines()
                .map(String::from)
                .collect(),
            Labels::Numbered(n) => (0..*n).map(|i| format!("class {i}")).collect(),
            Labels::Custom(v) => v.to_vec(),
        }
    }
    /// The label set's name: `imagenet1k`, `cifar10`, `numbered` or `custom`.
    pub fn id(&self) -> &'static str {
        match self {
            Labels::ImageNet1k => "imagenet1k",
            Labels::Cifar10 => "cifar10",
            Labels::Numbered(_) => "numbered",
            Labels::Custom(_) => "custom",
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Labels::ImageNet1k => 1000,
            Labels::Cifar10 => 10,
            Labels::Numbered(n) => *n,
            Labels::Custom(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Labels from a file's text: one per line; a JSON array of names; a JSON object of
    /// index to name (`{"0": "cat", ...}`, every index once); or a timm `config.json`
    /// (`label_names`, at the top or under `model_args`).
    pub fn parse(text: &str) -> Result<Labels, LabelsError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let trimmed = text.trim_start();
        let names: Vec<String> = if trimmed.starts_with('[') || trimmed.starts_with('{') {
            let j: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| LabelsError::Format(format!("not valid JSON: {e}")))?;
            from_json(&j)?
        } else {
            // One per line; blank lines at the end are not classes.
            let mut v: Vec<String> = text.lines().map(String::from).collect();
            while v.last().is_some_and(|l| l.trim().is_empty()) {
                v.pop();
            }
            v
        };
        if names.is_empty() {
            return Err(LabelsError::Format("no labels in it".into()));
        }
        if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
            return Err(LabelsError::Format(format!("label {i} is empty")));
        }
        Ok(Labels::Custom(names.into()))
    }
}

/// Names from parsed JSON: an array, an index map, or timm's config.
fn from_json(j: &serde_json::Value) -> Result<Vec<String>, LabelsError> {
    use serde_json::Value as J;
    let strings = |a: &Vec<J>| {
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| LabelsError::Format(format!("label {i} is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    match j {
        J::Array(a) => strings(a),
        J::Object(o) => {
            // timm's config.json: label_names under model_args (or at the top).
            for names in [o.get("label_names"), j.pointer("/model_args/label_names")]
                .into_iter()
                .flatten()
            {
                if let J::Array(a) = names {
                    return strings(a);
                }
            }
            if o.contains_key("architecture") || o.contains_key("pretrained_cfg") {
                return Err(LabelsError::Format(
                    "the config.json has no label_names".into(),
                ));
            }
            let mut v: Vec<Option<String>> = vec![None; o.len()];
            for (k, name) in o {
                let i: usize = k
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&i| i < o.len())
                    .ok_or_else(|| {
                        LabelsError::Format(format!(
                            "key '{k}' is not a class index 0..{}",
                            o.len()
                        ))
                    })?;
                let name = name
                    .as_str()
                    .ok_or_else(|| LabelsError::Format(format!("label {i} is not a string")))?;
                v[i] = Some(name.to_string());
            }
            // Every index in 0..len once: a gap would leave a class unnamed.
            v.into_iter()
                .enumerate()
                .map(|(i, n)| {
                    n.ok_or_else(|| LabelsError::Format(format!("no label for class {i}")))
                })
                .collect()
        }
        _ => Err(LabelsError::Format(
            "expected a JSON array of names or an object of index to name".into(),
        )),
    }
}

/// A label file that cannot serve the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    #[error("labels: {0}")]
    Format(String),
    #[error("{labels} labels for a head of {classes} classes")]
    Count { labels: usize, classes: usize },
    #[error("labels given, but the weights have no classifier (a feature extractor)")]
    NoClassifier,
}

/// What the model's graph ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// A classifier of this many classes (>= 1).
    Classes(usize),
    /// The classifier's last linear layer removed (`fc = Identity()`, timm's
    /// `num_classes=0`): the output is what it would have read. For ResNet the pooled
    /// vector; for VGG and AlexNet the ReLU after the second 4096-wide layer.
    Headless,
    /// The whole classifier removed: the pooled, flattened feature map.
    Pooled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    AlexNet,
    AlexNetLrn,
    Vgg {
        depth: usize,
        bn: bool,
        cifar: bool,
    },
    ResNet {
        depth: usize,
        variant: ResNetVariant,
        width: ResNetWidth,
    },
    /// An ONNX file's graph ([`Model::imported`]).
    Onnx,
}

/// An imported ONNX model behind a [`Model`]; two are equal when they are the same import.
#[derive(Clone)]
pub struct Imported(pub Arc<crate::onnx::OnnxModel>);

impl PartialEq for Imported {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One feature level: a node, its channels and its reduction (input size / map size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureLevel {
    pub node: String,
    pub channels: usize,
    pub reduction: usize,
}

/// One model id of the zoo.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub id: String,
    family: Family,
    /// Default input: channels, height, width.
    pub input: [usize; 3],
    /// What the graph ends in: the id's own classifier unless weights said otherwise
    /// ([`Model::fit_head`]).
    pub head: Head,
    /// One per class of the head (none when headless).
    pub labels: Labels,
    pub preprocess: Preprocess,
    /// The ONNX model whose graph this is, for a model read from an `.onnx` file.
    pub imported: Option<Imported>,
    /// The graph ends in a softmax (some ONNX files do): its outputs are probabilities.
    pub softmax_output: bool,
}

/// Every model id, in the golden README's order.
pub fn ids() -> Vec<String> {
    let mut v = vec!["alexnet".to_string(), "alexnet_lrn".to_string()];
    for cifar in ["", "_cifar"] {
        for d in [11, 13, 16, 19] {
            for bn in ["", "_bn"] {
                v.push(format!("vgg{d}{bn}{cifar}"));
            }
        }
    }
    for suffix in ["", "_caffe"] {
        for d in [18, 34, 50, 101, 152] {
            v.push(format!("resnet{d}{suffix}"));
        }
    }
    v.extend(["resnet50_gn".to_string(), "resnet101_gn".to_string()]);
    v.extend(
        [
            "resnext50_32x4d",
            "resnext101_32x8d",
            "resnext101_64x4d",
            "wide_resnet50_2",
            "wide_resnet101_2",
        ]
        .map(String::from),
    );
    v
}

/// Blocks per stage of a bottleneck depth (50, 101, 152): ResNeXt and Wide ResNet have no
/// basic-block form.
fn bottleneck(depth: usize) -> Option<[usize; 4]> {
    match resnet::layers(depth)? {
        (resnet::Block::Bottleneck, counts) => Some(counts),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model '{0}' (try `webcnn models`)")]
pub struct UnknownModel(pub String);

impl Model {
    pub fn get(id: &str) -> Result<Model, UnknownModel> {
        let unknown = || UnknownModel(id.to_string());
        let family = if id == "alexnet" {
            Family::AlexNet
        } else if id == "alexnet_lrn" {
            Family::AlexNetLrn
        } else if let Some(rest) = id.strip_prefix("vgg") {
            let (rest, cifar) = rest
                .strip_suffix("_cifar")
                .map_or((rest, false), |r| (r, true));
            let (depth, bn) = rest
                .strip_suffix("_bn")
                .map_or((rest, false), |r| (r, true));
            let depth: usize = depth.parse().map_err(|_| unknown())?;
            vgg::cfg(depth).ok_or_else(unknown)?;
            Family::Vgg { depth, bn, cifar }
        } else if let Some(rest) = id.strip_prefix("resnet") {
            let (depth, variant) = match rest.split_once('_') {
                None => (rest, ResNetVariant::Torchvision),
                Some((d, "caffe")) => (d, ResNetVariant::Caffe),
                Some((d @ ("50" | "101"), "gn")) => (d, ResNetVariant::GroupNorm),
                _ => return Err(unknown()),
            };
            let depth: usize = depth.parse().map_err(|_| unknown())?;
            resnet::layers(depth).ok_or_else(unknown)?;
            Family::ResNet {
                depth,
                variant,
                width: ResNetWidth::PLAIN,
            }
        } else if let Some(rest) = id.strip_prefix("resnext") {
            // resnext{depth}_{groups}x{width per group}d, on a bottleneck depth.
            let (depth, gw) = rest.split_once('_').ok_or_else(unknown)?;
            let (g, w) = gw
                .strip_suffix('d')
                .and_then(|s| s.split_once('x'))
                .ok_or_else(unknown)?;
            let num = |s: &str| s.parse::<usize>().ok().filter(|&v| (1..=1024).contains(&v));
            let (depth, groups, per_group) = (
                depth.parse().map_err(|_| unknown())?,
                num(g).ok_or_else(unknown)?,
                num(w).ok_or_else(unknown)?,
            );
            bottleneck(depth).ok_or_else(unknown)?;
            Family::ResNet {
                depth,
                variant: ResNetVariant::Torchvision,
                width: ResNetWidth { groups, per_group },
            }
        } else if let Some(rest) = id.strip_prefix("wide_resnet") {
            // wide_resnet{depth}_{factor}: the bottleneck's width times factor.
            let (depth, k) = rest.split_once('_').ok_or_else(unknown)?;
            let depth: usize = depth.parse().map_err(|_| unknown())?;
            let k: usize = k
                .parse()
                .ok()
                .filter(|&k| (1..=16).contains(&k))
                .ok_or_else(unknown)?;
            bottleneck(depth).ok_or_else(unknown)?;
            Family::ResNet {
                depth,
                variant: ResNetVariant::Torchvision,
                width: ResNetWidth {
                    groups: 1,
                    per_group: 64 * k,
                },
            }
        } else {
            return Err(unknown());
        };
        let (input, labels, preprocess) = match family {
            Family::AlexNetLrn => (
                [3, 227, 227],
                Labels::ImageNet1k,
                Preprocess::resize_crop(256, 227, imagenet().mean, imagenet().std),
            ),
            Family::Vgg { cifar: true, .. } => (
                [3, 32, 32],
                Labels::Cifar10,
                Preprocess::resize_crop(32, 32, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
            ),
            _ => ([3, 224, 224], Labels::ImageNet1k, imagenet()),
        };
        Ok(Model {
            id: id.to_string(),
            family,
            input,
            head: Head::Classes(labels.len()),
            labels,
            preprocess,
            imported: None,
            softmax_output: false,
        })
    }

    /// The model of an ONNX file, named `id`: its graph and input size are the file's, its
    /// head the classes of a `[N, classes]` output (ImageNet's names for 1000 of them,
    /// numbers else; another output is a feature extractor's), the transform ImageNet's
    /// at the input's size.
    pub fn from_onnx(id: &str, m: Arc<crate::onnx::OnnxModel>) -> Result<Model, crate::Error> {
        let shape = m.input_shape(1);
        let g = m.graph(&shape)?;
        let out = g.outputs()[0];
        let softmax_output = matches!(g.node(out).op, Op::Softmax { .. });
        let head = match g.shape(out) {
            [_, k] => Head::Classes(*k),
            _ => Head::Pooled,
        };
        let labels = match head {
            Head::Classes(1000) => Labels::ImageNet1k,
            Head::Classes(n) => Labels::Numbered(n),
            _ => Labels::Numbered(0),
        };
        let mut preprocess = imagenet();
        preprocess.size = [shape[2], shape[3]];
        Ok(Model {
            id: id.to_string(),
            family: Family::Onnx,
            input: [shape[1], shape[2], shape[3]],
            head,
            labels,
            preprocess,
            imported: Some(Imported(m)),
            softmax_output,
        })
    }

    /// Classes of the head; 0 for a feature extractor.
    pub fn num_classes(&self) -> usize {
        match self.head {
            Head::Classes(n) => n,
            _ => 0,
        }
    }

    pub fn has_classifier(&self) -> bool {
        matches!(self.head, Head::Classes(_))
    }

    /// The classifier's module path, whose `.weight` is `[classes, features]`: `fc` for
    /// ResNets, `classifier.6` for VGG and AlexNet (timm's `head.fc` is mapped to it).
    pub fn classifier(&self) -> &'static str {
        match self.family {
            Family::ResNet { .. } => "fc",
            _ => "classifier.6",
        }
    }

    /// The same model with a head of `head`; the id's own labels where the class count is
    /// theirs, else `class 0` .. `class N-1`. `Classes(0)` is `Headless`.
    pub fn with_head(mut self, head: Head) -> Model {
        let builtin = Model::get(&self.id).map(|m| m.labels).ok();
        self.head = match head {
            Head::Classes(0) => Head::Headless,
            h => h,
        };
        self.labels = match (self.head, builtin) {
            (Head::Classes(n), Some(l)) if l.len() == n => l,
            (Head::Classes(n), _) => Labels::Numbered(n),
            _ => Labels::Numbered(0),
        };
        self
    }

    /// The head the `weights` (a state dict, timm's keys already mapped) hold: the class
    /// count from the classifier's weight, any count >= 1; without classifier keys a
    /// feature extractor. Shapes are checked later, against the graph ([`crate::weights::check`]).
    pub fn fit_head(self, weights: &crate::weights::TensorMap) -> Model {
        let shapes = weights
            .iter()
            .map(|(k, t)| (k.clone(), t.shape().to_vec()))
            .collect();
        self.fit_head_to(&shapes)
    }

    /// [`Model::fit_head`] from the tensors' shapes alone (a file's header, before its data).
    pub fn fit_head_to(self, shapes: &std::collections::HashMap<String, Vec<usize>>) -> Model {
        let key = format!("{}.weight", self.classifier());
        let head = match shapes.get(&key).map(Vec::as_slice) {
            Some(&[n, _]) if n > 0 => Head::Classes(n),
            // A mis-shaped classifier keeps the id's head, for the check to name.
            Some(_) => self.head,
            None if shapes.contains_key(&format!("{}.bias", self.classifier())) => self.head,
            None => {
                let mut rest = shapes.keys().filter(|k| k.starts_with("classifier."));
                match self.family {
                    Family::ResNet { .. } => Head::Headless,
                    _ if rest.next().is_some() => Head::Headless,
                    _ => Head::Pooled,
                }
            }
        };
        self.with_head(head)
    }

    /// Names for the head's classes; their count must be the head's.
    pub fn with_labels(mut self, labels: Labels) -> Result<Model, LabelsError> {
        match self.head {
            Head::Classes(n) if n == labels.len() => {
                self.labels = labels;
                Ok(self)
            }
            Head::Classes(n) => Err(LabelsError::Count {
                labels: labels.len(),
                classes: n,
            }),
            _ => Err(LabelsError::NoClassifier),
        }
    }

    /// The graph for an NCHW input shape; the model's constraints on it (e.g. the seed's
    /// AlexNet needs 227x227, the CIFAR VGG 32x32) surface as a `GraphError` naming the layer.
    pub fn graph(&self, input_shape: &[usize]) -> Result<Graph, GraphError> {
        if let Some(Imported(m)) = &self.imported {
            // Every node was checked when the file was read: what fails now is the shape.
            return m.graph(input_shape).map_err(|e| match e {
                crate::onnx::OnnxError::Graph { source, .. } => source,
                e => GraphError::Shape {
                    node: self.id.clone(),
                    op: "ONNX",
                    msg: e.to_string(),
                },
            });
        }
        let mut b = GraphBuilder::new();
        let x = b.input("x", input_shape)?;
        // A headless model is the full graph cut before its classifier.
        let k = self.num_classes().max(1);
        let y = match self.family {
            Family::AlexNet => alexnet::alexnet(&mut b, x, k)?,
            Family::AlexNetLrn => alexnet::alexnet_lrn(&mut b, x, k)?,
            Family::Vgg {
                depth,
                bn,
                cifar: false,
            } => vgg::vgg(&mut b, x, vgg::cfg(depth).expect("checked"), bn, k)?,
            Family::Vgg {
                depth,
                bn,
                cifar: true,
            } => vgg::vgg_cifar(&mut b, x, vgg::cfg(depth).expect("checked"), bn, k)?,
            Family::ResNet {
                depth,
                variant,
                width,
            } => resnet::resnet(&mut b, x, depth, variant, width, k)?,
            Family::Onnx => unreachable!("an imported model's graph is built above"),
        };
        let g = b.build(&[y])?;
        match self.head {
            Head::Classes(_) => Ok(g),
            Head::Headless => {
                let fc = g
                    .find(self.classifier())
                    .expect("every head has a classifier");
                let before = g.node(g.node(fc).inputs[0]).name.clone();
                g.with_outputs(&[&before])
            }
            Head::Pooled => g.with_outputs(&[&self.pooled_node_of(&g)]),
        }
    }

    /// `flatten`, or `view` in the seed's CIFAR and LRN models.
    fn pooled_node_of(&self, g: &Graph) -> String {
        // An imported graph's names are the file's: its last flatten.
        if self.family == Family::Onnx {
            let flat = g
                .nodes()
                .iter()
                .rev()
                .find(|n| matches!(n.op, Op::Flatten { .. }));
            if let Some(n) = flat {
                return n.name.clone();
            }
        }
        ["flatten", "view"]
            .into_iter()
            .find(|n| g.find(n).is_some())
            .unwrap_or("flatten")
            .to_string()
    }

    /// The graph at the default input size with batch `n` (an ONNX file's own batch where it
    /// fixes one).
    pub fn default_graph(&self, n: usize) -> Graph {
        let [c, h, w] = self.input;
        let shape = match &self.imported {
            Some(Imported(m)) => m.input_shape(n),
            None => vec![n, c, h, w],
        };
        self.graph(&shape)
            .expect("every model builds at its default size")
    }

    /// Learnable parameters (as `sum(p.numel() for p in model.parameters())`).
    pub fn param_count(&self) -> usize {
        self.default_graph(1)
            .params()
            .iter()
            .filter(|p| !p.name.ends_with("running_mean") && !p.name.ends_with("running_var"))
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Multiply-accumulates of one image at the default input size.
    pub fn macs(&self) -> u64 {
        self.default_graph(1).macs()
    }

    /// timm-style feature levels at the default input size: ResNet `relu` (stride 2) and
    /// `layer1`..`layer4` (strides 4..32); VGG / AlexNet the ReLU before each max-pool.
    pub fn feature_levels(&self) -> Vec<FeatureLevel> {
        let g = self.default_graph(1);
        let nodes: Vec<String> = match self.family {
            Family::ResNet { .. } => ["relu", "layer1", "layer2", "layer3", "layer4"]
                .map(String::from)
                .to_vec(),
            _ => {
                let ns = g.nodes();
                (1..ns.len())
                    .filter(|&i| matches!(ns[i].op, Op::MaxPool2d(_)))
                    .map(|i| ns[i - 1].name.clone())
                    .collect()
            }
        };
        nodes
            .into_iter()
            .filter_map(|node| {
                let s = g.shape(g.find(&node)?);
                Some(FeatureLevel {
                    channels: s[1],
                    reduction: self.input[1] / s[2].max(1),
                    node,
                })
            })
            .collect()
    }

    /// The node holding the pooled feature vector (the flattened input of the classifier):
    /// `flatten`, or `view` in the seed's CIFAR and LRN models.
    pub fn pooled_node(&self) -> String {
        self.pooled_node_of(&self.default_graph(1))
    }

    /// Stage outputs a user may ask for as features (torchvision node names).
    pub fn feature_nodes(&self) -> Vec<String> {
        let g = self.default_graph(1);
        let all: Vec<String> = match self.family {
            Family::ResNet { .. } => [
                "relu", "layer1", "layer2", "layer3", "layer4", "flatten", "fc",
            ]
            .map(String::from)
            .to_vec(),
            _ => {
                // The node before each max-pool, then the head.
                let nodes = g.nodes();
                let mut v: Vec<String> = (1..nodes.len())
                    .filter(|&i| matches!(nodes[i].op, Op::MaxPool2d(_)))
                    .map(|i| nodes[i - 1].name.clone())
                    .collect();
                let head: &[&str] = match self.family {
                    Family::Vgg { cifar: false, .. } => {
                        &["avgpool", "classifier.4", "classifier.6"]
                    }
                    Family::AlexNet => &["avgpool", "classifier.5", "classifier.6"],
                    Family::Onnx => &[],
                    _ => &["classifier.5", "classifier.6"],
                };
                v.extend(head.iter().map(|s| s.to_string()));
                if self.family == Family::Onnx {
                    v.extend(g.outputs().iter().map(|&o| g.node(o).name.clone()));
                }
                v
            }
        };
        // Those a headless model still has.
        all.into_iter().filter(|n| g.find(n).is_some()).collect()
    }
}
