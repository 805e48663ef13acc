//! `webcnn bench`: whole models on the CPU and GPU backends (first, median and minimum run
//! time, GFLOP/s, peak RSS; `--profile` per layer; `--json` for scripts), or with
//! `--layers` each convolution shape of ResNet-50 and VGG-16 (at 224x224), or square
//! matrix products, as a one-layer graph. Tables, never assertions: compare ratios within
//! one run.

use clap::ValueEnum;
use std::sync::Arc;
use std::time::Instant;
use webcnn::backend::cpu::{CpuModel, CpuWeights};
use webcnn::backend::gpu::{
    GpuContext, GpuModel, GpuOptions, GpuWeights, Kernels, Precision, StepClock, Tuning,
};
use webcnn::graph::{Conv2d, GraphBuilder};
use webcnn::models::Model;
use webcnn::prng::{synth, synth_params};
use webcnn::Graph;

#[derive(clap::Args)]
pub struct Args {
    /// Models to time, comma-separated: zoo ids (synthetic weights) or .onnx files.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resnet18,resnet50,vgg16,alexnet"
    )]
    models: Vec<String>,
    /// Backends, comma-separated: cpu, gpu.
    #[arg(long, value_delimiter = ',', default_value = "cpu,gpu")]
    device: Vec<BenchDevice>,
    /// Images per batch (the model's default input size).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs per model and backend, after the first.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// One JSON object per model and backend, one per line.
    #[arg(long)]
    json: bool,
    /// Also print the time of every layer (fused step).
    #[arg(long)]
    profile: bool,
    /// Run each model only up to this node (e.g. `flatten`: embedding, as `webcnn embed` does).
    #[arg(long)]
    layer: Option<String>,
    /// Instead of models: each convolution shape of ResNet-50 and/or VGG-16 as a one-layer
    /// graph, on the GPU (device time) and the CPU; `matmul`: square matrix products as
    /// 1x1 convolutions; `linear`: VGG-16's and AlexNet's linear layers, with the rate
    /// their weights stream at.
    #[arg(long, value_enum)]
    layers: Option<Which>,
    /// With --layers: only layers whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// The GPU's conv and linear kernels: `auto` takes the static table for known adapter
    /// kinds (register-blocked on software adapters; on GPUs 64x64 tiles split along k
    /// where a layer makes few, Winograd on heavy 3x3 layers, 32x32 tiles on RGB stems)
    /// or what was measured before, and measures per layer shape on unknown adapters;
    /// `tiled`, `tiled-large`, `tiled-small`, `tiled-winograd` and `register-blocked` force
    /// one kernel set on every layer; `tune` measures any layer shape not yet measured on
    /// this adapter.
    #[arg(long, value_enum, default_value = "auto")]
    gpu_kernels: GpuKernels,
    /// What the GPU stores activations and weights as (f16 needs the adapter's
    /// shader-f16; kernels compute in f32 either way).
    #[arg(long, value_enum, default_value = "f32")]
    precision: BenchPrecision,
    /// The CPU's convolution kernels, instead of the best this CPU has: `AVX-512`, `AVX2`
    /// or `portable` (the path of CPUs without our microkernels), where the CPU runs them.
    #[arg(long)]
    cpu_kernels: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchPrecision {
    F32,
    F16,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GpuKernels {
    Auto,
    Tiled,
    TiledLarge,
    TiledSmall,
    TiledWinograd,
    RegisterBlocked,
    /// Time each convolution kernel on each layer shape not yet measured on this adapter
    /// and keep the fastest (remembered in the cache folder).
    Tune,
}

impl Args {
    /// The CPU kernel set to run: `--cpu-kernels`, else the best this CPU has.
    fn cpu_kernels(&self) -> &str {
        self.cpu_kernels
            .as_deref()
            .unwrap_or(webcnn::backend::cpu::kernels())
    }

    fn gpu_options(&self) -> GpuOptions {
        GpuOptions {
            kernels: match self.gpu_kernels {
                GpuKernels::Auto | GpuKernels::Tune => None,
                GpuKernels::Tiled => Some(Kernels::Tiled),
                GpuKernels::TiledLarge => Some(Kernels::TiledLarge),
                GpuKernels::TiledSmall => Some(Kernels::TiledSmall),
                GpuKernels::TiledWinograd => Some(Kernels::TiledWinograd),
                GpuKernels::RegisterBlocked => Some(Kernels::RegisterBlocked),
            },
            tuning: match self.gpu_kernels {
                GpuKernels::Tune => Tuning::Measure,
                _ => Tuning::Auto,
            },
            precision: match self.precision {
                BenchPrecision::F32 => Precision::F32,
                BenchPrecision::F16 => Precision::F16,
            },
            ..Default::default()
        }
        .cached_tuning()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum BenchDevice {
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Resnet50,
    Vgg16,
    All,
    /// Square matrix products (1024 and 4096) as 1x1 convolutions: the rate the
    /// convolutions' own kernels reach on plain GEMM, to set the layers' rates against.
    Matmul,
    /// VGG-16's and AlexNet's linear layers: bandwidth-bound at small batches, so their
    /// table gives the rate the weights stream at.
    Linear,
}

/// (layer, in features, out features)
const LINEAR: &[(&str, usize, usize)] = &[
    ("vgg16 classifier.0 (fc6)", 25088, 4096),
    ("vgg16 classifier.3 (fc7)", 4096, 4096),
    ("vgg16 classifier.6 (fc8)", 4096, 1000),
    ("alexnet classifier.1 (fc6)", 9216, 4096),
];

/// (layer, in channels, out channels, kernel, stride, padding, input size)
type Shape = (&'static str, usize, usize, usize, usize, usize, usize);

const RESNET50: &[Shape] = &[
    ("resnet50 conv1", 3, 64, 7, 2, 3, 224),
    ("resnet50 layer1.0.conv1", 64, 64, 1, 1, 0, 56),
    ("resnet50 layer1.0.conv2", 64, 64, 3, 1, 1, 56),
    ("resnet50 layer1.0.conv3", 64, 256, 1, 1, 0, 56),
    ("resnet50 layer1.1.conv1", 256, 64, 1, 1, 0, 56),
    ("resnet50 layer2.0.conv1", 256, 128, 1, 1, 0, 56),
    ("resnet50 layer2.0.conv2", 128, 128, 3, 2, 1, 56),
    ("resnet50 layer2.0.conv3", 128, 512, 1, 1, 0, 28),
    ("resnet50 layer2.0.downsample", 256, 512, 1, 2, 0, 56),
    ("resnet50 layer2.1.conv1", 512, 128, 1, 1, 0, 28),
    ("resnet50 layer2.1.conv2", 128, 128, 3, 1, 1, 28),
    ("resnet50 layer3.0.conv1", 512, 256, 1, 1, 0, 28),
    ("resnet50 layer3.0.conv2", 256, 256, 3, 2, 1, 28),
    ("resnet50 layer3.0.conv3", 256, 1024, 1, 1, 0, 14),
    ("resnet50 layer3.0.downsample", 512, 1024, 1, 2, 0, 28),
    ("resnet50 layer3.1.conv1", 1024, 256, 1, 1, 0, 14),
    ("resnet50 layer3.1.conv2", 256, 256, 3, 1, 1, 14),
    ("resnet50 layer4.0.conv1", 1024, 512, 1, 1, 0, 14),
    ("resnet50 layer4.0.conv2", 512, 512, 3, 2, 1, 14),
    ("resnet50 layer4.0.conv3", 512, 2048, 1, 1, 0, 7),
    ("resnet50 layer4.0.downsample", 1024, 2048, 1, 2, 0, 14),
    ("resnet50 layer4.1.conv1", 2048, 512, 1, 1, 0, 7),
    ("resnet50 layer4.1.conv2", 512, 512, 3, 1, 1, 7),
];

const VGG16: &[Shape] = &[
    ("vgg16 features.0", 3, 64, 3, 1, 1, 224),
    ("vgg16 features.2", 64, 64, 3, 1, 1, 224),
    ("vgg16 features.5", 64, 128, 3, 1, 1, 112),
    ("vgg16 features.7", 128, 128, 3, 1, 1, 112),
    ("vgg16 features.10", 128, 256, 3, 1, 1, 56),
    ("vgg16 features.12", 256, 256, 3, 1, 1, 56),
    ("vgg16 features.17", 256, 512, 3, 1, 1, 28),
    ("vgg16 features.19", 512, 512, 3, 1, 1, 28),
    ("vgg16 features.24", 512, 512, 3, 1, 1, 14),
];

/// M = K = N: a 1x1 convolution from N channels to N on a sqrt(N) x sqrt(N) map.
const MATMUL: &[Shape] = &[
    ("matmul 1024", 1024, 1024, 1, 1, 0, 32),
    ("matmul 4096", 4096, 4096, 1, 1, 0, 64),
];

fn layer(s: &Shape, batch: usize) -> Result<(Graph, u64), webcnn::GraphError> {
    let &(_, ci, co, k, st, p, hw) = s;
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[batch, ci, hw, hw])?;
    let y = b.conv2d("conv", x, Conv2d::new(ci, co, k).stride(st).padding(p))?;
    let r = b.relu("relu", y)?;
    let g = b.build(&[r])?;
    let o = g.shape(g.outputs()[0]);
    let macs = (o.iter().product::<usize>() * ci * k * k) as u64;
    Ok((g, macs))
}

fn ms(secs: f64) -> String {
    format!("{:.3}", secs * 1e3)
}

fn gflops(macs: u64, secs: f64) -> String {
    format!("{:.1}", 2.0 * macs as f64 / secs / 1e9)
}

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// Peak resident memory since the last reset, in MiB (Linux; None elsewhere).
fn peak_rss_mb() -> Option<f64> {
    webcnn::weights::proc_kb("/proc/self/status", "VmHWM:").map(|b| b as f64 / (1 << 20) as f64)
}

/// Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per step, the median of its times in `runs` (each one run's steps, in the same order).
fn step_medians(runs: Vec<Vec<(String, f64)>>) -> Vec<(String, f64)> {
    let Some(first) = runs.first() else {
        return vec![];
    };
    (0..first.len())
        .map(|i| {
            let mut t: Vec<f64> = runs.iter().map(|r| r[i].1).collect();
            (first[i].0.clone(), median(&mut t))
        })
        .collect()
}

/// One model on one backend: first, median and minimum run times (input upload and
/// read-back included), GFLOP/s at the median, peak RSS, and per-step times.
struct Timing {
    model: String,
    device: &'static str,
    backend: String,
    first: f64,
    median: f64,
    min: f64,
    gflops: f64,
    peak_rss_mb: Option<f64>,
    steps: Vec<(String, f64)>,
    /// How `steps` were timed.
    clock: &'static str,
}

fn time_model(id: &str, device: BenchDevice, a: &Args, ctx: Option<&GpuContext>) -> R<Timing> {
    // A zoo id with synthetic weights, or an .onnx file with its own.
    let (full, w) = if webcnn::weights::is_onnx(id) {
        let l = webcnn::weights::load_onnx(std::path::Path::new(id))?;
        (l.model.default_graph(a.batch.max(1)), l.tensors)
    } else {
        let full = Model::get(id)?.default_graph(a.batch.max(1));
        let w = synth_params(&full, 1)?;
        (full, w)
    };
    let graph = match &a.layer {
        Some(node) => full.with_outputs(&[node])?,
        None => full.clone(),
    };
    let x = synth("input", graph.input_shape(), 2)?;
    let iters = a.iters.max(1);
    reset_peak_rss();
    // The first run, then `iters` timed ones, in seconds.
    let time_runs = |run: &mut dyn FnMut() -> R<()>| -> R<(f64, Vec<f64>)> {
        let t = Instant::now();
        run()?;
        let first = t.elapsed().as_secs_f64();
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            run()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok((first, times))
    };
    let (first, mut times, backend, steps, clock) = match (device, ctx) {
        (BenchDevice::Gpu, Some(ctx)) => {
            let weights = Arc::new(pollster::block_on(GpuWeights::upload(ctx, &full, &w))?);
            drop(w);
            let mut m = pollster::block_on(GpuModel::prepare_shared(&graph, &weights, true))?;
            let (first, times) = time_runs(&mut || Ok(m.run_blocking(&x).map(drop)?))?;
            let (steps, clock) = if a.profile {
                let (steps, clock) = m.time_steps(iters.min(5))?;
                let clock = match clock {
                    StepClock::Timestamps => "GPU timestamp queries",
                    StepClock::WallTime => "host wall time per step: no timestamp queries",
                };
                (steps, clock)
            } else {
                (vec![], "")
            };
            (
                first,
                times,
                format!("GPU: {}", ctx.describe()),
                steps,
                clock,
            )
        }
        (BenchDevice::Gpu, None) => return Err("no GPU adapter: drop gpu from --device".into()),
        (BenchDevice::Cpu, _) => {
            // The default set reads the model's weights in place (no copy, as an
            // application would hold them).
            let m = match &a.cpu_kernels {
                Some(k) => CpuModel::prepare_kernels(&graph, &w, k)?,
                None => {
                    CpuModel::prepare_shared(&graph, &Arc::new(CpuWeights::new(&full, w)?), true)?
                }
            };
            let kernels = a.cpu_kernels();
            let (first, times) = time_runs(&mut || Ok(m.run(&x).map(drop)?))?;
            // One profiled run reads several percent off per step on a noisy machine:
            // the median of up to 20, as the GPU's timestamps take a median too.
            let steps = if a.profile {
                let mut runs = vec![];
                for _ in 0..iters.min(20) {
                    runs.push(m.run_profiled(&x)?.1);
                }
                step_medians(runs)
            } else {
                vec![]
            };
            let threads = rayon::current_num_threads();
            (
                first,
                times,
                format!("CPU: {threads} threads, {kernels}"),
                steps,
                "host wall time per step",
            )
        }
    };
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let median = median(&mut times);
    Ok(Timing {
        // An .onnx file by its name, not its whole path.
        model: std::path::Path::new(id)
            .file_name()
            .filter(|_| webcnn::weights::is_onnx(id))
            .map_or(id.to_string(), |f| f.to_string_lossy().into_owned()),
        device: match device {
            BenchDevice::Cpu => "cpu",
            BenchDevice::Gpu => "gpu",
        },
        backend,
        first,
        median,
        min,
        gflops: 2.0 * graph.macs() as f64 / median / 1e9,
        peak_rss_mb: peak_rss_mb(),
        steps,
        clock,
    })
}

pub fn run(a: Args) -> R<()> {
    if let Some(which) = a.layers {
        return run_layers(which, &a);
    }
    let ctx = if a.device.contains(&BenchDevice::Gpu) {
        Some(GpuContext::new_blocking(a.gpu_options())?)
    } else {
        None
    };
    if !a.json {
        println!(
            "batch {}, {} timed runs after the first; times include input upload and read-back\n",
            a.batch.max(1),
            a.iters.max(1)
        );
        println!(
            "| {:<10} | {:<52} | {:>10} | {:>10} | {:>10} | {:>8} | {:>8} | {:>9} |",
            "model",
            "backend",
            "first ms",
            "median ms",
            "min ms",
            "GFLOP/s",
            "images/s",
            "peak RSS"
        );
        println!(
            "|{:-<12}|{:-<54}|{:-<12}|{:-<12}|{:-<12}|{:-<10}|{:-<10}|{:-<11}|",
            "", "", "", "", "", "", "", ""
        );
    }
    let mut profiles = vec![];
    for id in &a.models {
        for &device in &a.device {
            let t = time_model(id, device, &a, ctx.as_ref())?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "model": t.model, "device": t.device, "backend": t.backend,
                        "batch": a.batch.max(1), "median_ms": t.median * 1e3,
                        "min_ms": t.min * 1e3, "first_ms": t.first * 1e3,
                        "gflops": t.gflops, "images_per_s": a.batch.max(1) as f64 / t.median,
                        "layer": a.layer, "peak_rss_mb": t.peak_rss_mb,
                        "layers": t.steps.iter().map(|(n, s)| serde_json::json!({"layer": n, "ms": s * 1e3})).collect::<Vec<_>>(),
                        "layers_clock": (!t.steps.is_empty()).then_some(t.clock),
                    })
                );
            } else {
                println!(
                    "| {:<10} | {:<52} | {:>10} | {:>10} | {:>10} | {:>8.1} | {:>8.1} | {:>9} |",
                    t.model,
                    t.backend,
                    ms(t.first),
                    ms(t.median),
                    ms(t.min),
                    t.gflops,
                    a.batch.max(1) as f64 / t.median,
                    t.peak_rss_mb
                        .map_or("-".to_string(), |m| format!("{m:.0} MiB"))
                );
            }
            if !t.steps.is_empty() {
                profiles.push(t);
            }
        }
    }
    if let Some(ctx) = ctx.as_ref().filter(|_| !a.json) {
        let chosen = ctx.conv_kernels();
        if !chosen.is_empty() {
            let on = Kernels::ALL.map(|k| {
                let n = chosen.iter().filter(|(_, c)| *c == k).count();
                format!("{} on {n}", k.name())
            });
            println!(
                "\nGPU conv kernels per layer shape, measured on this adapter ({} now, the rest cached): {} shapes, {}",
                ctx.measured_shapes(),
                chosen.len(),
                on.join(", "),
            );
        }
        let timed = ctx.conv_timings();
        if !timed.is_empty() {
            let sets = Kernels::ALL;
            println!("\nconv kernels timed now (ms per pass; - where a kernel does not apply)");
            print!("| {:<58} |", "layer shape");
            for k in sets {
                print!(" {:>16} |", k.name());
            }
            println!(" {:<16} |", "chosen");
            print!("|{:-<60}|", "");
            for _ in sets {
                print!("{:-<18}|", "");
            }
            println!("{:-<18}|", "");
            for (key, times) in timed {
                print!("| {key:<58} |");
                for k in sets {
                    let t = times.iter().find(|(c, _)| *c == k);
                    print!(
                        " {:>16} |",
                        t.map_or("-".into(), |(_, s)| format!("{:.4}", s * 1e3))
                    );
                }
                let best = times.iter().min_by(|a, b| a.1.total_cmp(&b.1));
                println!(" {:<16} |", best.map_or("-", |(k, _)| k.name()));
            }
        }
    }
    if !a.json {
        for t in profiles {
            let total: f64 = t.steps.iter().map(|(_, s)| s).sum();
            println!(
                "\n{} on {}: per layer (fused steps; {})",
                t.model, t.backend, t.clock
            );
            println!("| {:<48} | {:>9} | {:>6} |", "layer", "ms", "share");
            println!("|{:-<50}|{:-<11}|{:-<8}|", "", "", "");
            for (n, s) in &t.steps {
                println!(
                    "| {:<48} | {:>9} | {:>5.1}% |",
                    n,
                    ms(*s),
                    100.0 * s / total
                );
            }
        }
    }
    Ok(())
}

/// The GPU context for `--layers`, if the GPU is benched, and the table's heading.
fn layers_context(a: &Args) -> R<Option<GpuContext>> {
    let ctx = if a.device.contains(&BenchDevice::Gpu) {
        Some(GpuContext::new_blocking(a.gpu_options())?)
    } else {
        None
    };
    if let Some(c) = &ctx {
        println!("GPU: {}", c.describe());
    }
    println!(
        "CPU: {} threads, {} kernels; batch {}; {} timed passes per cell (after a warm-up)\n",
        rayon::current_num_threads(),
        a.cpu_kernels(),
        a.batch,
        a.iters.max(1)
    );
    Ok(ctx)
}

/// Seconds per pass of one graph on the GPU (device time) and the CPU, where benched.
fn time_layer(g: &Graph, ctx: Option<&GpuContext>, a: &Args) -> R<(Option<f64>, Option<f64>)> {
    let iters = a.iters.max(1);
    let w = synth_params(g, 1)?;
    let x = synth("input", g.input_shape(), 2)?;
    let gpu = match ctx {
        Some(ctx) => {
            let mut m = GpuModel::prepare_blocking(ctx, g, &w)?;
            m.run_blocking(&x)?;
            Some(m.time_device(iters)?)
        }
        None => None,
    };
    let cpu = if !a.device.contains(&BenchDevice::Cpu) {
        None
    } else {
        let m = CpuModel::prepare_kernels(g, &w, a.cpu_kernels())?;
        m.run(&x)?;
        let t = Instant::now();
        for _ in 0..iters {
            m.run(&x)?;
        }
        Some(t.elapsed().as_secs_f64() / iters as f64)
    };
    Ok((gpu, cpu))
}

/// `--layers linear`: each linear layer's time and the rate its weights stream at.
fn run_linear(a: &Args) -> R<()> {
    let ctx = layers_context(a)?;
    println!(
        "| {:<30} | {:>12} | {:>9} | {:>10} | {:>9} | {:>10} | {:>9} |",
        "layer", "in > out", "weight MB", "GPU ms", "GPU GB/s", "CPU ms", "CPU GB/s"
    );
    println!(
        "|{:-<32}|{:-<14}|{:-<11}|{:-<12}|{:-<11}|{:-<12}|{:-<11}|",
        "", "", "", "", "", "", ""
    );
    for &(name, k, n) in LINEAR {
        if a.filter
            .as_ref()
            .is_some_and(|f| !name.contains(f.as_str()))
        {
            continue;
        }
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[a.batch.max(1), k])?;
        let y = b.linear("fc", x, k, n, true)?;
        let g = b.build(&[y])?;
        let (gpu, cpu) = time_layer(&g, ctx.as_ref(), a)?;
        let bytes = (k * n * 4) as f64;
        let dash = || "-".to_string();
        let rate = |t: f64| format!("{:.1}", bytes / t / 1e9);
        println!(
            "| {:<30} | {:>12} | {:>9.1} | {:>10} | {:>9} | {:>10} | {:>9} |",
            name,
            format!("{k} > {n}"),
            bytes / 1e6,
            gpu.map(ms).unwrap_or_else(dash),
            gpu.map(rate).unwrap_or_else(dash),
            cpu.map(ms).unwrap_or_else(dash),
            cpu.map(rate).unwrap_or_else(dash),
        );
    }
    Ok(())
}

fn run_layers(which: Which, a: &Args) -> R<()> {
    let mut shapes: Vec<&Shape> = match which {
        Which::Resnet50 => RESNET50.iter().collect(),
        Which::Vgg16 => VGG16.iter().collect(),
        Which::All => RESNET50.iter().chain(VGG16).collect(),
        Which::Matmul => MATMUL.iter().collect(),
        Which::Linear => return run_linear(a),
    };
    if let Some(f) = &a.filter {
        shapes.retain(|s| s.0.contains(f.as_str()));
    }
    let ctx = layers_context(a)?;
    println!(
        "| {:<30} | {:>22} | {:>8} | {:>10} | {:>9} | {:>10} | {:>9} | {:>9} |",
        "layer",
        "conv (cin>cout k s @hw)",
        "GMAC",
        "GPU ms",
        "GPU GF/s",
        "CPU ms",
        "CPU GF/s",
        "CPU/GPU"
    );
    println!(
        "|{:-<32}|{:-<24}|{:-<10}|{:-<12}|{:-<11}|{:-<12}|{:-<11}|{:-<11}|",
        "", "", "", "", "", "", "", ""
    );
    let (mut gpu_total, mut cpu_total, mut macs_total) = (0.0, 0.0, 0);
    for s in shapes {
        let (g, macs) = layer(s, a.batch)?;
        let (gpu, cpu) = time_layer(&g, ctx.as_ref(), a)?;
        macs_total += macs;
        gpu_total += gpu.unwrap_or(0.0);
        cpu_total += cpu.unwrap_or(0.0);
        let dash = || "-".to_string();
        let desc = format!("{}>{} k{} s{} @{}", s.1, s.2, s.3, s.4, s.6);
        println!(
            "| {:<30} | {:>22} | {:>8.3} | {:>10} | {:>9} | {:>10} | {:>9} | {:>9} |",
            s.0,
            desc,
            macs as f64 / 1e9,
            gpu.map(ms).unwrap_or_else(dash),
            gpu.map(|t| gflops(macs, t)).unwrap_or_else(dash),
            cpu.map(ms).unwrap_or_else(dash),
            cpu.map(|t| gflops(macs, t)).unwrap_or_else(dash),
            gpu.zip(cpu)
                .map(|(g, c)| format!("{:.2}", c / g))
                .unwrap_or_else(dash),
        );
    }
    let total = |name: &str, t: f64| {
        (t > 0.0).then(|| format!("{name} {} ms ({} GFLOP/s)", ms(t), gflops(macs_total, t)))
    };
    let totals: Vec<_> = [total("GPU", gpu_total), total("CPU", cpu_total)]
        .into_iter()
        .flatten()
        .collect();
    println!("\ntotal: {}", totals.join(", "));
    Ok(())
}
