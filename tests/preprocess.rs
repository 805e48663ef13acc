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

#[test]
fn jpeg_pixels_against_libjpeg_turbo_and_what_they_change_downstream() {
    // coffee.png saved by cjpeg -quality 90 (4:2:0), and the same file decoded by
    // libjpeg-turbo 2.1.5's djpeg (PIL's decoder, default settings) stored as PNG.
    let ours = decode(&std::fs::read(dir().join("coffee_q90.jpg")).unwrap()).unwrap();
    let turbo =
        decode(&std::fs::read(dir().join("coffee_q90_libjpeg_turbo.png")).unwrap()).unwrap();
    let (a, b) = (ours.to_rgb8(), turbo.to_rgb8());
    assert_eq!(a.dimensions(), b.dimensions());
    let diffs: Vec<i32> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as i32 - y as i32).abs())
        .collect();
    let max = *diffs.iter().max().unwrap();
    let differ = diffs.iter().filter(|&&d| d > 0).count() as f64 / diffs.len() as f64;
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    eprintln!(
        "JPEG pixels vs libjpeg-turbo: max {max} levels, {:.1}% differ, mean {mean:.3}",
        differ * 100.0
    );
    // The decoders round the IDCT and chroma upsampling differently: measured here, 17.5% of
    // values off, by 0.24 levels on average and 6 at most.
    assert!(max <= 8 && mean < 0.5, "max {max}, mean {mean}");

    // Through the default transform and a ResNet-18: the probabilities move by little.
    let m = webcnn::models::Model::get("resnet18").unwrap();
    let g = m.default_graph(1);
    let w = webcnn::weights::synthetic(&g, 1);
    let cpu = webcnn::backend::cpu::CpuModel::prepare(&g, &w).unwrap();
    let probs = |img: &image::DynamicImage| {
        let x = batch(std::slice::from_ref(img), &m.preprocess);
        webcnn::engine::softmax(cpu.run(&x).unwrap()[0].data())
    };
    let (pa, pb) = (probs(&ours), probs(&turbo));
    let dp = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    eprintln!("probabilities (resnet18, synthetic weights) differ by at most {dp:e}");
    assert!(dp <= 1e-3, "{dp}");
}
