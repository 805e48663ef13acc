//! `webcnn bench`: each convolution shape of ResNet-50 and VGG-16 (at 224x224) as a
//! one-layer graph, timed on the GPU (device time, many passes per submit) and on the
//! CPU backend. A table, never an assertion: compare ratios within one run.

use clap::ValueEnum;
use std::time::Instant;
use webcnn::backend::cpu::CpuModel;
use webcnn::backend::gpu::{GpuContext, GpuModel, GpuOptions};
use webcnn::graph::{Conv2d, GraphBuilder};
use webcnn::prng::{synth, synth_params};
use webcnn::Graph;

#[derive(clap::Args)]
pub struct Args {
    /// Which network's layers.
    #[arg(long, value_enum, default_value = "all")]
    model: Which,
    /// Timed passes per layer and backend (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Skip the CPU backend.
    #[arg(long)]
    no_cpu: bool,
    /// Skip the GPU backend.
    #[arg(long)]
    no_gpu: bool,
    /// Only layers whose name contains this.
    #[arg(long)]
    filter: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Resnet50,
    Vgg16,
    All,
}

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

pub fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut shapes: Vec<&Shape> = match a.model {
        Which::Resnet50 => RESNET50.iter().collect(),
        Which::Vgg16 => VGG16.iter().collect(),
        Which::All => RESNET50.iter().chain(VGG16).collect(),
    };
    if let Some(f) = &a.filter {
        shapes.retain(|s| s.0.contains(f.as_str()));
    }
    let iters = a.iters.max(1);
    let ctx = if a.no_gpu {
        None
    } else {
        Some(GpuContext::new_blocking(GpuOptions::default())?)
    };
    if let Some(c) = &ctx {
        println!("GPU: {}", c.describe());
    }
    println!(
        "CPU: {} threads; batch {}; {} timed passes per cell (after a warm-up)\n",
        rayon::current_num_threads(),
        a.batch,
        iters
    );
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
    let (mut gpu_total, mut cpu_total) = (0.0, 0.0);
    for s in shapes {
        let (g, macs) = layer(s, a.batch)?;
        let w = synth_params(&g, 1)?;
        let x = synth("input", g.input_shape(), 2)?;
        let gpu = match &ctx {
            Some(ctx) => {
                let mut m = GpuModel::prepare_blocking(ctx, &g, &w)?;
                m.run_blocking(&x)?;
                Some(m.time_device(iters)?)
            }
            None => None,
        };
        let cpu = if a.no_cpu {
            None
        } else {
            let m = CpuModel::prepare(&g, &w)?;
            m.run(&x)?;
            let t = Instant::now();
            for _ in 0..iters {
                m.run(&x)?;
            }
            Some(t.elapsed().as_secs_f64() / iters as f64)
        };
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
    println!(
        "\ntotal: GPU {} ms, CPU {} ms",
        ms(gpu_total),
        ms(cpu_total)
    );
    Ok(())
}
