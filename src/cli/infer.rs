//! `webcnn run` (tensor in, tensor out) and `webcnn classify` (images in, labels out).

use std::path::{Path, PathBuf};
use std::time::Instant;
use webcnn::engine::{Device, Session};
use webcnn::models::{Labels, Model};
use webcnn::weights::{self, Source};
use webcnn::{Graph, Tensor};

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// A photo of a cat (public domain; scikit-image's `chelsea`), the default input.
const DEMO_IMAGE: &[u8] = include_bytes!("../../www/demo.png");

#[derive(clap::Args)]
pub struct RunArgs {
    /// Model id (see `webcnn models`), or an .onnx file (which holds its weights); may be
    /// left out where the weights come with a timm config.json (a Hub repository or a
    /// folder) naming it, or are an .onnx file.
    #[arg(long)]
    model: Option<String>,
    /// Weights: a .safetensors, PyTorch .pth / .pt / .bin or .onnx path, synthetic:SEED or
    /// hf:REPO (the head's size comes from them); required unless --model is an .onnx file.
    #[arg(long, required_unless_present = "model")]
    weights: Option<String>,
    /// Input: a float32 NCHW .npy file.
    #[arg(long)]
    input: PathBuf,
    /// Output: the model's output as a float32 .npy file.
    #[arg(long)]
    output: PathBuf,
    /// auto (GPU, else CPU), gpu or cpu.
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Print the backend, timings and GPU memory.
    #[arg(long)]
    stats: bool,
}

#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// Image files (JPEG, PNG, WebP, GIF, BMP); none: the built-in demo photo (a cat).
    images: Vec<PathBuf>,
    /// Model id (see `webcnn models`), or an .onnx file (which holds its weights); may be
    /// left out where the weights come with a timm config.json (a Hub repository or a
    /// folder) naming it, or are an .onnx file.
    #[arg(long)]
    model: Option<String>,
    /// Weights: a .safetensors, PyTorch .pth / .pt / .bin or .onnx path, synthetic:SEED or
    /// hf:REPO (default: untrained synthetic:1). A fine-tuned head of any size is read from them.
    #[arg(long)]
    weights: Option<String>,
    /// Class names: one per line, a JSON array, a JSON object of index to name, or a timm
    /// config.json with label_names (default: the id's own, or `class N`).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// How many labels per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[command(flatten)]
    transform: TransformArgs,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: Device,
}

/// `webcnn cam`: a ResNet's class activation map over the image, as a PNG.
#[derive(clap::Args)]
pub struct CamArgs {
    /// The image (JPEG, PNG, WebP, GIF, BMP); none: the built-in demo photo.
    image: Option<PathBuf>,
    /// Model id: a ResNet, ResNeXt or Wide ResNet (see `webcnn models`).
    #[arg(long)]
    model: Option<String>,
    /// Weights, as for `classify` (default: untrained synthetic:1).
    #[arg(long)]
    weights: Option<String>,
    /// Class names, as for `classify`.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The class to explain (default: the most probable).
    #[arg(long)]
    class: Option<usize>,
    /// The PNG to write: the image as the model sees it (resized and cropped), the map
    /// laid over it.
    #[arg(short, long, default_value = "cam.png")]
    output: PathBuf,
    #[command(flatten)]
    transform: TransformArgs,
    /// Machine-readable output (the class, its probability, the map's grid and values).
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: Device,
}

/// The eval transform: each flag overrides the model's default (timm's settings).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TransformArgs {
    /// Input size: N or HxW (default: the model's).
    #[arg(long, value_name = "N|HxW")]
    size: Option<String>,
    /// The image is scaled to size / crop-pct before the crop (torchvision's 256 -> 224: 0.875).
    #[arg(long)]
    crop_pct: Option<f64>,
    /// bilinear, bicubic or nearest (PIL's, antialiased as torchvision and timm use it).
    #[arg(long)]
    interpolation: Option<String>,
    /// center (shorter side scaled, then cropped), squash (both sides scaled) or border
    /// (longer side scaled, padded with the mean colour).
    #[arg(long)]
    crop_mode: Option<String>,
    /// Normalisation mean, R,G,B.
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
    mean: Vec<f64>,
    /// Normalisation std, R,G,B.
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
    std: Vec<f64>,
}

impl TransformArgs {
    /// `p` with the flags given applied.
    pub fn apply(&self, p: webcnn::preprocess::Preprocess) -> R<webcnn::preprocess::Preprocess> {
        use serde_json::json;
        let mut cfg = serde_json::Map::new();
        if let Some(s) = &self.size {
            let dims: Vec<usize> = s
                .split('x')
                .map(|d| d.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("--size '{s}': expected N or HxW"))?;
            let hw = match dims[..] {
                [n] => [n, n],
                [h, w] => [h, w],
                _ => return Err(format!("--size '{s}': expected N or HxW").into()),
            };
            cfg.insert("input_size".into(), json!(hw));
        }
        if let Some(c) = self.crop_pct {
            cfg.insert("crop_pct".into(), json!(c));
        }
        if let Some(i) = &self.interpolation {
            cfg.insert("interpolation".into(), json!(i));
        }
        if let Some(m) = &self.crop_mode {
            cfg.insert("crop_mode".into(), json!(m));
        }
        for (key, v) in [("mean", &self.mean), ("std", &self.std)] {
            if !v.is_empty() {
                cfg.insert(key.into(), json!(v));
            }
        }
        Ok(p.with_timm_cfg(&serde_json::Value::Object(cfg))?)
    }
}

#[derive(clap::Args)]
pub struct FeaturesArgs {
    /// Model id, or an .onnx file (then `--layers` takes its value names); may be left out
    /// where the weights come with a timm config.json or are an .onnx file.
    #[arg(long)]
    model: Option<String>,
    /// Weights: a .safetensors, PyTorch .pth / .pt / .bin or .onnx path, synthetic:SEED or
    /// hf:REPO (default: untrained synthetic:1).
    #[arg(long)]
    weights: Option<String>,
    /// A float32 NCHW .npy tensor, or an image (the model's preprocessing applies).
    #[arg(long)]
    input: PathBuf,
    /// Where to write `<node>.npy` for each requested node.
    #[arg(long)]
    out_dir: PathBuf,
    /// Nodes by torchvision name, comma-separated (default: the feature levels and the
    /// pooled vector).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<String>,
    #[command(flatten)]
    transform: TransformArgs,
    #[arg(long, default_value = "auto")]
    device: Device,
}

/// The model and its weights from `src`: the architecture `model` (else the one a timm
/// config.json beside the weights names, with its labels and transform), the head fitted to
/// the weights (any class count, or none), then the user's labels; notices and warnings on
/// stderr.
pub(super) fn load_weights(
    src: &str,
    model: Option<&str>,
    labels: Option<&Path>,
) -> R<(Model, weights::TensorMap)> {
    let source: Source = src.parse()?;
    let bar = super::DownloadBar::new();
    let l = weights::load_for(&source, model, Some(&|p| bar.observe(p)))?;
    for n in &l.notices {
        eprintln!("notice: {n}");
    }
    if !l.non_finite.is_empty() {
        eprintln!(
            "warning: NaN or Inf in {} weight(s), first '{}'",
            l.non_finite.len(),
            l.non_finite[0]
        );
    }
    let mut model = l.model;
    if let Some(path) = labels {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let names = Labels::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        model = model
            .with_labels(names)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((model, l.tensors))
}

/// Where the weights come from: `weights`, else an ONNX `model` (the file holds them), else
/// untrained synthetic ones, with a warning ending in `meaningless`.
fn weights_or(weights: &Option<String>, model: Option<&str>, meaningless: &str) -> String {
    if let Some(w) = weights {
        return w.clone();
    }
    match model.filter(|m| weights::is_onnx(m)) {
        Some(m) => m.to_string(),
        None => {
            eprintln!(
                "warning: no --weights given: using untrained synthetic:1 weights{meaningless}"
            );
            "synthetic:1".to_string()
        }
    }
}

/// A `.npy` input tensor; NaN / Inf values run (they give NaN / Inf outputs) with a warning.
pub(super) fn read_npy(path: &Path) -> R<Tensor> {
    let t = webcnn::npy::read_file(path)?;
    let bad = t.data().iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        eprintln!(
            "warning: {}: {bad} of {} values are NaN or Inf; the outputs they reach will be too",
            path.display(),
            t.len()
        );
    }
    Ok(t)
}

pub(super) fn write_npy(path: &Path, t: &Tensor) -> R<()> {
    Ok(webcnn::npy::write_file(path, t)?)
}

fn session(graph: &Graph, w: weights::TensorMap, device: Device) -> R<Session> {
    let s = super::open_session(graph, w, device)?;
    if let Some(n) = &s.notice {
        eprintln!("notice: {n}");
    }
    Ok(s)
}

pub fn run(a: RunArgs) -> R<()> {
    let x = read_npy(&a.input)?;
    let onnx = a.model.clone().filter(|m| weights::is_onnx(m));
    let src = a
        .weights
        .clone()
        .or(onnx)
        .ok_or("--weights is required (or --model FILE.onnx)")?;
    let (model, w) = load_weights(&src, a.model.as_deref(), None)?;
    let graph = model.graph(x.shape())?;
    let t0 = Instant::now();
    let mut s = session(&graph, w, a.device)?;
    let prepare = t0.elapsed();
    let t1 = Instant::now();
    let y = s.run_blocking(&x)?.remove(0);
    let first = t1.elapsed();
    write_npy(&a.output, &y)?;
    if a.stats {
        let t2 = Instant::now();
        let runs = 3;
        for _ in 0..runs {
            s.run_blocking(&x)?;
        }
        let steady = t2.elapsed() / runs;
        eprintln!("backend: {}", s.backend_name());
        eprintln!("input {:?} -> output {:?}", x.shape(), y.shape());
        eprintln!("prepare: {:.1} ms", prepare.as_secs_f64() * 1e3);
        eprintln!("first run: {:.1} ms", first.as_secs_f64() * 1e3);
        eprintln!(
            "steady run: {:.1} ms (mean of {runs})",
            steady.as_secs_f64() * 1e3
        );
        if let Some(m) = s.memory() {
            eprintln!(
                "peak GPU memory: {:.1} MiB activations + workspace ({:.1} + {:.1}), {:.1} MiB weights (+{:.1} MiB in Winograd form), batch chunk {}, {} dispatches",
                m.peak() as f64 / 1048576.0,
                m.activations as f64 / 1048576.0,
                m.workspace as f64 / 1048576.0,
                s.weight_bytes().device as f64 / 1048576.0,
                s.weight_bytes().derived as f64 / 1048576.0,
                m.batch_chunk,
                m.dispatches
            );
            eprintln!(
                "convolutions: {} by Winograd F(2x2, 3x3), {} 1x1 as a plain GEMM, {} direct on k-major weights, {} tiled split along k",
                m.winograd_layers, m.gemm_layers, m.direct_layers, m.k_split_layers
            );
        }
    }
    Ok(())
}

pub fn classify(a: ClassifyArgs) -> R<()> {
    if let Some(id) = a.model.as_deref().filter(|m| !weights::is_onnx(m)) {
        Model::get(id)?;
    }
    if a.top == 0 {
        return Err("--top must be at least 1".into());
    }
    let mut a = a;
    let images = if a.images.is_empty() {
        eprintln!("notice: no image given, classifying the built-in demo photo (www/demo.png)");
        a.images.push(PathBuf::from("demo.png"));
        vec![webcnn::preprocess::decode(DEMO_IMAGE)?]
    } else {
        a.images
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                webcnn::preprocess::decode(&bytes).map_err(|e| format!("{}: {e}", p.display()))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let src = weights_or(
        &a.weights,
        a.model.as_deref(),
        ", the labels are meaningless",
    );
    let (mut model, w) = load_weights(&src, a.model.as_deref(), a.labels.as_deref())?;
    model.preprocess = a.transform.apply(model.preprocess)?;
    if !model.has_classifier() {
        return Err(format!(
            "the weights have no classifier ({}): they make a feature extractor; use `webcnn features` or `webcnn embed`",
            model.classifier()
        )
        .into());
    }
    let x = webcnn::preprocess::batch(&images, &model.preprocess);
    let graph = model.graph(x.shape())?;
    let mut s = session(&graph, w, a.device)?;
    let logits = s.run_blocking(&x)?.remove(0);
    let mut results = vec![];
    for (path, top) in a
        .images
        .iter()
        .zip(webcnn::tasks::classify(&model, &logits, a.top)?)
    {
        if a.json {
            let preds: Vec<_> = top
                .iter()
                .map(|p| serde_json::json!({"class": p.index, "label": p.label, "probability": p.probability}))
                .collect();
            results.push(
                serde_json::json!({"image": path.display().to_string(), "predictions": preds}),
            );
        } else {
            println!("{}", path.display());
            for p in top {
                println!(
                    "  {:>6.2}%  {} ({})",
                    p.probability * 100.0,
                    p.label,
                    p.index
                );
            }
        }
    }
    if a.json {
        let out = serde_json::json!({
            "model": model.id, "weights": src, "backend": s.backend_name(), "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// `webcnn features`: the outputs of named nodes as `.npy` files.
pub fn features(a: FeaturesArgs) -> R<()> {
    let src = weights_or(&a.weights, a.model.as_deref(), "");
    let (mut model, w) = load_weights(&src, a.model.as_deref(), None)?;
    model.preprocess = a.transform.apply(model.preprocess)?;
    let is_npy = a
        .input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let x = if is_npy {
        read_npy(&a.input)?
    } else {
        let bytes = std::fs::read(&a.input).map_err(|e| format!("{}: {e}", a.input.display()))?;
        let img = webcnn::preprocess::decode(&bytes)
            .map_err(|e| format!("{}: {e}", a.input.display()))?;
        webcnn::preprocess::batch(&[img], &model.preprocess)
    };
    let layers: Vec<String> = if a.layers.is_empty() {
        let mut v: Vec<String> = model.feature_levels().into_iter().map(|l| l.node).collect();
        v.push(model.pooled_node());
        v
    } else {
        a.layers.clone()
    };
    let full = model.graph(x.shape())?;
    let names: Vec<&str> = layers.iter().map(|s| s.as_str()).collect();
    let graph = full.with_outputs(&names).map_err(|e| {
        format!(
            "{e}; {} has feature nodes {}",
            model.id,
            model.feature_nodes().join(", ")
        )
    })?;
    let mut s = session(&full, w, a.device)?;
    let outs = s.run_graph_blocking(&graph, &x)?;
    std::fs::create_dir_all(&a.out_dir).map_err(|e| format!("{}: {e}", a.out_dir.display()))?;
    for (name, t) in layers.iter().zip(&outs) {
        let path = a.out_dir.join(format!("{name}.npy"));
        write_npy(&path, t)?;
        println!("{} {:?}", path.display(), t.shape());
    }
    Ok(())
}

/// `webcnn cam`: the map of the class asked for (else the top one) over the input image.
pub fn cam(a: CamArgs) -> R<()> {
    let (bytes, name) = match &a.image {
        Some(p) => (
            std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => {
            eprintln!("notice: no image given, using the built-in demo photo (www/demo.png)");
            (DEMO_IMAGE.to_vec(), "demo.png".to_string())
        }
    };
    let img = webcnn::preprocess::decode(&bytes).map_err(|e| format!("{name}: {e}"))?;
    let src = weights_or(&a.weights, a.model.as_deref(), ", the map is meaningless");
    let (mut model, w) = load_weights(&src, a.model.as_deref(), a.labels.as_deref())?;
    model.preprocess = a.transform.apply(model.preprocess)?;
    let x = webcnn::preprocess::batch(&[img], &model.preprocess);
    let graph = model.graph(x.shape())?;
    let mut s = session(&graph, w, a.device)?;
    let cam = webcnn::tasks::cam_blocking(&mut s, &model, &x, a.class)?;
    let probability = cam.probability;
    let label = &model.labels.names()[cam.class];
    overlay(&x, &model.preprocess, &cam)
        .save(&a.output)
        .map_err(|e| format!("{}: {e}", a.output.display()))?;
    if a.json {
        let out = serde_json::json!({
            "image": name, "model": model.id, "weights": src, "class": cam.class, "label": label,
            "probability": probability, "shape": cam.shape, "map": cam.data,
            "output": a.output.display().to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{name}: {label} ({}, {:.2}%): wrote {}",
            cam.class,
            probability * 100.0,
            a.output.display()
        );
    }
    Ok(())
}

/// The input image as the model saw it (the normalisation undone) with `cam` upsampled
/// bilinearly to its size (half-pixel centres) in a blue-to-red colour scale, half and half.
fn overlay(
    x: &webcnn::Tensor,
    p: &webcnn::preprocess::Preprocess,
    cam: &webcnn::tasks::Cam,
) -> image::RgbImage {
    let (hh, ww) = (x.shape()[2], x.shape()[3]);
    let [ch, cw] = cam.shape;
    let sample = |y: usize, xx: usize| -> f32 {
        let at = |d: usize, n: usize, big: usize| {
            let s = ((d as f32 + 0.5) * n as f32 / big as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let i = (s.floor() as usize).min(n - 1);
            (i, (i + 1).min(n - 1), s - i as f32)
        };
        let (y0, y1, fy) = at(y, ch, hh);
        let (x0, x1, fx) = at(xx, cw, ww);
        let v = |r: usize, c: usize| cam.data[r * cw + c];
        let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
        let bottom = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
        top * (1.0 - fy) + bottom * fy
    };
    let plane = hh * ww;
    image::RgbImage::from_fn(ww as u32, hh as u32, |xx, y| {
        let (xx, y) = (xx as usize, y as usize);
        let v = sample(y, xx);
        // A "jet" scale: blue (0) through green to red (1).
        let jet = |centre: f32| (1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0);
        let heat = [jet(3.0), jet(2.0), jet(1.0)];
        image::Rgb(std::array::from_fn(|c| {
            let pixel = (x.data()[c * plane + y * ww + xx] * p.std[c] + p.mean[c]).clamp(0.0, 1.0);
            ((0.5 * pixel + 0.5 * heat[c]) * 255.0).round() as u8
        }))
    })
}
