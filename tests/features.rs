//! Feature extraction: intermediate outputs by torchvision's node names (`layer2`,
//! `features.22`, `flatten`, ...) against the golden feature maps, on both backends.
mod common;

use serde_json::Value as Json;
use std::path::Path;
use webcnn::backend::cpu::CpuModel;
use webcnn::backend::gpu::GpuModel;
use webcnn::models::Model;
use webcnn::prng::synth;
use webcnn::tensor::rel_l2;
use webcnn::weights::synthetic;

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let data: Vec<f32> = npy.into_vec().unwrap();
    (shape, data.into_iter().map(|v| v as f64).collect())
}

#[test]
fn golden_feature_maps_match_on_cpu_and_gpu() {
    let ctx = common::gpu();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/features");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 7);
    let mut failures = vec![];
    for dir in dirs {
        let meta: Json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        let model = Model::get(meta["model"].as_str().unwrap()).unwrap();
        let shape = common::usizes(&meta["input_shape"]);
        let nodes: Vec<&str> = meta["nodes"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let g = model.graph(&shape).unwrap().with_outputs(&nodes).unwrap();
        let w = synthetic(&g, meta["weights_seed"].as_u64().unwrap());
        let x = synth("input", &shape, meta["input_seed"].as_u64().unwrap()).unwrap();
        let cpu = CpuModel::prepare(&g, &w).unwrap().run(&x).unwrap();
        let gpu = GpuModel::prepare_blocking(&ctx, &g, &w)
            .unwrap()
            .run_blocking(&x)
            .unwrap();
        for (i, node) in nodes.iter().enumerate() {
            let (want_shape, want) = read_npy(&dir.join(format!("{node}.npy")));
            for (backend, out) in [("cpu", &cpu[i]), ("gpu", &gpu[i])] {
                assert_eq!(out.shape(), want_shape.as_slice(), "{} {node}", model.id);
                let e = rel_l2(out.data(), &want);
                if e.is_nan() || e > common::TOL {
                    failures.push(format!("{} {node} ({backend}): rel L2 {e:e}", model.id));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "feature maps over tolerance:\n{}",
        failures.join("\n")
    );
}

#[test]
fn feature_levels_follow_timm() {
    let lv = |id: &str| -> Vec<(String, usize, usize)> {
        Model::get(id)
            .unwrap()
            .feature_levels()
            .into_iter()
            .map(|l| (l.node, l.channels, l.reduction))
            .collect()
    };
    let s = |n: &str, c, r| (n.to_string(), c, r);
    assert_eq!(
        lv("resnet50"),
        [
            s("relu", 64, 2),
            s("layer1", 256, 4),
            s("layer2", 512, 8),
            s("layer3", 1024, 16),
            s("layer4", 2048, 32)
        ]
    );
    assert_eq!(
        lv("vgg16"),
        [
            s("features.3", 64, 1),
            s("features.8", 128, 2),
            s("features.15", 256, 4),
            s("features.22", 512, 8),
            s("features.29", 512, 16)
        ]
    );
    assert_eq!(Model::get("resnet18").unwrap().pooled_node(), "flatten");
    assert_eq!(Model::get("vgg16_cifar").unwrap().pooled_node(), "view");
}

#[test]
fn nodes_inside_fused_groups_return_what_pytorch_returns() {
    // A conv whose BatchNorm is folded, a BatchNorm whose ReLU is fused, the Add before a
    // block's last ReLU and a downsample BatchNorm: each asked for alongside stage outputs,
    // against the graph run with every node as its own step.
    let ctx = common::gpu();
    let model = Model::get("resnet18").unwrap();
    let g = model.graph(&[1, 3, 48, 48]).unwrap();
    let w = synthetic(&g, 2);
    let x = synth("input", &[1, 3, 48, 48], 3).unwrap();
    let nodes = [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.add",
        "layer2",
        "layer3.0.downsample.1",
        "layer4.1.bn2",
        "fc",
    ];
    let f = g.with_outputs(&nodes).unwrap();
    let reference = CpuModel::prepare_with(&f, &w, false)
        .unwrap()
        .run(&x)
        .unwrap();
    let cpu = CpuModel::prepare(&f, &w).unwrap().run(&x).unwrap();
    let gpu = GpuModel::prepare_blocking(&ctx, &f, &w)
        .unwrap()
        .run_blocking(&x)
        .unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let want: Vec<f64> = reference[i].data().iter().map(|&v| v as f64).collect();
        // Pre-ReLU values: negative entries must be there.
        if node.contains("bn") || node.contains("conv") || node.contains("add") {
            assert!(want.iter().any(|&v| v < 0.0), "{node} looks ReLU'd");
        }
        for (name, got) in [("cpu", &cpu[i]), ("gpu", &gpu[i])] {
            assert_eq!(got.shape(), reference[i].shape(), "{node} on {name}");
            let e = rel_l2(got.data(), &want);
            assert!(e <= 1e-5, "{node} on {name}: rel L2 {e:e}");
        }
    }
    // The other nodes stay fused: fewer steps than nodes.
    let steps = webcnn::lower::Program::new(&f, true).steps.len();
    let unfused = webcnn::lower::Program::new(&f, false).steps.len();
    assert!(steps < unfused, "{steps} fused steps vs {unfused}");
}

#[test]
fn requested_outputs_do_not_hold_their_buffers_for_the_whole_run() {
    // `relu` (64x112x112) is read by the max-pool and then free: asking for it as a
    // feature adds no activation memory; the GPU plan agrees.
    let g = Model::get("resnet18").unwrap().default_graph(1);
    let both = g.with_outputs(&["relu", "fc"]).unwrap();
    let plan = |g: &webcnn::Graph| {
        webcnn::plan::MemoryPlan::new(&webcnn::lower::Program::new(g, true), 1).bytes()
    };
    assert_eq!(plan(&both), plan(&g));
    let w = synthetic(&g, 1);
    let ctx = common::gpu();
    let a = GpuModel::prepare_blocking(&ctx, &g, &w).unwrap();
    let b = GpuModel::prepare_blocking(&ctx, &both, &w).unwrap();
    assert_eq!(a.memory().activations, b.memory().activations);
}
