//! Subcommands of the `webcnn` binary.

mod bench;
#[cfg(test)]
mod docs_check;
mod embed;
mod infer;
mod soak;

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
    /// Time whole models on the CPU and GPU backends (table or JSON; --profile per layer).
    Bench(bench::Args),
    /// Run a model on a float32 NCHW .npy tensor; write its output as .npy.
    Run(infer::RunArgs),
    /// Many runs and load/run/drop cycles: resident and GPU memory must not grow.
    Soak(soak::Args),
    /// Classify images: top-K labels with probabilities.
    Classify(infer::ClassifyArgs),
    /// A ResNet's class activation map over the image, written as a PNG.
    Cam(infer::CamArgs),
    /// Outputs of named nodes (default: the feature levels and the pooled vector) as .npy.
    Features(infer::FeaturesArgs),
    /// Images and folders in, one embedding row per image out (.npy + file names).
    Embed(embed::EmbedArgs),
    /// Cosine similarity of query images against an embedding file.
    Similar(embed::SimilarArgs),
    /// The model zoo: ids, parameters, MACs, input sizes, labels.
    Models,
    /// Rewrite a weights file (.safetensors, or a PyTorch .pth / .pt / .bin checkpoint) as
    /// .safetensors, optionally at half the size (f16 or bf16): what browsers load fastest.
    Convert {
        /// The file to read.
        input: std::path::PathBuf,
        /// The .safetensors file to write.
        output: std::path::PathBuf,
        /// f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: webcnn::weights::StoreAs,
        /// Check the tensors against this model id first (its head fitted to them).
        #[arg(long)]
        model: Option<String>,
    },
    /// Write a model's synthetic (golden PRNG, untrained) weights as .safetensors.
    ExportSynthetic {
        /// Model id.
        model: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Replace the classifier by one of this many classes, as a fine-tune does (0: no
        /// classifier, a headless backbone).
        #[arg(long)]
        classes: Option<usize>,
        #[arg(short, long)]
        output: std::path::PathBuf,
    },
}

/// A session on `device` for `graph`, the GPU (where it is used) keeping its measured
/// kernel choices in the cache folder.
pub(crate) fn open_session(
    graph: &webcnn::Graph,
    w: webcnn::weights::TensorMap,
    device: webcnn::engine::Device,
) -> Result<webcnn::engine::Session, webcnn::Error> {
    let opts = GpuOptions::default().cached_tuning();
    pollster::block_on(webcnn::engine::Session::new_with(graph, w, device, opts))
}

/// The CLI's view of a download: a progress bar on stderr, notes as `notice:` lines.
pub(crate) struct DownloadBar(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl DownloadBar {
    pub(crate) fn new() -> DownloadBar {
        DownloadBar(std::sync::Mutex::new(None))
    }

    pub(crate) fn observe(&self, p: webcnn::weights::hub::Progress) {
        use webcnn::weights::hub::Progress;
        let mut bar = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Bytes { repo, got, total } => {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(total.unwrap_or(0));
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} ({percent}%, {bytes_per_sec})",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    b.set_message(format!("downloading {repo}"));
                    b
                });
                b.set_position(got);
            }
            Progress::End => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
            Progress::Note(msg) => eprintln!("notice: {msg}"),
        }
    }
}

/// Mesa's Vulkan drivers probe for Wayland when the GPU is opened, and its client library
/// prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` (two to four
/// times) where that variable is unset: root shells, containers, CI. It reads as an error of
/// ours; a private directory of this user's makes the probe quiet. Runs before any thread.
fn quiet_wayland_probe() {
    #[cfg(target_os = "linux")]
    {
        let set = std::env::var_os("XDG_RUNTIME_DIR")
            .is_some_and(|v| std::path::Path::new(&v).is_absolute());
        if set {
            return;
        }
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let dir = std::env::temp_dir().join(format!("webcnn-runtime-{uid}"));
        use std::os::unix::fs::DirBuilderExt;
        let made = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        if made.is_ok() || dir.is_dir() {
            // Single-threaded here: nothing reads the environment concurrently.
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}

pub fn main() -> ExitCode {
    // A reader that closes the pipe early (`webcnn models | head`) ends the process quietly,
    // as it does other Unix tools, instead of a panic in `println!`.
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    quiet_wayland_probe();
    init_logging();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info => info(),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Run(a) => infer::run(a),
        Cmd::Soak(a) => soak::run(a),
        Cmd::Classify(a) => infer::classify(a),
        Cmd::Cam(a) => infer::cam(a),
        Cmd::Features(a) => infer::features(a),
        Cmd::Embed(a) => embed::embed(a),
        Cmd::Similar(a) => embed::similar(a),
        Cmd::Models => models(),
        Cmd::ExportSynthetic {
            model,
            seed,
            classes,
            output,
        } => export_synthetic(&model, seed, classes, &output),
        Cmd::Convert {
            input,
            output,
            dtype,
            model,
        } => convert(&input, &output, dtype, model.as_deref()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The library's warnings on stderr, as `warning: ...` beside the CLI's own `error: ...`
/// (a lost device, an unreadable tuning cache, wgpu's validation errors). `RUST_LOG`
/// changes what is shown (`RUST_LOG=debug`, `RUST_LOG=wgpu_hal=info`); by default webcnn's
/// warnings and the graphics stack's errors.
fn init_logging() {
    use std::io::Write;
    let env = env_logger::Env::default()
        .default_filter_or("warn,wgpu_core=error,wgpu_hal=error,naga=error");
    env_logger::Builder::from_env(env)
        .format(|buf, r| {
            let level = r.level().to_string().to_lowercase();
            let level = if level == "warn" { "warning" } else { &level };
            writeln!(buf, "{level}: {}", r.args())
        })
        .init();
}

fn info() -> Result<(), Box<dyn std::error::Error>> {
    println!("webcnn {}", env!("CARGO_PKG_VERSION"));
    let kernels = webcnn::backend::cpu::available_kernels();
    println!(
        "CPU backend: {} threads, {} kernels (this CPU also runs: {})",
        rayon::current_num_threads(),
        kernels[0],
        kernels[1..].join(", ")
    );
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

fn models() -> Result<(), Box<dyn std::error::Error>> {
    use std::fmt::Write;
    let mut t = String::new();
    writeln!(
        t,
        "| {:<18} | {:>12} | {:>8} | {:>11} | {:<11} |",
        "id", "params", "GMACs", "input", "labels"
    )?;
    writeln!(
        t,
        "|{:-<20}|{:-<14}|{:-<10}|{:-<13}|{:-<13}|",
        "", "", "", "", ""
    )?;
    for id in webcnn::models::ids() {
        let m = webcnn::models::Model::get(&id)?;
        let [c, h, w] = m.input;
        writeln!(
            t,
            "| {:<18} | {:>12} | {:>8.2} | {:>11} | {:<11} |",
            id,
            m.param_count(),
            m.macs() as f64 / 1e9,
            format!("{c}x{h}x{w}"),
            m.labels.id()
        )?;
    }
    print_quietly(&t);
    Ok(())
}

/// Print without panicking when stdout is a closed pipe (`webcnn models | head`).
fn print_quietly(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn export_synthetic(
    id: &str,
    seed: u64,
    classes: Option<usize>,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut m = webcnn::models::Model::get(id)?;
    if let Some(k) = classes {
        m = m.with_head(webcnn::models::Head::Classes(k));
    }
    let w = webcnn::weights::synthetic(&m.default_graph(1), seed);
    std::fs::write(out, webcnn::weights::save_safetensors(&w))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "wrote {} ({} tensors, synthetic:{seed}, untrained)",
        out.display(),
        w.len()
    );
    Ok(())
}

fn convert(
    input: &std::path::Path,
    out: &std::path::Path,
    dtype: webcnn::weights::StoreAs,
    model: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let (w, notices) =
        webcnn::weights::read(&bytes).map_err(|e| format!("{}: {e}", input.display()))?;
    for n in &notices {
        eprintln!("notice: {n}");
    }
    if let Some(id) = model {
        let l = webcnn::weights::fit(webcnn::models::Model::get(id)?, w.clone(), vec![])?;
        eprintln!(
            "checked against {id}: {}",
            match l.model.num_classes() {
                0 => "no classifier (a feature extractor)".to_string(),
                n => format!("a head of {n} classes"),
            }
        );
    }
    let st = webcnn::weights::save_safetensors_as(&w, dtype);
    std::fs::write(out, &st).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "wrote {} ({} tensors as {dtype:?}, {} bytes; read {} bytes)",
        out.display(),
        w.len(),
        st.len(),
        bytes.len()
    );
    Ok(())
}
