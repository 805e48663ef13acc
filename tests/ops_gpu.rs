//! Every golden single-op case on the GPU backend (lavapipe in CI).
mod common;

use webcnn::backend::gpu::GpuModel;
use webcnn::tensor::rel_l2;

#[test]
fn gpu_backend_matches_every_golden_op() {
    let ctx = common::gpu();
    eprintln!("adapter: {}", ctx.describe());
    let cases = common::golden_ops();
    assert_eq!(cases.len(), 32);
    let mut failures = vec![];
    for c in cases {
        let mut m = GpuModel::prepare_blocking(&ctx, &c.graph, &c.weights).unwrap();
        let out = m.run_blocking(&c.input).unwrap().remove(0);
        assert_eq!(out.shape(), c.expected_shape.as_slice(), "{}", c.name);
        let e = rel_l2(out.data(), &c.expected);
        if e.is_nan() || e > common::TOL {
            failures.push(format!("{}: rel L2 {e:e}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "GPU op cases over tolerance:\n{}",
        failures.join("\n")
    );
}
