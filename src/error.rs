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
    /// An input whose shape no model takes (a tensor that is not `[n, 3, h, w]`).
    #[error("{0}")]
    BadInput(String),
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
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
}

impl Error {
    /// A stable code for programs (the JS API's `WebcnnError.code`).
    pub fn code(&self) -> &'static str {
        self.error_code().name()
    }

    /// [`Self::code`] as its enum.
    pub fn error_code(&self) -> ErrorCode {
        use crate::graph::GraphError as G;
        use crate::weights::WeightsError as W;
        match self {
            Error::Graph(G::Shape { .. }) | Error::InputShape { .. } | Error::BadInput(_) => {
                ErrorCode::BadInputShape
            }
            Error::Graph(_) | Error::BadArgument(_) => ErrorCode::BadArgument,
            Error::MissingWeight(_) => ErrorCode::WeightsMissingKey,
            Error::WeightShape { .. } => ErrorCode::WeightsShape,
            Error::NoAdapter(_) => ErrorCode::NoWebgpu,
            Error::Gpu(_) => ErrorCode::Gpu,
            Error::DeviceLost(_) => ErrorCode::DeviceLost,
            Error::DeviceLimit(_) => ErrorCode::DeviceLimit,
            Error::Model(_) => ErrorCode::UnknownModel,
            Error::Onnx(crate::onnx::OnnxError::Format(_)) => ErrorCode::WeightsFormat,
            Error::Onnx(crate::onnx::OnnxError::Unsupported { .. }) => ErrorCode::UnsupportedOp,
            Error::Onnx(crate::onnx::OnnxError::Graph {
                source: G::Shape { .. },
                ..
            }) => ErrorCode::BadInputShape,
            Error::Onnx(_) => ErrorCode::BadArgument,
            Error::Image(_) => ErrorCode::BadImage,
            Error::NoClassifier(_) => ErrorCode::NoClassifier,
            Error::Labels(crate::models::LabelsError::NoClassifier) => ErrorCode::NoClassifier,
            Error::Labels(_) => ErrorCode::BadLabels,
            Error::Weights(w) => match w {
                W::NotSafetensors(_)
                | W::Truncated(_)
                | W::Checkpoint(_)
                | W::UnsupportedDtype { .. } => ErrorCode::WeightsFormat,
                W::Missing { .. } => ErrorCode::WeightsMissingKey,
                W::Unexpected(_) => ErrorCode::WeightsUnexpectedKey,
                W::Shape { .. } => ErrorCode::WeightsShape,
                W::BadSource(_) => ErrorCode::BadArgument,
                W::Io(_) => ErrorCode::Io,
                W::Download(_) => ErrorCode::Download,
            },
        }
    }
}

/// Declares [`ErrorCode`], its [`ErrorCode::ALL`] and names from one list.
macro_rules! error_codes {
    ($($(#[$m:meta])* $v:ident => $name:literal,)*) => {
        /// Every code the JS API's errors carry: the one list (the package's `codes.js` and
        /// its `ErrorCode` type are generated from it).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$m])* $v,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$v,)*];

            /// The code as programs match it (`err.code === 'WEIGHTS_SHAPE'`).
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$v => $name,)*
                }
            }
        }
    };
}

error_codes! {
    UnknownModel => "UNKNOWN_MODEL",
    WeightsMissingKey => "WEIGHTS_MISSING_KEY",
    WeightsUnexpectedKey => "WEIGHTS_UNEXPECTED_KEY",
    WeightsShape => "WEIGHTS_SHAPE",
    WeightsFormat => "WEIGHTS_FORMAT",
    Download => "DOWNLOAD",
    BadImage => "BAD_IMAGE",
    BadInputShape => "BAD_INPUT_SHAPE",
    NoWebgpu => "NO_WEBGPU",
    DeviceLost => "DEVICE_LOST",
    DeviceLimit => "DEVICE_LIMIT",
    Gpu => "GPU",
    BadArgument => "BAD_ARGUMENT",
    Io => "IO",
    NoClassifier => "NO_CLASSIFIER",
    BadLabels => "BAD_LABELS",
    /// An ONNX model with an operator webcnn does not run (the message names it, its node
    /// and what is supported).
    UnsupportedOp => "UNSUPPORTED_OP",
    /// A call on a model after `dispose()` (raised by the JS layer).
    Disposed => "DISPOSED",
    /// A failure of the package itself, such as a wasm trap (raised by the JS layer).
    Internal => "INTERNAL",
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::weights::WeightsError> for Error {
    fn from(e: crate::weights::WeightsError) -> Self {
        Error::Weights(e)
    }
}
