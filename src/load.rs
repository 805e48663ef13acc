//! A user's model loaded as its weights file streams in (a download, a file read in
//! pieces): the header is checked against the model before any data arrives (a wrong file
//! fails at once), and on the GPU each weight's values are written to the device as they
//! come, so that the host never holds the model. The front ends feed it chunks.

use crate::backend::gpu::{ErrorScopes, GpuContext, GpuStream, GpuWeights, Precision};
use crate::engine::{Session, Target};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::{HubConfig, Model};
use crate::weights::stream::{Reader, Sink};
use crate::weights::{self, ShapeMap, TensorMap, WeightsError};
use std::collections::{BTreeSet, HashMap, HashSet};

/// A model being loaded: [`StreamLoad::push`] the file's bytes in order (waiting for
/// [`StreamLoad::settle`] when a push asks for it), then [`StreamLoad::finish`].
pub struct StreamLoad {
    reader: Reader<Fit>,
    target: Target,
    config: Option<HubConfig>,
    /// Device errors (out of memory, validation) while buffers are made and written.
    scopes: Option<ErrorScopes>,
}

/// What a loaded model comes with.
pub struct Streamed {
    /// The model, its head fitted to the weights and the config applied.
    pub model: Model,
    pub session: Session,
    /// Keys holding NaN or Inf.
    pub non_finite: Vec<String>,
    /// What the reader unwrapped or renamed.
    pub notices: Vec<String>,
}

/// The reader's sink: fits the model to the header, then takes the conv and linear
/// weights onto the device.
struct Fit {
    model: Model,
    /// The GPU to write to (f32 storage), if any.
    gpu: Option<GpuContext>,
    ready: Option<Ready>,
    /// An error of the device (the reader carries only weights errors).
    failed: Option<Error>,
}

struct Ready {
    model: Model,
    graph: Graph,
    /// The file's keys in the graph's terms (timm's renamed).
    keys: HashMap<String, (String, Vec<usize>)>,
    stream: Option<GpuStream>,
    non_finite: BTreeSet<String>,
}

impl Sink for Fit {
    fn header(
        &mut self,
        tensors: &[(String, Vec<usize>)],
    ) -> Result<HashSet<String>, WeightsError> {
        let pre = tensors.iter().any(|(k, _)| k == "pre_logits.fc1.weight");
        let mut keys = HashMap::new();
        let mut shapes = ShapeMap::new();
        for (k, s) in tensors {
            let (g, shape) = weights::timm_key(k, s, pre);
            shapes.insert(g.clone(), shape.clone());
            keys.insert(k.clone(), (g, shape));
        }
        let model = self.model.clone().fit_head_to(&shapes);
        let graph = model.default_graph(1);
        weights::check_shapes(&graph, &shapes)?;
        let stream = match &self.gpu {
            Some(ctx) => match GpuWeights::stream(ctx, &graph) {
                Ok(s) => Some(s),
                Err(e) => return Err(self.device_error(e)),
            },
            None => None,
        };
        let divert = keys
            .iter()
            .filter(|(_, (g, _))| stream.as_ref().is_some_and(|s| s.takes(g)))
            .map(|(k, _)| k.clone())
            .collect();
        self.ready = Some(Ready {
            model,
            graph,
            keys,
            stream,
            non_finite: BTreeSet::new(),
        });
        Ok(divert)
    }

    fn values(&mut self, key: &str, at: usize, values: &[f32]) -> Result<(), WeightsError> {
        let r = self.ready.as_mut().expect("values come after the header");
        let g = &r.keys[key].0;
        if values.iter().any(|v| !v.is_finite()) {
            r.non_finite.insert(g.clone());
        }
        let written = r.stream.as_mut().expect("diverted").write(g, at, values);
        written.map_err(|e| self.device_error(e))
    }
}

impl Fit {
    /// Keep `e` for [`StreamLoad`] to return; the reader stops on the stand-in.
    fn device_error(&mut self, e: Error) -> WeightsError {
        let w = WeightsError::Io(e.to_string());
        self.failed = Some(e);
        w
    }
}

impl StreamLoad {
    /// Load `model` (its head fitted to the weights; `config`, a timm config.json beside
    /// them, applied) from a file of `total` bytes where known, onto `target`. On a GPU
    /// storing f32 the conv and linear weights go to the device as they arrive.
    pub fn new(
        model: Model,
        config: Option<HubConfig>,
        target: &Target,
        total: Option<u64>,
    ) -> StreamLoad {
        let gpu = target
            .gpu_context()
            .filter(|c| c.precision() == Precision::F32)
            .cloned();
        let scopes = gpu.as_ref().map(GpuContext::error_scopes);
        let fit = Fit {
            model,
            gpu,
            ready: None,
            failed: None,
        };
        StreamLoad {
            reader: Reader::with_sink(total, fit),
            target: target.clone(),
            config,
            scopes,
        }
    }

    /// The file's next bytes. True when enough went to the device that the caller should
    /// wait for [`StreamLoad::settle`] before pushing more.
    pub fn push(&mut self, chunk: &[u8]) -> Result<bool> {
        if let Err(e) = self.reader.push(chunk) {
            return Err(self.reader.sink_mut().failed.take().unwrap_or(e.into()));
        }
        let stream = self
            .reader
            .sink_mut()
            .ready
            .as_ref()
            .and_then(|r| r.stream.as_ref());
        Ok(stream.is_some_and(|s| s.unsettled()))
    }

    /// The device to wait for after a push that asked (see [`StreamLoad::settled`]).
    pub fn device(&self) -> Option<GpuContext> {
        self.target.gpu_context().cloned()
    }

    /// The device has caught up with the writes so far.
    pub fn settled(&mut self) {
        if let Some(s) = self
            .reader
            .sink_mut()
            .ready
            .as_mut()
            .and_then(|r| r.stream.as_mut())
        {
            s.settled();
        }
    }

    /// Wait until the device has taken the writes so far.
    pub async fn settle(&mut self) -> Result<()> {
        if let Some(ctx) = self.device() {
            GpuStream::settle(&ctx).await?;
        }
        self.settled();
        Ok(())
    }

    /// The model with its session, once every byte has been pushed.
    pub async fn finish(self) -> Result<Streamed> {
        let StreamLoad {
            reader,
            target,
            config,
            scopes,
        } = self;
        let r = async {
            let (map, notices, mut fit) = match reader.finish_with_sink() {
                Ok(v) => v,
                Err(e) => return Err(e.into()),
            };
            if let Some(e) = fit.failed.take() {
                return Err(e);
            }
            let (model, session, non_finite) = match fit.ready {
                // A checkpoint, read whole: fitted and checked as one map.
                None => {
                    let l = weights::fit(fit.model, weights::map_timm_keys(map), vec![])?;
                    let session =
                        Session::load(&l.model.default_graph(1), l.tensors, &target).await?;
                    (l.model, session, l.non_finite)
                }
                Some(ready) => {
                    let Ready {
                        model,
                        graph,
                        keys,
                        stream,
                        non_finite,
                    } = ready;
                    let mut bad = non_finite;
                    let map: TensorMap = map
                        .into_iter()
                        .map(|(k, t)| {
                            let (g, shape) = keys[&k].clone();
                            let t = if t.shape() != shape.as_slice() {
                                t.reshape(shape).expect("same count")
                            } else {
                                t
                            };
                            (g, t)
                        })
                        .collect();
                    bad.extend(non_finite_keys(&map));
                    let session = match stream {
                        Some(s) => Session::with_gpu_weights(
                            &graph,
                            s.finish(&graph, &map).await?,
                            &target,
                        ),
                        None => Session::load(&graph, map, &target).await?,
                    };
                    (model, session, bad.into_iter().collect())
                }
            };
            let model = match &config {
                Some(c) => c.apply(model)?,
                None => model,
            };
            Ok(Streamed {
                model,
                session,
                non_finite,
                notices,
            })
        }
        .await;
        if let Some(scopes) = scopes {
            if let (Ok(_), Some(e)) = (&r, scopes.finish().await) {
                return Err(Error::Gpu(format!("uploading the weights: {e}")));
            }
        }
        r
    }
}

fn non_finite_keys(map: &TensorMap) -> Vec<String> {
    map.iter()
        .filter(|(_, t)| t.data().iter().any(|v| !v.is_finite()))
        .map(|(k, _)| k.clone())
        .collect()
}

/// An ONNX model arriving in pieces: its graph and weights are one protobuf message, read
/// whole once the last byte is in ([`OnnxLoad::finish`]). Initializers kept in external
/// files ([`OnnxLoad::external_files`]) arrive the same way ([`OnnxLoad::push_external`]).
pub struct OnnxLoad {
    id: String,
    bytes: Vec<u8>,
    /// The message, once decoded to list its external files (the bytes are then dropped).
    decoded: Option<crate::onnx::proto::ModelProto>,
    external: HashMap<String, Vec<u8>>,
    target: Target,
}

/// Protobuf's own limit on a message: larger models keep their weights in external files.
const ONNX_MAX_BYTES: usize = (2u64 << 30) as usize - 1;

impl OnnxLoad {
    /// Load the ONNX model named `id` (the file's stem; the model's id in its info) from
    /// a file of `total` bytes where known, onto `target`.
    pub fn new(id: &str, target: &Target, total: Option<u64>) -> OnnxLoad {
        let reserve = total.map_or(0, |t| t.min(ONNX_MAX_BYTES as u64) as usize);
        OnnxLoad {
            id: id.to_string(),
            bytes: Vec::with_capacity(reserve),
            decoded: None,
            external: HashMap::new(),
            target: target.clone(),
        }
    }

    /// The file's next bytes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.decoded.is_some() {
            return Err(Error::BadArgument(
                "the model's bytes came after its external files were asked for".into(),
            ));
        }
        if self.bytes.len().saturating_add(chunk.len()) > ONNX_MAX_BYTES {
            return Err(crate::onnx::OnnxError::Format(format!(
                "over {ONNX_MAX_BYTES} bytes, protobuf's limit for one message (a larger model keeps its weights in external data files)"
            ))
            .into());
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    /// Once every byte of the model is in: the external files its initializers are kept
    /// in (names relative to the model's folder), which [`OnnxLoad::push_external`] takes.
    pub fn external_files(&mut self) -> Result<Vec<String>> {
        if self.decoded.is_none() {
            let m = crate::onnx::OnnxModel::decode(&self.bytes)?;
            self.bytes = Vec::new();
            self.decoded = Some(m);
        }
        Ok(crate::onnx::OnnxModel::external_files(
            self.decoded.as_ref().expect("decoded"),
        ))
    }

    /// The next bytes of external file `location` (`start`: from its beginning, dropping
    /// what came before, as when a download starts over).
    pub fn push_external(&mut self, location: &str, chunk: &[u8], start: bool) -> Result<()> {
        let file = self.external.entry(location.to_string()).or_default();
        if start {
            *file = Vec::new();
        }
        if file.len().saturating_add(chunk.len()) > u32::MAX as usize {
            return Err(crate::onnx::OnnxError::Format(format!(
                "external data '{location}' is over 4 GiB"
            ))
            .into());
        }
        file.extend_from_slice(chunk);
        Ok(())
    }

    /// The model with its session, once every byte has been pushed.
    pub async fn finish(self) -> Result<Streamed> {
        let OnnxLoad {
            id,
            bytes,
            decoded,
            external,
            target,
        } = self;
        let read = |location: &str, offset: u64, len: Option<u64>| -> std::io::Result<Vec<u8>> {
            let file = external.get(location).ok_or_else(|| {
                std::io::Error::other(
                    "not given (where the model is a URL or path, it is read from beside it)",
                )
            })?;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(file.len());
            let end = match len {
                Some(l) => start.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)),
                None => file.len(),
            };
            file.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} bytes at {offset} are past the file's {}",
                    end - start,
                    file.len()
                ))
            })
        };
        let decoded = match decoded {
            Some(m) => m,
            None => crate::onnx::OnnxModel::decode(&bytes)?,
        };
        drop(bytes);
        let m = crate::onnx::OnnxModel::from_proto(decoded, Some(&read))?;
        drop(external);
        let l = weights::onnx_model_loaded(&id, m)?;
        let session = Session::load(&l.model.default_graph(1), l.tensors, &target).await?;
        Ok(Streamed {
            model: l.model,
            session,
            non_finite: l.non_finite,
            notices: l.notices,
        })
    }
}
