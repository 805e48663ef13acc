//! VGG: torchvision's (adaptive average pool 7x7, 4096-4096-classes head) and the seed's
//! CIFAR-10 variant (same features, 512-512-10 head on the flattened 1x1 map).

use crate::graph::{Conv2d, GraphBuilder, GraphError, Pool2d, Value};

/// Channel counts, `0` for a max-pool (torchvision's cfgs "A", "B", "D", "E").
pub fn cfg(depth: usize) -> Option<&'static [usize]> {
    Some(match depth {
        11 => &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
        13 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
        ],
        16 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
        ],
        19 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512,
            512, 0,
        ],
        _ => return None,
    })
}

/// `features`: conv 3x3 (+ BatchNorm) + ReLU per entry, max-pool 2x2 per `0`.
pub fn features(
    b: &mut GraphBuilder,
    mut x: Value,
    cfg: &[usize],
    batch_norm: bool,
) -> Result<Value, GraphError> {
    let (mut i, mut c) = (0, 3);
    for &v in cfg {
        if v == 0 {
            x = b.max_pool2d(&format!("features.{i}"), x, Pool2d::new(2).stride(2))?;
            i += 1;
            continue;
        }
        x = b.conv2d(&format!("features.{i}"), x, Conv2d::new(c, v, 3).padding(1))?;
        i += 1;
        if batch_norm {
            x = b.batch_norm2d(&format!("features.{i}"), x, v, 1e-5)?;
            i += 1;
        }
        x = b.relu(&format!("features.{i}"), x)?;
        i += 1;
        c = v;
    }
    Ok(x)
}

/// `torchvision.models.vgg{11,13,16,19}[_bn]`.
pub fn vgg(
    b: &mut GraphBuilder,
    x: Value,
    cfg: &[usize],
    batch_norm: bool,
    num_classes: usize,
) -> Result<Value, GraphError> {
    let x = features(b, x, cfg, batch_norm)?;
    let x = b.adaptive_avg_pool2d("avgpool", x, [7, 7])?;
    let x = b.flatten("flatten", x, 1)?;
    let x = b.linear("classifier.0", x, 512 * 7 * 7, 4096, true)?;
    let x = b.relu("classifier.1", x)?;
    let x = b.dropout("classifier.2", x)?;
    let x = b.linear("classifier.3", x, 4096, 4096, true)?;
    let x = b.relu("classifier.4", x)?;
    let x = b.dropout("classifier.5", x)?;
    b.linear("classifier.6", x, 4096, num_classes, true)
}

/// The seed's CIFAR VGG: the classifier reads the flattened features directly, so the
/// input must shrink to 1x1 (32x32 images).
pub fn vgg_cifar(
    b: &mut GraphBuilder,
    x: Value,
    cfg: &[usize],
    batch_norm: bool,
    num_classes: usize,
) -> Result<Value, GraphError> {
    let x = features(b, x, cfg, batch_norm)?;
    let x = b.flatten("view", x, 1)?;
    let x = b.dropout("classifier.0", x)?;
    let x = b.linear("classifier.1", x, 512, 512, true)?;
    let x = b.relu("classifier.2", x)?;
    let x = b.dropout("classifier.3", x)?;
    let x = b.linear("classifier.4", x, 512, 512, true)?;
    let x = b.relu("classifier.5", x)?;
    b.linear("classifier.6", x, 512, num_classes, true)
}
