//! The eval transform against timm's (`resolve_data_config` + `create_transform`, the PIL path)
//! on a real photograph (scikit-image's `coffee`, 600x400): each interpolation and crop mode.
use serde_json::Value as Json;
use std::path::PathBuf;
use webcnn::preprocess::{batch, decode, CropMode, Interpolation, Preprocess};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/own-model/preprocess")
}

fn f32s(j: &Json) -> [f32; 3] {
    let v: Vec<f32> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    [v[0], v[1], v[2]]
}

#[test]
fn resized_pixels_equal_pils_for_every_interpolation_and_crop_mode() {
    let cases: Json =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let img = decode(&std::fs::read(dir().join("coffee.png")).unwrap()).unwrap();
    let mut seen = (vec![], vec![]);
    for (name, c) in cases["cases"].as_object().unwrap() {
        let size = c["input_size"].as_array().unwrap();
        let p = Preprocess {
            size: [
                size[1].as_u64().unwrap() as usize,
                size[2].as_u64().unwrap() as usize,
            ],
            crop_pct: c["crop_pct"].as_f64().unwrap(),
            interpolation: c["interpolation"].as_str().unwrap().parse().unwrap(),
            crop_mode: c["crop_mode"].as_str().unwrap().parse().unwrap(),
            mean: f32s(&c["mean"]),
            std: f32s(&c["std"]),
        };
        p.validate().unwrap();
        seen.0.push(p.interpolation);
        seen.1.push(p.crop_mode);
        let want = webcnn::npy::read_file(&dir().join(format!("{name}.npy"))).unwrap();
        let ours = batch(std::slice::from_ref(&img), &p);
        assert_eq!(ours.shape(), want.shape(), "{name}");
        // Equal pixels give equal floats: ToTensor and Normalize are the same f32 ops.
        let diff = ours
            .data()
            .iter()
            .zip(want.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let unequal = ours
            .data()
            .iter()
            .zip(want.data())
            .filter(|(a, b)| a != b)
            .count();
        eprintln!(
            "{name}: {unequal} of {} values differ, by at most {diff:e}",
            want.len()
        );
        assert_eq!(unequal, 0, "{name}: differs by up to {diff}");
    }
    for i in [
        Interpolation::Bilinear,
        Interpolation::Bicubic,
        Interpolation::Nearest,
    ] {
        assert!(seen.0.contains(&i), "{i:?} untested");
    }
    for m in [CropMode::Center, CropMode::Squash, CropMode::Border] {
        assert!(seen.1.contains(&m), "{m:?} untested");
    }
}
