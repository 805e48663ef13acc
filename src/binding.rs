//! What the npm package's two bindings share: the wasm one (`src/wasm/`) and the native
//! Node addon (`src/node/`). The load options and what they resolve to, the inputs and
//! calls on a model and their answers, the model's facts, all as Rust values; each binding
//! only converts them to and from its own JS values, so the two cannot drift apart.

use crate::engine::{Session, Target};
use crate::error::Error;
use crate::models::{ids, Model};
use crate::preprocess::{self, CropMode, Interpolation, Preprocess};
use crate::Tensor;
use serde::{Deserialize, Serialize};

#[cfg(target_arch = "wasm32")]
use tsify::Tsify;

/// A failure as JS sees it: a stable code (`Error::code`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// A BAD_ARGUMENT failure.
pub fn bad(msg: impl Into<String>) -> Failure {
    Error::BadArgument(msg.into()).into()
}

/// A field's deserializer whose errors name the field (serde's name only the value).
macro_rules! named_field {
    ($f:ident, $ty:ty, $what:literal) => {
        fn $f<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<$ty, D::Error> {
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
) -> std::result::Result<Option<PreprocessOptions>, D::Error> {
    Option::<serde_json::Value>::deserialize(d)?
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| serde::de::Error::custom(format!("preprocess: {e}")))
}

/// Where a model runs: the GPU on a hardware adapter else the CPU (`'auto'`), or the one
/// named. `'gpu'` and `'webgpu'` are the same: WebGPU in a browser, wgpu (Vulkan, Metal,
/// DX12) in Node's native binding.
#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Auto,
    Gpu,
    Webgpu,
    Cpu,
}

/// What the GPU stores weights and activations as (the CPU backend always uses f32).
#[derive(Deserialize, Serialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

/// How the GPU picks each convolution's kernel: the static table for adapter kinds it knows
/// else timed (`'auto'`), never timed (`'table'`), timed unless remembered (`'measure'`).
#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "lowercase")]
pub enum Tuning {
    #[default]
    Auto,
    Table,
    Measure,
}

/// How to make an engine: the package's load options as the binding takes them.
#[derive(Deserialize, Default, Debug, Clone)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineOptions {
    /// The architecture; may be left out where `config` names it, or for `onnx`.
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "ModelId"))]
    pub model: Option<String>,
    /// The name (file stem) of an ONNX model: the file `Engine.begin` then takes is the
    /// model, its graph and weights, and `model` is left out.
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub onnx: Option<String>,
    /// Synthetic weights from the golden PRNG with this seed (`Engine.synthetic`).
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub seed: Option<u32>,
    #[serde(default, deserialize_with = "device_field")]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub device: Device,
    #[serde(default, deserialize_with = "precision_field")]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub precision: Precision,
    #[serde(default, deserialize_with = "tuning_field")]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub tuning: Tuning,
    /// JSON from an earlier `Engine.tuningCache()` (not JSON: measured again).
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub tuning_cache: Option<String>,
    /// A timm config.json's text: the architecture, class names, the transform.
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub config: Option<String>,
    /// A label file's text: one name per line, a JSON array or object, a timm config.json.
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub labels: Option<String>,
    #[serde(default, deserialize_with = "preprocess_field")]
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "PreprocessOptions"))]
    pub preprocess: Option<PreprocessOptions>,
}

/// The eval transform a model was trained with; each setting given overrides the default.
#[derive(Deserialize, Default, Debug, Clone)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreprocessOptions {
    /// The input's [height, width] (a number: square).
    #[cfg_attr(
        target_arch = "wasm32",
        tsify(optional, type = "[number, number] | number")
    )]
    pub size: Option<serde_json::Value>,
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub crop_pct: Option<f64>,
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub interpolation: Option<Interpolation>,
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub crop_mode: Option<CropMode>,
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub mean: Option<[f32; 3]>,
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
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
#[derive(Serialize)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    #[cfg_attr(target_arch = "wasm32", tsify(type = "ModelId"))]
    pub id: String,
    /// Parameter count.
    pub params: f64,
    /// Multiply-accumulates of one image at the default input size.
    pub macs: f64,
    /// Default input: [channels, height, width].
    pub input: [u32; 3],
    /// The id's own head; a fine-tuned checkpoint brings its own (see ModelInfo).
    #[cfg_attr(target_arch = "wasm32", tsify(type = "'imagenet1k' | 'cifar10'"))]
    pub labels: &'static str,
    pub num_classes: u32,
    /// Stage outputs for `features()` (any torchvision node name works).
    pub feature_nodes: Vec<String>,
    /// Whether `cam()` works (ResNets).
    pub cam: bool,
    /// The eval transform the package applies to images (timm's settings).
    pub preprocess: Preprocess,
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

/// Every model of the zoo with its facts.
pub fn model_list() -> Vec<ModelSpec> {
    ids()
        .iter()
        .filter_map(|id| Model::get(id).ok())
        .map(|m| (&m).into())
        .collect()
}

/// Which binding runs the model.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// The native Node addon (the CPU kernels and wgpu of this crate, compiled natively).
    Native,
    /// The WebAssembly build (browsers, and Node where no native binary is installed).
    Wasm,
}

/// A loaded model's facts.
#[derive(Serialize)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The zoo's id, or an ONNX model's name (its file's stem).
    #[cfg_attr(target_arch = "wasm32", tsify(type = "ModelId | string"))]
    pub id: String,
    pub backend: Backend,
    pub binding: Binding,
    /// The GPU adapter's name, or null on the CPU.
    #[cfg_attr(target_arch = "wasm32", tsify(type = "string | null"))]
    pub adapter: Option<String>,
    /// What the device stores values as ('f32' on the CPU).
    pub precision: Precision,
    /// Threads the CPU backend computes on (1 on the GPU, and in a browser without
    /// cross-origin isolation).
    pub threads: u32,
    /// Layer shapes whose kernels this model timed on its adapter so far (its first run of
    /// an input size prepares a plan); 0 on the CPU, and where the table or kept choices
    /// decided.
    pub tuned_shapes: u32,
    /// Why the CPU runs although 'auto' was asked for, else null.
    #[cfg_attr(target_arch = "wasm32", tsify(type = "string | null"))]
    pub notice: Option<String>,
    pub input_size: [u32; 3],
    /// The transform applied to images.
    pub preprocess: Preprocess,
    /// Where the class names come from: the id's own sets, numbers, or the `labels` option.
    #[cfg_attr(
        target_arch = "wasm32",
        tsify(type = "'imagenet1k' | 'cifar10' | 'numbered' | 'custom'")
    )]
    pub labels: &'static str,
    /// Classes of the head the weights hold; 0 for a feature extractor.
    pub num_classes: u32,
    /// One name per class.
    #[cfg_attr(target_arch = "wasm32", tsify(type = "readonly string[]"))]
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

/// Where a loaded model computes: WebGPU (a browser), the GPU through wgpu (Node's native
/// binding), or the CPU backend.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Webgpu,
    Gpu,
    Cpu,
}

/// One class of a classification, best first.
#[derive(Serialize)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
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

/// The options as they are applied: the model resolved (from `config` where it names the
/// architecture), its labels and transform set, the device's settings.
pub struct Prepared {
    pub model: Model,
    pub config: Option<crate::models::HubConfig>,
    pub device: crate::engine::Device,
    pub gpu: crate::backend::gpu::GpuOptions,
    pub tuning_cache: Option<String>,
}

impl EngineOptions {
    /// The options from JSON text (the native binding's way in).
    pub fn from_json(text: &str) -> Result<EngineOptions> {
        // Through a Value: its errors say what did not fit without a line and column.
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("options: {e}")))?;
        serde_json::from_value(v).map_err(|e| bad(e.to_string()))
    }

    pub fn device(&self) -> (crate::engine::Device, crate::backend::gpu::GpuOptions) {
        use crate::backend::gpu::{Precision as P, Tuning as T};
        let device = match self.device {
            Device::Auto => crate::engine::Device::Auto,
            Device::Gpu | Device::Webgpu => crate::engine::Device::Gpu,
            Device::Cpu => crate::engine::Device::Cpu,
        };
        let gpu = crate::backend::gpu::GpuOptions {
            precision: match self.precision {
                Precision::F32 => P::F32,
                Precision::F16 => P::F16,
            },
            tuning: match self.tuning {
                Tuning::Auto => T::Auto,
                Tuning::Table => T::Table,
                Tuning::Measure => T::Measure,
            },
            ..Default::default()
        };
        (device, gpu)
    }

    /// The ONNX model's name, where the file is one; it brings its own graph, so `model`
    /// and `config` are refused beside it.
    pub fn onnx(&self) -> Result<Option<&str>> {
        match (&self.onnx, &self.model, &self.config) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(bad(
                "an ONNX model brings its own graph: give it as `model`, without a model id or config",
            )),
            (o, ..) => Ok(o.as_deref()),
        }
    }

    /// The model these options name: by id, else by the config.json.
    pub fn model(&self) -> Result<(Model, Option<crate::models::HubConfig>)> {
        let config = self
            .config
            .as_deref()
            .map(crate::models::HubConfig::parse)
            .transpose()
            .map_err(|e| bad(format!("config.json: {e}")))?;
        let id = self.model.as_deref().filter(|m| !m.is_empty());
        let model = crate::weights::resolve_model(id, config.as_ref()).map_err(|e| match e {
            // The CLI's message points at `webcnn models`; here the ids are listed.
            Error::Model(m) => Failure {
                code: Error::Model(m).code(),
                message: format!(
                    "unknown model '{}'; known: {}",
                    id.unwrap_or_default(),
                    ids().join(", ")
                ),
            },
            e => e.into(),
        })?;
        Ok((model, config))
    }

    /// `model` with the `labels` and `preprocess` options applied.
    pub fn head(&self, mut model: Model) -> Result<Model> {
        if let Some(text) = &self.labels {
            let names = crate::models::Labels::parse(text).map_err(Error::from)?;
            model = model.with_labels(names).map_err(Error::from)?;
        }
        model.preprocess = self.transform(&model.preprocess)?;
        Ok(model)
    }

    pub fn transform(&self, base: &Preprocess) -> Result<Preprocess> {
        match &self.preprocess {
            None => Ok(base.clone()),
            Some(p) => base
                .clone()
                .with_timm_cfg(&p.timm_cfg())
                .map_err(|e| bad(format!("preprocess: {e}"))),
        }
    }

    pub fn prepare(&self) -> Result<Prepared> {
        let (model, config) = self.model()?;
        let (device, gpu) = self.device();
        Ok(Prepared {
            model,
            config,
            device,
            gpu,
            tuning_cache: self.tuning_cache.clone(),
        })
    }

    /// Checks the options before anything is fetched: their values, the model id (unless
    /// `named_later`: a Hub repository's config.json names it), the label file's format
    /// and the transform's settings. Loading checks them again with the same code, and
    /// then the labels against the head.
    pub fn check(&self, named_later: bool) -> Result<()> {
        self.onnx()?;
        let base = match &self.model {
            // Where the file names the model (a Hub config, an ONNX model) its transform is
            // known once it is read; a setting given is checked against ImageNet's, which
            // has every field.
            None if named_later || self.onnx.is_some() => crate::models::imagenet(),
            _ => self.model()?.0.preprocess,
        };
        if let Some(text) = &self.labels {
            crate::models::Labels::parse(text).map_err(Error::from)?;
        }
        self.transform(&base)?;
        Ok(())
    }
}

/// The target for `device`, its GPU starting from the kernel choices in `tuning_cache`
/// (JSON from an earlier `tuning_cache` export; not JSON: measured again).
pub async fn open_device(
    device: crate::engine::Device,
    gpu: crate::backend::gpu::GpuOptions,
    tuning_cache: Option<&str>,
) -> Result<Target> {
    let target = Target::open_with(device, gpu).await?;
    if let (Some(ctx), Some(cache)) = (target.gpu_context(), tuning_cache) {
        ctx.import_tuning(cache);
    }
    Ok(target)
}

/// A weights file read piece by piece, or an ONNX model gathered whole.
pub enum Load {
    Weights(Box<crate::load::StreamLoad>),
    Onnx(Box<crate::load::OnnxLoad>),
}

impl Load {
    /// Start loading what `options` name onto a device opened for them, from a file of
    /// `total` bytes where known.
    pub async fn begin(options: &EngineOptions, total: Option<u64>) -> Result<(Load, Target)> {
        if let Some(id) = options.onnx()? {
            let (device, gpu) = options.device();
            options.transform(&crate::models::imagenet())?;
            let target = open_device(device, gpu, options.tuning_cache.as_deref()).await?;
            let load = crate::load::OnnxLoad::new(id, &target, total);
            return Ok((Load::Onnx(Box::new(load)), target));
        }
        let p = options.prepare()?;
        // The transform is checked before any byte arrives.
        options.transform(&p.model.preprocess)?;
        let target = open_device(p.device, p.gpu, p.tuning_cache.as_deref()).await?;
        let load = crate::load::StreamLoad::new(p.model, p.config, &target, total);
        Ok((Load::Weights(Box::new(load)), target))
    }

    /// The file's next bytes; true when the caller should let the GPU settle first.
    pub fn push(&mut self, chunk: &[u8]) -> Result<bool> {
        match self {
            Load::Weights(load) => Ok(load.push(chunk)?),
            Load::Onnx(load) => Ok(load.push(chunk).map(|_| false)?),
        }
    }

    /// An ONNX model's external files (none for a weights file).
    pub fn external_files(&mut self) -> Result<Vec<String>> {
        match self {
            Load::Onnx(load) => Ok(load.external_files()?),
            Load::Weights(_) => Ok(vec![]),
        }
    }

    pub fn push_external(&mut self, location: &str, chunk: &[u8], start: bool) -> Result<()> {
        match self {
            Load::Onnx(load) => Ok(load.push_external(location, chunk, start)?),
            Load::Weights(_) => Err(bad("external files belong to an ONNX model")),
        }
    }

    /// The GPU took the weights written so far.
    pub fn settled(&mut self) {
        if let Load::Weights(l) = self {
            l.settled();
        }
    }

    /// The model, once every byte was pushed: the head fitted to the weights, named by the
    /// `labels` option, images prepared by the `preprocess` option.
    pub async fn finish(self, options: &EngineOptions) -> Result<Loaded> {
        let s = match self {
            Load::Weights(load) => load.finish().await,
            Load::Onnx(load) => load.finish().await,
        }?;
        Ok(Loaded {
            model: options.head(s.model)?,
            session: s.session,
            warnings: s.non_finite,
            notices: s.notices,
        })
    }
}

/// A model with its weights on a device.
pub struct Loaded {
    pub model: Model,
    pub session: Session,
    /// Weights holding NaN or Inf.
    pub warnings: Vec<String>,
    pub notices: Vec<String>,
}

impl Loaded {
    /// The model `options` name with synthetic weights of `options.seed` (the golden
    /// PRNG's, untrained), on `target`.
    pub async fn synthetic(options: &EngineOptions) -> Result<(Loaded, Target)> {
        let seed = options
            .seed
            .ok_or_else(|| bad("synthetic weights need a seed"))?;
        let p = options.prepare()?;
        let tensors = crate::weights::synthetic(&p.model.default_graph(1), seed as u64);
        let model = options.head(p.model.clone())?;
        let target = open_device(p.device, p.gpu, p.tuning_cache.as_deref()).await?;
        // The tensors move in: on the GPU they are dropped once uploaded.
        let session = Session::load(&model.default_graph(1), tensors, &target).await?;
        let loaded = Loaded {
            model,
            session,
            warnings: vec![],
            notices: vec![],
        };
        Ok((loaded, target))
    }

    /// The model's facts, as the binding reports them.
    pub fn info(&self, target: &Target, binding: Binding, cpu_threads: u32) -> ModelInfo {
        let model = &self.model;
        let gpu = self.session.gpu_context();
        ModelInfo {
            id: model.id.clone(),
            backend: match (gpu, binding) {
                (None, _) => Backend::Cpu,
                (Some(_), Binding::Wasm) => Backend::Webgpu,
                (Some(_), Binding::Native) => Backend::Gpu,
            },
            binding,
            adapter: gpu.map(|c| c.adapter_name().to_string()),
            precision: match gpu {
                Some(c) if c.precision() == crate::backend::gpu::Precision::F16 => Precision::F16,
                _ => Precision::F32,
            },
            threads: if gpu.is_some() { 1 } else { cpu_threads },
            tuned_shapes: gpu.map_or(0, |c| c.measured_shapes() as u32),
            notice: target.notice.clone(),
            input_size: [
                model.input[0] as u32,
                model.input[1] as u32,
                model.input[2] as u32,
            ],
            preprocess: model.preprocess.clone(),
            labels: model.labels.id(),
            num_classes: model.num_classes() as u32,
            class_names: model.labels.names(),
            feature_nodes: model.feature_nodes(),
            cam: model.classifier() == "fc" && model.has_classifier(),
            notices: self.notices.clone(),
            warnings: self
                .warnings
                .iter()
                .map(|k| format!("weight '{k}' holds NaN or Inf"))
                .collect(),
        }
    }
}

/// An input to a call, checked as it is made: encoded image bytes (decoded when the call
/// runs, off the JS thread where the binding has one), raw pixels, or a normalised tensor.
pub enum Input {
    Encoded(Vec<u8>),
    Image(image::DynamicImage),
    Tensor(Tensor),
}

impl Input {
    /// Raw 8-bit pixels, row-major, `channels` 3 (RGB) or 4 (RGBA).
    pub fn pixels(data: Vec<u8>, width: u32, height: u32, channels: u32) -> Result<Input> {
        let image = preprocess::from_pixels(data, width, height, channels).map_err(Error::from)?;
        Ok(Input::Image(image))
    }

    /// A `[n, c, h, w]` tensor, already normalised (`c`: the model's channels, checked
    /// when it runs); `shown` is the shape as the caller wrote it. Also how many values are
    /// NaN or Inf (the outputs they reach will be too).
    pub fn tensor(data: Vec<f32>, shape: Option<Vec<usize>>, shown: &str) -> Result<(Input, u32)> {
        let shape = shape
            .filter(|s| s.len() == 4 && s.iter().all(|&d| d > 0))
            .ok_or_else(|| {
                Error::BadInput(format!(
                    "a tensor shape is [n, c, h, w] with positive integers, not {shown}"
                ))
            })?;
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::BadInput(format!(
                "shape {shown} needs {n} values, data has {}",
                data.len()
            ))
            .into());
        }
        let non_finite = data.iter().filter(|v| !v.is_finite()).count() as u32;
        let t = Tensor::new(shape, data).map_err(|e| bad(format!("tensor: {e}")))?;
        Ok((Input::Tensor(t), non_finite))
    }
}

/// One call on a model, with its arguments checked.
pub enum Call {
    Forward(Input),
    Classify(Input, u32),
    Features(Input, Vec<String>),
    Cam(Input, Option<u32>),
    /// The tests' way to panic inside a call, as a bug would.
    Panic,
}

impl Call {
    pub fn features(input: Input, nodes: Option<Vec<String>>) -> Result<Call> {
        let nodes = nodes
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("features() takes a non-empty array of node names"))?;
        Ok(Call::Features(input, nodes))
    }
}

/// A class activation map: h * w values in [0, 1], the class mapped.
pub struct CamMap {
    pub data: Vec<f32>,
    pub shape: [u32; 2],
    pub class: u32,
}

/// What a call answers.
pub enum Answer {
    /// The logits.
    Tensor(Tensor),
    /// The top classes of each image, best first.
    Predictions(Vec<Vec<Prediction>>),
    /// Named outputs, in the order asked for.
    Outputs(Vec<(String, Tensor)>),
    Cam(CamMap),
}

/// A tensor's shape as the bindings hand it out.
pub fn dims(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&d| d as u32).collect()
}

/// A loaded model and its session: what a call runs on.
pub struct Runner {
    pub model: Model,
    pub session: Session,
}

impl Runner {
    pub async fn call(&mut self, c: Call) -> Result<Answer> {
        match c {
            Call::Forward(input) => {
                let x = self.input(input)?;
                Ok(Answer::Tensor(self.run(&x, &[]).await?.remove(0)))
            }
            Call::Classify(input, k) => {
                crate::tasks::check_classifier(&self.model)?;
                let x = self.input(input)?;
                let logits = self.run(&x, &[]).await?.remove(0);
                let rows = crate::tasks::classify(&self.model, &logits, k as usize)?;
                Ok(Answer::Predictions(
                    rows.into_iter()
                        .map(|row| row.into_iter().map(Into::into).collect())
                        .collect(),
                ))
            }
            Call::Features(input, nodes) => {
                let x = self.input(input)?;
                let names: Vec<&str> = nodes.iter().map(|s| s.as_str()).collect();
                let outs = self.run(&x, &names).await?;
                Ok(Answer::Outputs(nodes.into_iter().zip(outs).collect()))
            }
            Call::Cam(input, class) => {
                // A ResNet without its classifier; other architectures are told CAM is
                // for ResNets.
                if self.model.classifier() == "fc" {
                    crate::tasks::check_classifier(&self.model)?;
                }
                let x = self.input(input)?;
                let class = class.map(|c| c as usize);
                let cam = crate::tasks::cam(&mut self.session, &self.model, &x, class).await?;
                Ok(Answer::Cam(CamMap {
                    data: cam.data,
                    shape: [cam.shape[0] as u32, cam.shape[1] as u32],
                    class: cam.class as u32,
                }))
            }
            Call::Panic => panic!("the test hook panicked inside a call"),
        }
    }

    /// The model's input tensor: an image through the model's transform, a tensor as it is.
    fn input(&self, input: Input) -> Result<Tensor> {
        let image = match input {
            Input::Encoded(bytes) => preprocess::decode(&bytes).map_err(Error::from)?,
            Input::Image(image) => image,
            Input::Tensor(t) if t.shape()[1] != self.model.input[0] => {
                return Err(Error::BadInput(format!(
                    "{} takes {} channels, not {} (shape {:?})",
                    self.model.id,
                    self.model.input[0],
                    t.shape()[1],
                    t.shape()
                ))
                .into())
            }
            Input::Tensor(t) => return Ok(t),
        };
        Ok(preprocess::batch(&[image], &self.model.preprocess))
    }

    async fn run(&mut self, x: &Tensor, outputs: &[&str]) -> Result<Vec<Tensor>> {
        let g = self.model.graph(x.shape()).map_err(Error::from)?;
        let g = match outputs {
            [] => g,
            _ => g.with_outputs(outputs).map_err(|e| {
                bad(format!(
                    "{e}; feature nodes of {} include {}",
                    self.model.id,
                    self.model.feature_nodes().join(", ")
                ))
            })?,
        };
        Ok(self.session.run_graph(&g, x).await?)
    }
}
