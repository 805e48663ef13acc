//! `webcnn embed` (images and folders in, one embedding row per image out) and
//! `webcnn similar` (cosine similarity of query images against an embedding file).

use super::infer::{load_weights, read_npy, write_npy};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;
use webcnn::engine::{Device, Session};
use webcnn::models::Model;
use webcnn::{Graph, Tensor};

type R<T> = Result<T, Box<dyn std::error::Error>>;

const IMAGE_EXTS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "jfif"];

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Image files and folders (searched recursively for images).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Model id; may be left out where the weights come with a timm config.json.
    #[arg(long)]
    model: Option<String>,
    /// Weights: a .safetensors or PyTorch .pth / .pt / .bin path, synthetic:SEED or hf:REPO
    /// (a headless backbone serves).
    #[arg(long)]
    weights: String,
    /// Where to write the [images, dim] float32 matrix; `<out>.txt` gets the file names in
    /// row order and `<out>.json` the model, weights and layer. An existing output is
    /// extended with the files it does not hold yet.
    #[arg(long)]
    out: PathBuf,
    /// The node whose output is the embedding (flattened per image; default: the pooled vector).
    #[arg(long)]
    layer: Option<String>,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    transform: super::infer::TransformArgs,
    #[arg(long, default_value = "auto")]
    device: Device,
}

#[derive(clap::Args)]
pub struct SimilarArgs {
    /// Query images.
    #[arg(required = true)]
    queries: Vec<PathBuf>,
    /// An embedding file written by `webcnn embed` (its .txt and .json beside it).
    #[arg(long)]
    index: PathBuf,
    /// How many matches per query.
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: Device,
}

fn sidecar(out: &Path, ext: &str) -> PathBuf {
    out.with_extension(ext)
}

/// Every image file under `paths` (folders recursively), sorted per folder.
fn collect_images(paths: &[PathBuf]) -> R<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> R<()> {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out)?;
            }
        } else if p.is_file() {
            let image = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()));
            if image {
                out.push(p.to_path_buf());
            }
        } else {
            return Err(format!("{}: no such file or folder", p.display()).into());
        }
        Ok(())
    }
    let mut out = vec![];
    for p in paths {
        if p.is_file() {
            out.push(p.clone()); // named explicitly: taken whatever its extension
        } else {
            walk(p, &mut out)?;
        }
    }
    Ok(out)
}

/// The model, its session and the graph that returns the embedding node.
struct Embedder {
    model: Model,
    session: Session,
    layer: String,
    graphs: Vec<(usize, Graph)>,
}

impl Embedder {
    fn new(model: Option<&str>, weights: &str, layer: Option<&str>, device: Device) -> R<Self> {
        let (model, w) = load_weights(weights, model, None)?;
        let layer = layer.map_or_else(|| model.pooled_node(), str::to_string);
        let full = model.default_graph(1);
        // Fails early on an unknown node, naming the nearest ones.
        full.with_outputs(&[&layer])?;
        // A long embedding run survives a lost GPU device: the batch in flight is run again
        // on a new device, with the weights read again from their source.
        let source: webcnn::weights::Source = weights.parse()?;
        let m = model.clone();
        let session =
            super::open_session(&full, w, device)?.with_reload(std::sync::Arc::new(move || {
                Ok(webcnn::weights::load(&source, m.clone(), None)?.tensors)
            }));
        if let Some(n) = &session.notice {
            eprintln!("notice: {n}");
        }
        Ok(Embedder {
            model,
            session,
            layer,
            graphs: vec![],
        })
    }

    /// One row per image of `x`, flattened.
    fn embed(&mut self, x: &Tensor) -> R<Vec<Vec<f32>>> {
        let n = x.shape()[0];
        if !self.graphs.iter().any(|(b, _)| *b == n) {
            let g = self.model.graph(x.shape())?.with_outputs(&[&self.layer])?;
            self.graphs.push((n, g));
        }
        let g = &self.graphs.iter().find(|(b, _)| *b == n).expect("made").1;
        let y = match self.session.run_graph_blocking(g, x) {
            Err(webcnn::Error::DeviceLost(why)) => {
                eprintln!("warning: the GPU device was lost ({why}); running on a new one");
                self.session.run_graph_blocking(g, x)?
            }
            r => r?,
        }
        .remove(0);
        let d = y.len() / n;
        Ok(y.data().chunks(d).map(|c| c.to_vec()).collect())
    }

    fn tensor(&self, images: &[image::DynamicImage]) -> Tensor {
        webcnn::preprocess::batch(images, &self.model.preprocess)
    }
}

fn decode_file(p: &Path) -> Result<image::DynamicImage, String> {
    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
    webcnn::preprocess::decode(&bytes).map_err(|e| e.to_string())
}

pub fn embed(a: EmbedArgs) -> R<()> {
    let files = collect_images(&a.paths)?;
    let names_path = sidecar(&a.out, "txt");
    let meta_path = sidecar(&a.out, "json");
    let mut emb = Embedder::new(a.model.as_deref(), &a.weights, a.layer.as_deref(), a.device)?;
    let default = emb.model.preprocess.clone();
    emb.model.preprocess = a.transform.apply(default.clone())?;
    let mut meta =
        serde_json::json!({"model": emb.model.id, "weights": a.weights, "layer": emb.layer});
    // A transform other than the model's is part of what the rows mean (and what `similar`
    // applies to its queries).
    if emb.model.preprocess != default {
        meta["preprocess"] = emb.model.preprocess.to_timm_cfg();
    }
    // Rows already there: keep them, embed only new files.
    let (mut rows, mut names): (Vec<Vec<f32>>, Vec<String>) = if a.out.exists() {
        let old: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&meta_path)
                .map_err(|e| format!("{}: {e}", meta_path.display()))?,
        )?;
        if old != meta {
            return Err(format!(
                "{} was made with {old}, not {meta}: choose another --out",
                a.out.display()
            )
            .into());
        }
        let t = read_npy(&a.out)?;
        let names: Vec<String> = std::fs::read_to_string(&names_path)
            .map_err(|e| format!("{}: {e}", names_path.display()))?
            .lines()
            .map(str::to_string)
            .collect();
        if t.shape().len() != 2 || t.shape()[0] != names.len() {
            return Err(format!(
                "{} has shape {:?} but {} names: the files disagree",
                a.out.display(),
                t.shape(),
                names.len()
            )
            .into());
        }
        let d = t.shape()[1];
        (
            t.data().chunks(d.max(1)).map(|c| c.to_vec()).collect(),
            names,
        )
    } else {
        (vec![], vec![])
    };
    let known: HashSet<String> = names.iter().cloned().collect();
    let todo: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| !known.contains(&f.display().to_string()))
        .collect();
    let before = rows.len();
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "embedding [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})",
        )
        .expect("valid template"),
    );
    // Decoding runs on its own thread, a few batches ahead of inference.
    let batch = a.batch.max(1);
    let (tx, rx) = mpsc::sync_channel::<(PathBuf, Result<image::DynamicImage, String>)>(batch * 2);
    let decoder = std::thread::spawn(move || {
        for f in todo {
            let img = decode_file(&f);
            if tx.send((f, img)).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let mut skipped = vec![];
    let mut pending: Vec<(PathBuf, image::DynamicImage)> = vec![];
    let mut flush = |pending: &mut Vec<(PathBuf, image::DynamicImage)>,
                     rows: &mut Vec<Vec<f32>>,
                     names: &mut Vec<String>|
     -> R<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let (paths, imgs): (Vec<PathBuf>, Vec<image::DynamicImage>) = pending.drain(..).unzip();
        let out = emb.embed(&emb.tensor(&imgs))?;
        for (p, r) in paths.iter().zip(out) {
            names.push(p.display().to_string());
            rows.push(r);
        }
        Ok(())
    };
    for (f, img) in rx {
        match img {
            Ok(i) => pending.push((f, i)),
            Err(e) => {
                bar.suspend(|| eprintln!("skipped {}: {e}", f.display()));
                skipped.push(f);
            }
        }
        bar.inc(1);
        if pending.len() == batch {
            flush(&mut pending, &mut rows, &mut names)?;
        }
    }
    flush(&mut pending, &mut rows, &mut names)?;
    decoder.join().map_err(|_| "the decoding thread panicked")?;
    bar.finish_and_clear();
    let added = rows.len() - before;
    if rows.is_empty() {
        return Err("no image could be embedded".into());
    }
    let d = rows[0].len();
    let t = Tensor::new([rows.len(), d], rows.concat())?;
    write_npy(&a.out, &t)?;
    std::fs::write(&names_path, names.join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", names_path.display()))?;
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?)
        .map_err(|e| format!("{}: {e}", meta_path.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "embedded {added} new image(s) in {secs:.1} s ({:.1} images/s), skipped {}, {} rows of {d} in {}",
        added as f64 / secs.max(1e-9),
        skipped.len(),
        rows.len(),
        a.out.display()
    );
    Ok(())
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let n = if n > 0.0 { n } else { 1.0 };
    v.iter().map(|x| (*x as f64 / n) as f32).collect()
}

pub fn similar(a: SimilarArgs) -> R<()> {
    let meta_path = sidecar(&a.index, "json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .map_err(|e| format!("{}: {e}", meta_path.display()))?,
    )?;
    let field = |k: &str| {
        meta[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{}: no '{k}'", meta_path.display()))
    };
    let names_path = sidecar(&a.index, "txt");
    let names: Vec<String> = std::fs::read_to_string(&names_path)
        .map_err(|e| format!("{}: {e}", names_path.display()))?
        .lines()
        .map(str::to_string)
        .collect();
    let index = read_npy(&a.index)?;
    if index.shape().len() != 2 || index.shape()[0] != names.len() {
        return Err(format!("{}: rows and names disagree", a.index.display()).into());
    }
    let d = index.shape()[1];
    let rows: Vec<Vec<f32>> = index.data().chunks(d.max(1)).map(normalized).collect();
    let layer = field("layer")?;
    let mut emb = Embedder::new(
        Some(&field("model")?),
        &field("weights")?,
        Some(&layer),
        a.device,
    )?;
    if let Some(cfg) = meta.get("preprocess") {
        emb.model.preprocess = emb
            .model
            .preprocess
            .clone()
            .with_timm_cfg(cfg)
            .map_err(|e| format!("{}: preprocess: {e}", meta_path.display()))?;
    }
    let mut results = vec![];
    for q in &a.queries {
        let img = decode_file(q).map_err(|e| format!("{}: {e}", q.display()))?;
        let v = normalized(&emb.embed(&emb.tensor(&[img]))?.remove(0));
        if v.len() != d {
            return Err(format!(
                "{}: embedding of {} values, the index has {d}",
                q.display(),
                v.len()
            )
            .into());
        }
        let mut scored: Vec<(usize, f32)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.iter().zip(&v).map(|(a, b)| a * b).sum()))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(a.top);
        if a.json {
            results.push(serde_json::json!({
                "query": q.display().to_string(),
                "matches": scored.iter().map(|&(i, s)| serde_json::json!({"file": names[i], "score": s})).collect::<Vec<_>>(),
            }));
        } else {
            println!("{}", q.display());
            for (i, s) in scored {
                println!("  {s:.4}  {}", names[i]);
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}
