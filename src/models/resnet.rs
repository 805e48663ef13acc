//! ResNet, read against `torchvision/models/resnet.py`: torchvision's v1.5 (stride on
//! the 3x3 conv), the seed's caffe-style variant (stride on the first 1x1 conv of
//! layer2-4, max-pool k3 s2 p0 with ceil_mode) and the seed's GroupNorm(32, C) variant.
//! torchvision's ResNeXt and Wide ResNet are the same bottleneck with grouped or wider 3x3
//! convolutions (`groups`, `width_per_group`).
//! Node names are torchvision's feature-extraction names (`layer1.0.relu_1`, ...).

use crate::graph::{Conv2d, GraphBuilder, GraphError, Pool2d, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Basic,
    Bottleneck,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Torchvision,
    Caffe,
    GroupNorm,
}

/// Block type and blocks per stage for a depth.
pub fn layers(depth: usize) -> Option<(Block, [usize; 4])> {
    Some(match depth {
        18 => (Block::Basic, [2, 2, 2, 2]),
        34 => (Block::Basic, [3, 4, 6, 3]),
        50 => (Block::Bottleneck, [3, 4, 6, 3]),
        101 => (Block::Bottleneck, [3, 4, 23, 3]),
        152 => (Block::Bottleneck, [3, 8, 36, 3]),
        _ => return None,
    })
}

/// The bottleneck's 3x3 convolution: `groups` groups of `width_per_group` channels per 64
/// planes (ResNet 1 x 64, ResNeXt-50 32x4d 32 x 4, Wide ResNet-50-2 1 x 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Width {
    pub groups: usize,
    pub per_group: usize,
}

impl Width {
    pub const PLAIN: Width = Width {
        groups: 1,
        per_group: 64,
    };
    /// The bottleneck's inner width for `planes` (torchvision's
    /// `int(planes * (base_width / 64.0)) * groups`).
    fn of(self, planes: usize) -> usize {
        planes * self.per_group / 64 * self.groups
    }
}

struct Net<'a> {
    b: &'a mut GraphBuilder,
    variant: Variant,
    width: Width,
}

impl Net<'_> {
    /// A bias-free `k` x `k` convolution padded to keep the size at stride 1.
    fn conv(
        &mut self,
        name: &str,
        x: Value,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> Result<Value, GraphError> {
        self.grouped(name, x, cin, cout, (k, stride, 1))
    }

    fn grouped(
        &mut self,
        name: &str,
        x: Value,
        cin: usize,
        cout: usize,
        (k, stride, groups): (usize, usize, usize),
    ) -> Result<Value, GraphError> {
        let cfg = Conv2d::new(cin, cout, k)
            .stride(stride)
            .padding(k / 2)
            .groups(groups)
            .bias(false);
        self.b.conv2d(name, x, cfg)
    }

    fn norm(&mut self, name: &str, x: Value, c: usize) -> Result<Value, GraphError> {
        match self.variant {
            Variant::GroupNorm => self.b.group_norm(name, x, 32, c, 1e-5, true),
            _ => self.b.batch_norm2d(name, x, c, 1e-5),
        }
    }

    fn block(
        &mut self,
        p: &str,
        x: Value,
        kind: Block,
        cin: usize,
        planes: usize,
        stride: usize,
    ) -> Result<(Value, usize), GraphError> {
        let expansion = if kind == Block::Basic { 1 } else { 4 };
        let cout = planes * expansion;
        let out = match kind {
            Block::Basic => {
                let y = self.conv(&format!("{p}.conv1"), x, cin, planes, 3, stride)?;
                let y = self.norm(&format!("{p}.bn1"), y, planes)?;
                let y = self.b.relu(&format!("{p}.relu"), y)?;
                let y = self.conv(&format!("{p}.conv2"), y, planes, planes, 3, 1)?;
                self.norm(&format!("{p}.bn2"), y, planes)?
            }
            Block::Bottleneck => {
                // torchvision puts the stride on conv2 (v1.5); caffe on conv1.
                let (s1, s2) = if self.variant == Variant::Caffe {
                    (stride, 1)
                } else {
                    (1, stride)
                };
                let width = self.width.of(planes);
                let groups = self.width.groups;
                let y = self.conv(&format!("{p}.conv1"), x, cin, width, 1, s1)?;
                let y = self.norm(&format!("{p}.bn1"), y, width)?;
                let y = self.b.relu(&format!("{p}.relu"), y)?;
                let y = self.grouped(&format!("{p}.conv2"), y, width, width, (3, s2, groups))?;
                let y = self.norm(&format!("{p}.bn2"), y, width)?;
                let y = self.b.relu(&format!("{p}.relu_1"), y)?;
                let y = self.conv(&format!("{p}.conv3"), y, width, cout, 1, 1)?;
                self.norm(&format!("{p}.bn3"), y, cout)?
            }
        };
        let identity = if stride != 1 || cin != cout {
            let d = self.conv(&format!("{p}.downsample.0"), x, cin, cout, 1, stride)?;
            self.norm(&format!("{p}.downsample.1"), d, cout)?
        } else {
            x
        };
        let y = self.b.add(&format!("{p}.add"), out, identity)?;
        let last_relu = if kind == Block::Basic {
            "relu_1"
        } else {
            "relu_2"
        };
        Ok((self.b.relu(&format!("{p}.{last_relu}"), y)?, cout))
    }
}

pub fn resnet(
    b: &mut GraphBuilder,
    x: Value,
    depth: usize,
    variant: Variant,
    width: Width,
    num_classes: usize,
) -> Result<Value, GraphError> {
    let (kind, counts) =
        layers(depth).ok_or_else(|| GraphError::UnknownNode(format!("resnet{depth}"), vec![]))?;
    let mut n = Net { b, variant, width };
    let x = n.conv("conv1", x, 3, 64, 7, 2)?;
    let x = n.norm("bn1", x, 64)?;
    let x = n.b.relu("relu", x)?;
    let pool = match variant {
        Variant::Caffe => Pool2d::new(3).stride(2).ceil_mode(true),
        _ => Pool2d::new(3).stride(2).padding(1),
    };
    let mut x = n.b.max_pool2d("maxpool", x, pool)?;
    let mut c = 64;
    for (i, &count) in counts.iter().enumerate() {
        let planes = 64 << i;
        for j in 0..count {
            let stride = if i > 0 && j == 0 { 2 } else { 1 };
            (x, c) = n.block(&format!("layer{}.{j}", i + 1), x, kind, c, planes, stride)?;
        }
    }
    let x = n.b.adaptive_avg_pool2d("avgpool", x, [1, 1])?;
    let x = n.b.flatten("flatten", x, 1)?;
    n.b.linear("fc", x, c, num_classes, true)
}
