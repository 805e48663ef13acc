//! Users' own checkpoints: PyTorch's `torch.save` layouts read by the restricted unpickler,
//! heads of any size (or none) fitted from the weights, label files, and `convert`.
mod common;

use serde_json::Value as Json;
use std::path::PathBuf;
use webcnn::models::{Head, Labels, LabelsError, Model};
use webcnn::tensor::Tensor;
use webcnn::weights::{
    self, check, load_safetensors, save_safetensors, save_safetensors_as, synthetic, StoreAs,
    TensorMap, WeightsError,
};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/own-model/pth")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn expected() -> TensorMap {
    load_safetensors(&fixture("expected.safetensors")).unwrap()
}

/// Largest absolute difference between two tensor maps with the same keys and shapes.
fn max_diff(a: &TensorMap, b: &TensorMap) -> f32 {
    let mut keys: Vec<&String> = a.keys().collect();
    keys.sort();
    let bk: Vec<&String> = {
        let mut v: Vec<&String> = b.keys().collect();
        v.sort();
        v
    };
    assert_eq!(keys, bk, "the same keys");
    keys.iter()
        .map(|k| {
            assert_eq!(a[*k].shape(), b[*k].shape(), "{k}");
            a[*k]
                .data()
                .iter()
                .zip(b[*k].data())
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

#[test]
fn every_torch_save_layout_reads_as_the_same_tensors() {
    let want = expected();
    // fc.weight is a strided view into the middle of a storage shared with fc.bias.
    assert_eq!(want["fc.weight"].shape(), &[6, 5]);
    for (file, tol, notices) in [
        ("state_dict.pth", 0.0, 0),
        ("legacy_format.pth", 0.0, 0),
        ("channels_last.pth", 0.0, 0),
        // A wrapper entry and a key prefix: one notice each.
        ("checkpoint_module_prefix.pth", 0.0, 2),
        ("compiled_model.pth", 0.0, 2),
        // Stored at half precision: the values rounded to 11 and 8 bits of mantissa.
        ("half.pth", 1e-3, 0),
        ("bfloat16.pth", 8e-3, 0),
    ] {
        let (w, n) = weights::read(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let d = max_diff(&w, &want);
        assert!(d <= tol, "{file}: differs by {d}");
        assert_eq!(n.len(), notices, "{file}: {n:?}");
        // num_batches_tracked (an int64 buffer) is left out.
        assert!(!w.contains_key("bn1.num_batches_tracked"), "{file}");
    }
    let (_, n) = weights::read(&fixture("checkpoint_module_prefix.pth")).unwrap();
    assert!(
        n[0].contains("'state_dict'") && n[0].contains("epoch"),
        "{n:?}"
    );
    assert!(n[1].contains("'module.'"), "{n:?}");
    let (_, n) = weights::read(&fixture("compiled_model.pth")).unwrap();
    assert!(
        n[0].contains("'model'") && n[1].contains("'_orig_mod.'"),
        "{n:?}"
    );
}

#[test]
fn a_pickle_that_calls_anything_else_is_refused_by_name_and_never_run() {
    let e = weights::read(&fixture("malicious_global.pth")).unwrap_err();
    assert!(matches!(e, WeightsError::Checkpoint(_)), "{e}");
    assert!(e.to_string().contains("'posix.system'"), "{e}");
    assert_eq!(webcnn::Error::from(e).code(), "WEIGHTS_FORMAT");
}

#[test]
fn every_truncation_and_corruption_of_a_checkpoint_is_an_error_not_a_panic() {
    for file in ["state_dict.pth", "legacy_format.pth", "half.pth"] {
        let bytes = fixture(file);
        for cut in 0..bytes.len() {
            // Whatever the reader makes of it, it returns (a few cuts of a zip still
            // read: its directory is at the end, so most do not).
            let _ = weights::read(&bytes[..cut]);
        }
        // Every byte flipped in turn: an error or tensors, never a panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let _ = weights::read(&b);
        }
        assert!(weights::read(&bytes[..bytes.len() - 1]).is_err(), "{file}");
    }
    // A legacy pickle without tensors; a zip that torch did not write.
    let e = weights::read(&[0x80, 0x02, 0x8a, 0x00, b'.']).unwrap_err();
    assert!(matches!(e, WeightsError::Checkpoint(_)), "{e}");
    let e = weights::read(b"PK\x03\x04 not really a zip").unwrap_err();
    assert!(e.to_string().contains("zip"), "{e}");
    // A safetensors header length that is not: the message names both formats.
    let e = weights::read(&[0xff; 64]).unwrap_err();
    assert!(e.to_string().contains("PyTorch checkpoint"), "{e}");
}

fn resnet18_with_head(classes: Option<usize>) -> TensorMap {
    let g = Model::get("resnet18").unwrap().default_graph(1);
    let mut w = synthetic(&g, 3);
    w.remove("fc.weight");
    w.remove("fc.bias");
    if let Some(k) = classes {
        w.insert("fc.weight".into(), Tensor::zeros([k, 512]));
        w.insert("fc.bias".into(), Tensor::zeros([k]));
    }
    w
}

#[test]
fn the_head_comes_from_the_weights_any_class_count_or_none() {
    for k in [1, 5, 37, 1000, 2000] {
        let l = weights::fit(
            Model::get("resnet18").unwrap(),
            resnet18_with_head(Some(k)),
            vec![],
        )
        .unwrap();
        assert_eq!(l.model.num_classes(), k);
        assert_eq!(l.model.labels.len(), k);
        let g = l.model.graph(&[1, 3, 64, 64]).unwrap();
        assert_eq!(g.shape(g.outputs()[0]), &[1, k]);
        // ImageNet's names for 1000 classes, numbered ones otherwise.
        let first = l.model.labels.names()[0].clone();
        assert_eq!(first == "tench", k == 1000, "{k}: {first}");
    }
    // Headless: a feature extractor ending at the pooled vector.
    let l = weights::fit(
        Model::get("resnet18").unwrap(),
        resnet18_with_head(None),
        vec![],
    )
    .unwrap();
    assert_eq!(l.model.head, Head::Headless);
    assert!(!l.model.has_classifier());
    let g = l.model.graph(&[2, 3, 64, 64]).unwrap();
    assert_eq!(g.shape(g.outputs()[0]), &[2, 512]);
    assert!(!l.model.feature_nodes().contains(&"fc".to_string()));
    assert!(l.model.feature_nodes().contains(&"layer4".to_string()));

    // VGG with `classifier[6]` removed ends at the second 4096-wide ReLU; with the whole
    // classifier removed, at the pooled features.
    let vgg = Model::get("vgg11").unwrap();
    let mut w = synthetic(&vgg.default_graph(1), 1);
    w.remove("classifier.6.weight");
    w.remove("classifier.6.bias");
    let l = weights::fit(vgg.clone(), w.clone(), vec![]).unwrap();
    let g = l.model.graph(&[1, 3, 64, 64]).unwrap();
    assert_eq!(g.shape(g.outputs()[0]), &[1, 4096]);
    w.retain(|k, _| !k.starts_with("classifier."));
    let l = weights::fit(vgg, w, vec![]).unwrap();
    assert_eq!(l.model.head, Head::Pooled);
    let g = l.model.graph(&[1, 3, 64, 64]).unwrap();
    assert_eq!(g.shape(g.outputs()[0]), &[1, 512 * 7 * 7]);

    // A head whose input does not match the backbone is a shape error naming it.
    let mut w = resnet18_with_head(Some(5));
    w.insert("fc.weight".into(), Tensor::zeros([5, 2048]));
    let e = weights::fit(Model::get("resnet18").unwrap(), w, vec![]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "weight 'fc.weight' has shape [5, 2048], expected [5, 512]"
    );
    // A bias without its weight: the missing key is named.
    let mut w = resnet18_with_head(Some(5));
    w.remove("fc.weight");
    let e = weights::fit(Model::get("resnet18").unwrap(), w, vec![]).unwrap_err();
    assert!(e.to_string().contains("missing weight 'fc.weight'"), "{e}");
}

#[test]
fn a_fine_tuned_head_runs_and_matches_the_same_head_built_by_hand() {
    // The 5-class head read from a .safetensors round trip gives the outputs the graph built
    // with that head directly gives.
    let m = Model::get("resnet18").unwrap().with_head(Head::Classes(5));
    let g = m.graph(&[1, 3, 64, 64]).unwrap();
    let w = synthetic(&g, 9);
    let l =
        weights::from_bytes_for(Model::get("resnet18").unwrap(), &save_safetensors(&w)).unwrap();
    assert_eq!(l.model.num_classes(), 5);
    let x = webcnn::prng::synth("input", &[1, 3, 64, 64], 4).unwrap();
    let a = webcnn::backend::cpu::CpuModel::prepare(&g, &w)
        .unwrap()
        .run(&x)
        .unwrap();
    let g2 = l.model.graph(&[1, 3, 64, 64]).unwrap();
    let b = webcnn::backend::cpu::CpuModel::prepare(&g2, &l.tensors)
        .unwrap()
        .run(&x)
        .unwrap();
    assert_eq!(a[0].shape(), &[1, 5]);
    assert_eq!(a[0].data(), b[0].data());
}

#[test]
fn label_files_in_every_form_and_their_count_checked() {
    let want: Vec<String> = ["cat", "dog", "bird"].map(String::from).to_vec();
    for text in [
        "cat\ndog\nbird\n",
        "cat\r\ndog\r\nbird\r\n\r\n",
        r#"["cat", "dog", "bird"]"#,
        r#"{"1": "dog", "0": "cat", "2": "bird"}"#,
        // timm's config.json puts them under model_args.
        include_str!("fixtures/own-model/timm/resnet18-ft3/config.json"),
    ] {
        let l = Labels::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(l.names(), want, "{text}");
    }
    for (text, says) in [
        ("", "no labels"),
        ("cat\n\ndog\n", "label 1 is empty"),
        (r#"{"0": "cat", "2": "bird"}"#, "key '2'"),
        (r#"["cat", 3]"#, "label 1 is not a string"),
        ("[not json", "not valid JSON"),
        (
            include_str!("fixtures/own-model/timm/resnet50.a1_in1k/config.json"),
            "no label_names",
        ),
    ] {
        let e = Labels::parse(text).unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
    let m = Model::get("resnet18").unwrap().with_head(Head::Classes(3));
    let l = Labels::parse("cat\ndog\nbird").unwrap();
    let m3 = m.clone().with_labels(l.clone()).unwrap();
    assert_eq!(m3.labels.names(), want);
    let e = Model::get("resnet18")
        .unwrap()
        .with_labels(l.clone())
        .unwrap_err();
    assert_eq!(
        e,
        LabelsError::Count {
            labels: 3,
            classes: 1000
        }
    );
    assert_eq!(e.to_string(), "3 labels for a head of 1000 classes");
    let headless = m.with_head(Head::Headless);
    assert_eq!(
        headless.with_labels(l).unwrap_err(),
        LabelsError::NoClassifier
    );
}

#[test]
fn convert_writes_smaller_files_that_every_reader_takes() {
    let g = Model::get("resnet18")
        .unwrap()
        .graph(&[1, 3, 32, 32])
        .unwrap();
    let w = synthetic(&g, 1);
    let full = save_safetensors(&w);
    for (dtype, tol) in [
        (StoreAs::F32, 0.0),
        (StoreAs::F16, 1e-3),
        (StoreAs::BF16, 8e-3),
    ] {
        let bytes = save_safetensors_as(&w, dtype);
        if dtype != StoreAs::F32 {
            assert!(
                bytes.len() < full.len() * 51 / 100,
                "{dtype:?}: {}",
                bytes.len()
            );
        }
        let (back, _) = weights::read(&bytes).unwrap();
        check(&g, &back).unwrap();
        // Relative to each value's magnitude (weights here are below 1 in size).
        assert!(max_diff(&back, &w) <= tol, "{dtype:?}");
    }
}

/// A golden case with a replaced head (`-c<N>`): (model id, classes, input shape, seeds, output).
fn fine_tuned_case(file: &str) -> (String, usize, Vec<usize>, u64, u64, Vec<f64>) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden/models")
        .join(file);
    let j: Json = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    (
        j["model"].as_str().unwrap().to_string(),
        j["classes"].as_u64().unwrap() as usize,
        common::usizes(&j["input_shape"]),
        j["weights_seed"].as_u64().unwrap(),
        j["input_seed"].as_u64().unwrap(),
        j["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect(),
    )
}

#[test]
fn fine_tuned_checkpoints_saved_by_torch_save_match_pytorch_on_both_backends() {
    // As a training script leaves them: a DataParallel model inside {'epoch', 'state_dict'}.
    // The head's size is read from the file; the id alone says 1000 (or 10) classes.
    let gpu = common::gpu();
    for file in [
        "resnet18-s1-c3-1x3x64x64.json",
        "vgg11_bn-s1-c4-1x3x64x64.json",
        "alexnet-s1-c2.json",
        "resnet50-s1-c37-2x3x96x96.json",
    ] {
        let (id, classes, shape, seed, input_seed, want) = fine_tuned_case(file);
        let tuned = Model::get(&id).unwrap().with_head(Head::Classes(classes));
        let w = synthetic(&tuned.default_graph(1), seed);
        let pth = common::torch_save(&w, true);
        let l = weights::from_bytes_for(Model::get(&id).unwrap(), &pth).unwrap();
        assert_eq!(l.model.num_classes(), classes, "{file}");
        assert_eq!(l.notices.len(), 2, "{file}: {:?}", l.notices);
        assert_eq!(l.tensors, w, "{file}: the tensors as saved");
        let g = l.model.graph(&shape).unwrap();
        let x = webcnn::prng::synth("input", &shape, input_seed).unwrap();
        let cpu = webcnn::backend::cpu::CpuModel::prepare(&g, &l.tensors)
            .unwrap()
            .run(&x)
            .unwrap()
            .remove(0);
        let mut gm =
            webcnn::backend::gpu::GpuModel::prepare_blocking(&gpu, &g, &l.tensors).unwrap();
        let on_gpu = gm.run_blocking(&x).unwrap().remove(0);
        for (backend, y) in [("cpu", cpu), ("gpu", on_gpu)] {
            assert_eq!(y.shape(), &[shape[0], classes], "{file} {backend}");
            let e = webcnn::tensor::rel_l2(y.data(), &want);
            eprintln!("{file} {backend}: rel L2 {e:.2e}");
            assert!(e <= common::TOL, "{file} {backend}: rel L2 {e}");
        }
    }
}
