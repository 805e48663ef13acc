//! Shared test helpers: golden op cases as single-op graphs.
#![allow(dead_code)]

use serde_json::Value as Json;
use std::collections::HashMap;
use webcnn::graph::{Conv2d, GraphBuilder, Lrn, Pool2d};
use webcnn::prng::synth;
use webcnn::{Graph, Tensor};

pub const TOL: f64 = 1e-4;

pub struct OpCase {
    pub name: String,
    pub graph: Graph,
    pub weights: HashMap<String, Tensor>,
    pub input: Tensor,
    pub expected: Vec<f64>,
    pub expected_shape: Vec<usize>,
}

fn nums(s: &str) -> Vec<usize> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect()
}

pub fn usizes(j: &Json) -> Vec<usize> {
    j.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

pub fn golden_ops() -> Vec<OpCase> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden/ops.json"
    ))
    .unwrap();
    let cases: Vec<Json> = serde_json::from_str(&text).unwrap();
    cases.iter().map(op_case).collect()
}

fn op_case(c: &Json) -> OpCase {
    let name = c["op"].as_str().unwrap().to_string();
    let xs = usizes(&c["x_shape"]);
    let seed = c["seed"].as_u64().unwrap();
    let mut b = GraphBuilder::new();
    let x = b.input("x", &xs).unwrap();
    let mut scale = 1.0f32;
    let y = if let Some(spec) = name.strip_prefix("conv2d") {
        let [ci, co, k, s, p, d, g] = nums(spec)[..] else {
            panic!("{name}")
        };
        b.conv2d(
            "conv",
            x,
            Conv2d::new(ci, co, k)
                .stride(s)
                .padding(p)
                .dilation(d)
                .groups(g),
        )
    } else if name.starts_with("maxpool") {
        let [k, s, p, ceil, _] = nums(&name)[..] else {
            panic!("{name}")
        };
        b.max_pool2d(
            "pool",
            x,
            Pool2d::new(k).stride(s).padding(p).ceil_mode(ceil == 1),
        )
    } else if name.starts_with("adaptive_avgpool") {
        let n = nums(&name);
        b.adaptive_avg_pool2d("pool", x, [n[0], n[1]])
    } else if name.starts_with("lrn") {
        scale = 30.0;
        b.local_response_norm(
            "lrn",
            x,
            Lrn {
                size: 5,
                alpha: 1e-4,
                beta: 0.75,
                k: 2.0,
            },
        )
    } else if name == "batchnorm_eval" {
        b.batch_norm2d("bn", x, xs[1], 1e-5)
    } else if name.starts_with("groupnorm") {
        let n = nums(&name);
        b.group_norm("gn", x, n[0], n[1], 1e-5, true)
    } else if name.starts_with("linear") {
        let n = nums(&name);
        b.linear("fc", x, n[0], n[1], true)
    } else if name == "softmax_dim1" {
        scale = 3.0;
        b.softmax("softmax", x, 1)
    } else {
        panic!("unknown golden op {name}")
    }
    .unwrap();
    let graph = b.build(&[y]).unwrap();
    let weights = c["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| (k.clone(), synth(k, &usizes(s), seed).unwrap()))
        .collect();
    let mut input = synth("x", &xs, seed).unwrap();
    input.data_mut().iter_mut().for_each(|v| *v *= scale);
    OpCase {
        name,
        graph,
        weights,
        input,
        expected: c["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect(),
        expected_shape: usizes(&c["output_shape"]),
    }
}

/// The GPU context for tests: no adapter is a failure with a clear message, never a skip.
pub fn gpu() -> webcnn::backend::gpu::GpuContext {
    gpu_with(Default::default())
}

pub fn gpu_with(opts: webcnn::backend::gpu::GpuOptions) -> webcnn::backend::gpu::GpuContext {
    match webcnn::backend::gpu::GpuContext::new_blocking(opts) {
        Ok(c) => c,
        Err(e) => panic!(
            "GPU tests need a GPU adapter and none was found: {e}\n\
             Install a Vulkan driver (CI uses lavapipe: apt-get install mesa-vulkan-drivers)."
        ),
    }
}

/// `tensors` as `torch.save(state_dict)` writes them (the zip format, pickle protocol 2,
/// one f32 storage per tensor); `wrapped`: as a training script saves a DataParallel model,
/// `{'epoch': 3, 'state_dict': {'module.' + key: ...}}`.
pub fn torch_save(tensors: &HashMap<String, Tensor>, wrapped: bool) -> Vec<u8> {
    use std::io::Write;
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
    fn ints(p: &mut Vec<u8>, v: &[usize]) {
        p.push(b'(');
        v.iter().for_each(|&d| int(p, d));
        p.push(b't');
    }
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let mut p = vec![0x80, 2];
    if wrapped {
        p.extend(b"}(");
        unicode(&mut p, "epoch");
        int(&mut p, 3);
        unicode(&mut p, "state_dict");
    }
    p.extend(b"ccollections\nOrderedDict\n)R(");
    for (i, k) in keys.iter().enumerate() {
        let t = &tensors[*k];
        unicode(
            &mut p,
            &if wrapped {
                format!("module.{k}")
            } else {
                k.to_string()
            },
        );
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        unicode(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, t.len());
        p.extend(b"tQ");
        int(&mut p, 0);
        ints(&mut p, t.shape());
        let mut stride = vec![1usize; t.shape().len()];
        for d in (0..stride.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape()[d + 1];
        }
        ints(&mut p, &stride);
        p.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.push(b'u');
    if wrapped {
        p.push(b'u');
    }
    p.push(b'.');
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&p).unwrap();
    zip.start_file("archive/byteorder", opts).unwrap();
    zip.write_all(b"little").unwrap();
    for (i, k) in keys.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts).unwrap();
        let bytes: Vec<u8> = tensors[*k]
            .data()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        zip.write_all(&bytes).unwrap();
    }
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap().into_inner()
}
