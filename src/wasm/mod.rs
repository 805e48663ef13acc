//! The wasm binding under the npm package `webcnn` (`www/npm/index.js` wraps it; the
//! demo's worker uses that package). One typed method per call; the values that cross are
//! the Rust types of [`types`], whose TypeScript declarations are generated into the
//! binding's `.d.ts`. Every failure is a JS `Error` carrying a stable `code` (see
//! `Error::code`); what JS hands in is checked here, once.

mod types;

use crate::binding::{self, Answer, Binding, Call, EngineOptions, Load, Loaded, Runner};
use crate::engine::Target;
use crate::error::Error;
use crate::preprocess;
use js_sys::{Array, Float32Array, Uint8Array};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use types::{from_js, js_bad, js_err, to_js, whole};
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
    to_js(&binding::model_list())
}

/// An input to a call, checked as it is made: encoded image bytes, raw pixels, or a
/// normalised tensor. A call takes it over (its JS object is then spent).
#[wasm_bindgen]
pub struct Input {
    kind: binding::Input,
    non_finite: u32,
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
            .ok_or_else(|| js_bad("encoded image bytes must be a Uint8Array"))?;
        let image = preprocess::decode(&bytes).map_err(|e| js_err(Error::from(e).into()))?;
        Ok(Input {
            kind: binding::Input::Image(image),
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
            .ok_or_else(|| js_bad("pixel data must be a Uint8Array or Uint8ClampedArray"))?;
        let kind = binding::Input::pixels(
            data,
            whole(&width, "width", 1)?,
            whole(&height, "height", 1)?,
            whole(&channels, "channels", 1)?,
        )
        .map_err(js_err)?;
        Ok(Input {
            kind,
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
            .ok_or_else(|| js_bad("tensor data must be a Float32Array"))?
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
        let (kind, non_finite) = binding::Input::tensor(data, dims, &shown).map_err(js_err)?;
        Ok(Input { kind, non_finite })
    }

    /// Values of a tensor that are NaN or Inf (the outputs they reach will be too).
    #[wasm_bindgen(getter, js_name = nonFinite)]
    pub fn non_finite(&self) -> u32 {
        self.non_finite
    }
}

/// The call `c` with the JS arguments checked.
fn classify_call(input: Input, top_k: JsValue) -> Result<Call, JsValue> {
    Ok(Call::Classify(input.kind, whole(&top_k, "topK", 1)?))
}

fn features_call(input: Input, nodes: JsValue) -> Result<Call, JsValue> {
    let nodes: Option<Vec<String>> = match Array::is_array(&nodes) {
        true => Array::from(&nodes).iter().map(|v| v.as_string()).collect(),
        false => None,
    };
    Call::features(input.kind, nodes).map_err(js_err)
}

fn cam_call(input: Input, class: JsValue) -> Result<Call, JsValue> {
    let class = match class.is_undefined() || class.is_null() {
        true => None,
        false => Some(whole(&class, "class", 0)?),
    };
    Ok(Call::Cam(input.kind, class))
}

/// An answer as a JS value.
fn answer_js(a: Answer) -> JsValue {
    match a {
        Answer::Tensor(t) => to_js(&types::Tensor::from(t)),
        Answer::Predictions(rows) => to_js(&rows),
        Answer::Outputs(outs) => to_js(&types::Outputs(
            outs.into_iter().map(|(k, t)| (k, t.into())).collect(),
        )),
        Answer::Cam(c) => to_js(&types::CamMap::from(c)),
    }
}

/// Run `c` on the model's state as a Promise. The state is moved into the future and
/// back; the wrapper queues calls, so an overlap here is a bug, reported, not a panic.
fn with_runner(cell: &Rc<RefCell<Option<Runner>>>, c: Call) -> js_sys::Promise {
    let cell = cell.clone();
    wasm_bindgen_futures::future_to_promise(async move {
        let mut runner = cell
            .borrow_mut()
            .take()
            .ok_or_else(|| js_bad("the model is busy with another call or was disposed"))?;
        let r = runner.call(c).await;
        *cell.borrow_mut() = Some(runner);
        r.map(answer_js).map_err(js_err)
    })
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
    let o: EngineOptions = from_js(options)?;
    o.check(named_later).map_err(js_err)
}

/// A model whose weights stream in: [`Engine::begin`] makes it, `push` takes the file's
/// bytes in order (a safetensors file's conv and linear weights go to WebGPU as they
/// arrive, so the page never holds them), `finish` makes the [`Engine`].
#[wasm_bindgen]
pub struct Loader {
    load: Rc<RefCell<Option<Load>>>,
    target: Target,
    options: Rc<EngineOptions>,
}

#[wasm_bindgen]
impl Loader {
    /// The file's next bytes (copied into wasm memory and used at once; the caller's
    /// buffer can go). True when the caller should await [`Loader::settle`] before the next.
    pub fn push(&self, chunk: &[u8]) -> Result<bool, JsValue> {
        let mut cell = self
            .load
            .try_borrow_mut()
            .map_err(|_| js_bad("push while the loader settles: await settle() first"))?;
        let load = cell
            .as_mut()
            .ok_or_else(|| js_bad("the loader has finished"))?;
        load.push(chunk).map_err(js_err)
    }

    /// For an ONNX model, once its bytes are in: the external files its initializers are
    /// kept in (names relative to the model's folder); none for a weights file.
    #[wasm_bindgen(js_name = externalFiles, unchecked_return_type = "string[]")]
    pub fn external_files(&self) -> Result<JsValue, JsValue> {
        let mut cell = self
            .load
            .try_borrow_mut()
            .map_err(|_| js_bad("the loader is busy"))?;
        let load = cell
            .as_mut()
            .ok_or_else(|| js_bad("the loader has finished"))?;
        Ok(to_js(&load.external_files().map_err(js_err)?))
    }

    /// The next bytes of the ONNX model's external file `location` (`start`: from the
    /// file's beginning again).
    #[wasm_bindgen(js_name = pushExternal)]
    pub fn push_external(&self, location: &str, chunk: &[u8], start: bool) -> Result<(), JsValue> {
        let mut cell = self
            .load
            .try_borrow_mut()
            .map_err(|_| js_bad("the loader is busy"))?;
        let load = cell
            .as_mut()
            .ok_or_else(|| js_bad("the loader has finished"))?;
        load.push_external(location, chunk, start).map_err(js_err)
    }

    /// Waits until WebGPU has taken the weights written so far.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn settle(&self) -> js_sys::Promise {
        let load = self.load.clone();
        let ctx = self.target.gpu_context().cloned();
        wasm_bindgen_futures::future_to_promise(async move {
            if let Some(ctx) = ctx {
                ctx.settle().await.map_err(|e| js_err(e.into()))?;
            }
            if let Some(l) = load.borrow_mut().as_mut() {
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
        wasm_bindgen_futures::future_to_promise(async move {
            let load = load.ok_or_else(|| js_bad("the loader has finished"))?;
            let loaded = load.finish(&options).await.map_err(js_err)?;
            Ok(Engine::made(loaded, &target, options.tuning_cache.clone()).into())
        })
    }
}

/// One model with its weights loaded once on WebGPU or the CPU backend.
#[wasm_bindgen]
pub struct Engine {
    runner: Rc<RefCell<Option<Runner>>>,
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
        let options = from_js::<EngineOptions>(options);
        wasm_bindgen_futures::future_to_promise(async move {
            let options = Rc::new(options?);
            let total = total
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| t as u64);
            let (load, target) = Load::begin(&options, total).await.map_err(js_err)?;
            Ok(Loader {
                load: Rc::new(RefCell::new(Some(load))),
                target,
                options,
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
        let options = from_js::<EngineOptions>(options);
        wasm_bindgen_futures::future_to_promise(async move {
            let options = options?;
            let (loaded, target) = Loaded::synthetic(&options).await.map_err(js_err)?;
            Ok(Engine::made(loaded, &target, options.tuning_cache.clone()).into())
        })
    }

    fn made(loaded: Loaded, target: &Target, tuning_cache: Option<String>) -> Engine {
        let info = loaded.info(target, Binding::Wasm, cpu_threads());
        let gpu = loaded.session.gpu_context().cloned();
        Engine {
            info: to_js(&info),
            runner: Rc::new(RefCell::new(Some(Runner {
                model: loaded.model,
                session: loaded.session,
            }))),
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
        self.later(Ok(Call::Forward(input.kind)))
    }

    /// [`Engine::forward`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = forwardSync, unchecked_return_type = "Tensor")]
    pub fn forward_sync(&self, input: Input) -> Result<JsValue, JsValue> {
        self.now(Ok(Call::Forward(input.kind)))
    }

    /// The top `topK` classes of each image, best first.
    #[wasm_bindgen(unchecked_return_type = "Promise<Prediction[][]>")]
    pub fn classify(
        &self,
        input: Input,
        #[wasm_bindgen(js_name = topK, unchecked_param_type = "number")] top_k: JsValue,
    ) -> js_sys::Promise {
        self.later(classify_call(input, top_k))
    }

    /// [`Engine::classify`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = classifySync, unchecked_return_type = "Prediction[][]")]
    pub fn classify_sync(
        &self,
        input: Input,
        #[wasm_bindgen(js_name = topK, unchecked_param_type = "number")] top_k: JsValue,
    ) -> Result<JsValue, JsValue> {
        self.now(classify_call(input, top_k))
    }

    /// The outputs of the named nodes (torchvision's names: `layer2`, `features.29`, ...).
    #[wasm_bindgen(unchecked_return_type = "Promise<Record<string, Tensor>>")]
    pub fn features(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "string[]")] nodes: JsValue,
    ) -> js_sys::Promise {
        self.later(features_call(input, nodes))
    }

    /// [`Engine::features`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = featuresSync, unchecked_return_type = "Record<string, Tensor>")]
    pub fn features_sync(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "string[]")] nodes: JsValue,
    ) -> Result<JsValue, JsValue> {
        self.now(features_call(input, nodes))
    }

    /// A ResNet's class activation map for `class` (default: the top class).
    #[wasm_bindgen(unchecked_return_type = "Promise<CamMap>")]
    pub fn cam(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "number | undefined")] class: JsValue,
    ) -> js_sys::Promise {
        self.later(cam_call(input, class))
    }

    /// [`Engine::cam`] answered before it returns (the CPU backend).
    #[wasm_bindgen(js_name = camSync, unchecked_return_type = "CamMap")]
    pub fn cam_sync(
        &self,
        input: Input,
        #[wasm_bindgen(unchecked_param_type = "number | undefined")] class: JsValue,
    ) -> Result<JsValue, JsValue> {
        self.now(cam_call(input, class))
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
        match c {
            Ok(c) => with_runner(&self.runner, c),
            Err(e) => js_sys::Promise::reject(&e),
        }
    }

    /// `c` finished before it returns, for the CPU backend (whose runs never wait): a trap
    /// then reaches the caller as an exception, never a lost Promise.
    fn now(&self, c: Result<Call, JsValue>) -> Result<JsValue, JsValue> {
        if self.gpu.is_some() {
            return Err(js_bad("the synchronous calls are for the CPU backend"));
        }
        let c = c?;
        let mut cell = self
            .runner
            .try_borrow_mut()
            .map_err(|_| js_bad("the model is busy with another call"))?;
        let runner = cell
            .as_mut()
            .ok_or_else(|| js_bad("the model is busy with another call or was disposed"))?;
        let fut = std::pin::pin!(runner.call(c));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(r) => r.map(answer_js).map_err(js_err),
            std::task::Poll::Pending => Err(js_bad("a CPU call waited: a bug, please report it")),
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
