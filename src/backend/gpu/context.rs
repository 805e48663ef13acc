//! Adapter, device and the pipeline cache.

use super::kernels::{Family, Precision};
use super::tuning::{self, Tuner, Tuning};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Use at most this many bytes per storage binding (below the adapter's limit; rounded
    /// down to a multiple of 16, at least 16): exercises the splitting of oversize tensors
    /// on any machine.
    pub max_binding_bytes: Option<u64>,
    /// Prefer the low-power adapter instead of the high-performance one.
    pub low_power: bool,
    /// The kernels for convolutions and linear layers; `None` picks per adapter and per
    /// layer shape ([`Tuning`]).
    pub kernels: Option<Kernels>,
    /// When to time the convolution kernels per layer shape instead of taking the static
    /// table for the adapter's kind.
    pub tuning: Tuning,
    /// Where measured choices are kept across processes (natively). `None` (the default):
    /// in this process only, nothing written; the CLI keeps them in `gpu-tuning.json` in
    /// the cache folder ([`GpuOptions::cached_tuning`]).
    pub tuning_file: Option<std::path::PathBuf>,
    /// What activations and weights are stored as. F16 needs the adapter's `shader-f16`
    /// (opening the device fails without it).
    pub precision: Precision,
}

#[cfg(not(target_arch = "wasm32"))]
impl GpuOptions {
    /// These options with measured kernel choices kept in `gpu-tuning.json` in the cache
    /// folder (`WEBCNN_CACHE`, else `~/.cache/webcnn`), so a layer shape is timed once per
    /// adapter and driver, not once per process.
    pub fn cached_tuning(self) -> GpuOptions {
        GpuOptions {
            tuning_file: Some(crate::weights::hub::cache_dir().join("gpu-tuning.json")),
            ..self
        }
    }
}

/// The kernel sets for convolutions and linear layers (`shaders/conv.wgsl`,
/// `shaders/linear.wgsl`). Forced ([`GpuOptions::kernels`]), a set runs every layer;
/// the static table gives GPUs the tiled set, with the register-blocked set's Winograd on
/// 3x3 stride-1 layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kernels {
    /// Convolutions in 64x64 output tiles staged through workgroup memory (4x4 per
    /// invocation), linear layers reduced by a workgroup per output (whole vectors along k
    /// where k is a multiple of 4): what hardware GPUs reward. Layers that make too few
    /// tiles to fill a GPU are split along k.
    Tiled,
    /// The tiled kernels with 128x128 output tiles (256 invocations of 8x8, 8 deep) on
    /// every convolution: four times the multiply-adds per value staged, for large layers
    /// on large GPUs.
    TiledLarge,
    /// The tiled kernels with 32x32 output tiles (64 invocations, 32 deep) on every
    /// convolution: four times the workgroups, for 7x7 and 14x14 maps.
    TiledSmall,
    /// The tiled kernels with 3x3 stride-1 convolutions by Winograd F(2x2, 3x3), its 16
    /// products per tile on the tiled kernel (a grouped 1x1 convolution); other layers in
    /// 64x64 tiles.
    TiledWinograd,
    /// No workgroup memory or barriers: convolutions 4x4 per invocation straight from
    /// storage, linear layers one output per invocation. Software adapters run workgroups
    /// as CPU vector lanes, where barriers cost most.
    RegisterBlocked,
}

impl Kernels {
    /// The kernels for an adapter: register-blocked on software renderers (measured
    /// 1.3-2x faster on lavapipe; see docs/performance.md), tiled elsewhere.
    pub fn for_adapter(software: bool) -> Kernels {
        if software {
            Kernels::RegisterBlocked
        } else {
            Kernels::Tiled
        }
    }

    /// Every set, in the order tables list them.
    pub const ALL: [Kernels; 5] = [
        Kernels::Tiled,
        Kernels::TiledLarge,
        Kernels::TiledSmall,
        Kernels::TiledWinograd,
        Kernels::RegisterBlocked,
    ];

    /// The set named so (as [`Self::name`] spells it).
    pub fn from_name(name: &str) -> Option<Kernels> {
        Kernels::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The set's name (as `--gpu-kernels` and the tuning cache spell it).
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Tiled => "tiled",
            Kernels::TiledLarge => "tiled-large",
            Kernels::TiledSmall => "tiled-small",
            Kernels::TiledWinograd => "tiled-winograd",
            Kernels::RegisterBlocked => "register-blocked",
        }
    }
}

pub(crate) struct Shared {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub binding_limit: u64,
    /// A software renderer (lavapipe, SwiftShader, WARP): slower than the CPU backend.
    pub software: bool,
    /// The adapter's name (in browsers from `GPUAdapterInfo`: wgpu leaves it empty).
    pub name: String,
    /// Made by one of the GPU makers the static table knows.
    pub known_vendor: bool,
    pub lost: Arc<Mutex<Option<String>>>,
    /// What the device was opened with, to open another like it.
    pub opts: GpuOptions,
    /// Kernel choices per layer shape, measured or cached.
    pub tuner: Tuner,
    /// Per kernel family: its module and the bind-group layout its entries share.
    families: Mutex<HashMap<&'static str, (wgpu::ShaderModule, wgpu::BindGroupLayout)>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), wgpu::ComputePipeline>>,
}

/// An open GPU device with its compiled pipelines; cheap to clone.
#[derive(Clone)]
pub struct GpuContext {
    pub(crate) shared: Arc<Shared>,
}

/// The device's error scopes opened by [`GpuContext::error_scopes`]. The scope pushed
/// last comes first, so that dropping them (in field order) pops them in order too.
pub struct ErrorScopes {
    oom: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
}

impl ErrorScopes {
    /// Close the scopes: the first error the device reported in them, if any.
    pub async fn finish(self) -> Option<String> {
        let (o, v) = (self.oom.pop().await, self.validation.pop().await);
        o.or(v).map(|e| e.to_string())
    }
}

impl GpuContext {
    /// Catch the device's errors (out of memory, validation) from here until
    /// [`ErrorScopes::finish`]: buffers made and written while weights stream in.
    pub fn error_scopes(&self) -> ErrorScopes {
        let dev = &self.shared.device;
        let validation = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        ErrorScopes {
            oom: dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            validation,
        }
    }

    /// Open the preferred adapter with its full limits (not WebGPU's defaults).
    // In wasm wgpu's handles are single-threaded; the Arc is shared with callbacks only.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn new(opts: GpuOptions) -> Result<Self> {
        // wgpu panics where there is no `navigator.gpu` (Node, old browsers): ask first.
        #[cfg(target_arch = "wasm32")]
        if !has_navigator_gpu() {
            return Err(Error::NoAdapter(
                "WebGPU is not available here (no navigator.gpu)".into(),
            ));
        }
        let instance = instance();
        let power_preference = if opts.low_power {
            wgpu::PowerPreference::LowPower
        } else {
            wgpu::PowerPreference::HighPerformance
        };
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(no_adapter)?;
        let info = adapter.get_info();
        #[cfg(not(target_arch = "wasm32"))]
        let (software, name, known_vendor) = (
            info.device_type == wgpu::DeviceType::Cpu,
            info.name.clone(),
            tuning::known_vendor_id(info.vendor),
        );
        #[cfg(target_arch = "wasm32")]
        let (software, name, known_vendor) = browser_adapter().await;
        let limits = adapter.limits();
        // Timestamps time each layer on the GPU for profiles; optional everywhere.
        let mut features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        if opts.precision == Precision::F16 {
            if !adapter.features().contains(wgpu::Features::SHADER_F16) {
                return Err(Error::DeviceLimit(format!(
                    "f16 precision needs the adapter's shader-f16 feature, which '{}' lacks",
                    if name.is_empty() { &info.name } else { &name }
                )));
            }
            features |= wgpu::Features::SHADER_F16;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webcnn"),
                required_limits: limits.clone(),
                required_features: features,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("requesting a device on '{}': {e}", info.name)))?;
        // Errors outside our error scopes are logged, not panics.
        device.on_uncaptured_error(Arc::new(|e| log::error!("wgpu: {e}")));
        let lost = Arc::new(Mutex::new(None));
        let l = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *l.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
        });
        let mut binding_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(m) = opts.max_binding_bytes {
            binding_limit = binding_limit.min(m);
        }
        // Whole vectors of 4 floats: chunks padded to 4-byte words, and the vector
        // bindings' elements, then still fit.
        let binding_limit = (binding_limit & !15).max(16);
        #[cfg(not(target_arch = "wasm32"))]
        let tuning_file = opts.tuning_file.clone();
        #[cfg(target_arch = "wasm32")]
        let tuning_file = None;
        let tuner = Tuner::new(&info, &name, tuning_file);
        Ok(GpuContext {
            shared: Arc::new(Shared {
                tuner,
                device,
                queue,
                info,
                limits,
                binding_limit,
                software,
                name,
                known_vendor,
                lost,
                opts,
                families: Mutex::new(HashMap::new()),
                pipelines: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Blocking [`GpuContext::new`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new(opts))
    }

    /// Run `f`, which creates device objects, inside validation and out-of-memory error
    /// scopes: what they catch becomes `Error::Gpu("{what}: ...")` rather than a panic.
    pub(crate) async fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.scoped_async(what, async { f() }).await
    }

    /// [`Self::scoped`] around a future (work that waits on the device between steps).
    pub(crate) async fn scoped_async<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let dev = &self.shared.device;
        let val = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let r = f.await;
        let oom_err = oom.pop().await;
        let val_err = val.pop().await;
        let v = r?;
        match oom_err.or(val_err) {
            Some(e) => Err(Error::Gpu(format!("{what}: {e}"))),
            None => Ok(v),
        }
    }

    /// Submit what was written to buffers and wait until the device has done it: the
    /// staging memory of the writes is free again afterwards.
    pub(crate) async fn settle(&self) -> Result<()> {
        let s = &self.shared;
        s.queue.submit(std::iter::empty());
        #[cfg(not(target_arch = "wasm32"))]
        return wait(&s.device);
        #[cfg(target_arch = "wasm32")]
        {
            let done = super::OneShot::new();
            let tx = done.sender();
            s.queue.on_submitted_work_done(move || tx(()));
            done.await;
            Ok(())
        }
    }

    /// Device memory the allocator holds for live buffers, where the backend reports it
    /// (Vulkan, DX12 and Metal natively; not in browsers).
    pub fn allocated_bytes(&self) -> Option<u64> {
        self.shared
            .device
            .generate_allocator_report()
            .map(|r| r.total_allocated_bytes)
    }

    /// Why the device was lost, once it is.
    pub fn lost(&self) -> Option<String> {
        self.shared.lost.lock().ok().and_then(|l| l.clone())
    }

    /// A new device on the preferred adapter, opened with this one's options.
    pub async fn reopen(&self) -> Result<Self> {
        Self::new(self.shared.opts.clone()).await
    }

    /// Destroy the device, as a driver reset or a lost GPU would (for testing recovery).
    pub fn destroy(&self) {
        self.shared.device.destroy();
    }

    /// Whether the adapter is a software renderer (natively: device type CPU, such as
    /// lavapipe / llvmpipe / WARP; in browsers: a fallback adapter, or SwiftShader).
    pub fn is_software(&self) -> bool {
        self.shared.software
    }

    /// Whether the device writes timestamps (per-layer GPU times in profiles).
    pub fn has_timestamps(&self) -> bool {
        self.shared
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// The kernels plans on this device use where nothing was measured: as forced, else
    /// per adapter ([`Kernels::for_adapter`], which is the static table's choice, tiled
    /// for kinds it does not know).
    pub fn kernels(&self) -> Kernels {
        self.shared
            .opts
            .kernels
            .unwrap_or(Kernels::for_adapter(self.shared.software))
    }

    /// The kernel for the convolution `cfg` of shape `key` ([`tuning::shape_key`]) that
    /// makes `work`: pixels by channels per each of (image, group) planes; `None`: time
    /// the kernels on it.
    pub(crate) fn conv_choice(
        &self,
        key: &str,
        cfg: &crate::graph::Conv2d,
        work: [usize; 3],
    ) -> Option<Kernels> {
        let s = &self.shared;
        let cached = || s.tuner.get(key);
        match tuning::decide(
            s.opts.kernels,
            s.opts.tuning,
            cached,
            tuning::table(s.software, s.known_vendor),
            true,
        ) {
            tuning::Decision::Use(v) => Some(v),
            tuning::Decision::Set(k) => Some(Kernels::choose(k, &s.limits)),
            tuning::Decision::Table(k) => Some(Kernels::for_layer(k, &s.limits, cfg, work)),
            tuning::Decision::Measure => None,
        }
    }

    /// The convolution kernel chosen for each layer shape measured or read from the
    /// cache on this device (`n c h w oc k s p d g` keys).
    pub fn conv_kernels(&self) -> Vec<(String, Kernels)> {
        self.shared.tuner.choices()
    }

    /// The seconds per pass of each convolution kernel on each layer shape timed by this
    /// process, in the order timed.
    pub fn conv_timings(&self) -> Vec<(String, Vec<(Kernels, f64)>)> {
        self.shared.tuner.timings()
    }

    /// Take this adapter's kernel choices from a tuning cache's JSON (what
    /// [`Self::export_tuning`] made; browsers keep it, natively the cache file does):
    /// whether it was readable.
    pub fn import_tuning(&self, json: &str) -> bool {
        self.shared.tuner.import(json)
    }

    /// The tuning cache's JSON `base` (other adapters' entries kept) with this adapter's
    /// choices as they are now.
    pub fn export_tuning(&self, base: Option<&str>) -> String {
        self.shared.tuner.export(base)
    }

    /// Layer shapes whose kernels were timed on this device so far.
    pub fn measured_shapes(&self) -> usize {
        self.shared.tuner.measured()
    }

    /// The adapter's name (browsers too, where wgpu's `AdapterInfo` has none).
    pub fn adapter_name(&self) -> &str {
        &self.shared.name
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.shared.info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.shared.limits
    }

    /// The largest storage binding this context uses, in bytes.
    pub fn binding_limit(&self) -> u64 {
        self.shared.binding_limit
    }

    /// What activations and weights are stored as.
    pub fn precision(&self) -> Precision {
        self.shared.opts.precision
    }

    /// Bytes per stored value.
    pub fn elem_bytes(&self) -> usize {
        self.precision().bytes()
    }

    /// A one-line description: adapter name, backend and device type.
    pub fn describe(&self) -> String {
        let i = &self.shared.info;
        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
    }

    /// The module and shared bind-group layout of `family`, made once per context.
    pub(crate) fn family(
        &self,
        family: &'static Family,
    ) -> (wgpu::ShaderModule, wgpu::BindGroupLayout) {
        let s = &self.shared;
        s.families
            .lock()
            .unwrap()
            .entry(family.name)
            .or_insert_with(|| {
                let module = s.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(family.name),
                    source: wgpu::ShaderSource::Wgsl(family.source(s.opts.precision).into()),
                });
                let layout = s
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(family.name),
                        entries: &family.layout_entries(),
                    });
                (module, layout)
            })
            .clone()
    }

    /// The compute pipeline for `entry` of `family`, compiled once per context.
    pub(crate) fn pipeline(
        &self,
        family: &'static Family,
        entry: &'static str,
    ) -> wgpu::ComputePipeline {
        let s = &self.shared;
        if let Some(p) = s.pipelines.lock().unwrap().get(&(family.name, entry)) {
            return p.clone();
        }
        let (module, bind_layout) = self.family(family);
        let layout = s
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&bind_layout)],
                immediate_size: 0,
            });
        let p = s
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        s.pipelines
            .lock()
            .unwrap()
            .insert((family.name, entry), p.clone());
        p
    }
}

/// Why no adapter was found, with what to do about it.
#[cfg(not(target_arch = "wasm32"))]
fn no_adapter(e: wgpu::RequestAdapterError) -> Error {
    Error::NoAdapter(format!(
        "{e} (wgpu needs a Vulkan, Metal or DX12 driver; on Debian/Ubuntu `apt-get install mesa-vulkan-drivers` gives a software one)"
    ))
}

#[cfg(target_arch = "wasm32")]
fn has_navigator_gpu() -> bool {
    let get = |o: &wasm_bindgen::JsValue, k: &str| {
        js_sys::Reflect::get(o, &k.into()).unwrap_or(wasm_bindgen::JsValue::UNDEFINED)
    };
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    !gpu.is_undefined() && !gpu.is_null()
}

/// wgpu's browser backend reports no device type or name: ask `GPUAdapterInfo` itself.
/// Returns (software renderer?, name, a vendor the static table knows?).
#[cfg(target_arch = "wasm32")]
async fn browser_adapter() -> (bool, String, bool) {
    use wasm_bindgen::{JsCast, JsValue};
    let unknown = || (false, "WebGPU adapter".to_string(), false);
    let get =
        |o: &JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).unwrap_or(JsValue::UNDEFINED);
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    let Ok(request) = get(&gpu, "requestAdapter").dyn_into::<js_sys::Function>() else {
        return unknown();
    };
    let Some(promise) = request
        .call0(&gpu)
        .ok()
        .and_then(|p| p.dyn_into::<js_sys::Promise>().ok())
    else {
        return unknown();
    };
    let Ok(adapter) = wasm_bindgen_futures::JsFuture::from(promise).await else {
        return unknown();
    };
    let info = get(&adapter, "info");
    let text = |k: &str| get(&info, k).as_string().unwrap_or_default();
    let software = get(&info, "isFallbackAdapter").is_truthy()
        || get(&adapter, "isFallbackAdapter").is_truthy()
        || ["architecture", "description", "device"]
            .iter()
            .any(|k| text(k).to_lowercase().contains("swiftshader"));
    let name = match text("description") {
        d if !d.is_empty() => d,
        _ => ["vendor", "architecture", "device"]
            .iter()
            .map(|k| text(k))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let known = tuning::known_vendor_name(&text("vendor"));
    if name.is_empty() {
        return (software, unknown().1, known);
    }
    (software, name, known)
}

#[cfg(target_arch = "wasm32")]
fn no_adapter(_: wgpu::RequestAdapterError) -> Error {
    Error::NoAdapter("this browser has no WebGPU, or granted no adapter".into())
}

/// The backends to try: `WGPU_BACKEND` (e.g. `vulkan`) if set, else all.
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see natively, one line each.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<String> {
    pollster::block_on(instance().enumerate_adapters(backends()))
        .iter()
        .map(|a| {
            let i = a.get_info();
            // The optional features the backend would use.
            let f = a.features();
            let has = |x: wgpu::Features| if f.contains(x) { "yes" } else { "no" };
            format!(
                "{} ({:?}, {:?}, driver {} {}; timestamp queries: {}, shader-f16: {})",
                i.name,
                i.backend,
                i.device_type,
                i.driver,
                i.driver_info,
                has(wgpu::Features::TIMESTAMP_QUERY),
                has(wgpu::Features::SHADER_F16)
            )
        })
        .collect()
}

/// Seconds a native wait for the GPU may take before it is an error rather than a hang (a
/// dispatch that never ends would otherwise block the caller for good: GPUs without a
/// display have no watchdog). `WEBCNN_GPU_TIMEOUT_S` changes it.
#[cfg(not(target_arch = "wasm32"))]
const WAIT_LIMIT_S: u64 = 300;

/// Block until the device has finished its submitted work, within the wait limit.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn wait(device: &wgpu::Device) -> Result<()> {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let limit = *LIMIT.get_or_init(|| {
        std::env::var("WEBCNN_GPU_TIMEOUT_S")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&s| s > 0)
            .unwrap_or(WAIT_LIMIT_S)
    });
    let poll = wgpu::PollType::Wait {
        submission_index: None,
        timeout: Some(std::time::Duration::from_secs(limit)),
    };
    match device.poll(poll) {
        Ok(_) => Ok(()),
        Err(wgpu::PollError::Timeout) => Err(Error::Gpu(format!(
            "the GPU did not finish its work within {limit} s (WEBCNN_GPU_TIMEOUT_S sets the limit)"
        ))),
        Err(e) => Err(Error::Gpu(format!("waiting for the GPU: {e}"))),
    }
}
