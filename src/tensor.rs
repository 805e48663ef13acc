//! Host tensors: row-major (NCHW) f32 with a shape.

use std::fmt;

/// A dense row-major f32 tensor on the host.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// A tensor's element count did not match its shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape {shape:?} holds {expected} values, got {got}")]
pub struct ShapeMismatch {
    pub shape: Vec<usize>,
    pub expected: usize,
    pub got: usize,
}

impl Tensor {
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Self, ShapeMismatch> {
        let shape = shape.into();
        let expected = numel(&shape);
        if expected != data.len() {
            return Err(ShapeMismatch {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        let n = numel(&shape);
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Same data viewed with another shape of the same element count.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Self, ShapeMismatch> {
        Tensor::new(shape, self.data)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: Vec<f32> = self.data.iter().take(6).copied().collect();
        write!(f, "Tensor{:?} {:?}", self.shape, head)?;
        if self.data.len() > 6 {
            write!(f, "..")?;
        }
        Ok(())
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Relative L2 error `||a - b|| / ||b||` in f64; NaN anywhere gives NaN (never passes a `<=` check).
pub fn rel_l2(ours: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "rel_l2 on different lengths");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        let d = a as f64 - b;
        num += d * d;
        den += b * b;
    }
    if den == 0.0 {
        return num.sqrt();
    }
    (num / den).sqrt()
}
