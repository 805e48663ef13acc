//! ONNX models read by the importer match ONNX Runtime's outputs on both backends (the GPU
//! on lavapipe in CI). The models are small, hand-built in the layouts exporters write, with
//! ONNX Runtime's outputs beside them (scripts/make-onnx-fixtures.py made both).
mod common;

use std::path::{Path, PathBuf};
use webcnn::backend::cpu::CpuModel;
use webcnn::backend::gpu::GpuModel;
use webcnn::onnx::{OnnxError, OnnxModel};
use webcnn::tensor::rel_l2;
use webcnn::Tensor;

const CASES: [&str; 4] = [
    "resnet_block",
    "zoo_lrn_preact",
    "grouped_matmul",
    "tied_wide_heads",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

struct Case {
    model: OnnxModel,
    input: Tensor,
    expected: Expected,
}

/// ONNX Runtime's output (computed in f32, compared in f64).
struct Expected {
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn shape(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn read(name: &str) -> Case {
    let bytes = std::fs::read(dir().join(format!("{name}.onnx"))).unwrap();
    let external = |location: &str, offset: u64, len: Option<u64>| {
        let all = std::fs::read(dir().join(location))?;
        let end = len.map_or(all.len(), |l| (offset + l) as usize);
        Ok(all[offset as usize..end].to_vec())
    };
    let model = OnnxModel::parse_with(&bytes, Some(&external)).unwrap();
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join(format!("{name}.json"))).unwrap())
            .unwrap();
    Case {
        model,
        input: Tensor::new(shape(&j["input_shape"]), floats(&j["input"])).unwrap(),
        expected: Expected {
            shape: shape(&j["output_shape"]),
            data: floats(&j["output"]).iter().map(|&v| v as f64).collect(),
        },
    }
}

fn check(name: &str, out: &Tensor, want: &Expected) {
    assert_eq!(out.shape(), want.shape.as_slice(), "{name}");
    let e = rel_l2(out.data(), &want.data);
    assert!(
        e <= common::TOL,
        "{name}: relative L2 {e:e} against ONNX Runtime"
    );
}

#[test]
fn cpu_backend_matches_onnx_runtime() {
    for name in CASES {
        let c = read(name);
        let g = c.model.graph(c.input.shape()).unwrap();
        let out = CpuModel::prepare(&g, &c.model.weights)
            .unwrap()
            .run(&c.input)
            .unwrap()
            .remove(0);
        check(name, &out, &c.expected);
    }
}

#[test]
fn gpu_backend_matches_onnx_runtime() {
    let ctx = common::gpu();
    for name in CASES {
        let c = read(name);
        let g = c.model.graph(c.input.shape()).unwrap();
        let mut m = GpuModel::prepare_blocking(&ctx, &g, &c.model.weights).unwrap();
        let out = m.run_blocking(&c.input).unwrap().remove(0);
        check(name, &out, &c.expected);
    }
}

#[test]
fn a_symbolic_batch_takes_any_batch_and_a_fixed_one_only_its_own() {
    let c = read("resnet_block");
    assert_eq!(c.model.input_shape(7), [7, 3, 32, 32]);
    // Each image of the batch of 2 alone gives its row of the batch's output.
    let per = c.input.len() / 2;
    let one = Tensor::new(vec![1, 3, 32, 32], c.input.data()[per..].to_vec()).unwrap();
    let g = c.model.graph(one.shape()).unwrap();
    let y = CpuModel::prepare(&g, &c.model.weights)
        .unwrap()
        .run(&one)
        .unwrap()
        .remove(0);
    let want = Expected {
        shape: vec![1, 5],
        data: c.expected.data[5..].to_vec(),
    };
    check("resnet_block, second image alone", &y, &want);

    let fixed = read("grouped_matmul");
    assert_eq!(fixed.model.input_shape(7), [2, 4, 12, 12]);
    let e = fixed.model.graph(&[3, 4, 12, 12]).unwrap_err();
    assert!(e.to_string().contains("[2, 4, 12, 12]"), "{e}");
}

#[test]
fn intermediate_values_are_nodes_by_their_onnx_names() {
    let c = read("resnet_block");
    let g = c.model.graph(c.input.shape()).unwrap();
    let g = g.with_outputs(&["layer1", "gap"]).unwrap();
    let outs = CpuModel::prepare(&g, &c.model.weights)
        .unwrap()
        .run(&c.input)
        .unwrap();
    assert_eq!(outs[0].shape(), [2, 8, 8, 8]);
    assert_eq!(outs[1].shape(), [2, 8, 1, 1]);
}

/// `base` with its node list edited by `f`, re-encoded.
fn edited(base: &str, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = std::fs::read(dir().join(format!("{base}.onnx"))).unwrap();
    f(&mut bytes);
    bytes
}

#[test]
fn what_is_not_supported_is_named_before_any_weight_is_used() {
    // An operator we do not run: its name, the node's, and the list of those we do.
    let bytes = edited("resnet_block", |b| {
        let at = b.windows(4).position(|w| w == b"Relu").unwrap();
        b[at..at + 4].copy_from_slice(b"Selu");
    });
    let e = OnnxModel::parse(&bytes).unwrap_err();
    assert!(matches!(e, OnnxError::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("'Selu'") && msg.contains("node 'r1'") && msg.contains("GlobalAveragePool"),
        "{msg}"
    );
    // Not protobuf at all, a truncated file, an empty one.
    for bad in [&b"\x0a\x0b\x0c garbage"[..], &bytes[..bytes.len() / 2], &[]] {
        assert!(matches!(OnnxModel::parse(bad), Err(OnnxError::Format(_))));
    }
    // External data with no way to read it says where it is.
    let ext = std::fs::read(dir().join("grouped_matmul.onnx")).unwrap();
    let e = OnnxModel::parse(&ext).unwrap_err().to_string();
    assert!(e.contains("grouped_matmul.data"), "{e}");
}

/// The kinds of the steps `g` lowers to: `conv+bn+add+relu` for a fused convolution, else
/// the kernel's name.
fn step_kinds(g: &webcnn::graph::Graph) -> Vec<String> {
    use webcnn::lower::{Kernel, Program};
    Program::new(g, true)
        .steps
        .iter()
        .map(|s| match &s.kernel {
            Kernel::Conv { bn, .. } => format!(
                "conv{}{}{}",
                if bn.is_some() { "+bn" } else { "" },
                if s.residual.is_some() { "+add" } else { "" },
                if s.relu { "+relu" } else { "" }
            ),
            k => format!("{k:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_lowercase(),
        })
        .collect()
}

#[test]
fn imported_blocks_lower_to_the_zoos_fused_steps() {
    // Conv + BN (+ Add) + Relu fuse into one step each, as the zoo's ResNets do.
    let c = read("resnet_block");
    let kinds = step_kinds(&c.model.graph(c.input.shape()).unwrap());
    assert_eq!(
        kinds,
        [
            "conv+bn+relu",
            "maxpool",
            "conv+bn+relu",
            "conv+bn+add+relu",
            "adaptiveavgpool",
            "linear"
        ],
        "{kinds:?}"
    );
}

/// torch.onnx.export's files of torchvision models in `dir` (scripts/make-onnx-torchvision.py).
fn torchvision_cases(dir: &Path) -> Vec<(String, OnnxModel, Tensor, Expected)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".onnx").map(String::from)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    names
        .into_iter()
        .map(|name| {
            let model = OnnxModel::parse(&std::fs::read(dir.join(format!("{name}.onnx"))).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let j: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                    .unwrap();
            // The script's input: element i is ((i * 7919) % 1000) / 500 - 1, in f64, rounded.
            let s = shape(&j["input_shape"]);
            let n: usize = s.iter().product();
            let x = (0..n)
                .map(|i| (((i * 7919) % 1000) as f64 / 500.0 - 1.0) as f32)
                .collect();
            let expected = Expected {
                shape: shape(&j["output_shape"]),
                data: floats(&j["output"]).iter().map(|&v| v as f64).collect(),
            };
            (name, model, Tensor::new(s, x).unwrap(), expected)
        })
        .collect()
}

#[test]
fn torchvision_exports_match_onnx_runtime_on_both_backends() {
    matches_on_both_backends(&dir().join("tv"));
}

/// The same at full width: `scripts/onnx-full-check` exports the models to a folder and
/// runs this with WEBCNN_ONNX_FULL naming it.
#[test]
#[ignore = "needs full-size exports: scripts/onnx-full-check"]
fn full_size_torchvision_exports_match_onnx_runtime() {
    let dir =
        std::env::var("WEBCNN_ONNX_FULL").expect("WEBCNN_ONNX_FULL names the exports' folder");
    matches_on_both_backends(Path::new(&dir));
}

fn matches_on_both_backends(dir: &Path) {
    let ctx = common::gpu();
    for (name, model, x, want) in torchvision_cases(dir) {
        let g = model.graph(x.shape()).unwrap();
        let cpu = CpuModel::prepare(&g, &model.weights)
            .unwrap()
            .run(&x)
            .unwrap()
            .remove(0);
        check(&format!("{name} on the CPU"), &cpu, &want);
        let mut m = GpuModel::prepare_blocking(&ctx, &g, &model.weights).unwrap();
        let gpu = m.run_blocking(&x).unwrap().remove(0);
        check(&format!("{name} on the GPU"), &gpu, &want);
        eprintln!(
            "{name}: relative L2 against ONNX Runtime {:.1e} (CPU), {:.1e} (GPU)",
            rel_l2(cpu.data(), &want.data),
            rel_l2(gpu.data(), &want.data)
        );
    }
}

#[test]
fn torchvision_resnets_lower_to_the_same_steps_as_the_zoo_ids() {
    // With or without constant folding (BN folded into the conv by the exporter, or by us),
    // an exported ResNet is the zoo's chain of fused steps, step for step.
    let plain =
        |k: Vec<String>| -> Vec<String> { k.iter().map(|s| s.replace("+bn", "")).collect() };
    let mut seen = 0;
    for (name, model, x, _) in torchvision_cases(&dir().join("tv")) {
        let id = name.split('-').next().unwrap();
        if !["resnet18", "resnet50"].contains(&id) {
            continue;
        }
        let zoo = webcnn::models::Model::get(id)
            .unwrap()
            .graph(x.shape())
            .unwrap();
        let imported = model.graph(x.shape()).unwrap();
        assert_eq!(
            plain(step_kinds(&imported)),
            plain(step_kinds(&zoo)),
            "{name}"
        );
        seen += 1;
    }
    assert!(seen >= 4);
}

#[test]
fn an_onnx_file_arriving_in_pieces_loads_on_both_backends() {
    use webcnn::engine::Target;
    use webcnn::load::OnnxLoad;
    let bytes = std::fs::read(dir().join("resnet_block.onnx")).unwrap();
    let c = read("resnet_block");
    for target in [Target::cpu(), Target::gpu(common::gpu())] {
        // As a download or a file read arrives: the length known, or not.
        let mut load = OnnxLoad::new("resnet_block", &target, Some(bytes.len() as u64));
        for piece in bytes.chunks(1000) {
            load.push(piece).unwrap();
        }
        let mut s = pollster::block_on(load.finish()).unwrap();
        assert_eq!(s.model.id, "resnet_block");
        assert_eq!(s.model.num_classes(), 5);
        let g = s.model.graph(c.input.shape()).unwrap();
        let out = s
            .session
            .run_graph_blocking(&g, &c.input)
            .unwrap()
            .remove(0);
        check(
            &format!("resnet_block on {}", s.session.backend_name()),
            &out,
            &c.expected,
        );
    }
    // External data arrives after the model, file by file, as the model names them.
    let c = read("grouped_matmul");
    let mut load = OnnxLoad::new("grouped_matmul", &Target::cpu(), None);
    load.push(&std::fs::read(dir().join("grouped_matmul.onnx")).unwrap())
        .unwrap();
    assert_eq!(load.external_files().unwrap(), ["grouped_matmul.data"]);
    let data = std::fs::read(dir().join("grouped_matmul.data")).unwrap();
    load.push_external("grouped_matmul.data", &[1, 2, 3], true)
        .unwrap();
    // A download that starts over drops what came before.
    for (i, piece) in data.chunks(500).enumerate() {
        load.push_external("grouped_matmul.data", piece, i == 0)
            .unwrap();
    }
    let mut s = pollster::block_on(load.finish()).unwrap();
    let out = s.session.run_blocking(&c.input).unwrap().remove(0);
    check("grouped_matmul in pieces", &out, &c.expected);
    let mut load = OnnxLoad::new("grouped_matmul", &Target::cpu(), None);
    load.push(&std::fs::read(dir().join("grouped_matmul.onnx")).unwrap())
        .unwrap();
    let e = pollster::block_on(load.finish()).err().unwrap().to_string();
    assert!(e.contains("'grouped_matmul.data': not given"), "{e}");

    // An operator we do not run: its own code for programs, before any weight is used.
    let mut selu = bytes.clone();
    let at = selu.windows(4).position(|w| w == b"Relu").unwrap();
    selu[at..at + 4].copy_from_slice(b"Selu");
    let mut load = OnnxLoad::new("selu", &Target::cpu(), None);
    load.push(&selu).unwrap();
    let e = pollster::block_on(load.finish()).err().unwrap();
    assert_eq!(e.code(), "UNSUPPORTED_OP", "{e}");
    assert!(e.to_string().contains("'Selu'"), "{e}");
}
