//! `webcnn soak`: a model run many times, and loaded, run and dropped many times, on each
//! backend, with resident memory (VmRSS) and the GPU allocator's bytes measured after the
//! warm-up and at the end. Growth beyond `--max-growth` percent, or an output that
//! changes between runs, is an error. CI runs a short version (tests/cli.rs); the full
//! one is `webcnn soak` with its defaults (1000 runs, 100 cycles).

use super::bench::BenchDevice;
use webcnn::backend::gpu::{GpuContext, GpuOptions};
use webcnn::engine::{Session, Target};
use webcnn::models::Model;
use webcnn::prng::synth;

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "resnet18")]
    model: String,
    /// Backends, comma-separated: cpu, gpu.
    #[arg(long, value_delimiter = ',', default_value = "cpu,gpu")]
    device: Vec<BenchDevice>,
    /// Consecutive runs of one loaded model.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Load -> run -> drop cycles.
    #[arg(long, default_value_t = 100)]
    cycles: usize,
    /// Memory is compared from this point on: after this many runs, and a tenth of the cycles.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Input height and width (default: the model's).
    #[arg(long)]
    size: Option<usize>,
    /// Largest growth allowed, in percent.
    #[arg(long, default_value_t = 1.0)]
    max_growth: f64,
}

/// Resident memory now, in bytes (Linux; 0 elsewhere), after the allocator has handed its
/// free pages back. glibc keeps freed memory in per-thread arenas, and how much depends on
/// which thread allocated and freed what (the CPU backend runs on pool threads): that is
/// allocator caching, not growth; a leak stays resident after the trim.
fn rss() -> u64 {
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    webcnn::weights::proc_kb("/proc/self/status", "VmRSS:").unwrap_or(0)
}

#[derive(Clone, Copy)]
struct Mem {
    rss: u64,
    gpu: Option<u64>,
}

fn measure(ctx: Option<&GpuContext>) -> Mem {
    Mem {
        rss: rss(),
        gpu: ctx.and_then(|c| c.allocated_bytes()),
    }
}

fn growth(a: u64, b: u64) -> f64 {
    if a == 0 {
        0.0
    } else {
        100.0 * (b as f64 - a as f64) / a as f64
    }
}

pub fn run(a: Args) -> R<()> {
    let model = Model::get(&a.model)?;
    let size = a.size.unwrap_or(model.input[1]);
    let graph = model.graph(&[1, 3, size, size])?;
    let x = synth("input", &[1, 3, size, size], 7)?;
    let warm = a.warmup.clamp(1, a.runs.max(1));
    let warm_cycles = (a.cycles / 10).max(1).min(a.cycles.max(1));
    println!(
        "soak: {} at {size}x{size}, {} runs (compared from run {warm}), {} load/run/drop cycles (from cycle {warm_cycles})",
        a.model, a.runs, a.cycles
    );
    println!("| backend | phase | RSS at start | RSS at end | growth | GPU bytes at start | GPU bytes at end | growth |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut failures = vec![];
    for dev in &a.device {
        let target = match dev {
            BenchDevice::Cpu => Target::cpu(),
            BenchDevice::Gpu => Target::gpu(GpuContext::new_blocking(
                GpuOptions::default().cached_tuning(),
            )?),
        };
        let name = match dev {
            BenchDevice::Cpu => "cpu".to_string(),
            BenchDevice::Gpu => format!(
                "gpu ({})",
                target.gpu_context().expect("gpu").adapter_name()
            ),
        };
        let weights = webcnn::weights::synthetic(&graph, 1);
        // Runs of one loaded model: the same bits every time, flat memory.
        let mut s = pollster::block_on(Session::load(&graph, weights.clone(), &target))?;
        let first = s.run_blocking(&x)?.remove(0);
        let mut start = None;
        for i in 1..=a.runs {
            let y = s.run_blocking(&x)?.remove(0);
            if y.data() != first.data() {
                return Err(format!("{name}: run {i} gave other values than the first").into());
            }
            if i == warm {
                start = Some(measure(target.gpu_context()));
            }
        }
        let end = measure(target.gpu_context());
        drop(s);
        report(
            &name,
            "runs",
            start.unwrap_or(end),
            end,
            a.max_growth,
            &mut failures,
        );
        // Load -> run -> drop cycles on the same device.
        let mut start = None;
        for i in 1..=a.cycles {
            let mut s = pollster::block_on(Session::load(&graph, weights.clone(), &target))?;
            let y = s.run_blocking(&x)?.remove(0);
            if y.data() != first.data() {
                return Err(format!("{name}: cycle {i} gave other values").into());
            }
            drop(s);
            if i == warm_cycles {
                start = Some(measure(target.gpu_context()));
            }
        }
        let end = measure(target.gpu_context());
        report(
            &name,
            "cycles",
            start.unwrap_or(end),
            end,
            a.max_growth,
            &mut failures,
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("memory grew: {}", failures.join("; ")).into())
    }
}

fn report(name: &str, phase: &str, a: Mem, b: Mem, max: f64, failures: &mut Vec<String>) {
    let mb = |v: u64| format!("{:.1} MB", v as f64 / 1e6);
    let rg = growth(a.rss, b.rss);
    let (ga, gb, gg) = match (a.gpu, b.gpu) {
        (Some(x), Some(y)) => (mb(x), mb(y), format!("{:+.2}%", growth(x, y))),
        _ => ("n/a".into(), "n/a".into(), "n/a".into()),
    };
    println!(
        "| {name} | {phase} | {} | {} | {rg:+.2}% | {ga} | {gb} | {gg} |",
        mb(a.rss),
        mb(b.rss)
    );
    if rg > max {
        failures.push(format!("{name} {phase}: RSS {rg:+.2}%"));
    }
    if let (Some(x), Some(y)) = (a.gpu, b.gpu) {
        if growth(x, y) > max {
            failures.push(format!("{name} {phase}: GPU bytes {:+.2}%", growth(x, y)));
        }
    }
}
