//! Subcommands of the `webcnn` binary.

mod bench;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use webcnn::backend::gpu::{GpuContext, GpuOptions};

#[derive(Parser)]
#[command(
    name = "webcnn",
    version,
    about = "Classic CNN backbones on WebGPU (wgpu) and the CPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// GPU adapters, the one webcnn picks, and its limits.
    Info,
    /// Per-layer GPU and CPU timings for the convolution shapes of ResNet-50 and VGG-16.
    Bench(bench::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info => info(),
        Cmd::Bench(a) => bench::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> Result<(), Box<dyn std::error::Error>> {
    println!("webcnn {}", env!("CARGO_PKG_VERSION"));
    println!("CPU backend: {} threads", rayon::current_num_threads());
    let adapters = webcnn::backend::gpu::list_adapters();
    if adapters.is_empty() {
        println!("GPU adapters: none found");
    }
    for a in &adapters {
        println!("GPU adapter: {a}");
    }
    match GpuContext::new_blocking(GpuOptions::default()) {
        Ok(ctx) => {
            let l = ctx.limits();
            println!("chosen: {}", ctx.describe());
            println!(
                "  max_storage_buffer_binding_size: {} MiB",
                l.max_storage_buffer_binding_size >> 20
            );
            println!(
                "  max_buffer_size:                 {} MiB",
                l.max_buffer_size >> 20
            );
            println!(
                "  max_compute_workgroups_per_dimension: {}",
                l.max_compute_workgroups_per_dimension
            );
            println!(
                "  max_compute_invocations_per_workgroup: {}",
                l.max_compute_invocations_per_workgroup
            );
            println!(
                "  max_compute_workgroup_storage_size: {} KiB",
                l.max_compute_workgroup_storage_size >> 10
            );
        }
        Err(e) => println!("chosen: CPU backend ({e})"),
    }
    Ok(())
}
