//! AlexNet: torchvision's (64-192-384-256-256, adaptive average pool 6x6) and the seed's
//! paper layout with LocalResponseNorm (96-256-384-384-256, 227x227 input).

use crate::graph::{Conv2d, GraphBuilder, GraphError, Lrn, Pool2d, Value};

/// `torchvision.models.alexnet`.
pub fn alexnet(b: &mut GraphBuilder, x: Value, num_classes: usize) -> Result<Value, GraphError> {
    let x = b.conv2d("features.0", x, Conv2d::new(3, 64, 11).stride(4).padding(2))?;
    let x = b.relu("features.1", x)?;
    let x = b.max_pool2d("features.2", x, Pool2d::new(3).stride(2))?;
    let x = b.conv2d("features.3", x, Conv2d::new(64, 192, 5).padding(2))?;
    let x = b.relu("features.4", x)?;
    let x = b.max_pool2d("features.5", x, Pool2d::new(3).stride(2))?;
    let x = b.conv2d("features.6", x, Conv2d::new(192, 384, 3).padding(1))?;
    let x = b.relu("features.7", x)?;
    let x = b.conv2d("features.8", x, Conv2d::new(384, 256, 3).padding(1))?;
    let x = b.relu("features.9", x)?;
    let x = b.conv2d("features.10", x, Conv2d::new(256, 256, 3).padding(1))?;
    let x = b.relu("features.11", x)?;
    let x = b.max_pool2d("features.12", x, Pool2d::new(3).stride(2))?;
    let x = b.adaptive_avg_pool2d("avgpool", x, [6, 6])?;
    let x = b.flatten("flatten", x, 1)?;
    classifier(b, x, num_classes)
}

/// The head both variants share: (dropout, linear, ReLU) x 2, linear on 256x6x6 features.
fn classifier(b: &mut GraphBuilder, x: Value, num_classes: usize) -> Result<Value, GraphError> {
    let x = b.dropout("classifier.0", x)?;
    let x = b.linear("classifier.1", x, 256 * 6 * 6, 4096, true)?;
    let x = b.relu("classifier.2", x)?;
    let x = b.dropout("classifier.3", x)?;
    let x = b.linear("classifier.4", x, 4096, 4096, true)?;
    let x = b.relu("classifier.5", x)?;
    b.linear("classifier.6", x, 4096, num_classes, true)
}

/// The seed's AlexNet: no padding in conv1, LRN after the first two ReLUs, and a
/// classifier on the flattened 256x6x6 map (so it needs 227x227-sized inputs).
pub fn alexnet_lrn(
    b: &mut GraphBuilder,
    x: Value,
    num_classes: usize,
) -> Result<Value, GraphError> {
    let lrn = || Lrn {
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 2.0,
    };
    let x = b.conv2d("net.0", x, Conv2d::new(3, 96, 11).stride(4))?;
    let x = b.relu("net.1", x)?;
    let x = b.local_response_norm("net.2", x, lrn())?;
    let x = b.max_pool2d("net.3", x, Pool2d::new(3).stride(2))?;
    let x = b.conv2d("net.4", x, Conv2d::new(96, 256, 5).padding(2))?;
    let x = b.relu("net.5", x)?;
    let x = b.local_response_norm("net.6", x, lrn())?;
    let x = b.max_pool2d("net.7", x, Pool2d::new(3).stride(2))?;
    let x = b.conv2d("net.8", x, Conv2d::new(256, 384, 3).padding(1))?;
    let x = b.relu("net.9", x)?;
    let x = b.conv2d("net.10", x, Conv2d::new(384, 384, 3).padding(1))?;
    let x = b.relu("net.11", x)?;
    let x = b.conv2d("net.12", x, Conv2d::new(384, 256, 3).padding(1))?;
    let x = b.relu("net.13", x)?;
    let x = b.max_pool2d("net.14", x, Pool2d::new(3).stride(2))?;
    let x = b.flatten("view", x, 1)?;
    classifier(b, x, num_classes)
}
