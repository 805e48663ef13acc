//! The model zoo: every backbone as a graph whose node names are PyTorch's module paths,
//! so state-dict keys, feature names and error messages all speak the user's names.

mod alexnet;
mod resnet;
mod vgg;

pub use resnet::Variant as ResNetVariant;

use crate::graph::{Graph, GraphBuilder, GraphError, Op};

/// How images are prepared for a model (torchvision's eval transforms).
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Resize the shorter side to this many pixels (bilinear, antialiased).
    pub resize: usize,
    /// Then center-crop to `crop` x `crop`.
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

const IMAGENET: Preprocess = Preprocess {
    resize: 256,
    crop: 224,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Labels {
    ImageNet1k,
    Cifar10,
}

impl Labels {
    pub fn names(self) -> Vec<&'static str> {
        match self {
            Labels::ImageNet1k => include_str!("imagenet_classes.txt").lines().collect(),
            Labels::Cifar10 => include_str!("cifar10_classes.txt").lines().collect(),
        }
    }
    /// The label set's name: `imagenet1k` or `cifar10`.
    pub fn id(self) -> &'static str {
        match self {
            Labels::ImageNet1k => "imagenet1k",
            Labels::Cifar10 => "cifar10",
        }
    }
    pub fn len(self) -> usize {
        match self {
            Labels::ImageNet1k => 1000,
            Labels::Cifar10 => 10,
        }
    }
    pub fn is_empty(self) -> bool {
        false
    }
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
    },
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
    pub labels: Labels,
    pub preprocess: Preprocess,
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
    v
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
            Family::ResNet { depth, variant }
        } else {
            return Err(unknown());
        };
        let (input, labels, preprocess) = match family {
            Family::AlexNetLrn => (
                [3, 227, 227],
                Labels::ImageNet1k,
                Preprocess {
                    crop: 227,
                    ..IMAGENET
                },
            ),
            Family::Vgg { cifar: true, .. } => (
                [3, 32, 32],
                Labels::Cifar10,
                Preprocess {
                    resize: 32,
                    crop: 32,
                    mean: [0.4914, 0.4822, 0.4465],
                    std: [0.2470, 0.2435, 0.2616],
                },
            ),
            _ => ([3, 224, 224], Labels::ImageNet1k, IMAGENET),
        };
        Ok(Model {
            id: id.to_string(),
            family,
            input,
            labels,
            preprocess,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }

    /// The graph for an NCHW input shape; the model's constraints on it (e.g. the seed's
    /// AlexNet needs 227x227, the CIFAR VGG 32x32) surface as a `GraphError` naming the layer.
    pub fn graph(&self, input_shape: &[usize]) -> Result<Graph, GraphError> {
        let mut b = GraphBuilder::new();
        let x = b.input("x", input_shape)?;
        let k = self.num_classes();
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
            Family::ResNet { depth, variant } => resnet::resnet(&mut b, x, depth, variant, k)?,
        };
        b.build(&[y])
    }

    /// The graph at the default input size with batch `n`.
    pub fn default_graph(&self, n: usize) -> Graph {
        let [c, h, w] = self.input;
        self.graph(&[n, c, h, w])
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
        let g = self.default_graph(1);
        ["flatten", "view"]
            .into_iter()
            .find(|n| g.find(n).is_some())
            .unwrap_or("flatten")
            .to_string()
    }

    /// Stage outputs a user may ask for as features (torchvision node names).
    pub fn feature_nodes(&self) -> Vec<String> {
        let g = self.default_graph(1);
        match self.family {
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
                    _ => &["classifier.5", "classifier.6"],
                };
                v.extend(head.iter().map(|s| s.to_string()));
                v
            }
        }
    }
}
