//! The golden references' PRNG: synthetic weights and inputs, bit-exact with the
//! Python generator (FNV-1a of the key, XOR seed, then SplitMix64).

use crate::tensor::{numel, Tensor};
use std::collections::HashMap;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// `n` uniform values in [0, 1) for `key` under `seed` (exact in f32: 24-bit mantissas).
pub fn uniform(key: &str, seed: u64, n: usize) -> Vec<f64> {
    let state0 = fnv1a64(key.as_bytes()) ^ seed;
    (1..=n as u64)
        .map(|i| {
            let mut z = state0.wrapping_add(i.wrapping_mul(GOLDEN));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 24) as f64
        })
        .collect()
}

/// Why a key has no synthesis rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no synthesis rule for tensor '{0}' (expected input, x, *.weight, *.bias, *.running_mean or *.running_var)")]
pub struct NoRule(pub String);

/// The value of state-dict entry `key` (or `input` / `x`) of `shape` under `seed`,
/// following the rules of the golden README; computed in f64, rounded to f32.
pub fn synth(key: &str, shape: &[usize], seed: u64) -> Result<Tensor, NoRule> {
    let n = numel(shape);
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let rule: Box<dyn Fn(f64) -> f64> = if key == "input" || key == "x" {
        Box::new(|u| (2.0 * u - 1.0) * 3f64.sqrt())
    } else if leaf == "weight" && shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        let a = (6.0 / fan_in as f64).sqrt();
        Box::new(move |u| (2.0 * u - 1.0) * a)
    } else if leaf == "weight" {
        let s = if key.starts_with("layer") { 0.5 } else { 1.0 };
        Box::new(move |u| (0.8 + 0.4 * u) * s)
    } else if leaf == "bias" || leaf == "running_mean" {
        Box::new(|u| (2.0 * u - 1.0) * 0.1)
    } else if leaf == "running_var" {
        Box::new(|u| 0.5 + u)
    } else {
        return Err(NoRule(key.to_string()));
    };
    let data = uniform(key, seed, n)
        .into_iter()
        .map(|u| rule(u) as f32)
        .collect();
    Ok(Tensor::new(shape.to_vec(), data).expect("numel matches"))
}

/// Every parameter of `graph` synthesised under `seed` (the golden cases' weights).
pub fn synth_params(graph: &crate::Graph, seed: u64) -> Result<HashMap<String, Tensor>, NoRule> {
    graph
        .params()
        .into_iter()
        .map(|p| Ok((p.name.clone(), synth(&p.name, &p.shape, seed)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_vectors_from_the_golden_readme() {
        let cases: [(&str, u64, [f64; 4]); 3] = [
            (
                "conv1.weight",
                1,
                [
                    0.07481473684310913,
                    0.6922064423561096,
                    0.33575987815856934,
                    0.4631558656692505,
                ],
            ),
            (
                "input",
                101,
                [
                    0.818886935710907,
                    0.1932915449142456,
                    0.7890867590904236,
                    0.0007694363594055176,
                ],
            ),
            (
                "layer1.0.bn1.weight",
                7,
                [
                    0.9543932676315308,
                    0.013768613338470459,
                    0.3631432056427002,
                    0.05153149366378784,
                ],
            ),
        ];
        for (key, seed, want) in cases {
            assert_eq!(uniform(key, seed, 4), want.to_vec(), "{key}");
        }
        let w = synth("conv1.weight", &[64, 3, 7, 7], 1).unwrap();
        for (a, b) in w.data()[..3]
            .iter()
            .zip([-0.17180079f32, 0.07766313, -0.06636303])
        {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
        let g = synth("layer1.0.bn1.weight", &[64], 7).unwrap();
        for (a, b) in g.data()[..3]
            .iter()
            .zip([0.590_878_65_f32, 0.402_753_7, 0.472_628_64])
        {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn unknown_keys_are_an_error() {
        assert!(synth("fc.scale", &[3], 1).is_err());
    }
}
