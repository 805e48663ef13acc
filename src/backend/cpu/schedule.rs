//! The executor's own plan over a lowered program: how each value is laid out between
//! steps (planes, blocked, padded) and where a batch runs as cache-sized sub-batches.

use super::direct::{DirectConv, Isa, Tile};
use super::layout::Layout;
use crate::graph::Value;
use crate::lower::{Kernel, Program, Step};
use crate::tensor::numel;
use std::collections::HashMap;

/// Bytes of one image's activations a step may touch (inputs, residual, output) times the
/// sub-batch, kept under this so that a layer's data stays in the last-level cache, beside
/// the phase copies and the weights.
pub(super) const SUB_BATCH_BYTES: usize = 16 << 20;

/// [`SUB_BATCH_BYTES`] for the AVX-512 kernels, which read planes and copy every padded
/// layer's input: a quarter of a 32 MiB L3 (on Zen 5 at 2 threads and batch 8, ResNet-18
/// 3-4% faster than with 16 MiB, ResNet-50 1-2%; 4 MiB no better). The AVX2 kernels, whose
/// activations stay blocked, ran ResNet-50 0-2% slower with 8 MiB on the same CPU (ResNet-18
/// the same).
#[cfg(target_arch = "x86_64")]
pub(super) const SUB_BATCH_BYTES_AVX512: usize = 8 << 20;

/// [`SUB_BATCH_BYTES`] for the kernels `isa` names.
pub(super) fn sub_batch_bytes(isa: Option<Isa>) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == Some(Isa::Avx512) {
        return SUB_BATCH_BYTES_AVX512;
    }
    let _ = isa;
    SUB_BATCH_BYTES
}

/// Linear weights beyond this want the whole batch: streaming them once per sub-batch
/// would cost more than the cache saves (VGG's and AlexNet's classifiers hold 200-500 MB).
pub(super) const SUB_BATCH_MAX_LINEAR_BYTES: usize = 32 << 20;

/// Images per sub-batch for `program` at batch `n` on the kernels `isa` names: `n` where
/// splitting does not pay.
pub(super) fn sub_batch(program: &Program, isa: Option<Isa>) -> usize {
    let n = program.shape(program.input)[0];
    let mut linear = 0;
    let mut widest = 1;
    for step in &program.steps {
        if let Kernel::Linear { cfg, .. } = &step.kernel {
            linear += cfg.in_features * cfg.out_features * 4;
        }
        widest = widest.max(touched(program, step));
    }
    if linear > SUB_BATCH_MAX_LINEAR_BYTES {
        return n;
    }
    (sub_batch_bytes(isa) / widest).clamp(1, n)
}

/// Bytes of one image's activations `step` touches: its inputs, residual and output.
pub(super) fn touched(program: &Program, step: &Step) -> usize {
    let per_image = |v: Value| numel(&program.shape(v)[1..]) * 4;
    let values = step
        .inputs
        .iter()
        .chain(&step.residual)
        .chain([&step.output]);
    values.map(|&v| per_image(v)).sum()
}

/// Where a split batch may go back to the whole batch: the first step from which every
/// step's activations for the whole batch fit [`sub_batch_bytes`] for `isa`, at a cut that
/// one value (not the input) crosses; that value's step and the value.
pub(super) fn tail_cut(program: &Program, isa: Option<Isa>) -> Option<(usize, Value)> {
    let n = program.shape(program.input)[0];
    let budget = sub_batch_bytes(isa);
    let steps = &program.steps;
    let mut from = steps.len();
    while from > 0 && touched(program, &steps[from - 1]) * n <= budget {
        from -= 1;
    }
    let made = producers(steps);
    // Parts and tail pass the crossing value as it is shaped, not padded.
    let lay = layouts(program, isa);
    let padded = |v: Value| {
        made.get(&v)
            .is_some_and(|&i| matches!(lay[i].output, Layout::Padded(_)))
    };
    let mut last_read: HashMap<Value, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        for &v in s.inputs.iter().chain(&s.residual) {
            last_read.insert(v, i);
        }
    }
    (from.max(1)..steps.len()).find_map(|cut| {
        let mut crossing = last_read
            .iter()
            .filter(|&(v, &last)| last >= cut && made.get(v).is_none_or(|&m| m < cut))
            .map(|(&v, _)| v);
        match (crossing.next(), crossing.next()) {
            (Some(v), None) if v != program.input && !padded(v) => Some((cut, v)),
            _ => None,
        }
    })
}

/// How a step reads its first input and stores its output, and a convolution's tile.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepLayout {
    pub(super) tile: Option<Tile>,
    pub(super) input: Layout,
    pub(super) output: Layout,
}

/// The layouts of `program`'s values when its convolutions run on `isa`: a convolution's
/// (or a max pooling's, from a blocked input) output is blocked ([`Layout::Blocked`]) where
/// it can store so and every reader can take it so (a convolution reading it as its input,
/// one adding it as the residual of a blocked output, max pooling, global average
/// pooling), the output being no graph output and its own residual (if any) blocked too;
/// else padded planes ([`Layout::Padded`]) where a convolution's one reader is a padded
/// stride-1 convolution that takes them; else planes. A convolution that then reads and stores planes takes the tile it would
/// without neighbours to keep blocked. Depends on the program's steps and shapes only,
/// not on the batch, so that the plans of a split batch agree on the value that crosses
/// from one to the other.
pub(super) fn layouts(program: &Program, isa: Option<Isa>) -> Vec<StepLayout> {
    let steps = &program.steps;
    let planes = StepLayout {
        tile: None,
        input: Layout::Planes,
        output: Layout::Planes,
    };
    let Some(isa) = isa else {
        return vec![planes; steps.len()];
    };
    let conv_out = |s: &Step| {
        let os = program.shape(s.output);
        [os[2], os[3]]
    };
    // What each step can read and store blocked, on the tile that keeps neighbours so.
    let can: Vec<(bool, bool)> = steps
        .iter()
        .map(|s| match &s.kernel {
            Kernel::Conv { cfg, .. } => {
                let tile = DirectConv::choose(isa, cfg, conv_out(s), false);
                DirectConv::blocks(isa, tile.shape, cfg)
            }
            Kernel::AdaptiveAvgPool { output: [1, 1] } => (true, false),
            // Blocked out only from a blocked input (checked below).
            Kernel::MaxPool(_) => (true, true),
            _ => (false, false),
        })
        .collect();
    let made = producers(steps);
    let blocked =
        |v: &Value, out: &[Layout]| made.get(v).is_some_and(|&i| out[i] == Layout::Blocked);
    let mut out: Vec<Layout> = can
        .iter()
        .map(|&(_, o)| if o { Layout::Blocked } else { Layout::Planes })
        .collect();
    // Demote until every blocked output is read only where blocked values may go (every
    // round but the last demotes at least one step).
    loop {
        let mut changed = false;
        for i in 0..steps.len() {
            if out[i] != Layout::Blocked {
                continue;
            }
            let v = steps[i].output;
            let readers_take_it = steps.iter().enumerate().all(|(j, s)| {
                let first = s.inputs.first() != Some(&v) || can[j].0;
                let rest = !s.inputs.iter().skip(1).any(|&u| u == v);
                let residual = s.residual != Some(v) || out[j] == Layout::Blocked;
                first && rest && residual
            });
            let output = program.outputs.iter().any(|(o, _)| *o == v);
            let residual = steps[i].residual.is_none_or(|r| blocked(&r, &out));
            // Pooling keeps the layout it reads.
            let pooled = matches!(steps[i].kernel, Kernel::MaxPool(_));
            let keeps = !pooled || steps[i].inputs.first().is_some_and(|u| blocked(u, &out));
            if !readers_take_it || output || !residual || !keeps {
                out[i] = Layout::Planes;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // A convolution whose one reader is a padded stride-1 convolution stores that
    // reader's padded planes, which then reads them in place: a copy less (ResNet-18's
    // second convolution of each block, 8 of VGG-16's 13 layers).
    for (i, s) in steps.iter().enumerate() {
        let Kernel::Conv { cfg, .. } = &s.kernel else {
            continue;
        };
        let v = s.output;
        let output = program.outputs.iter().any(|(o, _)| *o == v);
        let first_planes = s.inputs.first().is_some_and(|u| !blocked(u, &out));
        if out[i] != Layout::Planes || s.residual.is_some() || output || !first_planes {
            continue;
        }
        let shape = DirectConv::choose(isa, cfg, conv_out(s), true).shape;
        let mut readers = steps
            .iter()
            .enumerate()
            .filter(|(_, r)| r.inputs.contains(&v) || r.residual == Some(v));
        let (Some((j, r)), None) = (readers.next(), readers.next()) else {
            continue;
        };
        let Kernel::Conv { cfg: rcfg, .. } = &r.kernel else {
            continue;
        };
        let rshape = DirectConv::choose(isa, rcfg, conv_out(r), true).shape;
        if j > i
            && r.inputs.as_slice() == [v]
            && r.residual != Some(v)
            && DirectConv::stores_padded(isa, shape)
            && DirectConv::reads_padded(rshape, rcfg)
        {
            out[i] = Layout::Padded(rcfg.padding);
        }
    }
    steps
        .iter()
        .zip(&out)
        .map(|(s, &output)| {
            let input = match s.inputs.first().and_then(|v| made.get(v)) {
                Some(&i) if out[i] != Layout::Planes => out[i],
                _ => Layout::Planes,
            };
            let tile = match &s.kernel {
                Kernel::Conv { cfg, .. } => {
                    let all_planes = input != Layout::Blocked && output != Layout::Blocked;
                    Some(DirectConv::choose(isa, cfg, conv_out(s), all_planes))
                }
                _ => None,
            };
            StepLayout {
                tile,
                input,
                output,
            }
        })
        .collect()
}

/// The step that makes each value, by value.
pub(super) fn producers(steps: &[Step]) -> HashMap<Value, usize> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.output, i))
        .collect()
}
