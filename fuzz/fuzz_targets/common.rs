//! The fuzz targets' bodies, shared with `tests/fuzz_regressions.rs` (which replays every
//! input that ever failed on stable). Each feeds bytes to a public entry point; any panic,
//! abort, hang or runaway allocation is a bug. Errors are the expected outcome.
#![allow(dead_code)]

use webcnn::graph::{Conv2d, GraphBuilder, Lrn, Pool2d, Value};
use webcnn::models::Model;

/// A model's graph for the weights checks: small (CIFAR) and ImageNet ones, with and
/// without BatchNorm / GroupNorm / LRN, picked by the first byte.
const MODELS: [&str; 6] = [
    "resnet18",
    "vgg11_bn_cifar",
    "alexnet_lrn",
    "resnet50_gn",
    "vgg11",
    "resnet18_caffe",
];

/// safetensors bytes through the whole path the CLI and the JS API take: parse (header
/// JSON, dtypes, offsets), timm key mapping, and the check against a model.
pub fn safetensors(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let model = Model::get(MODELS[pick as usize % MODELS.len()]).expect("a zoo model");
    let graph = model.default_graph(1);
    if let Ok((w, _)) = webcnn::weights::from_bytes(&graph, bytes) {
        // Accepted weights must be usable: every parameter present with its shape.
        for p in graph.params() {
            assert_eq!(w[&p.name].shape(), p.shape.as_slice(), "{}", p.name);
        }
    }
    // The parser alone, on what the model check would refuse early.
    let whole = webcnn::weights::load_safetensors(bytes);
    if let Ok(w) = &whole {
        for t in w.values() {
            assert_eq!(t.len(), t.shape().iter().product::<usize>());
        }
    }
    // Fed in pieces of any size, with or without the length known, it reads the same.
    let step = 1 + bytes.len() % 61;
    for total in [None, Some(bytes.len() as u64)] {
        let mut r = webcnn::weights::stream::Reader::new(total);
        let fed = bytes.chunks(step).try_for_each(|c| r.push(c));
        let pieces = fed.and_then(|()| r.finish()).map(|(w, _)| w);
        match (&whole, &pieces) {
            (Ok(a), Ok(b)) => assert!(same(a, b), "pieces of {step} read other tensors"),
            (Err(_), Err(_)) => {}
            _ if webcnn::weights::pth::looks_like(bytes) => {}
            (a, b) => panic!(
                "whole: {:?}, in pieces of {step}: {:?}",
                a.as_ref().err(),
                b.as_ref().err()
            ),
        }
    }
    // What the safetensors crate reads as float tensors, we read too, to the bit.
    if let Ok(st) = safetensors::SafeTensors::deserialize(bytes) {
        use safetensors::Dtype::*;
        let floats = st.iter().all(|(k, v)| {
            matches!(v.dtype(), F32 | F16 | BF16 | F64) || k.ends_with("num_batches_tracked")
        });
        if floats && !webcnn::weights::pth::looks_like(bytes) {
            let w = whole.as_ref().expect("a file the safetensors crate reads");
            for (k, v) in st.iter() {
                if let Some(t) = w.get(k) {
                    assert_eq!(t.shape(), v.shape(), "{k}");
                }
            }
        }
    }
}

/// The same keys, shapes and values (to the bit: NaN equals NaN).
fn same(a: &webcnn::weights::TensorMap, b: &webcnn::weights::TensorMap) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, t)| {
            b.get(k).is_some_and(|u| {
                t.shape() == u.shape()
                    && t.data()
                        .iter()
                        .zip(u.data())
                        .all(|(x, y)| x.to_bits() == y.to_bits())
            })
        })
}

/// A PyTorch checkpoint (`torch.save`'s zip or legacy format) through the restricted
/// unpickler and the head fitting: whatever the pickle says, an error or tensors whose
/// data matches their shape, never a panic, a hang or an allocation the file cannot back.
pub fn checkpoint(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    // A zip's first bytes or the legacy pickle's, so the fuzzer explores past the sniffing.
    let mut file = match pick % 3 {
        0 => b"PK\x03\x04".to_vec(),
        1 => vec![0x80, 0x02, 0x8a],
        _ => vec![],
    };
    file.extend_from_slice(bytes);
    let Ok((w, _)) = webcnn::weights::read(&file) else {
        return;
    };
    // Each tensor is at most its storage's size, so what the file holds bounds the values.
    let values: usize = w.values().map(|t| t.len()).sum();
    for t in w.values() {
        assert_eq!(t.len(), t.shape().iter().product::<usize>());
    }
    assert!(values <= file.len() * w.len().max(1), "{values} values");
    let model = Model::get(MODELS[pick as usize % MODELS.len()]).expect("a zoo model");
    if let Ok(l) = webcnn::weights::fit(model, w, vec![]) {
        for p in l.model.default_graph(1).params() {
            assert_eq!(l.tensors[&p.name].shape(), p.shape.as_slice(), "{}", p.name);
        }
    }
}

/// `.npy` bytes as the CLI reads input tensors and embedding indexes.
pub fn npy(data: &[u8]) {
    if let Ok(t) = webcnn::npy::read(data, data.len() as u64) {
        assert_eq!(t.len(), t.shape().iter().product::<usize>());
        assert!(t.len() * 4 <= data.len(), "more values than bytes");
    }
}

/// Image bytes through decoding and the preprocessing of ImageNet and CIFAR, and every
/// interpolation and crop mode at an odd non-square size.
pub fn image(data: &[u8]) {
    let Ok(img) = webcnn::preprocess::decode(data) else {
        return;
    };
    assert!(img.width() as u64 * img.height() as u64 <= webcnn::preprocess::MAX_DECODED_PIXELS);
    let odd = |interpolation, crop_mode| webcnn::preprocess::Preprocess {
        size: [7, 13],
        crop_pct: 0.9,
        interpolation,
        crop_mode,
        mean: [0.5; 3],
        std: [0.25; 3],
    };
    use webcnn::preprocess::{CropMode as C, Interpolation as I};
    let mut all = vec![
        Model::get("resnet18").expect("a zoo model").preprocess,
        Model::get("vgg11_cifar").expect("a zoo model").preprocess,
    ];
    let pick = data.len() % 3;
    all.push(odd(
        [I::Bilinear, I::Bicubic, I::Nearest][pick],
        [C::Center, C::Squash, C::Border][(data.len() / 3) % 3],
    ));
    for p in all {
        let x = webcnn::preprocess::to_chw(&img, &p);
        assert_eq!(x.len(), 3 * p.size[0] * p.size[1]);
    }
}

/// A weights source string (`hf:OWNER/NAME[@REV]`, `synthetic:SEED`, a path): a Hub
/// repository and revision must map to a cache file inside the cache folder.
pub fn source(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(webcnn::weights::Source::Hub { repo, revision }) = s.parse() {
        let path = webcnn::weights::hub::cached_path(&repo, &revision, "model.safetensors");
        let base = webcnn::weights::hub::cache_dir().join("hub");
        let rel = path.strip_prefix(&base).expect("inside the cache");
        assert_eq!(rel.components().count(), 3, "{rel:?}");
        assert!(rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_))));
    }
}

/// Reads parameters from the fuzzer's bytes; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    /// Mostly small values, sometimes extreme ones (overflow, zero).
    fn size(&mut self) -> usize {
        match self.byte() {
            250 => usize::MAX,
            251 => usize::MAX / 2 + 1,
            252 => 1 << 32,
            253 => 1 << 20,
            254 => 0,
            b => (b % 8) as usize,
        }
    }
    fn pos(&mut self) -> usize {
        self.size().max(1)
    }
    fn float(&mut self) -> f32 {
        match self.byte() {
            250 => f32::NAN,
            251 => f32::INFINITY,
            252 => -1.0,
            253 => 0.0,
            b => b as f32 / 64.0 + 1e-5,
        }
    }
}

/// A graph of random layers with random parameters: building it must give a typed error
/// or a graph; a small graph that builds is then lowered and run on the CPU backend with
/// synthetic weights, and its output must have the shape the graph promised.
pub fn graph(data: &[u8]) {
    let mut u = Bytes(data);
    let mut b = GraphBuilder::new();
    let shape = [
        u.size(),
        u.size(),
        u.size().saturating_mul(4),
        u.size().saturating_mul(4),
    ];
    let Ok(x) = b.input("x", &shape) else {
        return;
    };
    let mut vals: Vec<Value> = vec![x];
    for i in 0..(u.byte() % 12) {
        let name = format!("l{i}");
        let at = vals[u.byte() as usize % vals.len()];
        let channels = b.shape(at).get(1).copied().unwrap_or(1);
        let r = match u.byte() % 14 {
            0 | 1 => {
                let cfg = Conv2d {
                    in_channels: if u.byte() < 200 { channels } else { u.size() },
                    out_channels: u.pos(),
                    kernel: [u.size(), u.size()],
                    stride: [u.size(), u.size()],
                    padding: [u.size(), u.size()],
                    dilation: [u.size(), u.size()],
                    groups: u.pos(),
                    bias: u.byte() % 2 == 0,
                };
                b.conv2d(&name, at, cfg)
            }
            2 | 3 => {
                let p = Pool2d {
                    kernel: [u.size(), u.size()],
                    stride: [u.size(), u.size()],
                    padding: [u.size(), u.size()],
                    ceil_mode: u.byte() % 2 == 0,
                    count_include_pad: u.byte() % 2 == 0,
                };
                if u.byte() % 2 == 0 {
                    b.max_pool2d(&name, at, p)
                } else {
                    b.avg_pool2d(&name, at, p)
                }
            }
            4 => b.adaptive_avg_pool2d(&name, at, [u.size(), u.size()]),
            5 => {
                let lrn = Lrn {
                    size: u.size(),
                    alpha: u.float(),
                    beta: u.float(),
                    k: u.float(),
                };
                b.local_response_norm(&name, at, lrn)
            }
            6 => b.batch_norm2d(&name, at, channels, u.float()),
            7 => b.group_norm(&name, at, u.pos(), channels, u.float(), u.byte() % 2 == 0),
            8 => {
                let inf = b.shape(at).last().copied().unwrap_or(1);
                let inf = if u.byte() < 200 { inf } else { u.size() };
                b.linear(&name, at, inf, u.pos(), u.byte() % 2 == 0)
            }
            9 | 10 => b.relu(&name, at),
            11 => {
                let other = vals[u.byte() as usize % vals.len()];
                b.add(&name, at, other)
            }
            12 => b.flatten(&name, at, u.size()),
            _ => b.softmax(&name, at, u.size()),
        };
        if let Ok(v) = r {
            vals.push(v);
        }
    }
    let out = *vals.last().expect("the input at least");
    let want = b.shape(out).to_vec();
    let Ok(graph) = b.build(&[out]) else {
        return;
    };
    // Run only what stays small: the point is the lowering and the kernels' indexing.
    // Each shape is at most 2^40 elements (the builder checks), so this cannot overflow.
    let elems: u64 = graph
        .nodes()
        .iter()
        .map(|n| n.shape.iter().product::<usize>() as u64)
        .sum();
    if elems > 200_000 || graph.macs() > 20_000_000 {
        return;
    }
    let Ok(weights) = webcnn::prng::synth_params(&graph, 1) else {
        return;
    };
    let input = webcnn::prng::synth("x", &shape, 2).expect("input rule");
    let Ok(model) = webcnn::backend::cpu::CpuModel::prepare(&graph, &weights) else {
        return;
    };
    if let Ok(y) = model.run(&input) {
        assert_eq!(y.len(), 1);
        assert_eq!(y[0].shape(), want.as_slice());
    }
}

/// An ONNX model's bytes through the importer: the protobuf reader, every node's checks,
/// and graphs at two batches; an accepted model's weights are the ones its graph asks for.
pub fn onnx(data: &[u8]) {
    let Ok(m) = webcnn::onnx::OnnxModel::parse(data) else {
        return;
    };
    for n in [1, 2] {
        if let Ok(g) = m.graph(&m.input_shape(n)) {
            for p in g.params() {
                let w = m
                    .weights
                    .get(&p.name)
                    .unwrap_or_else(|| panic!("{} missing", p.name));
                assert_eq!(w.shape(), p.shape.as_slice(), "{}", p.name);
            }
        }
    }
}
