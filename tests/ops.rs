//! Every golden single-op case on both backends (the GPU on lavapipe in CI).
mod common;

use webcnn::backend::cpu::CpuModel;
use webcnn::backend::gpu::{GpuModel, GpuOptions, Kernels};
use webcnn::tensor::rel_l2;
use webcnn::Tensor;

fn check(backend: &str, mut run: impl FnMut(&common::OpCase) -> Tensor) {
    let cases = common::golden_ops();
    assert_eq!(cases.len(), 32);
    let mut failures = vec![];
    for c in cases {
        let out = run(&c);
        assert_eq!(out.shape(), c.expected_shape.as_slice(), "{}", c.name);
        let e = rel_l2(out.data(), &c.expected);
        if e.is_nan() || e > common::TOL {
            failures.push(format!("{}: rel L2 {e:e}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{backend} op cases over tolerance:\n{}",
        failures.join("\n")
    );
}

#[test]
fn cpu_backend_matches_every_golden_op() {
    check("CPU", |c| {
        CpuModel::prepare(&c.graph, &c.weights)
            .unwrap()
            .run(&c.input)
            .unwrap()
            .remove(0)
    });
}

#[test]
fn cpu_kernel_sets_match_every_golden_op() {
    // Each set this CPU runs, the portable path included, whichever is the best.
    for k in webcnn::backend::cpu::available_kernels() {
        check(&format!("CPU ({k} kernels)"), |c| {
            CpuModel::prepare_kernels(&c.graph, &c.weights, k)
                .unwrap()
                .run(&c.input)
                .unwrap()
                .remove(0)
        });
    }
}

#[test]
fn gpu_backend_matches_every_golden_op() {
    // Every kernel set, whichever this adapter would pick.
    for k in Kernels::ALL {
        let ctx = common::gpu_with(GpuOptions {
            kernels: Some(k),
            ..Default::default()
        });
        assert_eq!(ctx.kernels(), k);
        eprintln!("adapter: {}, {k:?} kernels", ctx.describe());
        check(&format!("GPU ({k:?} kernels)"), |c| {
            let mut m = GpuModel::prepare_blocking(&ctx, &c.graph, &c.weights).unwrap();
            m.run_blocking(&c.input).unwrap().remove(0)
        });
    }
}

#[test]
fn software_adapters_get_the_register_blocked_kernels() {
    assert_eq!(Kernels::for_adapter(true), Kernels::RegisterBlocked);
    assert_eq!(Kernels::for_adapter(false), Kernels::Tiled);
    let ctx = common::gpu();
    assert_eq!(ctx.kernels(), Kernels::for_adapter(ctx.is_software()));
}
