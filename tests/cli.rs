//! The `webcnn` binary as other tools use it: `run` on .npy tensors, `classify` on
//! images, `export-synthetic`, `models`, and errors that are one line, never a panic.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use webcnn::prng::synth;
use webcnn::tensor::rel_l2;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_webcnn"));
    c.env_remove("HF_ENDPOINT");
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("webcnn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "failed: {err}");
    String::from_utf8(o.stdout).unwrap()
}

/// A failing command prints one `error:` line naming the problem, and no panic.
fn fails(o: Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains(needle), "'{line}' lacks '{needle}'");
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec().unwrap())
}

fn golden_output(file: &str) -> Vec<f64> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden/models")
        .join(file);
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    j["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn run_on_safetensors_matches_golden_on_gpu_and_cpu() {
    let weights = tmp("r18.safetensors");
    ok(bin()
        .args(["export-synthetic", "resnet18", "--seed", "1", "-o"])
        .arg(&weights)
        .output()
        .unwrap());
    let shape = [2, 3, 96, 128];
    let x = synth("input", &shape, 101).unwrap();
    let input = tmp("x.npy");
    write_npy(&input, &shape, x.data());
    let want = golden_output("resnet18-s1-2x3x96x128.json");
    for device in ["gpu", "cpu"] {
        let out = tmp(&format!("y-{device}.npy"));
        let o = bin()
            .args([
                "run",
                "--model",
                "resnet18",
                "--device",
                device,
                "--stats",
                "--weights",
            ])
            .arg(&weights)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        ok(o);
        let (s, y) = read_npy(&out);
        assert_eq!(s, [2, 1000]);
        let e = rel_l2(&y, &want);
        assert!(e <= 1e-4, "{device}: rel L2 {e:e}");
        assert!(stderr.contains("steady run"), "{stderr}");
        if device == "gpu" {
            assert!(
                stderr.contains("backend: GPU") && stderr.contains("peak GPU memory"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn classify_prints_top_k_the_same_on_both_backends() {
    let img = tmp("cat.png");
    let mut pic = image::RgbImage::new(300, 200);
    for (x, y, p) in pic.enumerate_pixels_mut() {
        *p = image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8]);
    }
    pic.save(&img).unwrap();
    let gray = tmp("gray.png");
    image::DynamicImage::ImageRgb8(pic)
        .to_luma16()
        .save(&gray)
        .unwrap();
    let mut results = vec![];
    for device in ["gpu", "cpu"] {
        let out = ok(bin()
            .args([
                "classify",
                "--model",
                "resnet18",
                "--weights",
                "synthetic:2",
                "--top",
                "3",
                "--json",
                "--device",
                device,
            ])
            .arg(&img)
            .arg(&gray)
            .output()
            .unwrap());
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        let res = j["results"].as_array().unwrap().clone();
        assert_eq!(res.len(), 2);
        for r in &res {
            let p = r["predictions"].as_array().unwrap();
            assert_eq!(p.len(), 3);
            let probs: Vec<f64> = p
                .iter()
                .map(|v| v["probability"].as_f64().unwrap())
                .collect();
            assert!(
                probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-6,
                "{probs:?}"
            );
            assert!(p[0]["label"].as_str().is_some());
        }
        results.push(res);
    }
    for (g, c) in results[0].iter().zip(&results[1]) {
        for (a, b) in g["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["predictions"].as_array().unwrap())
        {
            assert_eq!(a["class"], b["class"]);
            assert!(
                (a["probability"].as_f64().unwrap() - b["probability"].as_f64().unwrap()).abs()
                    < 1e-3
            );
        }
    }
    let text = ok(bin()
        .args(["classify", "--model", "vgg11_cifar", "--device", "cpu"])
        .arg(&img)
        .output()
        .unwrap());
    assert!(text.lines().count() == 6 && text.contains('%'), "{text}");
}

#[test]
fn bad_inputs_and_files_are_one_line_errors() {
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"this is not a weights file").unwrap();
    let notimg = tmp("notes.png");
    std::fs::write(&notimg, b"hello").unwrap();
    let x = tmp("in.npy");
    write_npy(&x, &[1, 3, 32, 32], &vec![0.0; 3 * 32 * 32]);
    let y = tmp("out.npy");
    let run = |model: &str, weights: &Path, input: &Path| {
        bin()
            .args(["run", "--device", "cpu", "--model", model, "--weights"])
            .arg(weights)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&y)
            .output()
            .unwrap()
    };
    fails(run("vgg11_cifar", &junk, &x), "not a safetensors file");
    fails(run("vgg99", &junk, &x), "unknown model 'vgg99'");
    fails(
        run("vgg11_cifar", Path::new("/nonexistent.safetensors"), &x),
        "/nonexistent.safetensors",
    );
    fails(
        run("vgg11_cifar", Path::new("synthetic:1"), &notimg),
        "not a .npy file",
    );
    // The seed's AlexNet cannot take 32x32: the layer that refuses is named.
    fails(run("alexnet_lrn", Path::new("synthetic:1"), &x), "net.");
    let other = tmp("other.safetensors");
    ok(bin()
        .args(["export-synthetic", "vgg11_cifar", "-o"])
        .arg(&other)
        .output()
        .unwrap());
    fails(run("resnet18", &other, &x), "missing weight 'conv1.weight'");
    // A .npy header that claims far more data than the file holds: refused before any
    // allocation.
    let liar = tmp("liar.npy");
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header.len() + 1) % 64;
    let h = format!("{header}{}\n", " ".repeat(pad));
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    bytes.extend([0u8; 16]);
    std::fs::write(&liar, bytes).unwrap();
    fails(
        run("vgg11_cifar", Path::new("synthetic:1"), &liar),
        "needs more data than",
    );
    // timm's VGG keys with a 0-d tensor where a matrix belongs: an error, not a panic.
    let timm = tmp("timm0d.safetensors");
    let header = r#"{"pre_logits.fc1.weight":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 4]);
    std::fs::write(&timm, bytes).unwrap();
    fails(run("vgg16", &timm, &x), "weight");
    fails(
        bin()
            .args(["classify", "--model", "resnet18", "--device", "cpu"])
            .arg(&notimg)
            .output()
            .unwrap(),
        "cannot decode image",
    );
}

#[test]
fn a_fine_tuned_checkpoint_classifies_with_its_own_labels_and_a_headless_one_gives_features() {
    // A ResNet-18 fine-tuned for 3 classes, saved by torch.save from a DataParallel model.
    let m = webcnn::models::Model::get("resnet18")
        .unwrap()
        .with_head(webcnn::models::Head::Classes(3));
    let w = webcnn::weights::synthetic(&m.default_graph(1), 5);
    let pth = tmp("pets3.pth");
    std::fs::write(&pth, common::torch_save(&w, true)).unwrap();
    let labels = tmp("pets3.txt");
    std::fs::write(&labels, "cat\ndog\nbird\n").unwrap();
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("www/demo.png");
    let o = bin()
        .args([
            "classify", "--model", "resnet18", "--device", "cpu", "--json",
        ])
        .arg("--weights")
        .arg(&pth)
        .arg("--labels")
        .arg(&labels)
        .arg(&img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("notice: the checkpoint wraps its weights"),
        "{err}"
    );
    assert!(err.contains("'module.'"), "{err}");
    let j: serde_json::Value = serde_json::from_str(&ok(o)).unwrap();
    let preds = j["results"][0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3, "a head of 3 classes has 3 predictions");
    let mut names: Vec<&str> = preds.iter().map(|p| p["label"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["bird", "cat", "dog"]);
    let total: f64 = preds
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    // The same through .safetensors, f16, from `convert`: the same top class.
    let st = tmp("pets3.safetensors");
    ok(bin()
        .arg("convert")
        .arg(&pth)
        .arg(&st)
        .args(["--dtype", "f16", "--model", "resnet18"])
        .output()
        .unwrap());
    let j2: serde_json::Value = serde_json::from_str(&ok(bin()
        .args([
            "classify", "--model", "resnet18", "--device", "cpu", "--json", "--top", "1",
        ])
        .arg("--weights")
        .arg(&st)
        .arg("--labels")
        .arg(&labels)
        .arg(&img)
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(
        j2["results"][0]["predictions"][0]["label"],
        preds[0]["label"]
    );
    // Labels of another count: both counts named.
    std::fs::write(tmp("two.txt"), "cat\ndog\n").unwrap();
    fails(
        bin()
            .args(["classify", "--model", "resnet18", "--device", "cpu"])
            .arg("--weights")
            .arg(&pth)
            .arg("--labels")
            .arg(tmp("two.txt"))
            .output()
            .unwrap(),
        "2 labels for a head of 3 classes",
    );
    // No labels: numbered classes.
    let text = ok(bin()
        .args([
            "classify", "--model", "resnet18", "--device", "cpu", "--top", "3",
        ])
        .arg("--weights")
        .arg(&pth)
        .arg(&img)
        .output()
        .unwrap());
    assert!(
        text.contains("class 0") && text.contains("class 2"),
        "{text}"
    );

    // A headless backbone (`fc = Identity()`): features work, classify names the cause.
    let mut headless = w.clone();
    headless.remove("fc.weight");
    headless.remove("fc.bias");
    let hl = tmp("backbone.safetensors");
    std::fs::write(&hl, webcnn::weights::save_safetensors(&headless)).unwrap();
    fails(
        bin()
            .args(["classify", "--model", "resnet18", "--device", "cpu"])
            .arg("--weights")
            .arg(&hl)
            .output()
            .unwrap(),
        "no classifier",
    );
    let out = tmp("backbone-features");
    let text = ok(bin()
        .args(["features", "--model", "resnet18", "--device", "cpu"])
        .arg("--weights")
        .arg(&hl)
        .arg("--input")
        .arg(&img)
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap());
    assert!(text.contains("flatten.npy [1, 512]"), "{text}");
    // The .pth's tensors, exported with a head of 3 by export-synthetic, equal the file's.
    let exported = tmp("r18-c3.safetensors");
    ok(bin()
        .args([
            "export-synthetic",
            "resnet18",
            "--seed",
            "5",
            "--classes",
            "3",
            "-o",
        ])
        .arg(&exported)
        .output()
        .unwrap());
    let (back, _) = webcnn::weights::read(&std::fs::read(&exported).unwrap()).unwrap();
    assert_eq!(back, w);
}

#[test]
fn models_lists_every_id() {
    let out = ok(bin().arg("models").output().unwrap());
    for id in webcnn::models::ids() {
        assert!(out.contains(&format!("| {id} ")), "{id} missing");
    }
    assert!(out.contains("25557032"), "resnet50's parameter count");
}

#[test]
fn auto_device_falls_back_to_the_cpu_with_a_notice() {
    let img = tmp("fallback.png");
    image::RgbImage::from_pixel(40, 40, image::Rgb([9, 99, 199]))
        .save(&img)
        .unwrap();
    // A backend this build does not include: no adapter can be found.
    let o = bin()
        .env("WGPU_BACKEND", "gl")
        .args([
            "classify",
            "--model",
            "vgg11_cifar",
            "--json",
            "--weights",
            "synthetic:1",
        ])
        .arg(&img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let out = ok(o);
    assert!(err.contains("notice:") && err.contains("CPU"), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["backend"], "CPU");
    let o = bin()
        .env("WGPU_BACKEND", "gl")
        .args(["classify", "--model", "vgg11_cifar", "--device", "gpu"])
        .arg(&img)
        .output()
        .unwrap();
    fails(o, "no GPU adapter found");
}

#[test]
fn auto_device_prefers_the_cpu_to_a_software_adapter() {
    let img = tmp("software.png");
    image::RgbImage::from_pixel(40, 40, image::Rgb([200, 99, 9]))
        .save(&img)
        .unwrap();
    let run = |device: &str| {
        bin()
            .args([
                "classify",
                "--model",
                "vgg11_cifar",
                "--json",
                "--device",
                device,
            ])
            .args(["--weights", "synthetic:1"])
            .arg(&img)
            .output()
            .unwrap()
    };
    let o = run("auto");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let j: serde_json::Value = serde_json::from_str(&ok(o)).unwrap();
    // CI's only adapter is lavapipe; with a real GPU, auto keeps it.
    if common::gpu().is_software() {
        assert_eq!(j["backend"], "CPU", "{err}");
        assert!(err.contains("software renderer"), "{err}");
        // Asking for the GPU still gets it.
        let forced: serde_json::Value = serde_json::from_str(&ok(run("gpu"))).unwrap();
        assert!(
            forced["backend"].as_str().unwrap().starts_with("GPU"),
            "{forced}"
        );
    } else {
        assert!(j["backend"].as_str().unwrap().starts_with("GPU"), "{j}");
    }
}

#[test]
fn features_writes_every_golden_feature_case_on_both_backends() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/features");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 7);
    for dir in dirs {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        let shape = common::usizes(&meta["input_shape"]);
        let x = synth("input", &shape, meta["input_seed"].as_u64().unwrap()).unwrap();
        let input = tmp(&format!("{case}.npy"));
        write_npy(&input, &shape, x.data());
        let nodes: Vec<String> = meta["nodes"].as_object().unwrap().keys().cloned().collect();
        for device in ["cpu", "gpu"] {
            let out = tmp(&format!("{case}-{device}"));
            let _ = std::fs::remove_dir_all(&out);
            ok(bin()
                .args(["features", "--model", meta["model"].as_str().unwrap()])
                .arg(format!("--weights=synthetic:{}", meta["weights_seed"]))
                .arg("--input")
                .arg(&input)
                .arg("--out-dir")
                .arg(&out)
                .arg(format!("--layers={}", nodes.join(",")))
                .args(["--device", device])
                .output()
                .unwrap());
            for node in &nodes {
                let (s, got) = read_npy(&out.join(format!("{node}.npy")));
                let (ws, want) = read_npy(&dir.join(format!("{node}.npy")));
                assert_eq!(s, ws, "{case} {node} on {device}");
                let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
                let e = rel_l2(&got, &want);
                assert!(e <= 1e-4, "{case} {node} on {device}: rel L2 {e:e}");
            }
        }
    }
}

#[test]
fn features_defaults_to_the_feature_levels_and_takes_images() {
    let img = tmp("features.png");
    image::RgbImage::from_fn(90, 70, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(&img)
        .unwrap();
    let out = tmp("features-default");
    let _ = std::fs::remove_dir_all(&out);
    let printed = ok(bin()
        .args([
            "features",
            "--model",
            "resnet18",
            "--weights",
            "synthetic:1",
        ])
        .args(["--device", "cpu", "--input"])
        .arg(&img)
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap());
    let want = [
        ("relu", vec![1, 64, 112, 112]),
        ("layer1", vec![1, 64, 56, 56]),
        ("layer2", vec![1, 128, 28, 28]),
        ("layer3", vec![1, 256, 14, 14]),
        ("layer4", vec![1, 512, 7, 7]),
        ("flatten", vec![1, 512]),
    ];
    for (node, shape) in want {
        let (s, _) = read_npy(&out.join(format!("{node}.npy")));
        assert_eq!(s, shape, "{node}");
        assert!(printed.contains(&format!("{node}.npy")), "{printed}");
    }
    // An unknown node is an error that lists the model's feature nodes.
    let o = bin()
        .args([
            "features",
            "--model",
            "resnet18",
            "--weights",
            "synthetic:1",
        ])
        .args(["--device", "cpu", "--layers", "layer9", "--input"])
        .arg(&img)
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    fails(o, "layer4");
}

#[test]
fn embed_a_folder_then_similar() {
    let dir = tmp("embed-folder");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    let formats = ["png", "jpg", "bmp", "gif"];
    let mut expected = vec![];
    for i in 0..200usize {
        let sub = if i % 10 == 0 { "nested/" } else { "" };
        let ext = formats[i % formats.len()];
        let path = dir.join(format!("{sub}img{i:03}.{ext}"));
        if i % 67 == 5 {
            // Corrupt: reported and skipped.
            std::fs::write(&path, b"not an image at all").unwrap();
            continue;
        }
        // Images 1 and 2 are identical pixels in two files (both PNG, lossless).
        let seed = if i == 2 { 1 } else { i as u32 };
        let (w, h) = if i == 2 {
            (21, 34)
        } else {
            (20 + (i as u32 * 7) % 60, 20 + (i as u32 * 13) % 50)
        };
        let (w, h) = if i == 1 { (21, 34) } else { (w, h) };
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 9 + seed * 31) as u8,
                (y * 5 + seed * 7) as u8,
                ((x ^ y) + seed) as u8,
            ])
        });
        let path = if i == 2 || i == 1 {
            path.with_extension("png")
        } else {
            path
        };
        img.save(&path).unwrap();
        expected.push(path);
    }
    // One more level down, found recursively.
    let deep = dir.join("nested/deeper/last.png");
    image::RgbImage::from_pixel(30, 30, image::Rgb([1, 2, 3]))
        .save(&deep)
        .unwrap();
    expected.push(deep);
    let out = tmp("embed-out/emb.npy");
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let run = || {
        bin()
            .args([
                "embed",
                "--model",
                "vgg11_cifar",
                "--weights",
                "synthetic:1",
            ])
            .args(["--device", "cpu", "--batch", "8", "--out"])
            .arg(&out)
            .arg(&dir)
            .output()
            .unwrap()
    };
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    ok(o);
    assert!(err.contains("skipped 3"), "{err}");
    assert_eq!(
        err.matches("skipped ").count(),
        4,
        "three reported, one summary: {err}"
    );
    let (shape, data) = read_npy(&out);
    assert_eq!(shape, [expected.len(), 512]);
    let names: Vec<String> = std::fs::read_to_string(out.with_extension("txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut want: Vec<String> = expected.iter().map(|p| p.display().to_string()).collect();
    want.sort();
    let mut got = names.clone();
    got.sort();
    assert_eq!(got, want);
    let row = |name: &str| {
        let i = names.iter().position(|n| n.ends_with(name)).unwrap();
        data[i * 512..(i + 1) * 512].to_vec()
    };
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    };
    assert!((cos(&row("img001.png"), &row("img002.png")) - 1.0).abs() < 1e-6);
    assert!(cos(&row("img001.png"), &row("img004.png")) < 0.9999);

    // Re-running on the folder with new files embeds only those.
    for i in 0..3u8 {
        image::RgbImage::from_pixel(25, 25, image::Rgb([i * 50, 9, 9]))
            .save(dir.join(format!("new{i}.png")))
            .unwrap();
    }
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    ok(o);
    assert!(err.contains("embedded 3 new"), "{err}");
    let (shape2, data2) = read_npy(&out);
    assert_eq!(shape2, [expected.len() + 3, 512]);
    assert_eq!(
        &data2[..data.len()],
        &data[..],
        "old rows kept as they were"
    );

    // similar: the identical twin scores 1.
    let o = ok(bin()
        .args([
            "similar", "--top", "3", "--json", "--device", "cpu", "--index",
        ])
        .arg(&out)
        .arg(dir.join("img001.png"))
        .output()
        .unwrap());
    let j: serde_json::Value = serde_json::from_str(&o).unwrap();
    let matches = j[0]["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 3);
    let top2: Vec<&str> = matches[..2]
        .iter()
        .map(|m| m["file"].as_str().unwrap())
        .collect();
    assert!(
        top2.iter().any(|f| f.ends_with("img001.png"))
            && top2.iter().any(|f| f.ends_with("img002.png")),
        "{top2:?}"
    );
    assert!(
        (matches[1]["score"].as_f64().unwrap() - 1.0).abs() < 1e-5,
        "{o}"
    );
}

/// The short version of `webcnn soak`: repeated runs and load/run/drop cycles on both
/// backends keep resident and GPU memory flat and the outputs identical. (The full soak,
/// 1000 runs and 100 cycles at 224x224, is a documented command; RELIABILITY.md.)
#[test]
fn soak_short_keeps_memory_flat_on_both_backends() {
    let out = ok(bin()
        .args([
            "soak", "--model", "resnet18", "--device", "cpu,gpu", "--runs", "40",
        ])
        .args([
            "--warmup",
            "10",
            "--cycles",
            "10",
            "--size",
            "64",
            "--max-growth",
            "3",
        ])
        .output()
        .unwrap());
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| cpu") || l.starts_with("| gpu"))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    // The GPU rows report the allocator's bytes (lavapipe is Vulkan).
    assert!(
        rows[2].contains(" MB | ") && !rows[2].contains("n/a"),
        "{out}"
    );
    // A growth limit that any change breaks: the check is live.
    let o = bin()
        .args([
            "soak", "--device", "cpu", "--runs", "3", "--warmup", "1", "--cycles", "3",
        ])
        .args(["--size", "32", "--max-growth=-1"])
        .output()
        .unwrap();
    fails(o, "memory grew");
}

/// NaN inputs run and say so; a weights file larger than memory is refused before reading.
#[test]
fn nan_inputs_warn_and_oversized_weights_are_refused() {
    let x = tmp("nan.npy");
    let mut data = synth("input", &[1, 3, 32, 32], 3).unwrap().data().to_vec();
    data[5] = f32::NAN;
    write_npy(&x, &[1, 3, 32, 32], &data);
    let y = tmp("nan-out.npy");
    let run = |weights: &Path| {
        bin()
            .args([
                "run",
                "--model",
                "vgg11_cifar",
                "--device",
                "cpu",
                "--weights",
            ])
            .arg(weights)
            .arg("--input")
            .arg(&x)
            .arg("--output")
            .arg(&y)
            .output()
            .unwrap()
    };
    let o = run(Path::new("synthetic"));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("1 of 3072 values are NaN or Inf"),
        "{err}"
    );
    assert!(
        read_npy(&y).1.iter().all(|v| v.is_nan()),
        "NaN reaches every logit"
    );
    // A sparse file: 1 TiB of weights, more than any machine here has.
    let huge = tmp("huge.safetensors");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let o = run(&huge);
    std::fs::remove_file(&huge).unwrap();
    fails(o, "bytes are available");
}

#[test]
fn library_warnings_reach_stderr() {
    // A corrupt tuning cache is ignored and rewritten, with a warning the user sees;
    // RUST_LOG=off silences it.
    let dir = tmp("bad-cache");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gpu-tuning.json");
    let tune = |log: Option<&str>| {
        std::fs::write(&file, "{not json").unwrap();
        let mut c = bin();
        c.env("WEBCNN_CACHE", &dir)
            .args([
                "bench",
                "--device",
                "gpu",
                "--models",
                "vgg11_cifar",
                "--iters",
                "1",
            ])
            .args(["--gpu-kernels", "tune"]);
        if let Some(l) = log {
            c.env("RUST_LOG", l);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        ok(o);
        err
    };
    let err = tune(None);
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: ignoring the unreadable GPU tuning cache")),
        "{err}"
    );
    let cache: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).expect("rewritten");
    assert!(cache.as_object().is_some_and(|a| !a.is_empty()), "{cache}");
    let err = tune(Some("off"));
    assert!(!err.contains("warning:"), "{err}");
}

#[test]
fn bench_layers_linear_prints_the_weights_rate_on_both_backends() {
    let out = ok(bin()
        .args([
            "bench", "--layers", "linear", "--filter", "fc8", "--iters", "1",
        ])
        .args(["--device", "cpu,gpu"])
        .output()
        .unwrap());
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("fc8")).collect();
    assert_eq!(rows.len(), 1, "{out}");
    // | layer | in > out | weight MB | GPU ms | GPU GB/s | CPU ms | CPU GB/s |
    let cells: Vec<&str> = rows[0].split('|').map(str::trim).collect();
    assert_eq!(cells[2], "4096 > 1000", "{out}");
    assert_eq!(cells[3], "16.4", "{out}");
    for c in &cells[4..8] {
        let v: f64 = c.parse().unwrap_or_else(|_| panic!("'{c}' in {out}"));
        assert!(v > 0.0, "{out}");
    }
}

#[test]
fn bench_runs_the_cpu_kernel_set_asked_for_and_refuses_one_the_cpu_lacks() {
    let all = webcnn::backend::cpu::available_kernels();
    for k in &all {
        let out = ok(bin()
            .args(["bench", "--device", "cpu", "--models", "vgg11_cifar"])
            .args(["--iters", "1", "--json", "--cpu-kernels", k])
            .output()
            .unwrap());
        let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let backend = j["backend"].as_str().unwrap();
        assert!(backend.ends_with(&format!(", {k}")), "{backend}");
    }
    let o = bin()
        .args(["bench", "--device", "cpu", "--models", "vgg11_cifar"])
        .args(["--iters", "1", "--cpu-kernels", "NEON"])
        .output()
        .unwrap();
    fails(o, "this CPU has no 'NEON' kernels; it runs");
}

#[test]
fn info_names_the_cpu_kernels_and_the_gpu_adapter() {
    let out = ok(bin().arg("info").output().unwrap());
    let kernels = webcnn::backend::cpu::available_kernels();
    let cpu = out
        .lines()
        .find(|l| l.starts_with("CPU backend: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(cpu.contains(&format!("{} kernels", kernels[0])), "{cpu}");
    assert!(cpu.ends_with("portable)"), "{cpu}");
    // CI installs lavapipe: an adapter is always there.
    assert!(out.lines().any(|l| l.starts_with("chosen: ")), "{out}");
}

#[cfg(target_os = "linux")]
#[test]
fn probing_the_gpu_without_xdg_runtime_dir_prints_no_foreign_errors() {
    // Root shells, containers and CI often have no XDG_RUNTIME_DIR; Mesa's Wayland probe
    // then printed "error: XDG_RUNTIME_DIR is invalid or not set" before our output.
    let o = bin()
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("chosen: ")), "{out}");
}

#[cfg(unix)]
#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_command_without_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    // `info` prints its first line before it looks for GPU adapters, and the rest after.
    let mut child = bin()
        .arg("info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close the pipe before the rest is written.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn cam_writes_the_map_over_the_image_and_agrees_with_the_features_and_fc_weights() {
    let img = tmp("cam-input.png");
    let mut pic = image::RgbImage::new(260, 240);
    for (x, y, p) in pic.enumerate_pixels_mut() {
        *p = image::Rgb([(x % 256) as u8, (y * 3 % 256) as u8, ((x + y) % 256) as u8]);
    }
    pic.save(&img).unwrap();
    // The reference: layer4 and the logits from `features`, the class's fc row from the
    // same synthetic weights, weighted and scaled to [0, 1] here.
    let dir = tmp("cam-features");
    ok(bin()
        .args([
            "features",
            "--model",
            "resnet18",
            "--weights",
            "synthetic:2",
        ])
        .args(["--layers", "layer4,fc", "--device", "cpu", "--input"])
        .arg(&img)
        .arg("--out-dir")
        .arg(&dir)
        .output()
        .unwrap());
    let (fs, feat) = read_npy(&dir.join("layer4.npy"));
    let (_, logits) = read_npy(&dir.join("fc.npy"));
    let top = webcnn::engine::top_k(&logits, 1)[0].0;
    let graph = webcnn::models::Model::get("resnet18")
        .unwrap()
        .graph(&[1, 3, 224, 224])
        .unwrap();
    let w = webcnn::prng::synth_params(&graph, 2).unwrap();
    let fc = &w["fc.weight"];
    let hw = fs[2] * fs[3];
    let row = &fc.data()[top * fs[1]..(top + 1) * fs[1]];
    let mut want = vec![0f64; hw];
    for (plane, &wt) in feat.chunks(hw).zip(row) {
        want.iter_mut()
            .zip(plane)
            .for_each(|(m, &v)| *m += wt as f64 * v as f64);
    }
    let (lo, hi) = want
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    want.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
    for device in ["cpu", "gpu"] {
        let png = tmp(&format!("cam-{device}.png"));
        let out = ok(bin()
            .args([
                "cam",
                "--model",
                "resnet18",
                "--weights",
                "synthetic:2",
                "--json",
            ])
            .args(["--device", device])
            .arg(&img)
            .arg("-o")
            .arg(&png)
            .output()
            .unwrap());
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            j["class"].as_u64().unwrap() as usize,
            top,
            "{device}: the top class"
        );
        assert_eq!(j["shape"], serde_json::json!([fs[2], fs[3]]));
        let map: Vec<f32> = j["map"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let err = rel_l2(&map, &want);
        assert!(err < 1e-4, "{device}: the map is {err} from the reference");
        let p = j["probability"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{p}");
        let written = image::open(&png).unwrap();
        assert_eq!((written.width(), written.height()), (224, 224), "{device}");
    }
    // The class asked for; a class out of range, and a model without a CAM, are errors.
    let out = ok(bin()
        .args([
            "cam",
            "--model",
            "resnet18",
            "--weights",
            "synthetic:2",
            "--json",
        ])
        .args(["--class", "7", "--device", "cpu", "-o"])
        .arg(tmp("cam-7.png"))
        .arg(&img)
        .output()
        .unwrap());
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["class"], 7);
    fails(
        bin()
            .args([
                "cam", "--model", "resnet18", "--class", "1000", "--device", "cpu", "-o",
            ])
            .arg(tmp("x.png"))
            .arg(&img)
            .output()
            .unwrap(),
        "out of range",
    );
    fails(
        bin()
            .args(["cam", "--model", "alexnet", "--device", "cpu", "-o"])
            .arg(tmp("x.png"))
            .arg(&img)
            .output()
            .unwrap(),
        "need a ResNet",
    );
}

/// An ONNX fixture's input and ONNX Runtime's output (tests/fixtures/onnx).
fn onnx_case(name: &str) -> (PathBuf, Vec<usize>, Vec<f32>, Vec<usize>, Vec<f64>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let dims = |k: &str| -> Vec<usize> {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect()
    };
    let vals = |k: &str| -> Vec<f64> {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let x = vals("input").iter().map(|&v| v as f32).collect();
    (
        dir.join(format!("{name}.onnx")),
        dims("input_shape"),
        x,
        dims("output_shape"),
        vals("output"),
    )
}

#[test]
fn an_onnx_file_runs_as_the_model_or_as_the_weights_on_both_devices() {
    for (name, flag) in [("resnet_block", "--model"), ("grouped_matmul", "--weights")] {
        let (file, xs, x, ys, want) = onnx_case(name);
        let input = tmp(&format!("{name}-x.npy"));
        write_npy(&input, &xs, &x);
        for device in ["cpu", "gpu"] {
            let out = tmp(&format!("{name}-{device}.npy"));
            let o = bin()
                .args(["run", "--device", device, flag])
                .arg(&file)
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&out)
                .output()
                .unwrap();
            ok(o);
            let (s, y) = read_npy(&out);
            assert_eq!(s, ys, "{name} on {device}");
            let e = rel_l2(&y, &want);
            assert!(
                e <= 1e-4,
                "{name} on {device}: rel L2 {e:e} against ONNX Runtime"
            );
        }
    }
    // Intermediate values by their ONNX names; an embedding from its last flatten.
    let (file, ..) = onnx_case("resnet_block");
    let dir = tmp("onnx-features");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("www/demo.png");
    ok(bin()
        .args([
            "features",
            "--device",
            "cpu",
            "--layers",
            "layer1,gap",
            "--model",
        ])
        .arg(&file)
        .arg("--input")
        .arg(&demo)
        .arg("--out-dir")
        .arg(&dir)
        .output()
        .unwrap());
    assert_eq!(read_npy(&dir.join("layer1.npy")).0, [1, 8, 8, 8]);
    let emb = tmp("onnx-embed.npy");
    ok(bin()
        .args(["embed", "--device", "cpu", "--weights"])
        .arg(&file)
        .arg("--out")
        .arg(&emb)
        .arg(&demo)
        .output()
        .unwrap());
    assert_eq!(read_npy(&emb).0, [1, 8]);
    // The file brings its architecture: a model id beside it is refused.
    let (file, ..) = onnx_case("resnet_block");
    fails(
        bin()
            .args([
                "classify",
                "--device",
                "cpu",
                "--model",
                "resnet18",
                "--weights",
            ])
            .arg(&file)
            .output()
            .unwrap(),
        "brings its own architecture",
    );
    // An operator webcnn does not run is named, with the node.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(4).position(|w| w == b"Relu").unwrap();
    bytes[at..at + 4].copy_from_slice(b"Selu");
    let bad = tmp("selu.onnx");
    std::fs::write(&bad, bytes).unwrap();
    fails(
        bin()
            .args(["classify", "--device", "cpu", "--model"])
            .arg(&bad)
            .output()
            .unwrap(),
        "ONNX operator 'Selu' (node 'r1') is not supported",
    );
}

#[test]
fn an_onnx_model_ending_in_softmax_is_classified_by_its_own_probabilities() {
    let (file, ..) = onnx_case("zoo_lrn_preact");
    let out = ok(bin()
        .args([
            "classify", "--device", "cpu", "--json", "--top", "4", "--model",
        ])
        .arg(&file)
        .output()
        .unwrap());
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p: Vec<f64> = j["results"][0]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect();
    // Probabilities as the file computes them (not a softmax of a softmax): they sum to 1
    // and spread as far as the file's do.
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
    assert!(p[0] > 0.4, "{p:?}");
}
