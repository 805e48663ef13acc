//! Weight files: formats, timm's key layout, and one clear error per kind of bad file.

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use webcnn::models::Model;
use webcnn::weights::{
    check, from_bytes, load_safetensors, map_timm_keys, save_safetensors, synthetic, Source,
    WeightsError,
};
use webcnn::Tensor;

fn model_graph(id: &str) -> webcnn::Graph {
    Model::get(id).unwrap().default_graph(1)
}

#[test]
fn f32_round_trip_and_half_precision_conversion() {
    let g = model_graph("vgg11_cifar");
    let w = synthetic(&g, 3);
    let back = load_safetensors(&save_safetensors(&w)).unwrap();
    assert_eq!(back, w);

    let vals = [1.5f32, -0.25, 3.0e-3, 65504.0];
    let f16: Vec<u8> = vals
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let bytes = safetensors::serialize(
        [
            ("a", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
        ],
        None,
    )
    .unwrap();
    let m = load_safetensors(&bytes).unwrap();
    assert_eq!(m["a"].shape(), [2, 2]);
    for (got, want) in m["a"].data().iter().zip(vals) {
        assert!(
            (got - want).abs() <= want.abs() * 1e-3,
            "f16 {got} vs {want}"
        );
    }
    for (got, want) in m["b"].data().iter().zip(vals) {
        assert!(
            (got - want).abs() <= want.abs() * 1e-2,
            "bf16 {got} vs {want}"
        );
    }
}

#[test]
fn timm_vgg_checkpoints_map_to_torchvision_keys() {
    let g = model_graph("vgg11");
    let mut w = synthetic(&g, 1);
    // timm keeps fc6/fc7 as convolutions and the last layer as head.fc.
    let fc6 = w.remove("classifier.0.weight").unwrap();
    w.insert(
        "pre_logits.fc1.weight".into(),
        fc6.clone().reshape([4096, 512, 7, 7]).unwrap(),
    );
    w.insert("pre_logits.fc1.bias".into(), w["classifier.0.bias"].clone());
    w.remove("classifier.0.bias");
    let fc7 = w.remove("classifier.3.weight").unwrap();
    w.insert(
        "pre_logits.fc2.weight".into(),
        fc7.reshape([4096, 4096, 1, 1]).unwrap(),
    );
    let b = w.remove("classifier.3.bias").unwrap();
    w.insert("pre_logits.fc2.bias".into(), b);
    for leaf in ["weight", "bias"] {
        let t = w.remove(&format!("classifier.6.{leaf}")).unwrap();
        w.insert(format!("head.fc.{leaf}"), t);
    }
    let (mapped, warnings) = from_bytes(&g, &save_safetensors(&w)).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(mapped["classifier.0.weight"], fc6);
    assert_eq!(mapped.len(), g.params().len());

    // A broken timm file: a 0-d fc1 weight, then one with no rows. The mapping passes
    // them through and the shape check names the key; nothing divides by zero.
    for shape in [vec![], vec![0, 512, 7, 7]] {
        let mut bad = w.clone();
        let n: usize = shape.iter().product();
        bad.insert(
            "pre_logits.fc1.weight".into(),
            Tensor::new(shape.clone(), vec![0.5; n]).unwrap(),
        );
        let e = from_bytes(&g, &save_safetensors(&bad)).unwrap_err();
        assert!(
            e.to_string().contains("classifier.0.weight"),
            "{shape:?}: {e}"
        );
    }
}

#[test]
fn every_bad_file_is_one_clear_error() {
    let g = model_graph("resnet18");
    let good = synthetic(&g, 1);
    let bytes = save_safetensors(&good);

    let e = from_bytes(&g, b"GIF89a this is not a weights file at all").unwrap_err();
    assert!(matches!(e, WeightsError::NotSafetensors(_)), "{e}");
    let e = from_bytes(&g, b"abc").unwrap_err();
    assert!(matches!(e, WeightsError::NotSafetensors(_)), "{e}");
    let e = from_bytes(&g, &bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(e, WeightsError::Truncated(_)), "{e}");
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = from_bytes(&g, &huge).unwrap_err();
    assert!(
        e.to_string().contains("header length") && e.to_string().contains("beyond"),
        "{e}"
    );
    let mut garbage = bytes.clone();
    garbage[8..20].copy_from_slice(b"not json!!!!");
    assert!(matches!(
        from_bytes(&g, &garbage).unwrap_err(),
        WeightsError::NotSafetensors(_)
    ));

    let mut missing = good.clone();
    missing.remove("layer3.1.bn2.running_var");
    let e = check(&g, &missing).unwrap_err();
    assert_eq!(
        e.to_string(),
        "missing weight 'layer3.1.bn2.running_var' (expected shape [256])"
    );

    let mut prefixed = good.clone();
    let t = prefixed.remove("fc.weight").unwrap();
    prefixed.insert("model.fc.weight".into(), t);
    let e = check(&g, &prefixed).unwrap_err();
    assert!(
        e.to_string().contains("missing weight 'fc.weight'")
            && e.to_string().contains("model.fc.weight"),
        "{e}"
    );

    let mut extra = good.clone();
    extra.insert("layer5.0.conv1.weight".into(), Tensor::zeros([1]));
    extra.insert("bn1.num_batches_tracked".into(), Tensor::zeros([1]));
    assert_eq!(
        check(&g, &extra).unwrap_err(),
        WeightsError::Unexpected("layer5.0.conv1.weight".into())
    );

    let mut wrong = good.clone();
    wrong.insert("fc.weight".into(), Tensor::zeros([10, 512]));
    assert_eq!(
        check(&g, &wrong).unwrap_err().to_string(),
        "weight 'fc.weight' has shape [10, 512], expected [1000, 512]"
    );

    // Weights of another model name the first mismatching key.
    let other = synthetic(&model_graph("vgg11_cifar"), 1);
    let e = from_bytes(&g, &save_safetensors(&other)).unwrap_err();
    assert!(matches!(e, WeightsError::Missing { .. }), "{e}");

    let ints: Vec<u8> = vec![0; 16];
    let int_file = safetensors::serialize(
        [(
            "conv1.weight",
            TensorView::new(Dtype::I32, vec![4], &ints).unwrap(),
        )],
        None,
    )
    .unwrap();
    let e = from_bytes(&g, &int_file).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'conv1.weight' has dtype I32, supported are F32, F16, BF16 and F64"
    );

    // A key named twice, an offset past the data, overlapping tensors and a shape whose
    // product overflows: each a format error, never a panic.
    let raw = |header: &str, data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(vec![0u8; data]);
        b
    };
    let dup = r#"{"fc.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"fc.bias":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let e = from_bytes(&g, &raw(dup, 8)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "not a safetensors file (nor a PyTorch checkpoint): the header names 'fc.bias' twice"
    );
    for (header, data) in [
        (
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
            16,
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            16,
        ),
    ] {
        let e = from_bytes(&g, &raw(header, data)).unwrap_err();
        assert!(
            matches!(
                e,
                WeightsError::NotSafetensors(_) | WeightsError::Truncated(_)
            ),
            "{header}: {e}"
        );
    }

    let mut nan = good.clone();
    nan.get_mut("fc.bias").unwrap().data_mut()[3] = f32::NAN;
    nan.get_mut("conv1.weight").unwrap().data_mut()[0] = f32::INFINITY;
    assert_eq!(check(&g, &nan).unwrap(), ["conv1.weight", "fc.bias"]);
}

#[test]
fn weight_sources_parse() {
    assert_eq!(
        "synthetic:7".parse::<Source>().unwrap(),
        Source::Synthetic(7)
    );
    assert_eq!(
        "hf:timm/resnet50.tv_in1k".parse::<Source>().unwrap(),
        Source::Hub {
            repo: "timm/resnet50.tv_in1k".into(),
            revision: "main".into()
        }
    );
    assert_eq!(
        "hf:me/pets@v1.2".parse::<Source>().unwrap(),
        Source::Hub {
            repo: "me/pets".into(),
            revision: "v1.2".into()
        }
    );
    for bad in [
        "hf:me/pets@",
        "hf:me/pets@../x",
        "hf:me/pets@a/b",
        "hf:me/pets@a@b",
    ] {
        assert!(bad.parse::<Source>().is_err(), "{bad}");
    }
    assert_eq!(
        "w.safetensors".parse::<Source>().unwrap(),
        Source::File("w.safetensors".into())
    );
    assert!("synthetic:x".parse::<Source>().is_err());
    assert!("hf:noslash".parse::<Source>().is_err());
    let _ = map_timm_keys(Default::default());
}
