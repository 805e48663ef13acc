//! One model, weights loaded once per device, many plans: the classifier, feature
//! outputs and other input sizes all bind the same weights.
mod common;

use std::sync::Arc;
use webcnn::engine::{Session, Target};
use webcnn::models::Model;
use webcnn::prng::{synth, synth_params};
use webcnn::tensor::rel_l2;
use webcnn::weights;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Classify, then `classifier.4`, then `features.29` on VGG-16: the weights stay one copy.
fn vgg16_three_plans(target: &Target) -> (Session, u64) {
    let model = Model::get("vgg16").unwrap();
    // A 64x64 input keeps the software adapter quick; the weights are the full 138M.
    let graph = model.graph(&[1, 3, 64, 64]).unwrap();
    let one_copy = model.param_count() as u64 * 4;
    let w = synth_params(&graph, 1).unwrap();
    let mut s = pollster::block_on(Session::load(&graph, w, target)).unwrap();
    let x = synth("input", &[1, 3, 64, 64], 101).unwrap();
    let logits = s.run_blocking(&x).unwrap().remove(0);
    assert_eq!(logits.shape(), [1, 1000]);
    for node in ["classifier.4", "features.29"] {
        let g = graph.with_outputs(&[node]).unwrap();
        let y = s.run_graph_blocking(&g, &x).unwrap().remove(0);
        assert_eq!(y.shape(), g.shape(g.outputs()[0]), "{node}");
    }
    assert_eq!(s.plan_count(), 3);
    // Running the classifier again reuses its plan and gives the same answer.
    let again = s.run_blocking(&x).unwrap().remove(0);
    assert_eq!(again.data(), logits.data());
    assert_eq!(s.plan_count(), 3);
    (s, one_copy)
}

#[test]
fn gpu_weights_are_uploaded_once_for_every_plan() {
    let target = Target::gpu(common::gpu());
    let (s, one_copy) = vgg16_three_plans(&target);
    let b = s.weight_bytes();
    let ratio = b.device as f64 / one_copy as f64;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "GPU weight bytes {} vs one copy {one_copy}: {ratio:.3}x",
        b.device
    );
    // The host keeps only per-channel vectors (biases), no second copy of the weights.
    assert!(
        b.host * 100 < one_copy,
        "host keeps {} bytes of {one_copy}",
        b.host
    );
    // Winograd's transformed 3x3 kernels (16 floats for 9): at most one set for all plans.
    let conv_bytes: u64 = Model::get("vgg16")
        .unwrap()
        .graph(&[1, 3, 64, 64])
        .unwrap()
        .params()
        .iter()
        .filter(|p| p.name.starts_with("features.") && p.shape.len() == 4)
        .map(|p| p.shape.iter().product::<usize>() as u64 * 4)
        .sum();
    assert!(
        b.derived * 9 <= conv_bytes * 16,
        "{} bytes in Winograd form for {conv_bytes} of conv weights",
        b.derived
    );
}

#[test]
fn cpu_weights_are_one_host_copy_for_every_plan() {
    let (s, one_copy) = vgg16_three_plans(&Target::cpu());
    let b = s.weight_bytes();
    assert_eq!(b.device, 0);
    // Convolution weights are held packed for the direct kernels (blocks of output
    // channels padded), not beside their PyTorch layout: one copy, give or take the padding.
    let ratio = b.host as f64 / one_copy as f64;
    assert!(
        (1.0..=1.01).contains(&ratio),
        "CPU weight bytes {} vs one copy {one_copy}: {ratio:.4}x",
        b.host
    );
}

#[test]
fn plans_for_other_sizes_and_outputs_match_one_off_models() {
    // resnet18 at two input sizes and with feature outputs, on both backends, against
    // sessions made for exactly that graph.
    let model = Model::get("resnet18").unwrap();
    let g64 = model.graph(&[1, 3, 64, 64]).unwrap();
    let g48 = model.graph(&[2, 3, 48, 40]).unwrap();
    let feats = g48.with_outputs(&["layer2", "fc"]).unwrap();
    let w = synth_params(&g64, 3).unwrap();
    let x64 = synth("input", &[1, 3, 64, 64], 5).unwrap();
    let x48 = synth("input", &[2, 3, 48, 40], 6).unwrap();
    for target in [Target::cpu(), Target::gpu(common::gpu())] {
        let mut s = pollster::block_on(Session::load(&g64, w.clone(), &target)).unwrap();
        let a = s.run_blocking(&x64).unwrap();
        let b = s.run_graph_blocking(&g48, &x48).unwrap();
        let c = s.run_graph_blocking(&feats, &x48).unwrap();
        for (g, x, got) in [(&g64, &x64, a), (&g48, &x48, b), (&feats, &x48, c)] {
            let mut alone = pollster::block_on(Session::load(g, w.clone(), &target)).unwrap();
            let want = alone.run_blocking(x).unwrap();
            for (o, e) in got.iter().zip(&want) {
                assert_eq!(o.shape(), e.shape());
                let err = rel_l2(o.data(), &f64s(e.data()));
                assert!(err <= 1e-6, "{}: {err:e}", s.backend_name());
            }
        }
        // A wrong input shape is an error, and the session keeps working.
        assert!(s.run_blocking(&x48).is_err());
        assert!(s.run_blocking(&x64).is_ok());
    }
}

#[test]
fn models_run_at_once_from_threads_as_they_run_alone() {
    // Two sessions (GPU and CPU) in two threads, and one CPU plan shared by two threads,
    // give exactly what each gives alone.
    let r18 = Model::get("resnet18")
        .unwrap()
        .graph(&[1, 3, 40, 40])
        .unwrap();
    let vgg = Model::get("vgg11_cifar")
        .unwrap()
        .graph(&[2, 3, 32, 32])
        .unwrap();
    let (wr, wv) = (
        synth_params(&r18, 1).unwrap(),
        synth_params(&vgg, 2).unwrap(),
    );
    let (xr, xv) = (
        synth("input", &[1, 3, 40, 40], 3).unwrap(),
        synth("input", &[2, 3, 32, 32], 4).unwrap(),
    );
    let ctx = common::gpu();
    let alone = |g: &webcnn::Graph, w: &webcnn::weights::TensorMap, x, t: &Target| {
        let mut s = pollster::block_on(Session::load(g, w.clone(), t)).unwrap();
        s.run_blocking(x).unwrap().remove(0)
    };
    let want_r = alone(&r18, &wr, &xr, &Target::gpu(ctx.clone()));
    let want_v = alone(&vgg, &wv, &xv, &Target::cpu());
    std::thread::scope(|sc| {
        let a = sc.spawn(|| {
            (0..3)
                .map(|_| alone(&r18, &wr, &xr, &Target::gpu(ctx.clone())))
                .collect::<Vec<_>>()
        });
        let b = sc.spawn(|| {
            (0..3)
                .map(|_| alone(&vgg, &wv, &xv, &Target::cpu()))
                .collect::<Vec<_>>()
        });
        for y in a.join().unwrap() {
            assert_eq!(y.data(), want_r.data());
        }
        for y in b.join().unwrap() {
            assert_eq!(y.data(), want_v.data());
        }
    });
    let shared = std::sync::Arc::new(webcnn::backend::cpu::CpuModel::prepare(&vgg, &wv).unwrap());
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let m = shared.clone();
                let x = &xv;
                sc.spawn(move || {
                    (0..3)
                        .map(|_| m.run(x).unwrap().remove(0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in hs {
            for y in h.join().unwrap() {
                assert_eq!(y.data(), want_v.data());
            }
        }
    });
}

#[test]
fn a_shared_cpu_model_run_from_pool_threads_at_once_never_deadlocks() {
    // Runs execute on pool threads; a pool thread waiting in a join may be handed another
    // run's job. A run that held its arena's lock while it waited then deadlocked against
    // itself (CI hung here). Four runs at once in a pool of four, with a watchdog.
    let vgg = Model::get("vgg11_cifar")
        .unwrap()
        .graph(&[2, 3, 32, 32])
        .unwrap();
    let w = synth_params(&vgg, 2).unwrap();
    let x = Arc::new(synth("input", &[2, 3, 32, 32], 4).unwrap());
    let m = Arc::new(webcnn::backend::cpu::CpuModel::prepare(&vgg, &w).unwrap());
    let want = m.run(&x).unwrap().remove(0);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..4 {
        let (m, x, pool, tx) = (m.clone(), x.clone(), pool.clone(), tx.clone());
        // Detached: a deadlocked thread must not keep the test from failing.
        std::thread::spawn(move || {
            for _ in 0..5 {
                let y = pool.install(|| m.run(&x).unwrap().remove(0));
                tx.send(y).unwrap();
            }
        });
    }
    for i in 0..20 {
        let y = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("runs at once stalled after {i} of 20 results"));
        assert_eq!(y.data(), want.data());
    }
}

#[test]
fn a_lost_gpu_device_is_a_typed_error_and_the_next_run_makes_a_new_one() {
    let model = Model::get("resnet18_caffe").unwrap();
    let graph = model.graph(&[1, 3, 32, 32]).unwrap();
    let x = webcnn::prng::synth("input", &[1, 3, 32, 32], 4).unwrap();
    let g = graph.clone();
    let reload: webcnn::engine::Reload = Arc::new(move || Ok(weights::synthetic(&g, 1)));
    let target = Target::gpu(common::gpu());
    let mut s = pollster::block_on(Session::load(
        &graph,
        weights::synthetic(&graph, 1),
        &target,
    ))
    .unwrap()
    .with_reload(reload);
    let want = s.run_blocking(&x).unwrap().remove(0);
    let before = s.gpu_context().unwrap().clone();
    before.destroy();
    match s.run_blocking(&x) {
        Err(webcnn::Error::DeviceLost(why)) => assert!(!why.is_empty()),
        other => panic!("a run on a destroyed device gave {other:?}"),
    }
    let got = s.run_blocking(&x).unwrap().remove(0);
    assert_eq!(
        got.data(),
        want.data(),
        "the new device gives the same bits"
    );
    let after = s.gpu_context().unwrap();
    assert!(after.lost().is_none());
    assert!(before.lost().is_some());

    // Without a weights source the session cannot come back, and says so each time.
    let mut s = pollster::block_on(Session::load(
        &graph,
        weights::synthetic(&graph, 1),
        &Target::gpu(common::gpu()),
    ))
    .unwrap();
    s.run_blocking(&x).unwrap();
    s.gpu_context().unwrap().destroy();
    assert!(matches!(
        s.run_blocking(&x),
        Err(webcnn::Error::DeviceLost(_))
    ));
    match s.run_blocking(&x) {
        Err(webcnn::Error::DeviceLost(why)) => assert!(why.contains("no weights source"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_graphs_with_the_same_input_and_output_names_never_share_a_plan() {
    // ResNet-50 and its caffe variant have the same parameters, input shape and output
    // names, and differ in strides: a session asked for both must run each.
    let shape = [1, 3, 64, 64];
    let tv = Model::get("resnet50").unwrap().graph(&shape).unwrap();
    let caffe = Model::get("resnet50_caffe").unwrap().graph(&shape).unwrap();
    let w = synth_params(&tv, 3).unwrap();
    let x = synth("input", &shape, 7).unwrap();
    for target in [Target::cpu(), Target::gpu(common::gpu())] {
        let mut s = pollster::block_on(Session::load(&tv, w.clone(), &target)).unwrap();
        let a = s.run_blocking(&x).unwrap().remove(0);
        let b = s.run_graph_blocking(&caffe, &x).unwrap().remove(0);
        assert_eq!(s.plan_count(), 2, "the caffe graph got a plan of its own");
        let mut alone = pollster::block_on(Session::load(&caffe, w.clone(), &target)).unwrap();
        let want = alone.run_blocking(&x).unwrap().remove(0);
        assert_eq!(b.data(), want.data(), "the caffe graph's answer is its own");
        assert!(
            rel_l2(a.data(), &f64s(b.data())) > 1e-3,
            "the two graphs differ"
        );
        // Each graph again reuses its own plan.
        assert_eq!(s.run_blocking(&x).unwrap().remove(0).data(), a.data());
        assert_eq!(s.plan_count(), 2);
    }
}
