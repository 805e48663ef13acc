//! timm's `config.json`, as `push_to_hf_hub` writes it beside the weights: the
//! architecture, the head's class count and names (`label_names`, under `model_args`), and
//! the eval transform (`pretrained_cfg`).

use super::{Labels, Model};
use crate::error::Error;

#[derive(Clone, Debug, PartialEq)]
pub struct HubConfig {
    /// timm's model name (`resnet50`, `vgg16_bn`, `resnext50_32x4d`, ...).
    pub architecture: String,
    /// The head's classes (0: none), where the config says.
    pub num_classes: Option<usize>,
    pub labels: Option<Labels>,
    /// The transform settings (`input_size`, `crop_pct`, `interpolation`, ...).
    pub pretrained_cfg: Option<serde_json::Value>,
}

impl HubConfig {
    pub fn parse(text: &str) -> Result<HubConfig, String> {
        let j: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let architecture = j
            .get("architecture")
            .and_then(|a| a.as_str())
            .ok_or("no 'architecture' (not a timm config.json?)")?
            .to_string();
        let num_classes = [
            "/num_classes",
            "/model_args/num_classes",
            "/pretrained_cfg/num_classes",
        ]
        .iter()
        .find_map(|p| j.pointer(p).filter(|v| !v.is_null()))
        .map(|v| {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("num_classes {v} is not a count"))
        })
        .transpose()?;
        let has_names =
            j.get("label_names").is_some() || j.pointer("/model_args/label_names").is_some();
        let labels = if has_names {
            Some(Labels::parse(text).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(HubConfig {
            architecture,
            num_classes,
            labels,
            pretrained_cfg: j.get("pretrained_cfg").filter(|v| v.is_object()).cloned(),
        })
    }

    /// The zoo's id for the architecture (timm's names are torchvision's; a `.tag`
    /// suffix, as in `resnet50.a1_in1k`, is dropped).
    pub fn model_id(&self) -> &str {
        self.architecture
            .split_once('.')
            .map_or(&self.architecture, |(a, _)| a)
    }

    /// `model` (its head already fitted to the weights) with the config's class names and
    /// transform; a class count that disagrees with the weights' head is an error.
    pub fn apply(&self, mut model: Model) -> Result<Model, Error> {
        if let Some(n) = self.num_classes.filter(|&n| n != model.num_classes()) {
            return Err(Error::BadArgument(format!(
                "config.json says num_classes {n}, but the weights hold {}",
                match model.num_classes() {
                    0 => "no classifier".to_string(),
                    k => format!("a head of {k} classes"),
                }
            )));
        }
        if let Some(l) = &self.labels {
            model = model.with_labels(l.clone()).map_err(Error::Labels)?;
        }
        if let Some(cfg) = &self.pretrained_cfg {
            model.preprocess = model
                .preprocess
                .clone()
                .with_timm_cfg(cfg)
                .map_err(|e| Error::BadArgument(format!("config.json pretrained_cfg: {e}")))?;
        }
        Ok(model)
    }
}
