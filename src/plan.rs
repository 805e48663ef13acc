//! Memory plan: activation values share buffers ("slots") once their last reader has run.

use crate::graph::Value;
use crate::lower::Program;
use crate::tensor::numel;
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// The slot each stored value lives in.
    pub slot_of: HashMap<Value, usize>,
    /// Size of each slot in f32 elements (per batch chunk).
    pub slot_len: Vec<usize>,
}

impl MemoryPlan {
    /// Greedy best-fit over the steps in order; the input keeps its own slot for the whole
    /// run. Graph outputs live only until their last reader: the backends copy each one
    /// out as soon as it is made. `batch` replaces the shapes' batch dimension.
    pub fn new(program: &Program, batch: usize) -> MemoryPlan {
        MemoryPlan::from_step(program, batch, 0, program.input)
    }

    /// The plan for steps `from..` only, which start from `seed` (a value made before
    /// `from`, in place of the input; it keeps slot 0).
    pub fn from_step(program: &Program, batch: usize, from: usize, seed: Value) -> MemoryPlan {
        let len = |v: Value| numel(&program.shape(v)[1..]) * batch;
        MemoryPlan::sized(program, from, seed, len)
    }

    /// [`MemoryPlan::from_step`] where value `v` takes `len(v)` floats (a backend may
    /// store some values padded).
    pub fn sized(
        program: &Program,
        from: usize,
        seed: Value,
        len: impl Fn(Value) -> usize,
    ) -> MemoryPlan {
        let steps = || program.steps.iter().enumerate().skip(from);
        let mut last_use: HashMap<Value, usize> = HashMap::new();
        for (i, s) in steps() {
            for v in s.inputs.iter().chain(s.residual.iter()) {
                last_use.insert(*v, i);
            }
        }
        last_use.insert(seed, usize::MAX);
        let mut slot_of = HashMap::new();
        let mut slot_len: Vec<usize> = vec![len(seed)];
        slot_of.insert(seed, 0);
        let mut free: Vec<usize> = vec![];
        for (i, s) in steps() {
            let need = len(s.output);
            // Smallest free slot that fits; else grow the largest free one; else a new slot.
            let fit = free
                .iter()
                .enumerate()
                .filter(|(_, &k)| slot_len[k] >= need)
                .min_by_key(|(_, &k)| slot_len[k])
                .map(|(j, _)| j)
                .or_else(|| {
                    free.iter()
                        .enumerate()
                        .max_by_key(|(_, &k)| slot_len[k])
                        .map(|(j, _)| j)
                });
            let slot = match fit {
                Some(j) => free.swap_remove(j),
                None => {
                    slot_len.push(0);
                    slot_len.len() - 1
                }
            };
            slot_len[slot] = slot_len[slot].max(need);
            slot_of.insert(s.output, slot);
            // Release after allocating, so an output never aliases its own inputs.
            for v in s.inputs.iter().chain(s.residual.iter()) {
                if last_use.get(v) == Some(&i) && !free.contains(&slot_of[v]) {
                    free.push(slot_of[v]);
                }
            }
            if !last_use.contains_key(&s.output) {
                free.push(slot);
            }
        }
        MemoryPlan { slot_of, slot_len }
    }

    pub fn bytes(&self) -> u64 {
        self.slot_len.iter().map(|&l| l as u64 * 4).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Conv2d, GraphBuilder};

    #[test]
    fn a_chain_reuses_two_slots_and_never_aliases_inputs() {
        let mut b = GraphBuilder::new();
        let mut x = b.input("x", &[1, 8, 16, 16]).unwrap();
        for i in 0..6 {
            x = b
                .conv2d(&format!("c{i}"), x, Conv2d::new(8, 8, 3).padding(1))
                .unwrap();
        }
        let g = b.build(&[x]).unwrap();
        let p = Program::new(&g, true);
        let plan = MemoryPlan::new(&p, 1);
        // The input keeps its slot; the rest ping-pong between two.
        assert_eq!(plan.slot_len.len(), 3, "{plan:?}");
        for s in &p.steps {
            for v in &s.inputs {
                assert_ne!(plan.slot_of[v], plan.slot_of[&s.output]);
            }
        }
    }
}
