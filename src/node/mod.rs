//! The native Node addon (napi-rs) under the npm package: the wasm binding's calls
//! (`src/wasm/`) on this crate's native CPU kernels and wgpu (Vulkan, Metal, DX12). Every
//! call that computes runs as a napi async task on libuv's worker threads, so the event
//! loop never waits; the package queues the calls on one model as it does for the wasm.
//! `www/npm/native.js` fits it to the package's binding interface. Failures reject with
//! an `Error` carrying the crate's stable `code`.

use crate::binding::{self, Answer, Binding, Call, EngineOptions, Failure, Load, Loaded, Runner};
use crate::engine::Target;
use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use serde_json::Value as Json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Once};

/// An `Error` whose `code` is the failure's.
fn coded(env: &Env, f: &Failure) -> napi::Error {
    let made = || -> napi::Result<napi::Error> {
        let mut obj = env.create_error(napi::Error::from_reason(f.message.clone()))?;
        obj.set_named_property("code", f.code)?;
        Ok(napi::Error::from(obj.into_unknown(env)?))
    };
    made().unwrap_or_else(|e| e)
}

fn bad_js(env: &Env, msg: &str) -> napi::Error {
    coded(env, &binding::bad(msg))
}

/// A whole number in `min..=u32::MAX` (a JS number; a string is not one), as the wasm
/// binding checks it.
fn whole(v: &Json, what: &str, min: u32) -> binding::Result<u32> {
    v.as_f64()
        .filter(|d| d.fract() == 0.0 && *d >= min as f64 && *d <= u32::MAX as f64)
        .map(|d| d as u32)
        .ok_or_else(|| {
            let shown = match v {
                Json::String(s) => format!("'{s}'"),
                v => v.to_string(),
            };
            let kind = if min == 0 {
                "a non-negative"
            } else {
                "a positive"
            };
            binding::bad(format!("{what} must be {kind} integer, not {shown}"))
        })
}

/// The message of the last panic on this thread (with its place), for the error that
/// reports it.
fn panic_message() -> String {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| "a panic".into())
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps each panic's message and place for [`panic_message`], after the default report
/// on stderr.
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
        }));
    });
}

/// What a task on a worker thread ends with: a value, a failure, or a panic (its message).
pub enum Outcome<T> {
    Done(T),
    Failed(Failure),
    Panicked(String),
}

/// `f` run to its end on this (worker) thread, a panic caught.
fn outcome<T>(f: impl FnOnce() -> binding::Result<T>) -> Outcome<T> {
    watch_panics();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Outcome::Done(v),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Panicked(panic_message()),
    }
}

impl<T> Outcome<T> {
    /// The value, or the rejection: a panic is an INTERNAL error marked `panicked`.
    fn settle(self, env: &Env) -> napi::Result<T> {
        match self {
            Outcome::Done(v) => Ok(v),
            Outcome::Failed(f) => Err(coded(env, &f)),
            Outcome::Panicked(m) => {
                let f = Failure {
                    code: crate::ErrorCode::Internal.name(),
                    message: m,
                };
                let made = || -> napi::Result<napi::Error> {
                    let mut obj = env.create_error(napi::Error::from_reason(f.message.clone()))?;
                    obj.set_named_property("code", f.code)?;
                    obj.set_named_property("panicked", true)?;
                    Ok(napi::Error::from(obj.into_unknown(env)?))
                };
                Err(made().unwrap_or_else(|e| e))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while held is reported to the caller and the state dropped; the lock itself
    // stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Threads the CPU backend computes on (rayon's global pool).
#[napi(js_name = "cpuThreads")]
pub fn cpu_threads() -> u32 {
    rayon::current_num_threads() as u32
}

/// Sizes the CPU backend's pool once, before any model loads; false where it was already
/// made (then its size stays).
#[napi(js_name = "initThreadPool")]
pub fn init_thread_pool(threads: u32) -> bool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1) as usize)
        .build_global()
        .is_ok()
}

/// Every code an error can carry.
#[napi(js_name = "errorCodes")]
pub fn error_codes() -> Vec<&'static str> {
    crate::ErrorCode::ALL.iter().map(|c| c.name()).collect()
}

/// Checks load options (JSON) before anything is fetched (see `EngineOptions::check`).
#[napi(js_name = "checkOptions")]
pub fn check_options(env: Env, options: String, named_later: bool) -> napi::Result<()> {
    let o = EngineOptions::from_json(&options).map_err(|f| coded(&env, &f))?;
    o.check(named_later).map_err(|f| coded(&env, &f))
}

/// An input to a call: encoded image bytes (decoded when the call runs), raw pixels, or
/// a normalised tensor. A call takes it over.
#[napi]
pub struct Input {
    kind: Option<binding::Input>,
    non_finite: u32,
}

#[napi]
impl Input {
    /// Encoded image bytes (JPEG, PNG, WebP, GIF, BMP).
    #[napi(factory)]
    pub fn encoded(bytes: Uint8Array) -> Input {
        Input {
            kind: Some(binding::Input::Encoded(bytes.to_vec())),
            non_finite: 0,
        }
    }

    /// Raw 8-bit pixels, row-major, `channels` 3 (RGB) or 4 (RGBA).
    #[napi(factory)]
    pub fn pixels(
        env: Env,
        data: Uint8Array,
        #[napi(ts_arg_type = "number")] width: Json,
        #[napi(ts_arg_type = "number")] height: Json,
        #[napi(ts_arg_type = "number")] channels: Json,
    ) -> napi::Result<Input> {
        let dims = (|| {
            Ok::<_, Failure>((
                whole(&width, "width", 1)?,
                whole(&height, "height", 1)?,
                whole(&channels, "channels", 1)?,
            ))
        })();
        let (w, h, c) = dims.map_err(|f| coded(&env, &f))?;
        let kind = binding::Input::pixels(data.to_vec(), w, h, c).map_err(|f| coded(&env, &f))?;
        Ok(Input {
            kind: Some(kind),
            non_finite: 0,
        })
    }

    /// A `[n, c, h, w]` tensor, already normalised (`c`: the model's channels, checked
    /// when it runs).
    #[napi(factory)]
    pub fn tensor(
        env: Env,
        data: Float32Array,
        #[napi(ts_arg_type = "number[]")] shape: Json,
    ) -> napi::Result<Input> {
        let dims: Option<Vec<usize>> = shape.as_array().and_then(|a| {
            a.iter()
                .map(|d| whole(d, "", 1).ok().map(|d| d as usize))
                .collect()
        });
        let (kind, non_finite) = binding::Input::tensor(data.to_vec(), dims, &shape.to_string())
            .map_err(|f| coded(&env, &f))?;
        Ok(Input {
            kind: Some(kind),
            non_finite,
        })
    }

    /// Values of a tensor that are NaN or Inf (the outputs they reach will be too).
    #[napi(getter, js_name = "nonFinite")]
    pub fn non_finite(&self) -> u32 {
        self.non_finite
    }
}

impl Input {
    fn take(&mut self, env: &Env) -> napi::Result<binding::Input> {
        self.kind
            .take()
            .ok_or_else(|| bad_js(env, "this input was used by an earlier call"))
    }
}

/// A tensor as JS sees it.
#[napi(object)]
pub struct TensorJs {
    pub data: Float32Array,
    pub shape: Vec<u32>,
}

impl From<crate::Tensor> for TensorJs {
    fn from(t: crate::Tensor) -> Self {
        let shape = binding::dims(t.shape());
        TensorJs {
            data: Float32Array::new(t.into_data()),
            shape,
        }
    }
}

/// A class activation map as JS sees it.
#[napi(object)]
pub struct CamJs {
    pub data: Float32Array,
    pub shape: Vec<u32>,
    pub class: u32,
}

/// A call's answer as a JS value.
pub struct AnswerJs(Answer);

impl TypeName for AnswerJs {
    fn type_name() -> &'static str {
        "Answer"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ToNapiValue for AnswerJs {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        match val.0 {
            Answer::Tensor(t) => TensorJs::to_napi_value(env, t.into()),
            Answer::Predictions(rows) => {
                let v = serde_json::to_value(&rows)
                    .map_err(|e| napi::Error::from_reason(e.to_string()))?;
                serde_json::Value::to_napi_value(env, v)
            }
            Answer::Outputs(outs) => {
                // An object whose keys keep the order asked for.
                let e = Env::from_raw(env);
                let mut obj = Object::new(&e)?;
                for (name, t) in outs {
                    obj.set(name, TensorJs::from(t))?;
                }
                Object::to_napi_value(env, obj)
            }
            Answer::Cam(c) => CamJs::to_napi_value(
                env,
                CamJs {
                    data: Float32Array::new(c.data),
                    shape: c.shape.to_vec(),
                    class: c.class,
                },
            ),
        }
    }
}

/// Where a loader's thread answers a request.
type Reply<T> = mpsc::Sender<Outcome<T>>;

/// What a [`Loader`] asks its thread.
enum Msg {
    Push(Vec<u8>, Reply<bool>),
    ExternalFiles(Reply<Vec<String>>),
    PushExternal(String, Vec<u8>, bool, Reply<()>),
    Settle(Reply<()>),
    Finish(Reply<(Loaded, Target)>),
}

/// A load's own thread: wgpu's error scopes belong to the thread that opened them, and a
/// load keeps its scopes open from the first byte to the last, so every step of one load
/// runs on one thread. Answers `started` once the device is open, then each message.
fn loader_thread(json: String, total: Option<u64>, started: Reply<()>, rx: mpsc::Receiver<Msg>) {
    let begun = outcome(|| {
        let options = EngineOptions::from_json(&json)?;
        let (load, target) = pollster::block_on(Load::begin(&options, total))?;
        Ok((load, target, options))
    });
    let (load, target, options) = match begun {
        Outcome::Done(v) => v,
        Outcome::Failed(f) => return drop(started.send(Outcome::Failed(f))),
        Outcome::Panicked(m) => return drop(started.send(Outcome::Panicked(m))),
    };
    if started.send(Outcome::Done(())).is_err() {
        return;
    }
    let mut load = Some(load);
    let finished = || binding::bad("the loader has finished");
    while let Ok(msg) = rx.recv() {
        // A reply nobody waits for any more (the loader was dropped) is let go.
        match msg {
            Msg::Push(chunk, reply) => {
                let _ = reply.send(outcome(|| load.as_mut().ok_or_else(finished)?.push(&chunk)));
            }
            Msg::ExternalFiles(reply) => {
                let _ = reply.send(outcome(|| {
                    load.as_mut().ok_or_else(finished)?.external_files()
                }));
            }
            Msg::PushExternal(location, chunk, start, reply) => {
                let _ = reply.send(outcome(|| {
                    let l = load.as_mut().ok_or_else(finished)?;
                    l.push_external(&location, &chunk, start)
                }));
            }
            Msg::Settle(reply) => {
                let _ = reply.send(outcome(|| {
                    if let Some(ctx) = target.gpu_context() {
                        pollster::block_on(ctx.settle())?;
                    }
                    if let Some(l) = load.as_mut() {
                        l.settled();
                    }
                    Ok(())
                }));
            }
            Msg::Finish(reply) => {
                let l = load.take();
                let _ = reply.send(outcome(|| {
                    let l = l.ok_or_else(finished)?;
                    let loaded = pollster::block_on(l.finish(&options))?;
                    Ok((loaded, target.clone()))
                }));
                return;
            }
        }
    }
}

/// Starts a load's thread and waits until it has opened the device (see [`begin`]).
pub struct BeginTask {
    options: String,
    total: Option<f64>,
}

impl Task for BeginTask {
    type Output = Outcome<Loader>;
    type JsValue = Loader;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let json = std::mem::take(&mut self.options);
        let total = self
            .total
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| t as u64);
        // The tuning cache the engine reports comes from the options, read here too.
        let tuning_cache = match EngineOptions::from_json(&json) {
            Ok(o) => o.tuning_cache,
            Err(f) => return Ok(Outcome::Failed(f)),
        };
        let (started_tx, started_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("webcnn-load".into())
            .spawn(move || loader_thread(json, total, started_tx, rx));
        if let Err(e) = spawned {
            let message = format!("internal error: no thread for the load: {e}");
            return Ok(Outcome::Failed(Failure {
                code: crate::ErrorCode::Internal.name(),
                message,
            }));
        }
        Ok(match started_rx.recv() {
            Ok(Outcome::Done(())) => Outcome::Done(Loader {
                tx: Mutex::new(Some(tx)),
                tuning_cache,
            }),
            Ok(Outcome::Failed(f)) => Outcome::Failed(f),
            Ok(Outcome::Panicked(m)) => Outcome::Panicked(m),
            Err(_) => Outcome::Failed(binding::bad("the load's thread ended")),
        })
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<Loader> {
        out.settle(&env)
    }
}

/// Start loading the model the options (JSON) name from a file of `total` bytes where
/// known: resolves to a [`Loader`] that takes the file's bytes.
#[napi(ts_return_type = "Promise<Loader>")]
pub fn begin(options: String, total: Option<f64>) -> AsyncTask<BeginTask> {
    AsyncTask::new(BeginTask { options, total })
}

/// Loads a model with synthetic weights (see [`synthetic`]).
pub struct SyntheticTask {
    options: String,
}

impl Task for SyntheticTask {
    type Output = Outcome<(Loaded, Target, EngineOptions)>;
    type JsValue = Engine;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let json = std::mem::take(&mut self.options);
        Ok(outcome(move || {
            let options = EngineOptions::from_json(&json)?;
            let (loaded, target) = pollster::block_on(Loaded::synthetic(&options))?;
            Ok((loaded, target, options))
        }))
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<Engine> {
        let (loaded, target, options) = out.settle(&env)?;
        Ok(Engine::made(loaded, &target, options.tuning_cache))
    }
}

/// The model the options (JSON) name with synthetic weights of `options.seed` (the
/// golden PRNG's, untrained).
#[napi(ts_return_type = "Promise<Engine>")]
pub fn synthetic(options: String) -> AsyncTask<SyntheticTask> {
    AsyncTask::new(SyntheticTask { options })
}

/// A model whose weights stream in: `push` hands the file's bytes, in order, to the load's
/// thread; `finish` makes the [`Engine`].
#[napi]
pub struct Loader {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    tuning_cache: Option<String>,
}

/// One request to a load's thread, answered on a libuv worker (which waits for it).
pub struct AskTask<T> {
    sent: Option<mpsc::Receiver<Outcome<T>>>,
}

impl<T: Send + 'static + ToNapiValue + TypeName> Task for AskTask<T> {
    type Output = Outcome<T>;
    type JsValue = T;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(match self.sent.take().map(|rx| rx.recv()) {
            Some(Ok(out)) => out,
            _ => Outcome::Failed(binding::bad("the loader has finished")),
        })
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<T> {
        out.settle(&env)
    }
}

/// Makes the engine once every byte is in.
pub struct FinishTask {
    sent: Option<mpsc::Receiver<Outcome<(Loaded, Target)>>>,
    tuning_cache: Option<String>,
}

impl Task for FinishTask {
    type Output = Outcome<(Loaded, Target)>;
    type JsValue = Engine;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(match self.sent.take().map(|rx| rx.recv()) {
            Some(Ok(out)) => out,
            _ => Outcome::Failed(binding::bad("the loader has finished")),
        })
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<Engine> {
        let (loaded, target) = out.settle(&env)?;
        Ok(Engine::made(loaded, &target, self.tuning_cache.take()))
    }
}

impl Loader {
    /// Sends the request `msg(reply)` to the load's thread; its answer's receiver.
    fn ask<T>(&self, msg: impl FnOnce(Reply<T>) -> Msg) -> Option<mpsc::Receiver<Outcome<T>>> {
        let (reply, rx) = mpsc::channel();
        let tx = lock(&self.tx);
        tx.as_ref()?.send(msg(reply)).ok()?;
        Some(rx)
    }
}

#[napi]
impl Loader {
    /// The file's next bytes (copied; the caller's buffer can go). Resolves once taken:
    /// true when the caller should await `settle()` before the next.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn push(&self, chunk: Uint8Array) -> AsyncTask<AskTask<bool>> {
        let chunk = chunk.to_vec();
        AsyncTask::new(AskTask {
            sent: self.ask(|r| Msg::Push(chunk, r)),
        })
    }

    /// For an ONNX model, once its bytes are in: the external files its initializers are
    /// kept in (names relative to the model's folder); none for a weights file.
    #[napi(js_name = "externalFiles", ts_return_type = "Promise<string[]>")]
    pub fn external_files(&self) -> AsyncTask<AskTask<Vec<String>>> {
        AsyncTask::new(AskTask {
            sent: self.ask(Msg::ExternalFiles),
        })
    }

    /// The next bytes of the ONNX model's external file `location` (`start`: from the
    /// file's beginning again).
    #[napi(js_name = "pushExternal", ts_return_type = "Promise<void>")]
    pub fn push_external(
        &self,
        location: String,
        chunk: Uint8Array,
        start: bool,
    ) -> AsyncTask<AskTask<()>> {
        let chunk = chunk.to_vec();
        AsyncTask::new(AskTask {
            sent: self.ask(|r| Msg::PushExternal(location, chunk, start, r)),
        })
    }

    /// Waits until the GPU has taken the weights written so far.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn settle(&self) -> AsyncTask<AskTask<()>> {
        AsyncTask::new(AskTask {
            sent: self.ask(Msg::Settle),
        })
    }

    /// The [`Engine`], once every byte was pushed.
    #[napi(ts_return_type = "Promise<Engine>")]
    pub fn finish(&self) -> AsyncTask<FinishTask> {
        let sent = self.ask(Msg::Finish);
        lock(&self.tx).take();
        AsyncTask::new(FinishTask {
            sent,
            tuning_cache: self.tuning_cache.clone(),
        })
    }

    /// Drops what was read so far (the load's thread ends).
    #[napi]
    pub fn free(&self) {
        lock(&self.tx).take();
    }
}

/// One model with its weights loaded once on the GPU (wgpu) or the CPU backend.
#[napi]
pub struct Engine {
    runner: Arc<Mutex<Option<Runner>>>,
    /// Set by `free`: a call that ends after it drops the model.
    disposed: Arc<AtomicBool>,
    info: serde_json::Value,
    gpu: Option<crate::backend::gpu::GpuContext>,
    /// The tuning cache it was loaded with (other adapters' entries are kept).
    tuning_base: Option<String>,
}

/// One call on a model (see [`Engine`]'s methods).
pub struct CallTask {
    runner: Arc<Mutex<Option<Runner>>>,
    disposed: Arc<AtomicBool>,
    call: Option<Call>,
}

impl Task for CallTask {
    type Output = Outcome<Answer>;
    type JsValue = AnswerJs;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (runner, call) = (self.runner.clone(), self.call.take());
        let out = outcome(|| {
            let call = call.ok_or_else(|| binding::bad("this call already ran"))?;
            let mut cell = lock(&runner);
            let r = cell
                .as_mut()
                .ok_or_else(|| binding::bad("the model was disposed"))?;
            pollster::block_on(r.call(call))
        });
        // The state a panic left is not trusted: the package loads the model again.
        if matches!(out, Outcome::Panicked(_)) || self.disposed.load(Ordering::Acquire) {
            lock(&self.runner).take();
        }
        Ok(out)
    }

    fn resolve(&mut self, env: Env, out: Self::Output) -> napi::Result<AnswerJs> {
        out.settle(&env).map(AnswerJs)
    }
}

impl Engine {
    fn made(loaded: Loaded, target: &Target, tuning_cache: Option<String>) -> Engine {
        let info = loaded.info(target, Binding::Native, cpu_threads());
        let gpu = loaded.session.gpu_context().cloned();
        Engine {
            info: serde_json::to_value(&info).unwrap_or_default(),
            runner: Arc::new(Mutex::new(Some(Runner {
                model: loaded.model,
                session: loaded.session,
            }))),
            disposed: Arc::new(AtomicBool::new(false)),
            gpu,
            tuning_base: tuning_cache,
        }
    }

    fn task(&self, call: Call) -> AsyncTask<CallTask> {
        AsyncTask::new(CallTask {
            runner: self.runner.clone(),
            disposed: self.disposed.clone(),
            call: Some(call),
        })
    }
}

#[napi]
impl Engine {
    /// The model's facts.
    #[napi(getter, ts_return_type = "ModelInfo")]
    pub fn info(&self) -> serde_json::Value {
        self.info.clone()
    }

    /// The logits of an input.
    #[napi(ts_return_type = "Promise<Tensor>")]
    pub fn forward(&self, env: Env, input: &mut Input) -> napi::Result<AsyncTask<CallTask>> {
        Ok(self.task(Call::Forward(input.take(&env)?)))
    }

    /// The top `topK` classes of each image, best first.
    #[napi(ts_return_type = "Promise<Prediction[][]>")]
    pub fn classify(
        &self,
        env: Env,
        input: &mut Input,
        #[napi(ts_arg_type = "number")] top_k: Json,
    ) -> napi::Result<AsyncTask<CallTask>> {
        let k = whole(&top_k, "topK", 1).map_err(|f| coded(&env, &f))?;
        Ok(self.task(Call::Classify(input.take(&env)?, k)))
    }

    /// The outputs of the named nodes (torchvision's names: `layer2`, `features.29`, ...).
    #[napi(ts_return_type = "Promise<Record<string, Tensor>>")]
    pub fn features(
        &self,
        env: Env,
        input: &mut Input,
        #[napi(ts_arg_type = "string[]")] nodes: Json,
    ) -> napi::Result<AsyncTask<CallTask>> {
        let nodes: Option<Vec<String>> = nodes
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
        let call = Call::features(input.take(&env)?, nodes).map_err(|f| coded(&env, &f))?;
        Ok(self.task(call))
    }

    /// A ResNet's class activation map for `class` (default: the top class).
    #[napi(ts_return_type = "Promise<CamMap>")]
    pub fn cam(
        &self,
        env: Env,
        input: &mut Input,
        #[napi(ts_arg_type = "number | undefined")] class: Option<Json>,
    ) -> napi::Result<AsyncTask<CallTask>> {
        let class = match class.filter(|c| !c.is_null()) {
            None => None,
            Some(c) => Some(whole(&c, "class", 0).map_err(|f| coded(&env, &f))?),
        };
        Ok(self.task(Call::Cam(input.take(&env)?, class)))
    }

    /// Panics inside a call, as a bug would: the package's tests of recovery.
    #[napi(js_name = "_panic")]
    pub fn panic(&self) -> AsyncTask<CallTask> {
        self.task(Call::Panic)
    }

    /// Layer shapes whose kernels were timed on this engine's device so far.
    #[napi(js_name = "tunedShapes")]
    pub fn tuned_shapes(&self) -> u32 {
        self.gpu.as_ref().map_or(0, |c| c.measured_shapes() as u32)
    }

    /// The tuning cache to keep for the next load (`null` on the CPU).
    #[napi(js_name = "tuningCache")]
    pub fn tuning_cache(&self) -> Option<String> {
        let gpu = self.gpu.as_ref()?;
        Some(gpu.export_tuning(self.tuning_base.as_deref()))
    }

    /// Destroys the GPU device, as a driver reset would (the package's tests of recovery).
    #[napi(js_name = "_loseDevice")]
    pub fn lose_device(&self) -> bool {
        match &self.gpu {
            Some(ctx) => {
                ctx.destroy();
                true
            }
            None => false,
        }
    }

    /// Frees the weights and buffers: now, or where a call is running, when it ends (the
    /// event loop never waits for it).
    #[napi]
    pub fn free(&self) {
        self.disposed.store(true, Ordering::Release);
        if let Ok(mut r) = self.runner.try_lock() {
            r.take();
        }
    }
}
