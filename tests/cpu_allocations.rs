//! The CPU backend's steady state: a run of a prepared model allocates its outputs and a
//! few KiB of bookkeeping, never activation-sized buffers (the plan's arena, the direct
//! convolutions' phase buffer and task lists are made at prepare, scratch rows are kept
//! per thread). And the ONNX importer's peak: the model's values are held once beside the
//! file, never twice.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use webcnn::backend::cpu::CpuModel;
use webcnn::models::Model;
use webcnn::prng::{synth, synth_params};

struct Count;
static BYTES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated and not yet freed, and the most there were since [`reset_peak`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The tests measure one at a time (the counters are the process's).
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn grow(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn reset_peak() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

// SAFETY: every call forwards to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Count {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        grow(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        grow(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        // Counted as the new block beside the old, as a moving realloc holds both.
        grow(new);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Count = Count;

/// Bytes and calls of one `m.run(x)`, and its outputs' bytes.
fn run_allocations(m: &CpuModel, x: &webcnn::tensor::Tensor) -> (usize, usize, usize) {
    let (b0, c0) = (BYTES.load(Ordering::Relaxed), CALLS.load(Ordering::Relaxed));
    let out = m.run(x).unwrap();
    let bytes = BYTES.load(Ordering::Relaxed) - b0;
    let calls = CALLS.load(Ordering::Relaxed) - c0;
    (bytes, calls, out.iter().map(|t| t.len() * 4).sum())
}

#[test]
fn a_steady_state_run_allocates_little_beyond_its_output() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    // The bound holds where the backend runs its own microkernels (AVX-512, AVX2). Elsewhere
    // its convolutions take the portable path through the gemm crate, which allocates its
    // packing buffers on every call that packs, beside the padded input copies made per run
    // (ResNet-18: 31.6 MB in 861 calls); there a run must at least allocate no more than
    // the run before it.
    let own_kernels = webcnn::backend::cpu::kernels() != "portable";
    eprintln!("CPU kernels: {}", webcnn::backend::cpu::kernels());
    for (id, size) in [("resnet18", 224), ("vgg11", 64), ("alexnet", 224)] {
        let g = Model::get(id).unwrap().graph(&[1, 3, size, size]).unwrap();
        let w = synth_params(&g, 1).unwrap();
        let x = synth("input", &[1, 3, size, size], 2).unwrap();
        let m = CpuModel::prepare(&g, &w).unwrap();
        m.run(&x).unwrap(); // the first run may size thread-local buffers
        let (bytes, calls, out_bytes) = run_allocations(&m, &x);
        eprintln!("{id}: {calls} allocations, {bytes} bytes (outputs {out_bytes} bytes)");
        if !own_kernels {
            let (again, again_calls, _) = run_allocations(&m, &x);
            eprintln!("{id}, portable path, next run: {again_calls} allocations, {again} bytes");
            assert!(
                again <= bytes + 16 * 1024,
                "{id}: a run allocated {again} bytes, the one before {bytes}"
            );
            continue;
        }
        // Beyond the outputs: the result list and the thread pool's bookkeeping, a few KiB
        // (a run allocated 60 KB in 141 calls before task lists moved to prepare).
        assert!(
            bytes <= out_bytes + 16 * 1024 && calls <= 32,
            "{id}: a run allocated {bytes} bytes in {calls} calls; the outputs are {out_bytes}"
        );
    }
}

/// An ONNX model of `convs` 3x3 convolutions of `c` channels (a symbolic batch, 4x4 inputs),
/// each weight 4 c^2 x 9 bytes, as protobuf bytes.
fn onnx_convs(c: usize, convs: usize) -> Vec<u8> {
    use prost::Message;
    use webcnn::onnx::proto::{self, tensor_shape_proto::dimension::Value as Dim, type_proto};
    let dim = |d: Dim| proto::tensor_shape_proto::Dimension {
        value: Some(d),
        ..Default::default()
    };
    let value = |name: &str| proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(proto::TensorShapeProto {
                    dim: vec![
                        dim(Dim::DimParam("N".into())),
                        dim(Dim::DimValue(c as i64)),
                        dim(Dim::DimValue(4)),
                        dim(Dim::DimValue(4)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut graph = proto::GraphProto {
        input: vec![value("x")],
        output: vec![value(&format!("y{convs}"))],
        ..Default::default()
    };
    for i in 1..=convs {
        let w: Vec<u8> = (0..c * c * 9)
            .flat_map(|k| ((k % 7) as f32 * 0.01).to_le_bytes())
            .collect();
        graph.initializer.push(proto::TensorProto {
            name: Some(format!("w{i}")),
            dims: vec![c as i64, c as i64, 3, 3],
            data_type: Some(1),
            raw_data: Some(w),
            ..Default::default()
        });
        let from = if i == 1 {
            "x".to_string()
        } else {
            format!("y{}", i - 1)
        };
        graph.node.push(proto::NodeProto {
            op_type: Some("Conv".into()),
            input: vec![from, format!("w{i}")],
            output: vec![format!("y{i}")],
            attribute: vec![proto::AttributeProto {
                name: Some("pads".into()),
                r#type: Some(7),
                ints: vec![1, 1, 1, 1],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn the_onnx_importer_holds_the_models_values_once_beside_the_file() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = onnx_convs(256, 4);
    let values = 4 * 256 * 256 * 9 * 4;
    let before = reset_peak();
    let m = webcnn::onnx::OnnxModel::parse(&bytes).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(m.weights.len(), 4);
    // Reading: the protobuf message's copy of the bytes turns into the weights one tensor
    // at a time; the build moves each into the model (a copy of all would be 2x).
    eprintln!(
        "ONNX import peak: {:.2}x the weights ({peak} bytes)",
        peak as f64 / values as f64
    );
    assert!(
        peak < values * 3 / 2,
        "the import's peak is {peak} bytes for {values} bytes of weights"
    );
}
