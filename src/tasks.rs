//! What the front ends ask of a model, written once for the CLI, the wasm binding and
//! library users: top-K classes with their labels, and a ResNet's class activation map.

use crate::engine::{top_k, Session};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::tensor::Tensor;

/// One class of a classification.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// The model can classify: a headless one (a feature extractor) cannot.
pub fn check_classifier(model: &Model) -> Result<()> {
    if model.has_classifier() {
        return Ok(());
    }
    Err(Error::NoClassifier(format!(
        "the weights have no classifier ('{}'): they make a feature extractor; ask for features or embeddings",
        model.classifier()
    )))
}

/// The `k` most probable classes of each image, from `logits` (`[batch, classes]`, the
/// model's output), with the model's labels, best first.
pub fn classify(model: &Model, logits: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
    if k == 0 {
        return Err(Error::BadArgument("top-K must be at least 1".into()));
    }
    check_classifier(model)?;
    let classes = model.num_classes();
    if logits.shape().len() != 2 || logits.shape()[1] != classes {
        return Err(Error::BadArgument(format!(
            "logits of shape {:?} are not {} classes per image",
            logits.shape(),
            classes
        )));
    }
    let labels = model.labels.names();
    Ok(logits
        .data()
        .chunks(classes)
        .map(|row| {
            // A model that ends in a softmax gives probabilities already.
            let ranked = match model.softmax_output {
                true => rank(row, k),
                false => top_k(row, k),
            };
            ranked
                .into_iter()
                .map(|(index, probability)| Prediction {
                    index,
                    label: labels[index].clone(),
                    probability,
                })
                .collect()
        })
        .collect())
}

/// The `k` largest of `p` (probabilities) with their indices, largest first.
fn rank(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, p[i])).collect()
}

/// A class activation map: `h x w` values in [0, 1] over `layer4`'s grid, for `class`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cam {
    pub data: Vec<f32>,
    pub shape: [usize; 2],
    pub class: usize,
    /// The class's probability for the image.
    pub probability: f32,
}

/// A class activation map of one image `x` on a ResNet (global average pool, then `fc`):
/// `layer4`'s channels weighted by the `fc` row of `class` (default: the top class),
/// scaled to [0, 1].
pub async fn cam(
    session: &mut Session,
    model: &Model,
    x: &Tensor,
    class: Option<usize>,
) -> Result<Cam> {
    if model.classifier() != "fc" {
        return Err(Error::BadArgument(format!(
            "class activation maps need a ResNet, not {}",
            model.id
        )));
    }
    check_classifier(model)?;
    let classes = model.num_classes();
    if let Some(c) = class.filter(|&c| c >= classes) {
        return Err(Error::BadArgument(format!(
            "class {c} is out of range: {} has {classes} classes",
            model.id
        )));
    }
    if x.shape()[0] != 1 {
        return Err(Error::BadArgument(
            "a class activation map takes one image".into(),
        ));
    }
    let graph = model.graph(x.shape())?.with_outputs(&["layer4", "fc"])?;
    let mut outs = session.run_graph(&graph, x).await?;
    let logits = outs.remove(1);
    let feat = outs.remove(0);
    let ranked = top_k(logits.data(), classes);
    let class = class.unwrap_or(ranked[0].0);
    let probability = ranked
        .iter()
        .find(|&&(c, _)| c == class)
        .map_or(0.0, |&(_, p)| p);
    let row = session.weight_row("fc.weight", class).await?;
    let (h, w) = (feat.shape()[2], feat.shape()[3]);
    let mut map = vec![0f32; h * w];
    for (plane, &wt) in feat.data().chunks(h * w).zip(&row) {
        map.iter_mut().zip(plane).for_each(|(m, &v)| *m += wt * v);
    }
    let (lo, hi) = map
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    map.iter_mut().for_each(|v| *v = (*v - lo) / span);
    Ok(Cam {
        data: map,
        shape: [h, w],
        class,
        probability,
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub fn cam_blocking(
    session: &mut Session,
    model: &Model,
    x: &Tensor,
    class: Option<usize>,
) -> Result<Cam> {
    pollster::block_on(cam(session, model, x, class))
}
