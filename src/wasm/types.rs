//! The values that cross the package's boundary, as Rust types: serde moves them (plain JS
//! objects, tensors as `Float32Array`), tsify writes their TypeScript declarations into the
//! binding's `webcnn.d.ts`, which the package's `index.d.ts` re-exports. What JS hands in is
//! checked here, once.

use crate::error::Error;
use crate::models::Model;
use crate::preprocess::{CropMode, Interpolation, Preprocess};
use crate::Tensor as RustTensor;
use js_sys::Float32Array;
use serde::{Deserialize, Serialize};
use tsify::Tsify;
use wasm_bindgen::prelude::*;

/// A JS `Error` with `code` set.
pub fn js_err(e: Error) -> JsValue {
    coded(e.code(), &e.to_string())
}

/// A JS `Error` with `message` and `code`.
pub fn coded(code: &str, message: &str) -> JsValue {
    let o = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&o, &"code".into(), &code.into());
    o.into()
}

pub fn bad(msg: impl Into<String>) -> JsValue {
    js_err(Error::BadArgument(msg.into()))
}

/// `v` as a JS object: maps as plain objects, `None` as `null` (what the types declare).
pub fn to_js<T: Serialize>(v: &T) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or_else(|e| bad(format!("internal: a result did not convert: {e}")))
}

/// What JS passed, parsed into `T`; a mismatch is a BAD_ARGUMENT saying what did not fit.
pub fn from_js<T: serde::de::DeserializeOwned>(v: JsValue) -> Result<T, JsValue> {
    serde_wasm_bindgen::from_value(v).map_err(|e| {
        let msg = e.to_string();
        bad(msg.strip_prefix("Error: ").unwrap_or(&msg))
    })
}

/// A field's deserializer whose errors name the field (serde's name only the value).
macro_rules! named_field {
    ($f:ident, $ty:ty, $what:literal) => {
        fn $f<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            <$ty>::deserialize(d).map_err(|e| serde::de::Error::custom(format!("{}: {e}", $what)))
        }
    };
}
named_field!(device_field, Device, "device");
named_field!(precision_field, Precision, "precision");
named_field!(tuning_field, Tuning, "tuning");

/// The `preprocess` option: read as a whole object first, so that an unknown setting is
/// an error (the JS deserializer reads only the fields it knows).
fn preprocess_field<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<PreprocessOptions>, D::Error> {
    Option::<serde_json::Value>::deserialize(d)?
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| serde::de::Error::custom(format!("preprocess: {e}")))
}

/// A whole number in `min..=u32::MAX` (JS numbers are doubles; a string is not one).
pub fn whole(v: &JsValue, what: &str, min: u32) -> Result<u32, JsValue> {
    v.as_f64()
        .filter(|d| d.fract() == 0.0 && *d >= min as f64 && *d <= u32::MAX as f64)
        .map(|d| d as u32)
        .ok_or_else(|| {
            let shown = v
                .as_string()
                .map_or_else(|| format!("{v:?}"), |s| format!("'{s}'"));
            bad(format!(
                "{what} must be {} integer, not {shown}",
                if min == 0 {
                    "a non-negative"
                } else {
                    "a positive"
                }
            ))
        })
}

// The zoo's ids, a union type the package build writes from the crate's list (models.d.ts).
#[wasm_bindgen(typescript_custom_section)]
const MODEL_ID: &str = "import type { ModelId } from '../models.js';";

/// Where a model runs: WebGPU on a hardware adapter else the CPU (`'auto'`), or the one named.
#[derive(Tsify, Deserialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Auto,
    Webgpu,
    Cpu,
}

/// What WebGPU stores weights and activations as (the CPU backend always uses f32).
#[derive(Tsify, Deserialize, Serialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

/// How WebGPU picks each convolution's kernel: the static table for adapter kinds it knows
/// else timed (`'auto'`), never timed (`'table'`), timed unless remembered (`'measure'`).
#[derive(Tsify, Deserialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Tuning {
    #[default]
    Auto,
    Table,
    Measure,
}

/// How to make an engine: the package's load options as the binding takes them.
#[derive(Tsify, Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineOptions {
    /// The architecture; may be left out where `config` names it, or for `onnx`.
    #[tsify(optional, type = "ModelId")]
    pub model: Option<String>,
    /// The name (file stem) of an ONNX model: the file `Engine.begin` then takes is the
    /// model, its graph and weights, and `model` is left out.
    #[tsify(optional)]
    pub onnx: Option<String>,
    /// Synthetic weights from the golden PRNG with this seed (`Engine.synthetic`).
    #[tsify(optional)]
    pub seed: Option<u32>,
    #[serde(default, deserialize_with = "device_field")]
    #[tsify(optional)]
    pub device: Device,
    #[serde(default, deserialize_with = "precision_field")]
    #[tsify(optional)]
    pub precision: Precision,
    #[serde(default, deserialize_with = "tuning_field")]
    #[tsify(optional)]
    pub tuning: Tuning,
    /// JSON from an earlier `Engine.tuningCache()` (not JSON: measured again).
    #[tsify(optional)]
    pub tuning_cache: Option<String>,
    /// A timm config.json's text: the architecture, class names, the transform.
    #[tsify(optional)]
    pub config: Option<String>,
    /// A label file's text: one name per line, a JSON array or object, a timm config.json.
    #[tsify(optional)]
    pub labels: Option<String>,
    #[serde(default, deserialize_with = "preprocess_field")]
    #[tsify(optional, type = "PreprocessOptions")]
    pub preprocess: Option<PreprocessOptions>,
}

/// The eval transform a model was trained with; each setting given overrides the default.
#[derive(Tsify, Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreprocessOptions {
    /// The input's [height, width] (a number: square).
    #[tsify(optional, type = "[number, number] | number")]
    pub size: Option<serde_json::Value>,
    #[tsify(optional)]
    pub crop_pct: Option<f64>,
    #[tsify(optional)]
    pub interpolation: Option<Interpolation>,
    #[tsify(optional)]
    pub crop_mode: Option<CropMode>,
    #[tsify(optional)]
    pub mean: Option<[f32; 3]>,
    #[tsify(optional)]
    pub std: Option<[f32; 3]>,
}

impl PreprocessOptions {
    /// As timm's config names it; the transform checks the values (`with_timm_cfg`).
    pub fn timm_cfg(&self) -> serde_json::Value {
        let mut cfg = serde_json::Map::new();
        let mut put = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                cfg.insert(k.into(), v);
            }
        };
        put("input_size", self.size.clone());
        put("crop_pct", self.crop_pct.map(Into::into));
        put("interpolation", self.interpolation.map(|i| i.name().into()));
        put("crop_mode", self.crop_mode.map(|c| c.name().into()));
        put("mean", self.mean.map(|m| m.to_vec().into()));
        put("std", self.std.map(|s| s.to_vec().into()));
        cfg.into()
    }
}

/// A model of the zoo with its facts.
#[derive(Tsify, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    #[tsify(type = "ModelId")]
    pub id: String,
    /// Parameter count.
    pub params: f64,
    /// Multiply-accumulates of one image at the default input size.
    pub macs: f64,
    /// Default input: [channels, height, width].
    pub input: [u32; 3],
    /// The id's own head; a fine-tuned checkpoint brings its own (see ModelInfo).
    #[tsify(type = "'imagenet1k' | 'cifar10'")]
    pub labels: &'static str,
    pub num_classes: u32,
    /// Stage outputs for `features()` (any torchvision node name works).
    pub feature_nodes: Vec<String>,
    /// Whether `cam()` works (ResNets).
    pub cam: bool,
    /// The eval transform the package applies to images (timm's settings).
    pub preprocess: Preprocess,
}

fn dims(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&d| d as u32).collect()
}

impl From<&Model> for ModelSpec {
    fn from(m: &Model) -> Self {
        ModelSpec {
            id: m.id.clone(),
            params: m.param_count() as f64,
            macs: m.macs() as f64,
            input: [m.input[0] as u32, m.input[1] as u32, m.input[2] as u32],
            labels: m.labels.id(),
            num_classes: m.num_classes() as u32,
            feature_nodes: m.feature_nodes(),
            cam: m.classifier() == "fc",
            preprocess: m.preprocess.clone(),
        }
    }
}

/// A loaded model's facts.
#[derive(Tsify, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The zoo's id, or an ONNX model's name (its file's stem).
    #[tsify(type = "ModelId | string")]
    pub id: String,
    pub backend: Backend,
    /// The WebGPU adapter's name, or null on the CPU.
    #[tsify(type = "string | null")]
    pub adapter: Option<String>,
    /// What the device stores values as ('f32' on the CPU).
    pub precision: Precision,
    /// Threads the CPU backend computes on (1 on WebGPU and without cross-origin isolation).
    pub threads: u32,
    /// Layer shapes whose kernels this model timed on its adapter so far (its first run of
    /// an input size prepares a plan); 0 on the CPU, and where the table or kept choices
    /// decided.
    pub tuned_shapes: u32,
    /// Why the CPU runs although 'auto' was asked for, else null.
    #[tsify(type = "string | null")]
    pub notice: Option<String>,
    pub input_size: [u32; 3],
    /// The transform applied to images.
    pub preprocess: Preprocess,
    /// Where the class names come from: the id's own sets, numbers, or the `labels` option.
    #[tsify(type = "'imagenet1k' | 'cifar10' | 'numbered' | 'custom'")]
    pub labels: &'static str,
    /// Classes of the head the weights hold; 0 for a feature extractor.
    pub num_classes: u32,
    /// One name per class.
    #[tsify(type = "readonly string[]")]
    pub class_names: Vec<String>,
    /// Stage outputs for `features()` (an ONNX model's: the values before its pools, and
    /// its outputs; any value name works).
    pub feature_nodes: Vec<String>,
    /// Whether `cam()` works (a ResNet of the zoo with its classifier).
    pub cam: bool,
    /// What reading the weights unwrapped (a checkpoint's 'state_dict' entry, a 'module.'
    /// prefix).
    pub notices: Vec<String>,
    /// Weights holding NaN or Inf.
    pub warnings: Vec<String>,
}

#[derive(Tsify, Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Webgpu,
    Cpu,
}

/// One class of a classification, best first.
#[derive(Tsify, Serialize)]
pub struct Prediction {
    pub index: u32,
    pub label: String,
    pub probability: f32,
}

impl From<crate::tasks::Prediction> for Prediction {
    fn from(p: crate::tasks::Prediction) -> Self {
        Prediction {
            index: p.index as u32,
            label: p.label,
            probability: p.probability,
        }
    }
}

/// Values and their shape (row-major).
#[derive(Tsify, Serialize)]
pub struct Tensor {
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(type = "Float32Array")]
    pub data: JsValue,
    pub shape: Vec<u32>,
}

impl From<RustTensor> for Tensor {
    fn from(t: RustTensor) -> Self {
        Tensor {
            data: Float32Array::from(t.data()).into(),
            shape: dims(t.shape()),
        }
    }
}

/// Named outputs, in the order asked for (a JS object).
pub struct Outputs(pub Vec<(String, Tensor)>);

impl Serialize for Outputs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A class activation map.
#[derive(Tsify, Serialize)]
pub struct CamMap {
    /// h * w values in [0, 1], row-major.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(type = "Float32Array")]
    pub data: JsValue,
    pub shape: [u32; 2],
    /// The class mapped (the top class unless one was asked for).
    pub class: u32,
}

impl From<crate::tasks::Cam> for CamMap {
    fn from(c: crate::tasks::Cam) -> Self {
        CamMap {
            data: Float32Array::from(&c.data[..]).into(),
            shape: [c.shape[0] as u32, c.shape[1] as u32],
            class: c.class as u32,
        }
    }
}
