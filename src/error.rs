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
    #[error("the GPU device was lost ({0})")]
    DeviceLost(String),
    #[error("beyond device limits: {0}")]
    DeviceLimit(String),
    #[error(transparent)]
    Weights(crate::weights::WeightsError),
    #[error(transparent)]
    Model(#[from] crate::models::UnknownModel),
    #[error(transparent)]
    Image(#[from] crate::preprocess::DecodeError),
    #[error("{0}")]
    BadArgument(String),
    /// `classify` or `cam` on weights without a classifier (a feature extractor).
    #[error("{0}")]
    NoClassifier(String),
    #[error(transparent)]
    Labels(#[from] crate::models::LabelsError),
}

impl Error {
    /// A stable code for programs (the JS API's `WebcnnError.code`).
    pub fn code(&self) -> &'static str {
        use crate::graph::GraphError as G;
        use crate::weights::WeightsError as W;
        match self {
            Error::Graph(G::Shape { .. }) | Error::InputShape { .. } => "BAD_INPUT_SHAPE",
            Error::Graph(_) | Error::BadArgument(_) => "BAD_ARGUMENT",
            Error::MissingWeight(_) => "WEIGHTS_MISSING_KEY",
            Error::WeightShape { .. } => "WEIGHTS_SHAPE",
            Error::NoAdapter(_) => "NO_WEBGPU",
            Error::Gpu(_) => "GPU",
            Error::DeviceLost(_) => "DEVICE_LOST",
            Error::DeviceLimit(_) => "DEVICE_LIMIT",
            Error::Model(_) => "UNKNOWN_MODEL",
            Error::Image(_) => "BAD_IMAGE",
            Error::NoClassifier(_) => "NO_CLASSIFIER",
            Error::Labels(crate::models::LabelsError::NoClassifier) => "NO_CLASSIFIER",
            Error::Labels(_) => "BAD_LABELS",
            Error::Weights(w) => match w {
                W::NotSafetensors(_)
                | W::Truncated(_)
                | W::Checkpoint(_)
                | W::UnsupportedDtype { .. } => "WEIGHTS_FORMAT",
                W::Missing { .. } => "WEIGHTS_MISSING_KEY",
                W::Unexpected(_) => "WEIGHTS_UNEXPECTED_KEY",
                W::Shape { .. } => "WEIGHTS_SHAPE",
                W::BadSource(_) => "BAD_ARGUMENT",
                W::Io(_) => "IO",
                W::Download(_) => "DOWNLOAD",
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::weights::WeightsError> for Error {
    fn from(e: crate::weights::WeightsError) -> Self {
        Error::Weights(e)
    }
}
