//! The wasm binding under the npm package `webcnn` (`www/npm/index.js` wraps it; the
//! demo's worker uses that package). Inputs arrive already normalised by the wrapper;
//! every failure is a JS `Error` carrying a stable `code` (see `Error::code`).

use crate::engine::{Device, Session, Target};
use crate::error::Error;
use crate::models::{ids, Model};
use crate::preprocess;
use crate::{Graph, Tensor};
use js_sys::{Array, Float32Array, Object, Reflect, Uint8Array};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
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

/// A JS `Error` with `code` set.
fn js_err(e: Error) -> JsValue {
    let o = js_sys::Error::new(&e.to_string());
    let _ = Reflect::set(&o, &"code".into(), &e.code().into());
    o.into()
}

fn bad(msg: impl Into<String>) -> JsValue {
    js_err(Error::BadArgument(msg.into()))
}

fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o.into()
}

fn get(o: &JsValue, key: &str) -> JsValue {
    Reflect::get(o, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn num(o: &JsValue, key: &str) -> Result<u32, JsValue> {
    get(o, key)
        .as_f64()
        .filter(|v| *v >= 0.0 && v.fract() == 0.0 && *v <= u32::MAX as f64)
        .map(|v| v as u32)
        .ok_or_else(|| bad(format!("'{key}' must be a non-negative integer")))
}

fn usizes(v: &[usize]) -> JsValue {
    v.iter()
        .map(|&d| JsValue::from(d as u32))
        .collect::<Array>()
        .into()
}

fn tensor_js(t: Tensor) -> JsValue {
    obj(&[
        ("data", Float32Array::from(t.data()).into()),
        ("shape", usizes(t.shape())),
    ])
}

fn model_js(m: &Model) -> JsValue {
    obj(&[
        ("id", m.id.as_str().into()),
        ("params", (m.param_count() as f64).into()),
        ("macs", (m.macs() as f64).into()),
        ("input", usizes(&m.input)),
        ("labels", m.labels.id().into()),
        ("numClasses", (m.num_classes() as u32).into()),
        (
            "featureNodes",
            m.feature_nodes()
                .iter()
                .map(|s| JsValue::from(s.as_str()))
                .collect::<Array>()
                .into(),
        ),
        ("cam", (m.classifier() == "fc").into()),
        ("preprocess", preprocess_js(&m.preprocess)),
    ])
}

/// A transform as JS sees it: `{size: [h, w], cropPct, interpolation, cropMode, mean, std}`.
fn preprocess_js(p: &crate::preprocess::Preprocess) -> JsValue {
    let floats = |v: &[f32; 3]| -> JsValue {
        v.iter()
            .map(|&x| JsValue::from(x))
            .collect::<Array>()
            .into()
    };
    obj(&[
        ("size", usizes(&p.size)),
        ("cropPct", p.crop_pct.into()),
        ("interpolation", p.interpolation.name().into()),
        ("cropMode", p.crop_mode.name().into()),
        ("mean", floats(&p.mean)),
        ("std", floats(&p.std)),
    ])
}

/// Every code a `WebcnnError` can carry (the package's generated `codes.js`).
#[wasm_bindgen(js_name = errorCodes)]
pub fn error_codes() -> Array {
    crate::error::ErrorCode::ALL
        .iter()
        .map(|c| JsValue::from_str(c.name()))
        .collect()
}

/// Every model of the zoo with its facts.
#[wasm_bindgen(js_name = modelList)]
pub fn model_list() -> Array {
    ids()
        .iter()
        .filter_map(|id| Model::get(id).ok())
        .map(|m| model_js(&m))
        .collect()
}

struct Inner {
    model: Model,
    session: Session,
}

/// One call on a model, with its arguments checked.
enum Call {
    Forward(JsValue),
    Classify(JsValue, u32),
    Features(JsValue, Vec<String>),
    Cam(JsValue, Option<u32>),
    /// The tests' way to panic inside a call, as a bug would.
    Panic,
}

impl Call {
    fn parse(method: &str, a: JsValue, b: JsValue) -> Result<Call, JsValue> {
        let int = |v: &JsValue, what: &str| {
            v.as_f64()
                .filter(|d| *d >= 0.0 && d.fract() == 0.0 && *d <= u32::MAX as f64)
                .map(|d| d as u32)
                .ok_or_else(|| bad(format!("{what} must be a non-negative integer")))
        };
        Ok(match method {
            "forward" => Call::Forward(a),
            "classify" => Call::Classify(a, int(&b, "topK")?),
            "features" => {
                let nodes = Array::from(&b)
                    .iter()
                    .map(|v| v.as_string())
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| bad("node names must be strings"))?;
                Call::Features(a, nodes)
            }
            "cam" if b.is_undefined() || b.is_null() => Call::Cam(a, None),
            "cam" => Call::Cam(a, Some(int(&b, "class")?)),
            "_panic" => Call::Panic,
            m => return Err(bad(format!("unknown method '{m}'"))),
        })
    }
}

impl Inner {
    async fn call(&mut self, c: Call) -> Result<JsValue, JsValue> {
        match c {
            Call::Forward(input) => {
                let x = self.input(&input)?;
                Ok(tensor_js(self.run(&x, &[]).await?.remove(0)))
            }
            Call::Classify(input, k) => self.classify(input, k).await,
            Call::Features(input, nodes) => self.features(input, nodes).await,
            Call::Cam(input, class) => self.cam(input, class).await,
            Call::Panic => panic!("the test hook panicked inside a call"),
        }
    }

    /// An input as the wrapper hands it over: `{kind: 'encoded', bytes}`, `{kind:
    /// 'pixels', data, width, height, channels}` or `{kind: 'tensor', data, shape}`.
    fn input(&self, input: &JsValue) -> Result<Tensor, JsValue> {
        let kind = get(input, "kind").as_string().unwrap_or_default();
        let image = match kind.as_str() {
            "encoded" => {
                let bytes = get(input, "bytes")
                    .dyn_into::<Uint8Array>()
                    .map_err(|_| bad("encoded image bytes must be a Uint8Array"))?;
                preprocess::decode(&bytes.to_vec()).map_err(|e| js_err(e.into()))?
            }
            "pixels" => {
                let data = get(input, "data");
                let data = Uint8Array::new(&data).to_vec();
                preprocess::from_pixels(
                    data,
                    num(input, "width")?,
                    num(input, "height")?,
                    num(input, "channels")?,
                )
                .map_err(|e| js_err(e.into()))?
            }
            "tensor" => {
                let data = get(input, "data")
                    .dyn_into::<Float32Array>()
                    .map_err(|_| bad("tensor data must be a Float32Array"))?
                    .to_vec();
                let shape: Vec<usize> = Array::from(&get(input, "shape"))
                    .iter()
                    .map(|v| v.as_f64().filter(|d| *d >= 0.0 && d.fract() == 0.0))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| bad("tensor shape must be non-negative integers"))?
                    .into_iter()
                    .map(|d| d as usize)
                    .collect();
                if shape.len() != 4 || shape[1] != 3 {
                    return Err(js_err(Error::InputShape {
                        expected: vec![1, 3, self.model.input[1], self.model.input[2]],
                        got: shape,
                    }));
                }
                let n: usize = shape.iter().product();
                return Tensor::new(shape, data).map_err(|e| {
                    js_err(Error::BadArgument(format!(
                        "tensor data: {e} (expected {n} values)"
                    )))
                });
            }
            _ => return Err(bad(format!("unknown input kind '{kind}'"))),
        };
        Ok(preprocess::batch(&[image], &self.model.preprocess))
    }

    /// The model's graph for `x`'s shape, with `outputs` (none: the classifier).
    fn graph(&self, x: &Tensor, outputs: &[&str]) -> Result<Graph, JsValue> {
        let g = self.model.graph(x.shape()).map_err(|e| js_err(e.into()))?;
        if outputs.is_empty() {
            return Ok(g);
        }
        g.with_outputs(outputs).map_err(|e| {
            bad(format!(
                "{e}; feature nodes of {} include {}",
                self.model.id,
                self.model.feature_nodes().join(", ")
            ))
        })
    }

    async fn run(&mut self, x: &Tensor, outputs: &[&str]) -> Result<Vec<Tensor>, JsValue> {
        let g = self.graph(x, outputs)?;
        self.session.run_graph(&g, x).await.map_err(js_err)
    }

    /// `classify` and `cam` need a classifier; a headless model is a feature extractor.
    fn classifier(&self) -> Result<(), JsValue> {
        if self.model.has_classifier() {
            return Ok(());
        }
        Err(js_err(Error::NoClassifier(format!(
            "the weights have no classifier ('{}'): they make a feature extractor; use features()",
            self.model.classifier()
        ))))
    }

    async fn classify(&mut self, input: JsValue, k: u32) -> Result<JsValue, JsValue> {
        if k == 0 {
            return Err(bad("topK must be a positive integer"));
        }
        self.classifier()?;
        let x = self.input(&input)?;
        let logits = self.run(&x, &[]).await?.remove(0);
        let rows = crate::tasks::classify(&self.model, &logits, k as usize).map_err(js_err)?;
        let rows: Array = rows
            .into_iter()
            .map(|row| -> JsValue {
                row.into_iter()
                    .map(|p| {
                        obj(&[
                            ("index", (p.index as u32).into()),
                            ("label", p.label.as_str().into()),
                            ("probability", p.probability.into()),
                        ])
                    })
                    .collect::<Array>()
                    .into()
            })
            .collect();
        Ok(rows.into())
    }

    async fn features(&mut self, input: JsValue, nodes: Vec<String>) -> Result<JsValue, JsValue> {
        if nodes.is_empty() {
            return Err(bad("name at least one node"));
        }
        let x = self.input(&input)?;
        let names: Vec<&str> = nodes.iter().map(|s| s.as_str()).collect();
        let outs = self.run(&x, &names).await?;
        let o = Object::new();
        for (name, t) in nodes.iter().zip(outs) {
            let _ = Reflect::set(&o, &name.into(), &tensor_js(t));
        }
        Ok(o.into())
    }

    /// Class activation map of a ResNet ([`crate::tasks::cam`]).
    async fn cam(&mut self, input: JsValue, class: Option<u32>) -> Result<JsValue, JsValue> {
        if self.model.classifier() == "fc" {
            self.classifier()?;
        }
        let x = self.input(&input)?;
        let class = class.map(|c| c as usize);
        let cam = crate::tasks::cam(&mut self.session, &self.model, &x, class)
            .await
            .map_err(js_err)?;
        Ok(obj(&[
            ("data", Float32Array::from(&cam.data[..]).into()),
            ("shape", usizes(&cam.shape)),
            ("class", (cam.class as u32).into()),
        ]))
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

/// How to open the device: `device` "auto" (WebGPU, else the CPU with a notice), "webgpu"
/// or "cpu"; WebGPU stores values at `precision`, "f32" or "f16" (the adapter's
/// shader-f16), and picks each convolution's kernel by `tuning` ("auto": the static table
/// for known adapter kinds, else timed; "table"; "measure": timed unless remembered).
fn device_options(
    device: &str,
    precision: &str,
    tuning: &str,
) -> Result<(Device, crate::backend::gpu::GpuOptions), JsValue> {
    let device = match device {
        "auto" => Device::Auto,
        "webgpu" | "gpu" => Device::Gpu,
        "cpu" => Device::Cpu,
        d => {
            return Err(bad(format!(
                "unknown device '{d}': use auto, webgpu or cpu"
            )))
        }
    };
    let precision = match precision {
        "f32" => crate::backend::gpu::Precision::F32,
        "f16" => crate::backend::gpu::Precision::F16,
        p => return Err(bad(format!("unknown precision '{p}': use f32 or f16"))),
    };
    let tuning = match tuning {
        "auto" => crate::backend::gpu::Tuning::Auto,
        "table" => crate::backend::gpu::Tuning::Table,
        "measure" => crate::backend::gpu::Tuning::Measure,
        t => {
            return Err(bad(format!(
                "unknown tuning '{t}': use auto, table or measure"
            )))
        }
    };
    let opts = crate::backend::gpu::GpuOptions {
        precision,
        tuning,
        ..Default::default()
    };
    Ok((device, opts))
}

/// The target for `device`, its GPU starting from the kernel choices in `tuning_cache`
/// (JSON from an earlier [`Engine::tuning_cache`]; not JSON: measured again).
async fn open_target(
    device: Device,
    opts: crate::backend::gpu::GpuOptions,
    tuning_cache: Option<&str>,
) -> Result<Target, JsValue> {
    let target = Target::open_with(device, opts).await.map_err(js_err)?;
    if let (Some(ctx), Some(cache)) = (target.gpu_context(), tuning_cache) {
        ctx.import_tuning(cache);
    }
    Ok(target)
}

/// A timm config.json's text, parsed.
fn hub_config(config: Option<String>) -> Result<Option<crate::models::HubConfig>, JsValue> {
    config
        .map(|t| crate::models::HubConfig::parse(&t))
        .transpose()
        .map_err(|e| bad(format!("config.json: {e}")))
}

/// `labels` (a label file's text) and `preprocess` (timm's settings as JSON) applied.
fn with_labels_and_transform(
    mut model: Model,
    labels: Option<String>,
    preprocess: Option<String>,
) -> Result<Model, JsValue> {
    if let Some(text) = labels {
        let names = crate::models::Labels::parse(&text).map_err(|e| js_err(e.into()))?;
        model = model.with_labels(names).map_err(|e| js_err(e.into()))?;
    }
    if let Some(cfg) = preprocess {
        let cfg: serde_json::Value =
            serde_json::from_str(&cfg).map_err(|e| bad(format!("preprocess: {e}")))?;
        model.preprocess = model
            .preprocess
            .clone()
            .with_timm_cfg(&cfg)
            .map_err(|e| bad(format!("preprocess: {e}")))?;
    }
    Ok(model)
}

/// A model whose weights stream in: [`Engine::begin`] makes it, `push` takes the file's
/// bytes in order (a safetensors file's conv and linear weights go to WebGPU as they
/// arrive, so the page never holds them), `finish` makes the [`Engine`].
#[wasm_bindgen]
pub struct Loader {
    load: Rc<RefCell<Option<crate::load::StreamLoad>>>,
    target: Target,
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
        let load = cell
            .as_mut()
            .ok_or_else(|| bad("the loader has finished"))?;
        load.push(chunk).map_err(js_err)
    }

    /// Waits until WebGPU has taken the weights written so far.
    pub fn settle(&self) -> js_sys::Promise {
        let load = self.load.clone();
        let ctx = self.target.gpu_context().cloned();
        wasm_bindgen_futures::future_to_promise(async move {
            if let Some(ctx) = ctx {
                ctx.settle().await.map_err(js_err)?;
            }
            if let Some(l) = load.borrow_mut().as_mut() {
                l.settled();
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The [`Engine`], once every byte was pushed: the head fitted to the weights, `labels`
    /// (a label file's text) naming its classes, `preprocess` (timm's settings as JSON)
    /// overriding the transform.
    pub fn finish(&self, labels: Option<String>, preprocess: Option<String>) -> js_sys::Promise {
        let load = self.load.borrow_mut().take();
        let target = self.target.clone();
        let tuning_cache = self.tuning_cache.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let load = load.ok_or_else(|| bad("the loader has finished"))?;
            let s = load.finish().await.map_err(js_err)?;
            let model = with_labels_and_transform(s.model, labels, preprocess)?;
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
    /// Start loading `model_id` (or, where it is empty, the architecture `config` names: a
    /// timm config.json, which also gives class names and the transform) on `device` (see
    /// [`device_options`]) from a weights file of `total` bytes where known; a
    /// [`Loader`] takes the file's bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        model_id: String,
        device: String,
        precision: String,
        tuning: String,
        tuning_cache: Option<String>,
        config: Option<String>,
        total: Option<f64>,
    ) -> js_sys::Promise {
        wasm_bindgen_futures::future_to_promise(async move {
            let config = hub_config(config)?;
            let id = Some(model_id.as_str()).filter(|m| !m.is_empty());
            let model = crate::weights::resolve_model(id, config.as_ref()).map_err(js_err)?;
            let (device, opts) = device_options(&device, &precision, &tuning)?;
            let target = open_target(device, opts, tuning_cache.as_deref()).await?;
            let total = total
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| t as u64);
            let load = crate::load::StreamLoad::new(model, config, &target, total);
            Ok(Loader {
                load: Rc::new(RefCell::new(Some(load))),
                target,
                tuning_cache,
            }
            .into())
        })
    }

    /// Load `model_id` with synthetic weights of `seed` (the golden PRNG's, untrained) on
    /// `device` (see [`device_options`]); `labels` and `preprocess` as [`Loader::finish`]
    /// takes them.
    #[allow(clippy::too_many_arguments)]
    pub fn synthetic(
        model_id: String,
        seed: u32,
        device: String,
        precision: String,
        tuning: String,
        tuning_cache: Option<String>,
        labels: Option<String>,
        preprocess: Option<String>,
    ) -> js_sys::Promise {
        wasm_bindgen_futures::future_to_promise(async move {
            let model = crate::weights::resolve_model(Some(&model_id), None).map_err(js_err)?;
            let tensors = crate::weights::synthetic(&model.default_graph(1), seed as u64);
            let model = with_labels_and_transform(model, labels, preprocess)?;
            let (device, opts) = device_options(&device, &precision, &tuning)?;
            let target = open_target(device, opts, tuning_cache.as_deref()).await?;
            // The tensors move in: on WebGPU they are dropped once uploaded.
            let session = Session::load(&model.default_graph(1), tensors, &target)
                .await
                .map_err(js_err)?;
            Ok(Engine::made(model, session, &target, &[], vec![], tuning_cache).into())
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
        let adapter = gpu.as_ref().map(|c| c.adapter_name().to_string());
        let info = obj(&[
            ("id", model.id.as_str().into()),
            (
                "backend",
                if gpu.is_some() { "webgpu" } else { "cpu" }.into(),
            ),
            ("adapter", adapter.map_or(JsValue::NULL, |a| a.into())),
            (
                "precision",
                match &gpu {
                    Some(c) if c.precision() == crate::backend::gpu::Precision::F16 => "f16",
                    _ => "f32",
                }
                .into(),
            ),
            (
                "threads",
                if gpu.is_some() { 1 } else { cpu_threads() }.into(),
            ),
            (
                "tunedShapes",
                gpu.as_ref()
                    .map_or(0, |c| c.measured_shapes() as u32)
                    .into(),
            ),
            (
                "notice",
                target.notice.as_deref().map_or(JsValue::NULL, |n| n.into()),
            ),
            ("inputSize", usizes(&model.input)),
            ("preprocess", preprocess_js(&model.preprocess)),
            ("labels", model.labels.id().into()),
            ("numClasses", (model.num_classes() as u32).into()),
            (
                "classNames",
                model
                    .labels
                    .names()
                    .into_iter()
                    .map(JsValue::from)
                    .collect::<Array>()
                    .into(),
            ),
            (
                "notices",
                notices
                    .into_iter()
                    .map(JsValue::from)
                    .collect::<Array>()
                    .into(),
            ),
            (
                "warnings",
                warnings
                    .iter()
                    .map(|k| JsValue::from(format!("weight '{k}' holds NaN or Inf")))
                    .collect::<Array>()
                    .into(),
            ),
        ]);
        Engine {
            inner: Rc::new(RefCell::new(Some(Inner { model, session }))),
            info,
            gpu,
            tuning_base: tuning_cache,
        }
    }

    /// `{id, backend, adapter, notice, inputSize, labels, numClasses, warnings}`.
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> JsValue {
        self.info.clone()
    }

    /// Runs `method` (`forward`, `classify`, `features`, `cam`; `_panic` for the tests)
    /// with its arguments, as a Promise:
    /// - `forward(input)`: `{data, shape}` of the logits for a `[n, 3, h, w]` tensor;
    /// - `classify(input, k)`: top-`k` `[{index, label, probability}]` for each image;
    /// - `features(input, nodes)`: `{node: {data, shape}}` for torchvision node names;
    /// - `cam(input, class?)`: `{data, shape: [h, w], class}`, a ResNet's activation map.
    pub fn call(&self, method: String, a: JsValue, b: JsValue) -> js_sys::Promise {
        let c = match Call::parse(&method, a, b) {
            Ok(c) => c,
            Err(e) => return js_sys::Promise::reject(&e),
        };
        with_inner(&self.inner, move |mut inner| async move {
            let r = inner.call(c).await;
            (inner, r)
        })
    }

    /// `call` finished before it returns, for the CPU backend (whose runs never wait):
    /// a trap then reaches the caller as an exception, never a lost Promise.
    #[wasm_bindgen(js_name = callSync)]
    pub fn call_sync(&self, method: String, a: JsValue, b: JsValue) -> Result<JsValue, JsValue> {
        if self.gpu.is_some() {
            return Err(bad("callSync is for the CPU backend"));
        }
        let c = Call::parse(&method, a, b)?;
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
