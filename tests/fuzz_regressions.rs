//! Every input that ever made a fuzz target fail (`tests/fixtures/fuzz/<target>/`), and the
//! seed corpus (`fuzz/seeds/<target>/`), replayed through the fuzz targets' own bodies on
//! stable: none may panic. `cargo test --test fuzz_regressions -- --ignored` rewrites the
//! seeds from real, valid files (see RELIABILITY.md).

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation since the last reset: a parser that trusts a length
/// field shows up here (as an out-of-memory did under the fuzzer) even where the
/// machine could satisfy it.
struct Watch;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only a size is recorded.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Watch = Watch;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 7] = [
    ("safetensors", common::safetensors),
    ("npy", common::npy),
    ("image", common::image),
    ("graph", common::graph),
    ("source", common::source),
    ("checkpoint", common::checkpoint),
    ("onnx", common::onnx),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_past_failure_and_seed_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut regressions = 0;
    for (name, target) in TARGETS {
        let seeds = files(&root.join("fuzz/seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} holds no seed");
        let past = files(&root.join("tests/fixtures/fuzz").join(name));
        regressions += past.len();
        for f in seeds.iter().chain(&past) {
            let data = std::fs::read(f).unwrap();
            LARGEST.store(0, Ordering::Relaxed);
            target(&data);
            // Small inputs, small allocations (the fuzzer's limit is 2 GiB in all).
            let largest = LARGEST.load(Ordering::Relaxed);
            assert!(
                largest < 256 << 20,
                "{}: one allocation of {largest} bytes",
                f.display()
            );
        }
    }
    assert!(
        regressions > 0,
        "tests/fixtures/fuzz holds the inputs that failed"
    );
}

/// Hub names that must not become a path outside the cache, or that the Hub refuses.
#[test]
fn hub_names_stay_inside_the_cache() {
    for bad in [
        "hf:../x",
        "hf:a/..",
        "hf:a/.b",
        "hf:a/b/c",
        "hf:a\\b/c",
        "hf:a/b c",
        "hf:-a/b",
        "hf:a--b/c",
        "hf:a/",
        "hf:/b",
        "hf:a/b\0",
        "hf:a/b@..",
        "hf:a/b@x/y",
        "hf:a/b@",
    ] {
        assert!(
            bad.parse::<webcnn::weights::Source>().is_err(),
            "{bad:?} was accepted"
        );
        common::source(bad.as_bytes());
    }
    assert!("hf:timm/resnet50.tv_in1k"
        .parse::<webcnn::weights::Source>()
        .is_ok());
}

/// Writes the seed corpus: small valid files of every kind each target reads.
#[test]
#[ignore = "rewrites fuzz/seeds; run by hand"]
fn write_seeds() {
    use std::collections::HashMap;
    use webcnn::Tensor;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let put = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    // safetensors: the first byte picks the model (0: resnet18, 1: vgg11_bn_cifar, ...).
    let t = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(|i| i as f32 * 0.5).collect()).unwrap()
    };
    let sets: Vec<(&str, u8, HashMap<String, Tensor>)> = vec![
        (
            "conv",
            0,
            HashMap::from([("conv1.weight".into(), t(&[2, 3, 1, 1]))]),
        ),
        (
            "bn",
            1,
            HashMap::from([
                ("features.1.weight".into(), t(&[4])),
                ("features.1.running_var".into(), t(&[4])),
                ("features.1.num_batches_tracked".into(), t(&[])),
            ]),
        ),
        (
            "timm",
            4,
            HashMap::from([
                ("pre_logits.fc1.weight".into(), t(&[2, 3, 2, 2])),
                ("pre_logits.fc1.bias".into(), t(&[2])),
                ("head.fc.weight".into(), t(&[3, 2])),
            ]),
        ),
    ];
    for (name, pick, w) in sets {
        let mut bytes = vec![pick];
        bytes.extend(webcnn::weights::save_safetensors(&w));
        put("safetensors", &format!("{name}.bin"), &bytes);
    }
    // f16, bf16, f64 and an integer tensor, written by hand.
    for (dtype, size) in [("F16", 2), ("BF16", 2), ("F64", 8), ("I64", 8)] {
        let header = format!(
            r#"{{"fc.bias":{{"dtype":"{dtype}","shape":[2],"data_offsets":[0,{}]}}}}"#,
            2 * size
        );
        let mut bytes = vec![0u8];
        bytes.extend((header.len() as u64).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0x3cu8; 2 * size]);
        put(
            "safetensors",
            &format!("{}.bin", dtype.to_lowercase()),
            &bytes,
        );
    }
    // .npy: float32 from the writer, float64 and big-endian by hand.
    let tmp = std::env::temp_dir().join("webcnn-seed.npy");
    webcnn::npy::write_file(&tmp, &t(&[1, 3, 2, 2])).unwrap();
    put("npy", "f4.npy", &std::fs::read(&tmp).unwrap());
    for (descr, size) in [("<f8", 8), (">f4", 4), ("<i4", 4)] {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2, 3), }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0x3fu8; 6 * size]);
        let name = descr.replace('<', "le-").replace('>', "be-");
        put("npy", &format!("{name}.npy"), &bytes);
    }
    // Images: every format decoded, small, with an EXIF-less and a gray one.
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(9, 7, |x, y| {
        image::Rgb([(x * 28) as u8, (y * 36) as u8, 128])
    }));
    for (ext, fmt) in [
        ("png", image::ImageFormat::Png),
        ("jpg", image::ImageFormat::Jpeg),
        ("gif", image::ImageFormat::Gif),
        ("bmp", image::ImageFormat::Bmp),
        ("webp", image::ImageFormat::WebP),
    ] {
        let mut buf = std::io::Cursor::new(vec![]);
        img.write_to(&mut buf, fmt).unwrap();
        put("image", &format!("rgb.{ext}"), buf.get_ref());
    }
    let mut buf = std::io::Cursor::new(vec![]);
    img.to_luma16()
        .write_to(&mut buf, image::ImageFormat::Png)
        .unwrap();
    put("image", "gray16.png", buf.get_ref());
    // Graphs: byte strings that build a conv, a pool, a linear head.
    put(
        "graph",
        "conv.bin",
        &[1, 3, 2, 2, 3, 0, 0, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0],
    );
    put(
        "graph",
        "pool-linear.bin",
        &[
            1, 2, 2, 2, 4, 0, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 12, 1, 0, 8, 1, 3, 0,
        ],
    );
    put(
        "graph",
        "resblock.bin",
        &[
            2, 4, 2, 2, 5, 0, 0, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0, 9, 1, 11, 2,
        ],
    );
    // Weights sources.
    for (i, s) in [
        "hf:timm/resnet50.tv_in1k",
        "synthetic:7",
        "weights/model.safetensors",
        "hf:a/b",
    ]
    .iter()
    .enumerate()
    {
        put("source", &format!("{i}.txt"), s.as_bytes());
    }
    // checkpoint: every torch.save layout of the fixtures, its first 4 (zip) or 3 (legacy)
    // bytes replaced by the byte that makes the target put them back.
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/own-model/pth");
    for f in files(&pth) {
        if f.extension().is_some_and(|e| e == "pth") {
            let b = std::fs::read(&f).unwrap();
            let seed: Vec<u8> = if b.starts_with(b"PK\x03\x04") {
                [&[0u8][..], &b[4..]].concat()
            } else {
                [&[1u8][..], &b[3..]].concat()
            };
            let name = f.file_stem().unwrap().to_string_lossy();
            put("checkpoint", &format!("{name}.bin"), &seed);
        }
    }
}
