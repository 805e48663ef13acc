//! The wasm binding under the npm package `webcnn` (`www/npm/index.js` wraps it; the
//! demo's worker uses that package). One typed method per call; the values that cross are
//! the Rust types of [`types`], whose TypeScript declarations are generated into the
//! binding's `.d.ts`. Every failure is a JS `Error` carrying a stable `code` (see
//! `Error::code`); what JS hands in is checked here, once.

mod types;

use crate::engine::{Session, Target};
use crate::error::Error;
use crate::models::{ids, Model};
use crate::preprocess;
use crate::Tensor;
use js_sys::{Array, Float32Array, Uint8Array};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use types::{bad, from_js, js_err, to_js, whole, EngineOptions};
use wasm_bindgen::prelude::*;
/// The threaded build's pool of web workers (`initThreadPool(n)` in JS), made once before
/// any model loads; the package does it when the page is cross-origin isolated.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// Threads the CPU backend computes on: the pool's size in the threaded build, else 1.
#[wasm_bindgen(js_name = cpuThreads)]
pub fn cpu_threads() -> u32 {
    #[cfg(feature = "threads")]
    {
        rayon::current_num_threads() as u32
    }
    #[cfg(not(feature = "threads"))]
    {
        1
    }
}

thread_local! {
    static ON_PANIC: RefCell<Option<js_sys::Function>> = const { RefCell::new(None) };
}

/// `f(message)` is called when Rust panics on this thread, just before the wasm traps:
/// the package then knows the instance is done for, even where the trap itself lands in
/// a microtask no caller awaits. `f` must not call back into the wasm.
#[wasm_bindgen(js_name = onPanic)]
pub fn on_panic(f: js_sys::Function) {
    ON_PANIC.with(|h| *h.borrow_mut() = Some(f));
}

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        ON_PANIC.with(|h| {
            if let Some(f) = h.try_borrow().ok().and_then(|f| f.clone()) {
                let _ = f.call1(&JsValue::NULL, &info.to_string().into());
            }
        });
    }));
}

/// Every code a `WebcnnError` can carry (the package's generated `codes.js`).
#[wasm_bindgen(js_name = errorCodes, unchecked_return_type = "string[]")]
pub fn error_codes() -> Array {
    crate::error::ErrorCode::ALL
        .iter()
        .map(|c| JsValue::from_str(c.name()))
        .collect()
}

/// Every model of the zoo with its facts.
#[wasm_bindgen(js_name = modelList, unchecked_return_type = "ModelSpec[]")]
pub fn model_list() -> JsValue {
    let specs: Vec<types::ModelSpec> = ids()
        .iter()
        .filter_map(|id| Model::get(id).ok())
        .map(|m| (&m).into())
        .collect();
    to_js(&specs)
}

/// An input to a call, checked as it is made: encoded image bytes, raw pixels, or a
/// normalised tensor. A call takes it over (its JS object is then spent).
#[wasm_bindgen]
pub struct Input {
    kind: InputKind,
    non_finite: u32,
}

enum InputKind {
    Image(image::DynamicImage),
    Tensor(Tensor),
}

/// `v`'s bytes where it is a `Uint8Array` (or, with `clamped`, a `Uint8ClampedArray`).
fn bytes_of(v: &JsValue, clamped: bool) -> Option<Vec<u8>> {
    if let Some(a) = v.dyn_ref::<Uint8Array>() {
        return Some(a.to_vec());
    }
    v.dyn_ref::<js_sys::Uint8ClampedArray>()
        .filter(|_| clamped)
        .map(|a| Uint8Array::new(a).to_vec())
}

#[wasm_bindgen]
impl Input {
    /// Encoded image bytes (JPEG, PNG, WebP, GIF, BMP), decoded now.
    pub fn encoded(
        #[wasm_bindgen(unchecked_param_type = "Uint8Array")] bytes: JsValue,
    ) -> Result<Input, JsValue> {
        let bytes = bytes_of(&bytes, false)
            .ok_or_else(|| bad("encoded image bytes must be a Uint8Array"))?;
        let image = preprocess::decode(&bytes).map_err(|e| js_err(e.into()))?;
        Ok(Input {
            kind: InputKind::Image(image),
            non_finite: 0,
        })
    }

    /// Raw 8-bit pixels, row-major, `channels` 3 (RGB) or 4 (RGBA).
    pub fn pixels(
        #[wasm_bindgen(unchecked_param_type = "Uint8Array | Uint8ClampedArray")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number")] width: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number")] height: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number")] channels: JsValue,
    ) -> Result<Input, JsValue> {
        let data = bytes_of(&data, true)
            .ok_or_else(|| bad("pixel data must be a Uint8Array or Uint8ClampedArray"))?;
        let image = preprocess::from_pixels(
            data,
            whole(&width, "width", 1)?,
            whole(&height, "height", 1)?,
            whole(&channels, "channels", 1)?,
        )
        .map_err(|e| js_err(e.into()))?;
        Ok(Input {
            kind: InputKind::Image(image),
            non_finite: 0,
        })
    }

    /// A `[n, c, h, w]` tensor, already normalised (`c`: the model's channels, checked
    /// when it runs).
    pub fn tensor(
        #[wasm_bindgen(unchecked_param_type = "Float32Array")] data: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[]")] shape: JsValue,
    ) -> Result<Input, JsValue> {
        let data = data
            .dyn_ref::<Float32Array>()
            .ok_or_else(|| bad("tensor data must be a Float32Array"))?
            .to_vec();
        let shown = js_sys::JSON::stringify(&shape)
            .ok()
            .and_then(|s| s.as_string())
            .unwrap_or_else(|| "?".into());
        let dims: Option<Vec<usize>> = match Array::is_array(&shape) {
            true => Array::from(&shape)
                .iter()
                .map(|d| whole(&d, "", 1).ok().map(|d| d as usize))
                .collect(),
            false => None,
        };
        let shape = dims.filter(|s| s.len() == 4).ok_or_else(|| {
            js_err(Error::BadInput(format!(
                "a tensor shape is [n, c, h, w] with positive integers, not {shown}"
            )))
        })?;
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(js_err(Error::BadInput(format!(
                "shape {shown} needs {n} values, data has {}",
                data.len()
            ))));
        }
        let non_finite = data.iter().filter(|v| !v.is_finite()).count() as u32;
        let t = Tensor::new(shape, data).map_err(|e| bad(format!("tensor: {e}")))?;
        Ok(Input {
            kind: InputKind::Tensor(t),
            non_finite,
        })
    }

    /// Values of a tensor that are NaN or Inf (the outputs they reach will be too).
    #[wasm_bindgen(getter, js_name = nonFinite)]
    pub fn non_finite(&self) -> u32 {
        self.non_finite
    }
}

struct Inner {
    model: Model,
    session: Session,
}

/// One call on a model, with its arguments checked.
enum Call {
    Forward(Input),
    Classify(Input, u32),
    Features(Input, Vec<String>),
    Cam(Input, Option<u32>),
    /// The tests' way to panic inside a call, as a bug would.
    Panic,
}

impl Call {
    fn classify(input: Input, top_k: JsValue) -> Result<Call, JsValue> {
        Ok(Call::Classify(input, whole(&top_k, "topK", 1)?))
    }

    fn features(input: Input, nodes: JsValue) -> Result<Call, JsValue> {
        let nodes: Option<Vec<String>> = match Array::is_array(&nodes) {
            true => Array::from(&nodes).iter().map(|v| v.as_string()).collect(),
            false => None,
        };
        let nodes = nodes
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("features() takes a non-empty array of node names"))?;
        Ok(Call::Features(input, nodes))
    }

    fn cam(input: Input, class: JsValue) -> Result<Call, JsValue> {
        let class = match class.is_undefined() || class.is_null() {
            true => None,
            false => Some(whole(&class, "class", 0)?),
        };
        Ok(Call::Cam(input, class))
    }
}

impl Inner {
    async fn call(&mut self, c: Call) -> Result<JsValue, JsValue> {
        match c {
            Call::Forward(input) => {
                let x = self.input(input)?;
                let y: types::Tensor = self.run(&x, &[]).await?.remove(0).into();
                Ok(to_js(&y))
            }
            Call::Classify(input, k) => self.classify(input, k).await,
            Call::Features(input, nodes) => self.features(input, nodes).await,
            Call::Cam(input, class) => self.cam(input, class).await,
            Call::Panic => panic!("the test hook panicked inside a call"),
        }
    }

    /// The model's input tensor: an image through the model's transform, a tensor as it is.
    fn input(&self, input: Input) -> Result<Tensor, JsValue> {
        match input.kind {
            InputKind::Image(image) => Ok(preprocess::batch(&[image], &self.model.preprocess)),
            InputKind::Tensor(t) if t.shape()[1] != self.model.input[0] => {
                Err(js_err(Error::BadInput(format!(
                    "{} takes {} channels, not {} (shape {:?})",
                    self.model.id,
                    self.model.input[0],
                    t.shape()[1],
                    t.shape()
                ))))
            }
            InputKind::Tensor(t) => Ok(t),
        }
    }

    async fn run(&mut self, x: &Tensor, outputs: &[&str]) -> Result<Vec<Tensor>, JsValue> {
        let g = self.model.graph(x.shape()).map_err(|e| js_err(e.into()))?;
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
        self.session.run_graph(&g, x).await.map_err(js_err)
    }

    async fn classify(&mut self, input: Input, k: u32) -> Result<JsValue, JsValue> {
        crate::tasks::check_classifier(&self.model).map_err(js_err)?;
        let x = self.input(input)?;
        let logits = self.run(&x, &[]).await?.remove(0);
        let rows = crate::tasks::classify(&self.model, &logits, k as usize).map_err(js_err)?;
        let rows: Vec<Vec<types::Prediction>> = rows
            .into_iter()
            .map(|row| row.into_iter().map(Into::into).collect())
            .collect();
        Ok(to_js(&rows))
    }

    async fn features(&mut self, input: Input, nodes: Vec<String>) -> Result<JsValue, JsValue> {
        let x = self.input(input)?;
        let names: Vec<&str> = nodes.iter().map(|s| s.as_str()).collect();
        let outs = self.run(&x, &names).await?;
        let outs = types::Outputs(
            nodes
                .into_iter()
                .zip(outs.into_iter().map(Into::into))
                .collect(),
        );
        Ok(to_js(&outs))
    }

    /// Class activation map of a ResNet ([`crate::tasks::cam`]).
    async fn cam(&mut self, input: Input, class: Option<u32>) -> Result<JsValue, JsValue> {
        // A ResNet without its classifier; other architectures are told CAM is for ResNets.
        if self.model.classifier() == "fc" {
            crate::tasks::check_classifier(&self.model).map_err(js_err)?;
        }
        let x = self.input(input)?;
        let class = class.map(|c| c as usize);
        let cam = crate::tasks::cam(&mut self.session, &self.model, &x, class)
            .await
            .map_err(js_err)?;
        Ok(to_js(&types::CamMap::from(cam)))
    }
}

/// Run `f` on the model's state as a Promise. The state is moved into the future and
/// back; the wrapper queues calls, so an overlap here is a bug, reported, not a panic.
fn with_inner<F, Fut>(cell: &Rc<RefCell<Option<Inner>>>, f: F) -> js_sys::Promise
where
    F: FnOnce(Inner) -> Fut + 'static,
    Fut: std::future::Future<Output = (Inner, Result<JsValue, JsValue>)> + 'static,
{
    let cell = cell.clone();
    wasm_bindgen_futures::future_to_promise(async move {
        let inner = cell
            .borrow_mut()
            .take()
            .ok_or_else(|| bad("the model is busy with another call or was disposed"))?;
        let (inner, r) = f(inner).await;
        *cell.borrow_mut() = Some(inner);
        r
    })
}

/// The options as they are applied: the model resolved (from `config` where it names the
/// architecture), its labels and transform set, the device's settings.
struct Prepared {
    model: Model,
    config: Option<crate::models::HubConfig>,
    device: crate::engine::Device,
    gpu: crate::backend::gpu::GpuOptions,
    tuning_cache: Option<String>,
}

impl EngineOptions {
    fn parse(v: JsValue) -> Result<EngineOptions, JsValue> {
        from_js(v)
    }

    fn device(&self) -> (crate::engine::Device, crate::backend::gpu::GpuOptions) {
        use crate::backend::gpu::{Precision, Tuning};
        let device = match self.device {
            types::Device::Auto => crate::engine::Device::Auto,
            types::Device::Webgpu => crate::engine::Device::Gpu,
            types::Device::Cpu => crate::engine::Device::Cpu,
        };
        let gpu = crate::backend::gpu::GpuOptions {
            precision: match self.precision {
                types::Precision::F32 => Precision::F32,
                types::Precision::F16 => Precision::F16,
            },
            tuning: match self.tuning {
                types::Tuning::Auto => Tuning::Auto,
                types::Tuning::Table => Tuning::Table,
                types::Tuning::Measure => Tuning::Measure,
            },
            ..Default::default()
        };
        (device, gpu)
    }

    /// The ONNX model's name, where the file is one; it brings its own graph, so `model`
    /// and `config` are refused beside it.
    fn onnx(&self) -> Result<Option<&str>, JsValue> {
        match (&self.onnx, &self.model, &self.config) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(bad(
                "an ONNX model brings its own graph: give it as `model`, without a model id or config",
            )),
            (o, ..) => Ok(o.as_deref()),
        }
    }

    /// The model these options name: by id, else by the config.json.
    fn model(&self) -> Result<(Model, Option<crate::models::HubConfig>), JsValue> {
        let config = self
            .config
            .as_deref()
            .map(crate::models::HubConfig::parse)
            .transpose()
            .map_err(|e| bad(format!("config.json: {e}")))?;
        let id = self.model.as_deref().filter(|m| !m.is_empty());
        let model = crate::weights::resolve_model(id, config.as_ref()).map_err(|e| match e {
            // The CLI's message points at `webcnn models`; here the ids are listed.
            Error::Model(m) => types::coded(
                Error::Model(m).code(),
                &format!(
                    "unknown model '{}'; known: {}",
                    id.unwrap_or_default(),
                    ids().join(", ")
                ),
            ),
            e => js_err(e),
        })?;
        Ok((model, config))
    }

    /// `model` with the `labels` and `preprocess` options applied.
    fn head(&self, mut model: Model) -> Result<Model, JsValue> {
        if let Some(text) = &self.labels {
            let names = crate::models::Labels::parse(text).map_err(|e| js_err(e.into()))?;
            model = model.with_labels(names).map_err(|e| js_err(e.into()))?;
        }
        model.preprocess = self.transform(&model.preprocess)?;
        Ok(model)
    }

    fn transform(&self, base: &preprocess::Preprocess) -> Result<preprocess::Preprocess, JsValue> {
        match &self.preprocess {
            None => Ok(base.clone()),
            Some(p) => base
                .clone()
                .with_timm_cfg(&p.timm_cfg())
                .map_err(|e| bad(format!("preprocess: {e}"))),
        }
    }

    fn prepare(&self) -> Result<Prepared, JsValue> {
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
}

/// Checks load options before anything is fetched: their types and values, the model id
/// (unless `named_later`: a Hub repository's config.json names it), the label file's
/// format and the transform's settings. [`Engine::begin`] and [`Engine::synthetic`] check
/// them again with the same code, and then the labels against the head.
#[wasm_bindgen(js_name = checkOptions)]
pub fn check_options(
    #[wasm_bindgen(unchecked_param_type = "EngineOptions")] options: JsValue,
    named_later: bool,
) -> Result<(), JsValue> {
    let o = EngineOptions::parse(options)?;
    o.onnx()?;
    let base = match &o.model {
        // Where the file names the model (a Hub config, an ONNX model) its transform is
        // known once it is read; a setting given is checked against ImageNet's, which
        // has every field.
        None if named_later || o.onnx.is_some() => crate::models::imagenet(),
        _ => o.model()?.0.preprocess,
    };
    if let Some(text) = &o.labels {
        crate::models::Labels::parse(text).map_err(|e| js_err(e.into()))?;
    }
    o.transform(&base)?;
    Ok(())
}

/// The target for `device`, its GPU starting from the kernel choices in `tuning_cache`
/// (JSON from an earlier [`Engine::tuning_cache`]; not JSON: measured again).
async fn open_target(p: &Prepared) -> Result<Target, JsValue> {
    open_device(p.device, p.gpu.clone(), p.tuning_cache.as_deref()).await
}

async fn open_device(
    device: crate::engine::Device,
    gpu: crate::backend::gpu::GpuOptions,
    tuning_cache: Option<&str>,
) -> Result<Target, JsValue> {
    let target = Target::open_with(device, gpu).await.map_err(js_err)?;
    if let (Some(ctx), Some(cache)) = (target.gpu_context(), tuning_cache) {
        ctx.import_tuning(cache);
    }
    Ok(target)
}

/// A weights file read piece by piece, or an ONNX model gathered whole.
enum Load {
    Weights(Box<crate::load::StreamLoad>),
    Onnx(Box<crate::load::OnnxLoad>),
}

/// A model whose weights stream in: [`Engine::begin`] makes it, `push` takes the file's
/// bytes in order (a safetensors file's conv and linear weights go to WebGPU as they
/// arrive, so the page never holds them), `finish` makes the [`Engine`].
#[wasm_bindgen]
pub struct Loader {
    load: Rc<RefCell<Option<Load>>>,
    target: Target,
    options: Rc<EngineOptions>,
    tuning_cache: Option<String>,
}

#[wasm_bindgen]
impl Loader {
    /// The file's next bytes (copied into wasm memory and used at once; the caller's
    /// buffer can go). True when the caller should await [`Loader::settle`] before the next.
    pub fn push(&self, chunk: &[u8]) -> Result<bool, JsValue> {
        let mut cell = self
            .load
            .try_borrow_mut()
            .map_err(|_| bad("push while the loader settles: await settle() first"))?;
        match cell.as_mut() {
            Some(Load::Weights(load)) => load.push(chunk).map_err(js_err),
            Some(Load::Onnx(load)) => load.push(chunk).map(|_| false).map_err(js_err),
            None => Err(bad("the loader has finished")),
        }
    }

    /// For an ONNX model, once its bytes are in: the external files its initializers are
    /// kept in (names relative to the model's folder); none for a weights file.
    #[wasm_bindgen(js_name = externalFiles, unchecked_return_type = "string[]")]
    pub fn external_files(&self) -> Result<JsValue, JsValue> {
        let mut cell = self
            .load
            .try_borrow_mut()
            .map_err(|_| bad("the loader is busy"))?;
        let files = match cell.as_mut() {
            Some(Load::Onnx(load)) => load.external_files().map_err(js_err)?,
            Some(Load::Weights(_)) => vec![],
            None => return Err(bad("the loader has finished")),
        };
        Ok(to_js(&files))
    }

    /// The next bytes of the ONNX model's external file `location` (`start`: from the
    /// file's beginning again).
    #[wasm_bindgen(js_name = pushExternal)]
    pub fn push_external(&self, location: &str, chunk: &[u8], start: bool) -> Result<(), JsValue> {
        let mut cell = self
            .load
            .try_borrow_mut()
            .map_err(|_| bad("the loader is busy"))?;
        match cell.as_mut() {
            Some(Load::Onnx(load)) => load.push_external(location, chunk, start).map_err(js_err),
            _ => Err(bad("external files belong to an ONNX model")),
        }
    }

    /// Waits until WebGPU has taken the weights written so far.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn settle(&self) -> js_sys::Promise {
        let load = self.load.clone();
        let ctx = self.target.gpu_context().cloned();
        wasm_bindgen_futures::future_to_promise(async move {
            if let Some(ctx) = ctx {
                ctx.settle().await.map_err(js_err)?;
            }
            if let Some(Load::Weights(l)) = load.borrow_mut().as_mut() {
                l.settled();
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The [`Engine`], once every byte was pushed: the head fitted to the weights, named
    /// by the `labels` option, images prepared by the `preprocess` option.
    #[wasm_bindgen(unchecked_return_type = "Promise<Engine>")]
    pub fn finish(&self) -> js_sys::Promise {
        let load = self.load.borrow_mut().take();
        let target = self.target.clone();
        let options = self.options.clone();
        let tuning_cache = self.tuning_cache.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let s = match load.ok_or_else(|| bad("the loader has finished"))? {
                Load::Weights(load) => load.finish().await,
                Load::Onnx(load) => load.finish().await,
            };
            let s = s.map_err(js_err)?;
            let model = options.head(s.model)?;
            Ok(Engine::made(
                model,
                s.session,
                &target,
                &s.non_finite,
                s.notices,
                tuning_cache,
            )
            .into())
        })
    }
}

/// One model with its weights loaded once on WebGPU or the CPU backend.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<RefCell<Option<Inner>>>,
    info: JsValue,
    gpu: Option<crate::backend::gpu::GpuContext>,
    /// The tuning cache it was loaded with (other adapters' entries are kept).
    tuning_base: Option<String>,
}

#[wasm_bindgen]
impl Engine {
    /// Start loading the model `options` name (or, where they name none, the architecture
    /// their `config` names) from a weights file of `total` bytes where known; a
    /// [`Loader`] takes the file's bytes.
    #[wasm_bindgen(unchecked_return_type = "Promise<Loader>")]
    pub fn begin(
        #[wasm_bindgen(unchecked_param_type = "EngineOptions")] options: JsValue,
        total: Option<f64>,
    ) -> js_sys::Promise {
        let options = EngineOptions::parse(options);
        wasm_bindgen_futures::future_to_promise(async move {
            let options = Rc::new(options?);
            let total = total
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| t as u64);
            if let Some(id) = options.onnx()? {
                let (device, gpu) = options.device();
                options.transform(&crate::models::imagenet())?;
                let target = open_device(device, gpu, options.tuning_cache.as_deref()).await?;
                return Ok(Loader {
                    load: Rc::new(RefCell::new(Some(Load::Onnx(Box::new(
                        crate::load::OnnxLoad::new(id, &target, total),
                    ))))),
                    target,
                    tuning_cache: options.tuning_cache.clone(),
                    options,
                }
                .into());
            }
            let p = options.prepare()?;
            // The transform is checked before any byte arrives.
            options.transform(&p.model.preprocess)?;
            let target = open_target(&p).await?;
            let load = crate::load::StreamLoad::new(p.model, p.config, &target, total);
            Ok(Loader {
                load: Rc::new(RefCell::new(Some(Load::Weights(Box::new(load))))),
                target,
                options,
                tuning_cache: p.tuning_cache,
            }
            .into())
        })
    }

    /// Load the model `options` name with synthetic weights of `options.seed` (the golden
    /// PRNG's, untrained).
    #[wasm_bindgen(unchecked_return_type = "Promise<Engine>")]
    pub fn synthetic(
        #[wasm_bindgen(unchecked_param_type = "EngineOptions")] options: JsValue,
    ) -> js_sys::Promise {
        let options = EngineOptions::parse(options);
        wasm_bindgen_futures::future_to_promise(async move {
            let options = options?;
            let seed = options
                .seed
                .ok_or_else(|| bad("synthetic weights need a seed"))?;
            let p = options.prepare()?;
            let tensors = crate::weights::synthetic(&p.model.default_graph(1), seed as u64);
            let model = options.head(p.model.clone())?;
            let target = open_target(&p).await?;
            // The tensors move in: on WebGPU they are dropped once uploaded.
            let session = Session::load(&model.default_graph(1), tensors, &target)
                .await
                .map_err(js_err)?;
            Ok(Engine::made(model, session, &target, &[], vec![], p.tuning_cache).into())
        })
    }

    fn made(
        model: Model,
        session: Session,
        target: &Target,
        warnings: &[String],
        notices: Vec<String>,
        tuning_cache: Option<String>,
    ) -> Engine {
        let gpu = session.gpu_context().cloned();
        let info = types::ModelInfo {
            id: model.id.clone(),
            backend: match gpu {
                Some(_) => types::Backend::Webgpu,
                None => types::Backend::Cpu,
            },
            adapter: gpu.as_ref().map(|c| c.adapter_name().to_string()),
            precision: match &gpu {
                Some(c) if c.precision() == crate::backend::gpu::Precision::F16 => {
                    types::Precision::F16
                }
                _ => types::Precision::F32,
            },
            threads: if gpu.is_some() { 1 } else { cpu_threads() },
            tuned_shapes: gpu.as_ref().map_or(0, |c| c.measured_shapes() as u32),
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
            notices,
            warnings: warnings
                .iter()
                .map(|k| format!("weight '{k}' holds NaN or Inf"))
                .collect(),
        };
        Engine {
            info: to_js(&info),
            inner: Rc::new(RefCell::new(Some(Inner { model, session }))),
            gpu,
            tuning_base: tuning_cache,
        }
    }

    /// The model's facts.
    #[wasm_bindgen(getter, unchecked_return_type = "ModelInfo")]
    pub fn info(&self) -> JsValue {
        self.info.clone()
    }

    /// The logits of an input.
    #[wasm_bindgen(unchecked_return_type = "Promise<Tensor>")]
    pub fn forward(&self, input: Input) -> js_sys::Promise {
        self.later(Ok(Call::Forward(input)))
    }

    /// [`Engine::forward`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = forwardSync, unchecked_return_type = "Tensor")]
    pub fn forward_sync(&self, input: Input) -> Result<JsValue, JsValue> {
        self.now(Ok(Call::Forward(input)))
    }

    /// The top `topK` classes of each image, best first.
    #[wasm_bindgen(unchecked_return_type = "Promise<Prediction[][]>")]
    pub fn classify(
        &self,
        input: Input,
        #[wasm_bindgen(js_name = topK, unchecked_param_type = "number")] top_k: JsValue,
    ) -> js_sys::Promise {
        self.later(Call::classify(input, top_k))
    }

    /// [`Engine::classify`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = classifySync, unchecked_return_type = "Prediction[][]")]
    pub fn classify_sync(
        &self,
        input: Input,
        #[wasm_bindgen(js_name = topK, unchecked_param_type = "number")] top_k: JsValue,
    ) -> Result<JsValue, JsValue> {
        self.now(Call::classify(input, top_k))
    }

    /// The outputs of the named nodes (torchvision's names: `layer2`, `features.29`, ...).
    #[wasm_bindgen(unchecked_return_type = "Promise<Record<string, Tensor>>")]
    pub fn features(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "string[]")] nodes: JsValue,
    ) -> js_sys::Promise {
        self.later(Call::features(input, nodes))
    }

    /// [`Engine::features`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = featuresSync, unchecked_return_type = "Record<string, Tensor>")]
    pub fn features_sync(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "string[]")] nodes: JsValue,
    ) -> Result<JsValue, JsValue> {
        self.now(Call::features(input, nodes))
    }

    /// A ResNet's class activation map for `class` (default: the top class).
    #[wasm_bindgen(unchecked_return_type = "Promise<CamMap>")]
    pub fn cam(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "number | undefined")] class: JsValue,
    ) -> js_sys::Promise {
        self.later(Call::cam(input, class))
    }

    /// [`Engine::cam`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = camSync, unchecked_return_type = "CamMap")]
    pub fn cam_sync(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "number | undefined")] class: JsValue,
    ) -> Result<JsValue, JsValue> {
        self.now(Call::cam(input, class))
    }

    /// Panics inside a call, as a bug would: the package's tests of recovery.
    #[wasm_bindgen(js_name = _panic)]
    pub fn panic(&self, sync: bool) -> Result<JsValue, JsValue> {
        match sync {
            true => self.now(Ok(Call::Panic)),
            false => Ok(self.later(Ok(Call::Panic)).into()),
        }
    }

    /// `c` run as a Promise.
    fn later(&self, c: Result<Call, JsValue>) -> js_sys::Promise {
        let c = match c {
            Ok(c) => c,
            Err(e) => return js_sys::Promise::reject(&e),
        };
        with_inner(&self.inner, move |mut inner| async move {
            let r = inner.call(c).await;
            (inner, r)
        })
    }

    /// `c` finished before it returns, for the CPU backend (whose runs never wait): a trap
    /// then reaches the caller as an exception, never a lost Promise.
    fn now(&self, c: Result<Call, JsValue>) -> Result<JsValue, JsValue> {
        if self.gpu.is_some() {
            return Err(bad("the synchronous calls are for the CPU backend"));
        }
        let c = c?;
        let mut cell = self
            .inner
            .try_borrow_mut()
            .map_err(|_| bad("the model is busy with another call"))?;
        let inner = cell
            .as_mut()
            .ok_or_else(|| bad("the model is busy with another call or was disposed"))?;
        let fut = std::pin::pin!(inner.call(c));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Err(bad("a CPU call waited: a bug, please report it")),
        }
    }

    /// Layer shapes whose kernels were timed on this engine's device so far.
    #[wasm_bindgen(js_name = tunedShapes)]
    pub fn tuned_shapes(&self) -> u32 {
        self.gpu.as_ref().map_or(0, |c| c.measured_shapes() as u32)
    }

    /// The tuning cache to keep for the next load (`null` on the CPU): the one it was
    /// loaded with, this adapter's kernel choices as they are now.
    #[wasm_bindgen(js_name = tuningCache)]
    pub fn tuning_cache(&self) -> Option<String> {
        let gpu = self.gpu.as_ref()?;
        Some(gpu.export_tuning(self.tuning_base.as_deref()))
    }

    /// Destroys the GPU device, as a driver reset would: the package's tests use it to
    /// check recovery. Not part of the public API.
    #[wasm_bindgen(js_name = _loseDevice)]
    pub fn lose_device(&self) -> bool {
        match &self.gpu {
            Some(ctx) => {
                ctx.destroy();
                true
            }
            None => false,
        }
    }
}
