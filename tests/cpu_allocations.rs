//! The CPU backend's steady state: a run of a prepared model allocates its outputs and a
//! few KiB of bookkeeping, never activation-sized buffers (the plan's arena, the direct
//! convolutions' phase buffer and task lists are made at prepare, scratch rows are kept
//! per thread).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use webcnn::backend::cpu::CpuModel;
use webcnn::models::Model;
use webcnn::prng::{synth, synth_params};

struct Count;
static BYTES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Count {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
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
