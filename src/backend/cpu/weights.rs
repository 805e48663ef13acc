//! A model's weights on the CPU backend: one host copy, convolution weights packed for
//! the direct kernels as plans first need them.

use super::direct::{self, Isa, Shape};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::lower::{param, Weights};
use crate::tensor::Tensor;
use crate::weights::TensorMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A model's weights on the CPU: the one host copy every plan of the model reads,
/// checked against the model's graph. Where the CPU has direct kernels, each convolution
/// weight is held in one form at a time: PyTorch's layout until a plan first packs it for
/// its kernel, then packed (the layout a plan of another shape wants is made from that
/// one), so that packing does not hold a model's convolutions twice.
pub struct CpuWeights {
    /// Every parameter but the convolution weights in `convs`.
    pub(super) tensors: TensorMap,
    /// The convolution weights the direct kernels read packed, by key.
    pub(super) convs: HashMap<String, Mutex<ConvWeight>>,
    /// Their shapes (the graph checks them before any is packed).
    pub(super) conv_shapes: HashMap<String, Vec<usize>>,
}

/// One convolution weight, in the forms the plans so far wanted.
pub(super) struct ConvWeight {
    /// PyTorch's layout, until the first packing replaces it.
    pub(super) raw: Option<Vec<f32>>,
    /// Packed panels by (block width, interleaved input channels).
    pub(super) packed: HashMap<(usize, usize), Arc<[f32]>>,
}

impl Weights for CpuWeights {
    fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }
    fn shape(&self, key: &str) -> Option<&[usize]> {
        match self.tensors.get(key) {
            Some(t) => Some(t.shape()),
            None => self.conv_shapes.get(key).map(Vec::as_slice),
        }
    }
}

impl CpuWeights {
    /// Check `w` against `graph`'s parameters and take it over; keys the graph does not
    /// use are dropped.
    pub fn new(graph: &Graph, w: TensorMap) -> Result<Self> {
        Self::taking(graph, w, Isa::detect().is_some())
    }

    /// `direct`: convolution weights go to the one-form store (plans on direct kernels);
    /// else every parameter stays as it is (the portable kernels read them so).
    fn taking(graph: &Graph, mut w: TensorMap, direct: bool) -> Result<Self> {
        let mut out = CpuWeights {
            tensors: TensorMap::new(),
            convs: HashMap::new(),
            conv_shapes: HashMap::new(),
        };
        for p in graph.params() {
            param(&w, &p)?;
            let t = w.remove(&p.name).expect("checked");
            let conv = p.name.strip_suffix(".weight").and_then(|n| graph.find(n));
            let conv =
                conv.is_some_and(|n| matches!(graph.node(n).op, crate::graph::Op::Conv2d(_)));
            if direct && conv {
                out.conv_shapes.insert(p.name.clone(), t.shape().to_vec());
                let c = ConvWeight {
                    raw: Some(t.into_data()),
                    packed: HashMap::new(),
                };
                out.convs.insert(p.name, Mutex::new(c));
            } else {
                out.tensors.insert(p.name, t);
            }
        }
        Ok(out)
    }

    /// `key` packed for `shape`'s blocks of output channels and input order (made once;
    /// the first packing replaces PyTorch's layout, later ones are made from a packing).
    pub(super) fn packed(
        &self,
        key: &str,
        cfg: &crate::graph::Conv2d,
        shape: Shape,
    ) -> Result<Arc<[f32]>> {
        let Some(entry) = self.convs.get(key) else {
            // Weights taken for the portable kernels: packed from their tensor each time.
            let w = self
                .tensors
                .get(key)
                .ok_or_else(|| Error::MissingWeight(key.to_string()))?;
            return Ok(direct::pack(w.data(), cfg, shape.block, shape.lanes).into());
        };
        let mut c = entry.lock().unwrap_or_else(|e| e.into_inner());
        let id = (shape.block, shape.lanes);
        if let Some(p) = c.packed.get(&id) {
            return Ok(p.clone());
        }
        let raw = match c.raw.take() {
            Some(raw) => raw,
            None => {
                let (&(block, lanes), panels) =
                    c.packed.iter().next().expect("a weight is raw or packed");
                direct::unpack(panels, cfg, block, lanes)
            }
        };
        let p: Arc<[f32]> = direct::pack(&raw, cfg, shape.block, shape.lanes).into();
        c.packed.insert(id, p.clone());
        Ok(p)
    }

    /// `key` in PyTorch's layout for a plan without direct kernels: the tensor, or for a
    /// weight in the one-form store, a copy (unpacked where it is packed already).
    pub(super) fn plain(&self, key: &str, cfg: &crate::graph::Conv2d) -> Option<Arc<[f32]>> {
        let c = self.convs.get(key)?;
        let c = c.lock().unwrap_or_else(|e| e.into_inner());
        Some(match (&c.raw, c.packed.iter().next()) {
            (Some(raw), _) => raw.as_slice().into(),
            (None, Some((&(block, lanes), p))) => direct::unpack(p, cfg, block, lanes).into(),
            (None, None) => unreachable!("a weight is raw or packed"),
        })
    }

    /// A checked copy of the parameters `graph` needs from `w` (one-off models and tests).
    pub fn copied(graph: &Graph, w: &dyn Weights) -> Result<Self> {
        Self::copied_for(graph, w, Isa::detect().is_some())
    }

    pub(super) fn copied_for(graph: &Graph, w: &dyn Weights, direct: bool) -> Result<Self> {
        let tensors = graph
            .params()
            .into_iter()
            .map(|p| Ok((p.name.clone(), param(w, &p)?.clone())))
            .collect::<Result<TensorMap>>()?;
        Self::taking(graph, tensors, direct)
    }

    /// Bytes held (each convolution weight in every form held).
    pub fn bytes(&self) -> u64 {
        let plain: u64 = self.tensors.values().map(|t| t.len() as u64 * 4).sum();
        let convs: u64 = self
            .convs
            .values()
            .map(|c| {
                let c = c.lock().unwrap_or_else(|e| e.into_inner());
                let raw = c.raw.as_ref().map_or(0, |r| r.len());
                let packed: usize = c.packed.values().map(|p| p.len()).sum();
                (raw + packed) as u64 * 4
            })
            .sum();
        plain + convs
    }
}
