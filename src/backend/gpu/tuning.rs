//! Which convolution kernel each layer shape gets on an adapter. The adapter kinds we know
//! have a static table (software renderers: register-blocked; GPUs of the known vendors:
//! 64x64 tiles, split along k where a layer makes too few, and Winograd on the
//! register-blocked set for 3x3 stride-1 layers), so a first run is never slow. On other
//! adapters, or when asked ([`Tuning::Measure`]), each new layer shape is timed with each
//! kernel (64x64 tiles, 32x32 tiles, tiled Winograd, register-blocked) at prepare and
//! the winner remembered per adapter: in memory, and natively in the cache folder; in
//! browsers the package keeps [`Tuner::export`]'s JSON in IndexedDB and hands it back
//! ([`Tuner::import`]) on the next load.

use super::kernels::Precision;
use super::Kernels;
use crate::graph::Conv2d;
use std::collections::HashMap;
use std::sync::Mutex;

/// When to time the convolution kernels instead of taking the static table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tuning {
    /// The static table for known adapter kinds; unknown adapters are measured.
    #[default]
    Auto,
    /// Only the static table (unknown adapters: tiled).
    Table,
    /// Measure every layer shape not yet remembered for this adapter.
    Measure,
}

/// PCI vendor ids of the GPU makers whose cards reward the tiled kernels.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
const KNOWN_VENDORS: [u32; 9] = [
    0x10de, // NVIDIA
    0x1002, // AMD
    0x1022, // AMD
    0x8086, // Intel
    0x106b, // Apple
    0x5143, // Qualcomm
    0x13b5, // ARM
    0x1010, // Imagination
    0x144d, // Samsung
];

/// Vendor names in browsers' `GPUAdapterInfo.vendor` of the same makers.
const KNOWN_VENDOR_NAMES: [&str; 10] = [
    "nvidia",
    "amd",
    "ati",
    "intel",
    "apple",
    "qualcomm",
    "arm",
    "imagination",
    "img-tec",
    "samsung",
];

/// Whether a PCI vendor id (native adapters) is one of the known GPU makers'.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn known_vendor_id(vendor: u32) -> bool {
    KNOWN_VENDORS.contains(&vendor)
}

/// Whether a browser's vendor string names one of the known GPU makers.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn known_vendor_name(vendor: &str) -> bool {
    KNOWN_VENDOR_NAMES.contains(&vendor.trim().to_lowercase().as_str())
}

/// The static table's kernels for an adapter ([`Kernels::for_adapter`]'s), `None` for an
/// adapter kind it does not know.
pub(crate) fn table(software: bool, known_vendor: bool) -> Option<Kernels> {
    (software || known_vendor).then(|| Kernels::for_adapter(software))
}

/// How one convolution gets its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A measured (or cached) choice.
    Use(Kernels),
    /// A forced kernel set.
    Set(Kernels),
    /// The static table's kernel set (its tile size chosen per layer).
    Table(Kernels),
    /// Time the kernels on this shape.
    Measure,
}

/// The rule: forced kernels win; then (unless only the table is wanted) a remembered
/// measurement; then measuring where asked to, or where the adapter kind is unknown
/// (`known` is the table's entry), if this build can time kernels; else the table, tiled
/// for unknown kinds.
pub(crate) fn decide(
    forced: Option<Kernels>,
    tuning: Tuning,
    cached: impl FnOnce() -> Option<Kernels>,
    known: Option<Kernels>,
    can_measure: bool,
) -> Decision {
    if let Some(k) = forced {
        return Decision::Set(k);
    }
    if tuning != Tuning::Table {
        if let Some(v) = cached() {
            return Decision::Use(v);
        }
    }
    let measure = match tuning {
        Tuning::Measure => true,
        Tuning::Auto => known.is_none(),
        Tuning::Table => false,
    };
    if measure && can_measure {
        Decision::Measure
    } else {
        Decision::Table(known.unwrap_or(Kernels::Tiled))
    }
}

/// What a convolution's kernel choice depends on: its shape, the batch of a dispatch and
/// the storage precision (f32 keys keep their old form).
pub(crate) fn shape_key(cfg: &Conv2d, [n, c, h, w]: [usize; 4], precision: Precision) -> String {
    let [kh, kw] = cfg.kernel;
    let ([sh, sw], [ph, pw], [dh, dw]) = (cfg.stride, cfg.padding, cfg.dilation);
    let half = if precision == Precision::F16 {
        " f16"
    } else {
        ""
    };
    format!(
        "n{n} c{c} h{h} w{w} oc{} k{kh}x{kw} s{sh}x{sw} p{ph}x{pw} d{dh}x{dw} g{}{half}",
        cfg.out_channels, cfg.groups
    )
}

/// The choices made on one device: measured ones, and those read from the cache file.
pub(crate) struct Tuner {
    /// Adapter, backend and driver: what a cached choice is valid for.
    adapter: String,
    #[cfg(not(target_arch = "wasm32"))]
    file: Option<std::path::PathBuf>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Read from the cache file (once, on first use).
    loaded: bool,
    choices: HashMap<String, Kernels>,
    /// Each shape timed on this device, its seconds per kernel, in the order timed (for
    /// tests and reports).
    timings: Vec<(String, Vec<(Kernels, f64)>)>,
}

impl Tuner {
    /// `name`: the adapter's (in browsers from `GPUAdapterInfo`, where wgpu has none).
    pub fn new(
        info: &wgpu::AdapterInfo,
        name: &str,
        #[allow(unused)] file: Option<std::path::PathBuf>,
    ) -> Tuner {
        Tuner {
            adapter: format!(
                "{} | {:?} | {} {}",
                name, info.backend, info.driver, info.driver_info
            ),
            #[cfg(not(target_arch = "wasm32"))]
            file,
            state: Mutex::new(State::default()),
        }
    }

    /// The remembered choice for `key`.
    pub fn get(&self, key: &str) -> Option<Kernels> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.loaded {
            s.loaded = true;
            let cached = self.load();
            for (k, v) in cached {
                s.choices.entry(k).or_insert(v);
            }
        }
        s.choices.get(key).copied()
    }

    /// Remember a measured choice (written to the cache file by [`Self::save`]) and the
    /// times it was chosen by.
    pub fn remember(&self, key: String, v: Kernels, times: Vec<(Kernels, f64)>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.choices.insert(key.clone(), v);
        s.timings.push((key, times));
    }

    /// The seconds per kernel of every shape timed on this device so far.
    pub fn timings(&self) -> Vec<(String, Vec<(Kernels, f64)>)> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .timings
            .clone()
    }

    /// Every choice known on this device, sorted by shape.
    pub fn choices(&self) -> Vec<(String, Kernels)> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = s.choices.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }

    /// Shapes measured on this device so far.
    pub fn measured(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .timings
            .len()
    }

    /// This adapter's choices from the cache file; nothing when there is none, or it is
    /// unreadable (a cache, not a source of truth: it is rewritten on the next save).
    #[cfg(not(target_arch = "wasm32"))]
    fn load(&self) -> HashMap<String, Kernels> {
        let Some(file) = &self.file else {
            return HashMap::new();
        };
        let Ok(text) = std::fs::read_to_string(file) else {
            return HashMap::new();
        };
        self.parse(&text).unwrap_or_else(|| {
            log::warn!(
                "ignoring the unreadable GPU tuning cache {}",
                file.display()
            );
            HashMap::new()
        })
    }

    #[cfg(target_arch = "wasm32")]
    fn load(&self) -> HashMap<String, Kernels> {
        HashMap::new()
    }

    /// This adapter's choices in a cache's JSON (`{adapter: {shape: kernel}}`); `None` if
    /// it is not JSON. Entries it does not understand are skipped.
    fn parse(&self, text: &str) -> Option<HashMap<String, Kernels>> {
        let all = serde_json::from_str::<serde_json::Value>(text).ok()?;
        Some(
            all.get(&self.adapter)
                .and_then(|a| a.as_object())
                .map(|a| {
                    a.iter()
                        .filter_map(|(k, v)| Some((k.clone(), Kernels::from_name(v.as_str()?)?)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// Take this adapter's choices from a cache's JSON (what [`Self::export`] made, kept
    /// by the caller: the package keeps it in IndexedDB). Choices already made here win;
    /// text that is not JSON is ignored. Whether it was readable.
    pub fn import(&self, text: &str) -> bool {
        let Some(cached) = self.parse(text) else {
            return false;
        };
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in cached {
            s.choices.entry(k).or_insert(v);
        }
        true
    }

    /// `base` (a cache's JSON; other adapters' entries are kept) with this adapter's
    /// choices in place of its old ones.
    pub fn export(&self, base: Option<&str>) -> String {
        let mut all = base
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .filter(|v| v.is_object())
            .unwrap_or_else(|| serde_json::json!({}));
        let mine: serde_json::Map<String, serde_json::Value> = self
            .choices()
            .into_iter()
            .map(|(k, v)| (k, v.name().into()))
            .collect();
        all[&self.adapter] = mine.into();
        all.to_string()
    }

    /// Write this adapter's choices into the cache file, keeping other adapters' entries.
    /// Failures are logged: the choices still hold for this process.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let all = self.export(std::fs::read_to_string(file).ok().as_deref());
        let write = || -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Whole or not at all: a temporary file renamed over the old one.
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &all)?;
            std::fs::rename(&tmp, file)
        };
        if let Err(e) = write() {
            log::warn!(
                "could not save the GPU tuning cache {}: {e}",
                file.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_knows_software_renderers_and_gpu_vendors_only() {
        let id = known_vendor_id;
        assert_eq!(table(true, id(0)), Some(Kernels::RegisterBlocked));
        assert_eq!(table(true, id(0x10de)), Some(Kernels::RegisterBlocked));
        assert_eq!(table(false, id(0x10de)), Some(Kernels::Tiled));
        assert_eq!(table(false, id(0x1234)), None);
        // Browsers name the vendor instead.
        assert!(known_vendor_name("nvidia") && known_vendor_name(" Apple"));
        assert!(!known_vendor_name("") && !known_vendor_name("google"));
    }

    #[test]
    fn the_rule_puts_forced_before_measured_before_the_table() {
        use Decision::*;
        let (rb, tiled) = (Kernels::RegisterBlocked, Kernels::Tiled);
        let none = || None;
        let cached = || Some(Kernels::Tiled);
        // Forced kernels win over everything.
        assert_eq!(
            decide(Some(rb), Tuning::Measure, cached, None, true),
            Set(rb)
        );
        // A measurement is used unless only the table is wanted.
        assert_eq!(
            decide(None, Tuning::Auto, cached, Some(rb), true),
            Use(Kernels::Tiled)
        );
        assert_eq!(
            decide(None, Tuning::Table, cached, Some(rb), true),
            Table(rb)
        );
        // Known kinds take the table under Auto; unknown ones are measured where possible.
        assert_eq!(decide(None, Tuning::Auto, none, Some(rb), true), Table(rb));
        assert_eq!(decide(None, Tuning::Auto, none, None, true), Measure);
        assert_eq!(decide(None, Tuning::Auto, none, None, false), Table(tiled));
        assert_eq!(decide(None, Tuning::Table, none, None, true), Table(tiled));
        // Measure measures known kinds too.
        assert_eq!(
            decide(None, Tuning::Measure, none, Some(tiled), true),
            Measure
        );
    }

    #[test]
    fn shape_keys_tell_every_parameter_apart() {
        let a = Conv2d::new(64, 64, 3).padding(1);
        let f32 = Precision::F32;
        let k = shape_key(&a, [1, 64, 56, 56], f32);
        assert_eq!(k, "n1 c64 h56 w56 oc64 k3x3 s1x1 p1x1 d1x1 g1");
        assert_ne!(k, shape_key(&a, [2, 64, 56, 56], f32));
        assert_ne!(k, shape_key(&a.clone().stride(2), [1, 64, 56, 56], f32));
        assert_ne!(k, shape_key(&a.clone().groups(2), [1, 64, 56, 56], f32));
        assert_ne!(k, shape_key(&a, [1, 64, 56, 56], Precision::F16));
    }
}

#[cfg(target_arch = "wasm32")]
impl Tuner {
    /// Nothing to write in a browser: the package stores [`Self::export`].
    pub fn save(&self) {}
}
