//! Engine behaviour beyond single ops, on both backends: fusion, pooling rules the golden
//! cases leave untested, splitting of tensors beyond a binding, batch chunking, errors.
mod common;

use std::collections::HashMap;
use webcnn::backend::cpu::CpuModel;
use webcnn::backend::gpu::{GpuModel, GpuOptions, Kernels, Precision, StepClock, Tuning};
use webcnn::graph::{Conv2d, GraphBuilder, Pool2d};
use webcnn::lower::Program;
use webcnn::prng::{synth, synth_params};
use webcnn::tensor::rel_l2;
use webcnn::{Error, Graph, Tensor};

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

fn run_cpu(g: &Graph, w: &HashMap<String, Tensor>, x: &Tensor, fuse: bool) -> Vec<Tensor> {
    CpuModel::prepare_with(g, w, fuse).unwrap().run(x).unwrap()
}

fn run_gpu(
    ctx: &webcnn::backend::gpu::GpuContext,
    g: &Graph,
    w: &HashMap<String, Tensor>,
    x: &Tensor,
    fuse: bool,
) -> Vec<Tensor> {
    let mut m = pollster::block_on(GpuModel::prepare_with(ctx, g, w, fuse)).unwrap();
    m.run_blocking(x).unwrap()
}

/// A ResNet-style stage: basic block, then a strided bottleneck-ish block with a
/// downsample branch, GroupNorm block, and a classifier head.
fn residual_graph(batch: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[batch, 8, 9, 9]).unwrap();
    let c1 = b
        .conv2d("l.0.conv1", x, Conv2d::new(8, 8, 3).padding(1).bias(false))
        .unwrap();
    let n1 = b.batch_norm2d("l.0.bn1", c1, 8, 1e-5).unwrap();
    let r1 = b.relu("l.0.relu1", n1).unwrap();
    let c2 = b
        .conv2d("l.0.conv2", r1, Conv2d::new(8, 8, 3).padding(1).bias(false))
        .unwrap();
    let n2 = b.batch_norm2d("l.0.bn2", c2, 8, 1e-5).unwrap();
    let a = b.add("l.0.add", n2, x).unwrap();
    let y0 = b.relu("l.0.relu2", a).unwrap();
    // Main branch first, downsample second: the fused add must wait for the branch.
    let c3 = b
        .conv2d(
            "l.1.conv1",
            y0,
            Conv2d::new(8, 16, 3).stride(2).padding(1).bias(false),
        )
        .unwrap();
    let n3 = b.batch_norm2d("l.1.bn1", c3, 16, 1e-5).unwrap();
    let d = b
        .conv2d(
            "l.1.downsample.0",
            y0,
            Conv2d::new(8, 16, 1).stride(2).bias(false),
        )
        .unwrap();
    let dn = b.batch_norm2d("l.1.downsample.1", d, 16, 1e-5).unwrap();
    let a2 = b.add("l.1.add", n3, dn).unwrap();
    let y1 = b.relu("l.1.relu", a2).unwrap();
    let c4 = b
        .conv2d("l.2.conv", y1, Conv2d::new(16, 16, 3).padding(1))
        .unwrap();
    let g4 = b.group_norm("l.2.gn", c4, 4, 16, 1e-5, true).unwrap();
    let a3 = b.add("l.2.add", g4, y1).unwrap();
    let y2 = b.relu("l.2.relu", a3).unwrap();
    let s = b.batch_norm2d("l.3.bn", y2, 16, 1e-5).unwrap();
    let sr = b.relu("l.3.relu", s).unwrap();
    let p = b
        .avg_pool2d(
            "avgpool",
            sr,
            Pool2d::new(3).stride(2).padding(1).ceil_mode(true),
        )
        .unwrap();
    let f = b.flatten("flatten", p, 1).unwrap();
    let d = b.dropout("drop", f).unwrap();
    let fc = b.linear("fc", d, 16 * 3 * 3, 10, true).unwrap();
    let fr = b.relu("fc.relu", fc).unwrap();
    let sm = b.softmax("softmax", fr, 1).unwrap();
    b.build(&[sm, y1]).unwrap()
}

#[test]
fn fusion_folds_bn_and_fuses_residual_and_relu() {
    let g = residual_graph(1);
    let p = Program::new(&g, true);
    let nodes: Vec<String> = p.steps.iter().map(|s| s.nodes.join("+")).collect();
    assert!(
        nodes.contains(&"l.0.conv2+l.0.bn2+l.0.add+l.0.relu2".to_string()),
        "{nodes:#?}"
    );
    assert!(
        nodes.contains(&"l.1.conv1+l.1.bn1+l.1.add+l.1.relu".to_string()),
        "{nodes:#?}"
    );
    assert!(
        nodes.contains(&"l.2.gn+l.2.add+l.2.relu".to_string()),
        "{nodes:#?}"
    );
    assert!(nodes.contains(&"fc+fc.relu".to_string()), "{nodes:#?}");
    // The fused add runs after the downsample branch it reads.
    let pos = |n: &str| nodes.iter().position(|s| s.starts_with(n)).unwrap();
    assert!(pos("l.1.downsample.0") < pos("l.1.conv1"), "{nodes:#?}");
    assert_eq!(p.steps.len(), 10, "{nodes:#?}");
    assert!(Program::new(&g, false).steps.len() > 20);
}

#[test]
fn fused_and_unfused_agree_on_cpu_and_gpu() {
    let ctx = common::gpu();
    let g = residual_graph(2);
    let w = synth_params(&g, 3).unwrap();
    let x = synth("input", &[2, 8, 9, 9], 5).unwrap();
    let reference = run_cpu(&g, &w, &x, false);
    for (name, outs) in [
        ("cpu fused", run_cpu(&g, &w, &x, true)),
        ("gpu fused", run_gpu(&ctx, &g, &w, &x, true)),
        ("gpu unfused", run_gpu(&ctx, &g, &w, &x, false)),
    ] {
        assert_eq!(outs.len(), 2);
        for (o, r) in outs.iter().zip(&reference) {
            assert_eq!(o.shape(), r.shape());
            let e = rel_l2(o.data(), &f64s(r));
            assert!(e <= 1e-5, "{name}: rel L2 {e:e}");
        }
    }
}

#[test]
fn cpu_adaptive_pools_keep_their_fused_relu() {
    // A pool to its input's own size copies the input (VGG's and AlexNet's): the ReLU
    // fused into its step still applies, as it does after a pool that averages.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 5, 4]).unwrap();
    let same = b.adaptive_avg_pool2d("same", x, [5, 4]).unwrap();
    let same = b.relu("same.relu", same).unwrap();
    let less = b.adaptive_avg_pool2d("less", x, [2, 3]).unwrap();
    let less = b.relu("less.relu", less).unwrap();
    let g = b.build(&[same, less]).unwrap();
    let nodes: Vec<String> = Program::new(&g, true)
        .steps
        .iter()
        .map(|s| s.nodes.join("+"))
        .collect();
    assert!(nodes.contains(&"same+same.relu".to_string()), "{nodes:?}");
    let w = synth_params(&g, 1).unwrap();
    let x = synth("input", &[2, 3, 5, 4], 7).unwrap();
    assert!(x.data().iter().any(|&v| v < 0.0));
    let reference = run_cpu(&g, &w, &x, false);
    let relu: Vec<f32> = x.data().iter().map(|&v| v.max(0.0)).collect();
    assert_eq!(reference[0].data(), &relu[..]);
    for kernels in webcnn::backend::cpu::available_kernels() {
        let outs = CpuModel::prepare_kernels(&g, &w, kernels)
            .unwrap()
            .run(&x)
            .unwrap();
        for (o, r) in outs.iter().zip(&reference) {
            assert_eq!(o.data(), r.data(), "{kernels}");
        }
    }
}

/// PyTorch's avg_pool2d written out plainly, in f64.
fn avg_pool_ref(x: &Tensor, p: &Pool2d, oh: usize, ow: usize) -> Vec<f64> {
    let [n, c, h, w] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let mut out = vec![];
    for plane in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let hs = (i * p.stride[0]) as i64 - p.padding[0] as i64;
                let ws = (j * p.stride[1]) as i64 - p.padding[1] as i64;
                let he = (hs + p.kernel[0] as i64).min((h + p.padding[0]) as i64);
                let we = (ws + p.kernel[1] as i64).min((w + p.padding[1]) as i64);
                let size = (he - hs) * (we - ws);
                let (h0, w0, h1, w1) = (hs.max(0), ws.max(0), he.min(h as i64), we.min(w as i64));
                let mut s = 0.0;
                for y in h0..h1 {
                    for xx in w0..w1 {
                        s += x.data()[plane * h * w + y as usize * w + xx as usize] as f64;
                    }
                }
                let div = if p.count_include_pad {
                    size
                } else {
                    (h1 - h0) * (w1 - w0)
                };
                out.push(s / div as f64);
            }
        }
    }
    out
}

#[test]
fn avg_pool_padding_and_ceil_mode_rules() {
    let ctx = common::gpu();
    // By hand: 3x3 of 1..9, k2 s2 p1: the corner window holds only x[0,0] over 4 slots.
    let x = Tensor::new([1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
    let mut b = GraphBuilder::new();
    let i = b.input("x", &[1, 1, 3, 3]).unwrap();
    let o = b.avg_pool2d("p", i, Pool2d::new(2).padding(1)).unwrap();
    let g = b.build(&[o]).unwrap();
    let want = [
        0.25,
        (2.0 + 3.0) / 4.0,
        (4.0 + 7.0) / 4.0,
        (5.0 + 6.0 + 8.0 + 9.0) / 4.0,
    ];
    for out in [
        run_cpu(&g, &HashMap::new(), &x, true),
        run_gpu(&ctx, &g, &HashMap::new(), &x, true),
    ] {
        assert_eq!(out[0].data(), want.map(|v| v as f32));
    }
    for (k, s, pad, ceil, incl, hw) in [
        (3, 2, 1, true, true, 10),
        (3, 2, 1, true, false, 10),
        (2, 3, 1, true, false, 7),
        (3, 3, 0, true, true, 8),
        (4, 2, 2, false, false, 9),
    ] {
        let pool = Pool2d::new(k)
            .stride(s)
            .padding(pad)
            .ceil_mode(ceil)
            .count_include_pad(incl);
        let mut b = GraphBuilder::new();
        let i = b.input("x", &[2, 3, hw, hw + 1]).unwrap();
        let o = b.avg_pool2d("p", i, pool.clone()).unwrap();
        let g = b.build(&[o]).unwrap();
        let x = synth("x", &[2, 3, hw, hw + 1], 9).unwrap();
        let os = g.shape(g.outputs()[0]).to_vec();
        let want = avg_pool_ref(&x, &pool, os[2], os[3]);
        for (name, out) in [
            ("cpu", run_cpu(&g, &HashMap::new(), &x, true)),
            ("gpu", run_gpu(&ctx, &g, &HashMap::new(), &x, true)),
        ] {
            let e = rel_l2(out[0].data(), &want);
            assert!(e <= 1e-6, "{name} {pool:?}: rel L2 {e:e}");
        }
    }
}

fn split_graph(batch: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[batch, 16, 4, 4]).unwrap();
    let c = b
        .conv2d("conv", x, Conv2d::new(16, 32, 3).padding(1))
        .unwrap();
    let r = b.relu("relu", c).unwrap();
    let gc = b
        .conv2d("gconv", r, Conv2d::new(32, 32, 3).padding(1).groups(4))
        .unwrap();
    let f = b.flatten("flatten", gc, 1).unwrap();
    let fc = b.linear("fc", f, 512, 300, true).unwrap();
    let fr = b.relu("fc.relu", fc).unwrap();
    let fc2 = b.linear("fc2", fr, 300, 7, true).unwrap();
    b.build(&[fc2]).unwrap()
}

#[test]
fn tensors_beyond_the_binding_limit_are_split_and_batches_chunked() {
    // 2 KiB per binding: every weight here is larger, and one image's activations fit
    // only one at a time (conv output is 2 KiB per image).
    let small = common::gpu_with(GpuOptions {
        max_binding_bytes: Some(2048),
        ..Default::default()
    });
    assert_eq!(small.binding_limit(), 2048);
    // Limits are whole vectors of 4 floats (what the vector bindings and f16 chunks
    // padded to words need).
    let odd = common::gpu_with(GpuOptions {
        max_binding_bytes: Some(2058),
        ..Default::default()
    });
    assert_eq!(odd.binding_limit(), 2048);
    let g = split_graph(3);
    let w = synth_params(&g, 1).unwrap();
    let x = synth("input", &[3, 16, 4, 4], 2).unwrap();
    let want = run_cpu(&g, &w, &x, true);
    let mut m = GpuModel::prepare_blocking(&small, &g, &w).unwrap();
    let r = m.memory().clone();
    assert_eq!(r.split_layers, 4, "{r:?}");
    assert_eq!(r.batch_chunk, 1, "{r:?}");
    let out = m.run_blocking(&x).unwrap();
    let e = rel_l2(out[0].data(), &f64s(&want[0]));
    assert!(e <= 1e-5, "split run: rel L2 {e:e}");
    // Same model unsplit on the default limits.
    let mut full = GpuModel::prepare_blocking(&common::gpu(), &g, &w).unwrap();
    assert_eq!(full.memory().split_layers, 0);
    assert_eq!(full.memory().batch_chunk, 3);
    let e = rel_l2(full.run_blocking(&x).unwrap()[0].data(), &f64s(&want[0]));
    assert!(e <= 1e-5, "unsplit run: rel L2 {e:e}");

    // One image's activation beyond the limit is a clear error, not a wrong answer.
    let tiny = common::gpu_with(GpuOptions {
        max_binding_bytes: Some(1024),
        ..Default::default()
    });
    let e = GpuModel::prepare_blocking(&tiny, &g, &w)
        .err()
        .expect("must not prepare");
    assert!(
        matches!(e, Error::DeviceLimit(_)) && e.to_string().contains("conv"),
        "{e}"
    );
}

#[test]
fn gpu_profiles_time_every_step_on_the_device_where_it_can() {
    // Split weights and chunked batches: a step's time sums several passes.
    let ctx = common::gpu_with(GpuOptions {
        max_binding_bytes: Some(2048),
        ..Default::default()
    });
    let g = split_graph(3);
    let w = synth_params(&g, 1).unwrap();
    let m = GpuModel::prepare_blocking(&ctx, &g, &w).unwrap();
    let (steps, clock) = m.time_steps(3).unwrap();
    let want = if ctx.has_timestamps() {
        StepClock::Timestamps
    } else {
        StepClock::WallTime
    };
    assert_eq!(clock, want, "{}", ctx.describe());
    let program = Program::new(&g, true);
    let names: Vec<String> = program.steps.iter().map(|s| s.nodes.join("+")).collect();
    assert_eq!(
        steps.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        names
    );
    assert!(
        steps
            .iter()
            .all(|(_, t)| t.is_finite() && *t >= 0.0 && *t < 10.0),
        "{steps:?}"
    );
    assert!(steps.iter().map(|(_, t)| t).sum::<f64>() > 0.0, "{steps:?}");
}

#[test]
fn measured_conv_kernels_are_used_remembered_and_survive_a_bad_cache() {
    let dir = std::env::temp_dir().join(format!("webcnn-tuning-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("gpu-tuning.json");
    let opts = |tuning| GpuOptions {
        tuning,
        tuning_file: Some(file.clone()),
        ..Default::default()
    };
    let g = residual_graph(2);
    let w = synth_params(&g, 3).unwrap();
    let x = synth("input", &[2, 8, 9, 9], 5).unwrap();
    let reference = run_cpu(&g, &w, &x, true);
    let check = |ctx: &webcnn::backend::gpu::GpuContext, what: &str| {
        let outs = run_gpu(ctx, &g, &w, &x, true);
        for (o, r) in outs.iter().zip(&reference) {
            let e = rel_l2(o.data(), &f64s(r));
            assert!(e <= 1e-5, "{what}: rel L2 {e:e}");
        }
    };
    // The graph's convolutions come in 4 shapes (3x3 8>8, 3x3 s2 8>16, 1x1 s2 8>16, 3x3 16>16).
    let shapes = 4;

    // Measured: every shape once, the model still right, the choices written down.
    let ctx = common::gpu_with(opts(Tuning::Measure));
    check(&ctx, "measured kernels");
    assert_eq!(ctx.measured_shapes(), shapes, "{:?}", ctx.conv_kernels());
    let chosen = ctx.conv_kernels();
    assert_eq!(chosen.len(), shapes);
    assert!(
        chosen
            .iter()
            .any(|(k, _)| k == "n2 c8 h9 w9 oc8 k3x3 s1x1 p1x1 d1x1 g1"),
        "{chosen:?}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let entries = saved.as_object().unwrap().values().next().unwrap();
    assert_eq!(entries.as_object().unwrap().len(), shapes, "{saved}");
    // Prepared again, nothing is measured twice.
    check(&ctx, "measured kernels, again");
    assert_eq!(ctx.measured_shapes(), shapes);

    // A new device on the same adapter reads them back instead of measuring.
    let again = common::gpu_with(opts(Tuning::Measure));
    check(&again, "cached kernels");
    assert_eq!(again.measured_shapes(), 0);
    assert_eq!(again.conv_kernels(), chosen);

    // The static table ignores the cache; forced kernels ignore both.
    let table = common::gpu_with(opts(Tuning::Table));
    check(&table, "table kernels");
    assert!(table.conv_kernels().is_empty());
    let forced = common::gpu_with(GpuOptions {
        kernels: Some(Kernels::Tiled),
        ..opts(Tuning::Measure)
    });
    check(&forced, "forced kernels");
    assert_eq!(forced.measured_shapes(), 0);

    // A corrupt cache is ignored and rewritten.
    std::fs::write(&file, b"{not json").unwrap();
    let fresh = common::gpu_with(opts(Tuning::Measure));
    check(&fresh, "after a corrupt cache");
    assert_eq!(fresh.measured_shapes(), shapes);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(saved.is_object());

    // Without a file (the library's default) the choices live in the process only: a new
    // device measures again, and nothing is written to the cache folder.
    let cache = dir.join("cache");
    std::env::set_var("WEBCNN_CACHE", &cache);
    let mem = common::gpu_with(GpuOptions {
        tuning: Tuning::Measure,
        ..Default::default()
    });
    check(&mem, "kernels kept in memory");
    assert_eq!(mem.measured_shapes(), shapes);
    assert!(
        !cache.join("gpu-tuning.json").exists(),
        "a tuning file was written unasked"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cpu_batches_too_big_for_the_cache_run_in_sub_batches_with_the_same_answers() {
    // 3 MB of one image's activations per conv step: 5 images per sub-batch (16 MiB), so a
    // batch of 7 runs as 5 + 2, or on the AVX-512 kernels 2 per sub-batch (8 MiB), 2 + 2 +
    // 2 + 1; the small classifier does not stop the split. From the pooling on (1 MB per
    // image) the whole batch fits again, and runs at once.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[7, 16, 128, 128]).unwrap();
    let c1 = b
        .conv2d("c1", x, Conv2d::new(16, 16, 3).padding(1))
        .unwrap();
    let r1 = b.relu("r1", c1).unwrap();
    let c2 = b
        .conv2d("c2", r1, Conv2d::new(16, 16, 3).padding(1))
        .unwrap();
    let a = b.add("add", c2, x).unwrap();
    let p = b.adaptive_avg_pool2d("pool", a, [2, 2]).unwrap();
    let f = b.flatten("flatten", p, 1).unwrap();
    let fc = b.linear("fc", f, 64, 10, true).unwrap();
    let g = b.build(&[fc, r1]).unwrap();
    let w = synth_params(&g, 4).unwrap();
    let x = synth("input", &[7, 16, 128, 128], 6).unwrap();
    for kernels in webcnn::backend::cpu::available_kernels() {
        let m = CpuModel::prepare_kernels(&g, &w, kernels).unwrap();
        let size = if kernels == "AVX-512" { 2 } else { 5 };
        assert_eq!(m.sub_batch(), size, "{kernels}");
        // Steps: conv+relu, conv+add, pool, linear.
        assert_eq!(m.whole_batch_from(), Some(2), "{kernels}");
        let (outs, times) = m.run_profiled(&x).unwrap();
        assert_eq!(times.len(), Program::new(&g, true).steps.len(), "{times:?}");
        // Each image alone (a batch of 1 is never split) gives the same answers.
        let one = CpuModel::prepare_kernels(&g.with_batch(1).unwrap(), &w, kernels).unwrap();
        let per = 16 * 128 * 128;
        for i in 0..7 {
            let xi = Tensor::new(
                vec![1, 16, 128, 128],
                x.data()[i * per..(i + 1) * per].to_vec(),
            )
            .unwrap();
            let want = one.run(&xi).unwrap();
            for (o, w1) in outs.iter().zip(&want) {
                let n = w1.len();
                assert_eq!(
                    &o.data()[i * n..(i + 1) * n],
                    w1.data(),
                    "{kernels}, image {i}"
                );
            }
        }
    }
    // A big classifier wants the whole batch: streaming its 35 MB once per sub-batch
    // would cost more than the cache saves.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[7, 16, 128, 128]).unwrap();
    let c = b.conv2d("c", x, Conv2d::new(16, 16, 3).padding(1)).unwrap();
    let f = b.flatten("flatten", c, 1).unwrap();
    let fc = b.linear("fc", f, 16 * 128 * 128, 33, true).unwrap();
    let g = b.build(&[fc]).unwrap();
    let w = synth_params(&g, 4).unwrap();
    assert_eq!(CpuModel::prepare(&g, &w).unwrap().sub_batch(), 7);
}

#[test]
fn bad_weights_and_inputs_are_errors_on_both_backends() {
    let ctx = common::gpu();
    let g = split_graph(1);
    let w = synth_params(&g, 1).unwrap();
    let mut missing = w.clone();
    missing.remove("fc.bias");
    let mut wrong = w.clone();
    wrong.insert("conv.weight".into(), Tensor::zeros([32, 16, 1, 1]));
    for (weights, want) in [
        (&missing, "missing weight 'fc.bias'"),
        (
            &wrong,
            "weight 'conv.weight' has shape [32, 16, 1, 1], expected [32, 16, 3, 3]",
        ),
    ] {
        let e = CpuModel::prepare(&g, weights).err().unwrap();
        assert_eq!(e.to_string(), want);
        let e = GpuModel::prepare_blocking(&ctx, &g, weights).err().unwrap();
        assert_eq!(e.to_string(), want);
    }
    let bad = Tensor::zeros([1, 16, 5, 4]);
    assert!(matches!(
        CpuModel::prepare(&g, &w).unwrap().run(&bad),
        Err(Error::InputShape { .. })
    ));
    let mut m = GpuModel::prepare_blocking(&ctx, &g, &w).unwrap();
    assert!(matches!(
        m.run_blocking(&bad),
        Err(Error::InputShape { .. })
    ));
    // The model still runs after a refused input.
    assert_eq!(
        m.run_blocking(&Tensor::zeros([1, 16, 4, 4])).unwrap()[0].shape(),
        [1, 7]
    );
}

#[test]
fn liveness_plan_shares_activation_buffers() {
    let ctx = common::gpu();
    let mut b = GraphBuilder::new();
    let mut x = b.input("x", &[1, 16, 32, 32]).unwrap();
    for i in 0..8 {
        x = b
            .conv2d(&format!("c{i}"), x, Conv2d::new(16, 16, 3).padding(1))
            .unwrap();
        x = b.relu(&format!("r{i}"), x).unwrap();
    }
    let g = b.build(&[x]).unwrap();
    let w = synth_params(&g, 1).unwrap();
    let m = GpuModel::prepare_blocking(&ctx, &g, &w).unwrap();
    let per_tensor = 16 * 32 * 32 * 4;
    // Input, output and one ping-pong buffer instead of nine tensors.
    assert_eq!(m.memory().activations, 3 * per_tensor, "{:?}", m.memory());
    // One dispatch per fused conv + ReLU; Winograd layers take three (transforms).
    let r = m.memory();
    assert_eq!(r.dispatches, 8 + 2 * r.winograd_layers, "{r:?}");
}

#[test]
fn max_pool_propagates_nan_like_pytorch() {
    // 1x2x5x5 with a NaN in the top-left window of channel 0; k3 s2 p1, ceil mode.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 2, 5, 5]).unwrap();
    let y = b
        .max_pool2d(
            "pool",
            x,
            Pool2d::new(3).stride(2).padding(1).ceil_mode(true),
        )
        .unwrap();
    let g = b.build(&[y]).unwrap();
    let mut data: Vec<f32> = (0..50).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
    data[6] = f32::NAN; // channel 0, row 1, column 1
    let x = Tensor::new([1, 2, 5, 5], data.clone()).unwrap();
    let w = HashMap::new();
    // Plain reference: windows in padded coordinates, NaN wins.
    let mut want = vec![];
    for c in 0..2 {
        for i in 0..3usize {
            for j in 0..3usize {
                let mut m = f32::NEG_INFINITY;
                for yy in (2 * i).saturating_sub(1)..(2 * i + 2).min(5) {
                    for xx in (2 * j).saturating_sub(1)..(2 * j + 2).min(5) {
                        let v = data[c * 25 + yy * 5 + xx];
                        if v.is_nan() || v > m {
                            m = if m.is_nan() { m } else { v };
                        }
                    }
                }
                want.push(m);
            }
        }
    }
    let ctx = common::gpu();
    for (name, got) in [
        ("cpu", run_cpu(&g, &w, &x, true)),
        ("gpu", run_gpu(&ctx, &g, &w, &x, true)),
    ] {
        let got = got[0].data();
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, (o, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                (o.is_nan() && e.is_nan()) || o == e,
                "{name} output {k}: {o} vs {e}"
            );
        }
        assert!(
            got[0].is_nan() && got[1].is_nan() && got[3].is_nan() && got[4].is_nan(),
            "{name}"
        );
        assert!(got[9..].iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn cpu_runs_reuse_their_activation_slots_without_leaking_state() {
    // Residual graph at batch 2: runs on x1, x2, x1 again; the slots are reused.
    let g = residual_graph(2);
    let w = synth_params(&g, 4).unwrap();
    let m = CpuModel::prepare(&g, &w).unwrap();
    let x1 = synth("input", g.input_shape(), 5).unwrap();
    let x2 = synth("input", g.input_shape(), 6).unwrap();
    let a = m.run(&x1).unwrap();
    let b = m.run(&x2).unwrap();
    let c = m.run(&x1).unwrap();
    assert_eq!(a[0].data(), c[0].data());
    assert_ne!(a[0].data(), b[0].data());
    // The same as a fresh model, unfused too.
    let fresh = run_cpu(&g, &w, &x2, false);
    let e = rel_l2(b[0].data(), &f64s(&fresh[0]));
    assert!(e <= 1e-5, "rel L2 {e:e}");
}

#[test]
fn relu_keeps_nan_like_pytorch_in_every_fused_form() {
    // NaN in, through conv+ReLU (fused), a standalone ReLU after an add, GroupNorm+ReLU
    // and linear+ReLU: torch.relu(NaN) is NaN, and NaN must reach every output it feeds.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[1, 2, 4, 4]).unwrap();
    let c = b.conv2d("conv", x, Conv2d::new(2, 2, 1)).unwrap();
    let r = b.relu("relu", c).unwrap();
    let a = b.add("add", r, x).unwrap();
    let r2 = b.relu("relu2", a).unwrap();
    let n = b.group_norm("gn", r2, 1, 2, 1e-5, true).unwrap();
    let r3 = b.relu("relu3", n).unwrap();
    let f = b.flatten("flat", r3, 1).unwrap();
    let l = b.linear("fc", f, 32, 3, true).unwrap();
    let r4 = b.relu("relu4", l).unwrap();
    let g = b.build(&[r, r4]).unwrap();
    let w = synth_params(&g, 2).unwrap();
    let mut data = synth("input", &[1, 2, 4, 4], 1).unwrap().data().to_vec();
    data[5] = f32::NAN; // pixel (1, 1) of channel 0: both conv outputs there are NaN
    let x = Tensor::new([1, 2, 4, 4], data).unwrap();
    let ctx = common::gpu();
    for (name, fuse) in [("fused", true), ("unfused", false)] {
        for (backend, got) in [
            ("cpu", run_cpu(&g, &w, &x, fuse)),
            ("gpu", run_gpu(&ctx, &g, &w, &x, fuse)),
        ] {
            let conv = got[0].data();
            assert!(
                conv[5].is_nan() && conv[16 + 5].is_nan(),
                "{backend} {name}: {conv:?}"
            );
            assert_eq!(
                conv.iter().filter(|v| v.is_nan()).count(),
                2,
                "{backend} {name}"
            );
            // GroupNorm over the whole image spreads the NaN to every value after it.
            assert!(
                got[1].data().iter().all(|v| v.is_nan()),
                "{backend} {name}: {:?}",
                got[1].data()
            );
        }
    }
}

/// `cfg` on an input of `shape`, then a 3x3 convolution padded by 1 (same size out as
/// in) that takes the first's output as its residual, and ReLU.
fn conv_residual_graph(shape: [usize; 4], cfg: Conv2d) -> Graph {
    let oc = cfg.out_channels;
    let mut b = GraphBuilder::new();
    let x = b.input("x", &shape).unwrap();
    let c1 = b.conv2d("c1", x, cfg).unwrap();
    let c2 = b
        .conv2d("c2", c1, Conv2d::new(oc, oc, 3).padding(1).bias(false))
        .unwrap();
    let a = b.add("add", c2, c1).unwrap();
    let y = b.relu("relu", a).unwrap();
    b.build(&[y]).unwrap()
}

#[test]
fn winograd_and_gemm_kernels_match_the_cpu_on_awkward_shapes() {
    // The register-blocked set runs 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) and
    // 1x1 ones as a GEMM (on the input for stride 1, no padding and pixels in fours, else
    // on an im2col copy). Odd sizes leave partial tiles and rows that are not multiples
    // of 4; padding 0-3; strides 1-3; the second conv takes the residual and ReLU;
    // batches of 1-3; other ungrouped layers run directly on the GEMM's k-major weights
    // (channels not a multiple of 8), grouped ones keep the plain direct kernel.
    let rb = common::gpu_with(GpuOptions {
        kernels: Some(Kernels::RegisterBlocked),
        ..Default::default()
    });
    // The tiled set runs the same Winograd layers, its products on the tiled kernel.
    let tiled = common::gpu_with(GpuOptions {
        kernels: Some(Kernels::TiledWinograd),
        ..Default::default()
    });
    // (batch, in, out, h, w, kernel, stride, padding, groups, Winograd layers, GEMM
    // layers, direct layers on k-major weights)
    let cases = [
        (2, 8, 12, 7, 5, 3, 1, 1, 1, 2, 0, 0),
        (1, 4, 8, 9, 9, 3, 1, 0, 1, 2, 0, 0),
        (3, 12, 8, 6, 11, 3, 1, 2, 1, 2, 0, 0),
        (2, 3, 7, 6, 6, 3, 1, 1, 1, 2, 0, 0),
        (2, 8, 4, 5, 4, 1, 1, 0, 1, 1, 1, 0),
        (1, 16, 4, 3, 3, 1, 1, 0, 1, 1, 1, 0),
        (1, 3, 8, 6, 6, 1, 1, 0, 1, 1, 1, 0),
        (2, 3, 8, 13, 11, 7, 2, 3, 1, 1, 0, 1),
        (1, 6, 5, 9, 10, 3, 2, 1, 1, 1, 0, 1),
        (1, 8, 8, 6, 6, 1, 2, 0, 1, 1, 1, 0),
        (2, 5, 6, 7, 7, 1, 3, 1, 1, 1, 1, 0),
        (2, 8, 8, 6, 6, 3, 1, 1, 2, 1, 0, 0),
        (3, 3, 13, 12, 9, 5, 2, 2, 1, 1, 0, 1),
        (1, 7, 3, 8, 8, 2, 1, 0, 1, 1, 0, 1),
        // Rows of 64 pixels and more: the GEMM's wide kernel (8 pixels per invocation).
        (1, 5, 12, 17, 15, 3, 1, 1, 1, 2, 0, 0),
        (2, 6, 10, 9, 9, 1, 1, 0, 1, 1, 1, 0),
        (1, 8, 9, 10, 10, 1, 1, 0, 1, 1, 1, 0),
    ];
    for (n, c, oc, h, w, k, st, pad, groups, wino, gemm, direct) in cases {
        let cfg = Conv2d::new(c, oc, k).stride(st).padding(pad).groups(groups);
        let g = conv_residual_graph([n, c, h, w], cfg);
        let wts = synth_params(&g, 5).unwrap();
        let xt = synth("input", &[n, c, h, w], 6).unwrap();
        let want = run_cpu(&g, &wts, &xt, true).remove(0);
        for (ctx, kinds) in [(&rb, (wino, gemm, direct)), (&tiled, (wino, 0, 0))] {
            let mut m = GpuModel::prepare_blocking(ctx, &g, &wts).unwrap();
            let r = m.memory();
            let what = format!(
                "{:?}: {n}x{c}x{h}x{w} k{k} s{st} p{pad} g{groups} -> {oc}",
                ctx.kernels()
            );
            let got_kinds = (r.winograd_layers, r.gemm_layers, r.direct_layers);
            assert_eq!(got_kinds, kinds, "{what}");
            let got = m.run_blocking(&xt).unwrap().remove(0);
            let err = rel_l2(got.data(), &f64s(&want));
            assert!(err < 1e-5, "{what}: rel L2 {err:.2e}");
        }
    }
}

#[test]
fn tiled_layers_with_few_tiles_split_k_and_match_the_cpu() {
    // Few output tiles and long reductions (ResNet's last stages at batch 1) are split
    // along k: each slice's sums into a scratch, then their sum with the epilogue. Odd k
    // leaves a short last slice and partial tiles; the second conv adds the residual and
    // ReLU; grouped layers split per group; batches of 1-3; every tile size.
    // (batch, in, out, h, w, kernel, stride, padding, groups)
    let cases = [
        (1, 256, 64, 7, 7, 3, 1, 1, 1),
        (2, 130, 40, 5, 6, 3, 2, 1, 1),
        (1, 300, 24, 4, 4, 1, 1, 0, 1),
        (3, 96, 32, 6, 5, 3, 1, 1, 2),
        (1, 64, 16, 9, 9, 5, 2, 2, 1),
    ];
    // More than one tile each way, the last ones partial: the 128x128 kernel's
    // invocations hold two 4x4 blocks half a tile apart, which only layers of more than
    // 64 channels and pixels reach. The first conv is whole (too few products to split).
    let wide = [
        (2, 16, 200, 20, 15, 3, 1, 1, 1),
        (1, 24, 136, 17, 9, 1, 1, 0, 1),
        (2, 32, 144, 24, 24, 3, 2, 1, 2),
    ];
    for kernels in [Kernels::Tiled, Kernels::TiledLarge, Kernels::TiledSmall] {
        let ctx = common::gpu_with(GpuOptions {
            kernels: Some(kernels),
            ..Default::default()
        });
        for &(n, c, oc, h, w, k, st, pad, groups) in cases.iter().chain(&wide) {
            let cfg = Conv2d::new(c, oc, k).stride(st).padding(pad).groups(groups);
            let g = conv_residual_graph([n, c, h, w], cfg);
            let wts = synth_params(&g, 7).unwrap();
            let xt = synth("input", &[n, c, h, w], 8).unwrap();
            let want = run_cpu(&g, &wts, &xt, true).remove(0);
            let what = format!("{kernels:?}: {n}x{c}x{h}x{w} k{k} s{st} p{pad} g{groups} -> {oc}");
            let mut m = GpuModel::prepare_blocking(&ctx, &g, &wts).unwrap();
            assert!(m.memory().k_split_layers >= 1, "{what}: {:?}", m.memory());
            let got = m.run_blocking(&xt).unwrap().remove(0);
            let err = rel_l2(got.data(), &f64s(&want));
            assert!(err < 1e-5, "{what}: rel L2 {err:.2e}");
        }
    }
    // In f16 models the partial sums keep about f32 precision (each as the sum of two
    // f16): what is left is the f16 output's rounding, as in an unsplit f16 run (partial
    // sums in one f16 each came out 20% further from the CPU's f32).
    let half = |kernels| {
        common::gpu_with(GpuOptions {
            kernels,
            precision: Precision::F16,
            ..Default::default()
        })
    };
    let split = half(Some(Kernels::Tiled));
    if split.precision() != Precision::F16 {
        // The f16 parity tests fail loudly where the adapter lacks shader-f16.
        eprintln!("f16 split along k not run: the adapter lacks shader-f16");
        return;
    }
    let whole = half(Some(Kernels::RegisterBlocked));
    for (n, c, oc, h, w, k, st, pad, groups) in cases {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[n, c, h, w]).unwrap();
        let cfg = Conv2d::new(c, oc, k).stride(st).padding(pad).groups(groups);
        let y = b.conv2d("c", x, cfg).unwrap();
        let y = b.relu("relu", y).unwrap();
        let g = b.build(&[y]).unwrap();
        let wts = synth_params(&g, 7).unwrap();
        let xt = synth("input", &[n, c, h, w], 8).unwrap();
        let want = f64s(&run_cpu(&g, &wts, &xt, true).remove(0));
        let what = format!("f16: {n}x{c}x{h}x{w} k{k} s{st} p{pad} g{groups} -> {oc}");
        let mut m = GpuModel::prepare_blocking(&split, &g, &wts).unwrap();
        assert_eq!(m.memory().k_split_layers, 1, "{what}: {:?}", m.memory());
        let err = rel_l2(m.run_blocking(&xt).unwrap()[0].data(), &want);
        let mut r = GpuModel::prepare_blocking(&whole, &g, &wts).unwrap();
        assert_eq!(r.memory().k_split_layers, 0, "{what}");
        let unsplit = rel_l2(r.run_blocking(&xt).unwrap()[0].data(), &want);
        assert!(
            err <= 1.1 * unsplit + 1e-5,
            "{what}: rel L2 {err:.2e}, unsplit {unsplit:.2e}"
        );
    }
}

#[test]
fn linear_kernels_match_the_cpu_on_awkward_shapes() {
    // Both sets read whole vectors along k where k is a multiple of 4 (the register-
    // blocked one four rows per invocation, the tiled one reducing each row in a
    // workgroup): batches past 4 and rows that are not multiples of 4, weights split
    // across bindings, k that is not a multiple of 4 (one float at a time), and rows
    // longer than a workgroup's 256 loads.
    for kernels in [Kernels::RegisterBlocked, Kernels::Tiled] {
        for limit in [None, Some(256), Some(4800)] {
            let ctx = common::gpu_with(GpuOptions {
                kernels: Some(kernels),
                max_binding_bytes: limit,
                ..Default::default()
            });
            // (batch, in, out, relu)
            for (n, k, out, relu) in [
                (1, 12, 10, true),
                (3, 16, 5, false),
                (6, 20, 9, true),
                (9, 8, 1, false),
                (5, 27, 6, true),
                (2, 64, 7, false),
                (6, 1100, 5, true),
                (1, 1027, 3, false),
            ] {
                if limit.is_some_and(|l| (4 * k) as u64 > l) {
                    // One image's input beyond a binding: a DeviceLimit error (tested above).
                    continue;
                }
                let mut b = GraphBuilder::new();
                let x = b.input("x", &[n, k]).unwrap();
                let mut y = b.linear("fc", x, k, out, true).unwrap();
                if relu {
                    y = b.relu("relu", y).unwrap();
                }
                let g = b.build(&[y]).unwrap();
                let w = synth_params(&g, 7).unwrap();
                let xt = synth("input", &[n, k], 8).unwrap();
                let got = run_gpu(&ctx, &g, &w, &xt, true).remove(0);
                let want = run_cpu(&g, &w, &xt, true).remove(0);
                let err = rel_l2(got.data(), &f64s(&want));
                let what = format!("{kernels:?}, limit {limit:?}: {n}x{k} -> {out}");
                assert!(err < 1e-5, "{what}: rel L2 {err:.2e}");
            }
        }
    }
}

#[test]
fn half_precision_handles_odd_sizes_split_weights_and_batch_chunks() {
    // f16 values take 2 bytes, while copies and bindings move whole 4-byte words.
    let half = |max_binding_bytes| {
        common::gpu_with(GpuOptions {
            precision: Precision::F16,
            max_binding_bytes,
            ..Default::default()
        })
    };
    let close = |got: &Tensor, want: &Tensor, what: &str| {
        assert_eq!(got.shape(), want.shape(), "{what}");
        let e = rel_l2(got.data(), &f64s(want));
        assert!(e <= 1e-2, "{what}: rel L2 {e:e}");
    };
    // Weights split across 1 KiB bindings (half the bytes: the same split as f32 at
    // 2 KiB), batches in chunks of one image.
    let g = split_graph(3);
    let w = synth_params(&g, 1).unwrap();
    let x = synth("input", &[3, 16, 4, 4], 2).unwrap();
    let mut m = GpuModel::prepare_blocking(&half(Some(1024)), &g, &w).unwrap();
    let r = m.memory().clone();
    assert_eq!((r.split_layers, r.batch_chunk), (4, 1), "{r:?}");
    close(
        &m.run_blocking(&x).unwrap()[0],
        &run_cpu(&g, &w, &x, true)[0],
        "split and chunked",
    );
    // Odd input, output and intermediate sizes (75, 27 and 7 values per image), on both
    // kernel sets, with the feature map as a second output.
    let mut b = GraphBuilder::new();
    let xi = b.input("x", &[1, 3, 5, 5]).unwrap();
    let c = b
        .conv2d("conv", xi, Conv2d::new(3, 3, 3).stride(2).padding(1))
        .unwrap();
    let f = b.flatten("flatten", c, 1).unwrap();
    let fc = b.linear("fc", f, 27, 7, true).unwrap();
    let g = b.build(&[fc, c]).unwrap();
    let w = synth_params(&g, 3).unwrap();
    let x = synth("input", &[1, 3, 5, 5], 4).unwrap();
    let want = run_cpu(&g, &w, &x, true);
    for kernels in Kernels::ALL {
        let ctx = common::gpu_with(GpuOptions {
            precision: Precision::F16,
            kernels: Some(kernels),
            ..Default::default()
        });
        let got = GpuModel::prepare_blocking(&ctx, &g, &w)
            .unwrap()
            .run_blocking(&x)
            .unwrap();
        close(&got[0], &want[0], &format!("odd logits, {kernels:?}"));
        close(&got[1], &want[1], &format!("odd feature map, {kernels:?}"));
    }
    // Chunks of images with odd sizes each start on a word: chunks of 2 (700 bytes) and
    // 1 at 1 KiB per binding, and three chunks of 1 (350 bytes each) at 512 bytes.
    let g = odd_batch();
    let w = synth_params(&g, 1).unwrap();
    let x = synth("input", &[3, 7, 5, 5], 5).unwrap();
    let want = run_cpu(&g, &w, &x, true);
    for (limit, chunk) in [(1024, 2), (512, 1)] {
        let mut m = GpuModel::prepare_blocking(&half(Some(limit)), &g, &w).unwrap();
        assert_eq!(m.memory().batch_chunk, chunk);
        close(
            &m.run_blocking(&x).unwrap()[0],
            &want[0],
            &format!("odd images in chunks of {chunk}"),
        );
    }
}

/// Three images of 7x5x5 in and out (175 values, 350 bytes in f16): chunks of 2 and 1
/// at 1 KiB per binding.
fn odd_batch() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 7, 5, 5]).unwrap();
    let c = b
        .conv2d("conv", x, Conv2d::new(7, 7, 3).padding(1))
        .unwrap();
    b.build(&[c]).unwrap()
}

#[test]
fn a_remainder_chunk_runs_the_kernel_its_plan_chose() {
    // Nine images in chunks of 8 and 1: Winograd's scratch for 8 images would not fit
    // one 5000-byte binding, for the one left over it would. Every chunk must run what
    // the plan sized its buffers for.
    let ctx = common::gpu_with(GpuOptions {
        kernels: Some(Kernels::RegisterBlocked),
        max_binding_bytes: Some(5000),
        ..Default::default()
    });
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[9, 4, 6, 6]).unwrap();
    let c = b
        .conv2d("conv", x, Conv2d::new(4, 4, 3).padding(1))
        .unwrap();
    let g = b.build(&[c]).unwrap();
    let w = synth_params(&g, 1).unwrap();
    let xt = synth("input", &[9, 4, 6, 6], 2).unwrap();
    let mut m = GpuModel::prepare_blocking(&ctx, &g, &w).unwrap();
    let r = m.memory().clone();
    assert_eq!((r.batch_chunk, r.winograd_layers), (8, 0), "{r:?}");
    let got = m.run_blocking(&xt).unwrap().remove(0);
    let e = rel_l2(got.data(), &f64s(&run_cpu(&g, &w, &xt, true)[0]));
    assert!(e <= 1e-5, "rel L2 {e:e}");
}
