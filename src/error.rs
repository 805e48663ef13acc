//! The library's error type: every failure a user can cause is one of these, never a panic.

use crate::graph::GraphError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("missing weight '{0}'")]
    MissingWeight(String),
    #[error("weight '{key}' has shape {got:?}, expected {expected:?}")]
    WeightShape {
        key: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("input has shape {got:?}, the prepared graph expects {expected:?}")]
    InputShape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    #[error("beyond device limits: {0}")]
    DeviceLimit(String),
    #[error(transparent)]
    Weights(crate::weights::WeightsError),
    #[error(transparent)]
    Model(#[from] crate::models::UnknownModel),
    #[error(transparent)]
    Image(#[from] crate::preprocess::DecodeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::weights::WeightsError> for Error {
    fn from(e: crate::weights::WeightsError) -> Self {
        Error::Weights(e)
    }
}
