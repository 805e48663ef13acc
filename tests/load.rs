//! Loading as the file streams in (`load::StreamLoad`): the same answers as loading the
//! whole file, on the GPU (weights written to the device as their bytes arrive) and on the
//! CPU, for safetensors in pieces of any size, timm's keys, f16 storage and checkpoints;
//! a file that does not fit the model fails at its header, before any data.
mod common;

use webcnn::backend::gpu::{GpuOptions, Precision};
use webcnn::engine::{Session, Target};
use webcnn::load::StreamLoad;
use webcnn::models::Model;
use webcnn::prng::synth;
use webcnn::weights::{save_safetensors, synthetic, TensorMap};
use webcnn::Error;

/// The loaded model, and how often the device was waited for.
fn stream(
    model: &str,
    bytes: &[u8],
    piece: usize,
    target: &Target,
) -> (webcnn::load::Streamed, usize) {
    let mut load = StreamLoad::new(
        Model::get(model).unwrap(),
        None,
        target,
        Some(bytes.len() as u64),
    );
    let mut settles = 0;
    for c in bytes.chunks(piece) {
        if load.push(c).unwrap() {
            pollster::block_on(load.settle()).unwrap();
            settles += 1;
        }
    }
    (pollster::block_on(load.finish()).unwrap(), settles)
}

fn run(s: &mut Session, x: &webcnn::Tensor) -> Vec<f32> {
    s.run_blocking(x).unwrap().remove(0).into_data()
}

#[test]
fn streamed_weights_give_the_whole_files_answers_on_both_backends() {
    let model = Model::get("resnet18").unwrap();
    let graph = model.default_graph(1);
    let w = synthetic(&graph, 7);
    let bytes = save_safetensors(&w);
    let x = synth("input", &[1, 3, 224, 224], 3).unwrap();
    for target in [Target::gpu(common::gpu()), Target::cpu()] {
        let mut whole = pollster::block_on(Session::load(&graph, w.clone(), &target)).unwrap();
        let want = run(&mut whole, &x);
        for piece in [64 << 10, 1_000_003] {
            let (mut s, settles) = stream("resnet18", &bytes, piece, &target);
            // On the GPU the device is waited for every 4 MiB written.
            let gpu = target.gpu_context().is_some();
            assert_eq!(settles > 0, gpu, "{settles} settles");
            assert_eq!(s.model.num_classes(), 1000);
            assert!(s.non_finite.is_empty());
            assert_eq!(run(&mut s.session, &x), want, "pieces of {piece}");
        }
    }
}

#[test]
fn a_fine_tuned_head_timm_keys_and_non_finite_values_stream_too() {
    // VGG-11 with a 10-class head, saved with timm's keys (`pre_logits.fc1` as a 7x7
    // convolution, `head.fc`), a NaN in a streamed weight and one in a kept bias.
    let model = Model::get("vgg11").unwrap();
    let mut w = synthetic(
        &model
            .clone()
            .with_head(webcnn::models::Head::Classes(10))
            .default_graph(1),
        2,
    );
    w.get_mut("features.0.weight").unwrap().data_mut()[5] = f32::NAN;
    w.get_mut("features.0.bias").unwrap().data_mut()[1] = f32::INFINITY;
    let mut timm = TensorMap::new();
    for (k, t) in w.clone() {
        let (k, t) = match k.as_str() {
            "classifier.0.weight" => (
                "pre_logits.fc1.weight".into(),
                t.reshape([4096, 512, 7, 7]).unwrap(),
            ),
            "classifier.0.bias" => ("pre_logits.fc1.bias".into(), t),
            "classifier.3.weight" => (
                "pre_logits.fc2.weight".into(),
                t.reshape([4096, 4096, 1, 1]).unwrap(),
            ),
            "classifier.3.bias" => ("pre_logits.fc2.bias".into(), t),
            "classifier.6.weight" => ("head.fc.weight".into(), t),
            "classifier.6.bias" => ("head.fc.bias".into(), t),
            _ => (k, t),
        };
        timm.insert(k, t);
    }
    let bytes = save_safetensors(&timm);
    let x = synth("input", &[1, 3, 224, 224], 4).unwrap();
    let target = Target::gpu(common::gpu());
    let graph = model
        .clone()
        .with_head(webcnn::models::Head::Classes(10))
        .default_graph(1);
    let mut whole = pollster::block_on(Session::load(&graph, w, &target)).unwrap();
    let want = run(&mut whole, &x);
    let (mut s, _) = stream("vgg11", &bytes, 1 << 20, &target);
    assert_eq!(s.model.num_classes(), 10);
    assert_eq!(s.non_finite, ["features.0.bias", "features.0.weight"]);
    let got = run(&mut s.session, &x);
    assert_eq!(got.len(), 10);
    // NaN reaches every output, in both.
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn f16_storage_and_checkpoints_load_whole_with_the_same_answers() {
    let model = Model::get("resnet18").unwrap();
    let graph = model.default_graph(1);
    let w = synthetic(&graph, 9);
    let x = synth("input", &[1, 3, 224, 224], 5).unwrap();
    let half = Target::gpu(common::gpu_with(GpuOptions {
        precision: Precision::F16,
        ..Default::default()
    }));
    let mut whole = pollster::block_on(Session::load(&graph, w.clone(), &half)).unwrap();
    let want = run(&mut whole, &x);
    let (mut s, settles) = stream("resnet18", &save_safetensors(&w), 1 << 20, &half);
    assert_eq!(settles, 0, "f16 storage converts the whole tensors");
    assert_eq!(run(&mut s.session, &x), want);
    // A DataParallel checkpoint: read whole at its end, unwrapped with a notice.
    let gpu = Target::gpu(common::gpu());
    let mut whole = pollster::block_on(Session::load(&graph, w.clone(), &gpu)).unwrap();
    let want = run(&mut whole, &x);
    let (mut s, _) = stream("resnet18", &common::torch_save(&w, true), 1 << 20, &gpu);
    assert!(!s.notices.is_empty());
    assert_eq!(run(&mut s.session, &x), want);
}

#[test]
fn a_file_for_another_model_fails_at_its_header() {
    let bytes = save_safetensors(&synthetic(
        &Model::get("resnet34").unwrap().default_graph(1),
        1,
    ));
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for target in [Target::gpu(common::gpu()), Target::cpu()] {
        let mut load = StreamLoad::new(
            Model::get("resnet18").unwrap(),
            None,
            &target,
            Some(bytes.len() as u64),
        );
        // The header alone is enough to know.
        let e = load.push(&bytes[..header]).unwrap_err();
        assert!(matches!(e, Error::Weights(_)), "{e}");
        assert!(
            e.to_string().contains("unexpected weight 'layer1.2."),
            "{e}"
        );
    }
}
