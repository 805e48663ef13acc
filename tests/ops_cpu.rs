//! Every golden single-op case on the CPU backend.
mod common;

use webcnn::backend::cpu::CpuModel;
use webcnn::tensor::rel_l2;

#[test]
fn cpu_backend_matches_every_golden_op() {
    let cases = common::golden_ops();
    assert_eq!(cases.len(), 32);
    let mut failures = vec![];
    for c in cases {
        let m = CpuModel::prepare(&c.graph, &c.weights).unwrap();
        let out = m.run(&c.input).unwrap().remove(0);
        assert_eq!(out.shape(), c.expected_shape.as_slice(), "{}", c.name);
        let e = rel_l2(out.data(), &c.expected);
        if e.is_nan() || e > common::TOL {
            failures.push(format!("{}: rel L2 {e:e}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "CPU op cases over tolerance:\n{}",
        failures.join("\n")
    );
}
