//! The JavaScript API (wasm-bindgen), used by the demo's Web Worker and the npm package:
//! a classifier over the same `Session` as the CLI, on WebGPU or the CPU backend.

use crate::backend::gpu::{GpuContext, GpuOptions};
use crate::engine::{top_k, Session};
use crate::models::{ids, Model};
use crate::weights::{self, TensorMap};
use crate::{Graph, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// Every model id.
#[wasm_bindgen(js_name = modelIds)]
pub fn model_ids() -> Vec<String> {
    ids()
}

/// A model's facts as JSON: params, MACs, input, labels, feature nodes.
#[wasm_bindgen(js_name = modelInfo)]
pub fn model_info(id: &str) -> Result<String, JsValue> {
    let m = Model::get(id).map_err(js)?;
    Ok(serde_json::json!({
        "id": m.id,
        "params": m.param_count(),
        "macs": m.macs(),
        "input": m.input,
        "labels": format!("{:?}", m.labels),
        "featureNodes": m.feature_nodes(),
        "cam": m.id.starts_with("resnet"),
    })
    .to_string())
}

/// One feature map (or class activation map): `channels` planes of `height` x `width`.
#[wasm_bindgen(getter_with_clone)]
pub struct FeatureMap {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

struct Inner {
    model: Model,
    weights: TensorMap,
    ctx: Option<GpuContext>,
    main: Session,
    /// Sessions returning intermediate outputs, by requested nodes.
    extra: HashMap<String, Session>,
}

impl Inner {
    fn input_graph(&self, outputs: &[&str]) -> Result<Graph, JsValue> {
        let g = self.model.default_graph(1);
        if outputs.is_empty() {
            return Ok(g);
        }
        g.with_outputs(outputs).map_err(js)
    }

    fn tensor(&self, image: &[u8]) -> Result<Tensor, JsValue> {
        let img = crate::preprocess::decode(image).map_err(js)?;
        Ok(crate::preprocess::batch(&[img], &self.model.preprocess))
    }

    async fn outputs(&mut self, image: &[u8], nodes: &[&str]) -> Result<Vec<Tensor>, JsValue> {
        let x = self.tensor(image)?;
        let key = nodes.join(",");
        if !self.extra.contains_key(&key) {
            let g = self.input_graph(nodes)?;
            let s = Session::prepare(&g, &self.weights, self.ctx.as_ref())
                .await
                .map_err(js)?;
            self.extra.insert(key.clone(), s);
        }
        let s = self.extra.get_mut(&key).expect("inserted");
        s.run(&x).await.map_err(js)
    }
}

/// Run `f` on the classifier's state as a Promise. The state is moved into the future and
/// back, so overlapping calls get a clear "busy" error instead of a RefCell panic.
fn with_inner<F, Fut>(cell: &Rc<RefCell<Option<Inner>>>, f: F) -> js_sys::Promise
where
    F: FnOnce(Inner) -> Fut + 'static,
    Fut: std::future::Future<Output = (Inner, Result<JsValue, JsValue>)> + 'static,
{
    let cell = cell.clone();
    wasm_bindgen_futures::future_to_promise(async move {
        let inner = cell
            .borrow_mut()
            .take()
            .ok_or_else(|| js("the classifier is busy or was freed"))?;
        let (inner, r) = f(inner).await;
        *cell.borrow_mut() = Some(inner);
        r
    })
}

/// A model prepared on WebGPU (or the CPU backend when WebGPU is missing).
#[wasm_bindgen]
pub struct Classifier {
    inner: Rc<RefCell<Option<Inner>>>,
    /// The device, also reachable while a run holds `inner`.
    ctx: Option<GpuContext>,
    backend: String,
    notice: Option<String>,
}

#[wasm_bindgen]
impl Classifier {
    /// Prepare `model_id` with safetensors `weights` (or synthetic weights of `seed` when
    /// absent). `device`: "auto" (WebGPU, else CPU), "gpu" or "cpu". Resolves to a Classifier.
    pub fn create(
        model_id: String,
        weights: Option<Vec<u8>>,
        seed: u32,
        device: String,
    ) -> js_sys::Promise {
        wasm_bindgen_futures::future_to_promise(async move {
            let model = Model::get(&model_id).map_err(js)?;
            let graph = model.default_graph(1);
            let weights = match weights {
                Some(bytes) => weights::from_bytes(&graph, &bytes).map_err(js)?.0,
                None => weights::synthetic(&graph, seed as u64),
            };
            let (ctx, notice) = match device.as_str() {
                "cpu" => (None, Some("CPU backend requested".to_string())),
                "gpu" => (
                    Some(GpuContext::new(GpuOptions::default()).await.map_err(js)?),
                    None,
                ),
                _ => match GpuContext::new(GpuOptions::default()).await {
                    Ok(c) => (Some(c), None),
                    Err(e) => (
                        None,
                        Some(format!(
                            "WebGPU unavailable ({e}); running on the CPU (wasm)"
                        )),
                    ),
                },
            };
            let backend = match &ctx {
                Some(c) => {
                    let i = c.adapter_info();
                    let name = [&i.name, &i.driver, &i.driver_info]
                        .into_iter()
                        .find(|s| !s.is_empty())
                        .cloned()
                        .unwrap_or_else(|| format!("{:?}", i.device_type));
                    format!("WebGPU: {name}")
                }
                None => "CPU (wasm)".to_string(),
            };
            let main = Session::prepare(&graph, &weights, ctx.as_ref())
                .await
                .map_err(js)?;
            let gpu = ctx.clone();
            let inner = Inner {
                model,
                weights,
                ctx,
                main,
                extra: HashMap::new(),
            };
            Ok(Classifier {
                inner: Rc::new(RefCell::new(Some(inner))),
                ctx: gpu,
                backend,
                notice,
            }
            .into())
        })
    }

    /// "WebGPU: <adapter>" or "CPU (wasm)".
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// Destroy the GPU device, as a driver reset or a lost GPU would: for testing recovery.
    #[wasm_bindgen(js_name = debugLoseDevice)]
    pub fn debug_lose_device(&self) -> bool {
        match &self.ctx {
            Some(ctx) => {
                ctx.shared.device.destroy();
                true
            }
            None => false,
        }
    }

    /// Why the CPU runs instead of WebGPU, if it does.
    #[wasm_bindgen(getter)]
    pub fn notice(&self) -> Option<String> {
        self.notice.clone()
    }

    /// Top-`top` predictions for encoded image bytes, as JSON
    /// `[{"class": i, "label": "...", "probability": p}, ...]`.
    pub fn classify(&self, image: Vec<u8>, top: usize) -> js_sys::Promise {
        with_inner(&self.inner, move |mut inner| async move {
            let r = async {
                let x = inner.tensor(&image)?;
                let logits = inner.main.run(&x).await.map_err(js)?.remove(0);
                let labels = inner.model.labels.names();
                let preds: Vec<_> = top_k(logits.data(), top)
                    .into_iter()
                    .map(|(c, p)| serde_json::json!({"class": c, "label": labels[c], "probability": p}))
                    .collect();
                Ok(JsValue::from_str(&serde_json::Value::from(preds).to_string()))
            }
            .await;
            (inner, r)
        })
    }

    /// The output of graph node `node` (e.g. `layer2`, `features.22`) for an image.
    pub fn features(&self, image: Vec<u8>, node: String) -> js_sys::Promise {
        with_inner(&self.inner, move |mut inner| async move {
            let r = inner.outputs(&image, &[&node]).await.map(|mut v| {
                let t = v.remove(0);
                let s = t.shape().to_vec();
                let (c, h, w) = match s.len() {
                    4 => (s[1], s[2], s[3]),
                    _ => (1, 1, s[1]),
                };
                JsValue::from(FeatureMap {
                    channels: c,
                    height: h,
                    width: w,
                    data: t.into_data(),
                })
            });
            (inner, r)
        })
    }

    /// Class activation map of a ResNet (GAP + fc): the fc row of `class` (the top class
    /// when negative) weighting `layer4`, scaled to [0, 1]. Resolves to a FeatureMap.
    pub fn cam(&self, image: Vec<u8>, class: i32) -> js_sys::Promise {
        with_inner(&self.inner, move |mut inner| async move {
            let r = async {
                if !inner.model.id.starts_with("resnet") {
                    return Err(js(format!(
                        "class activation maps need a ResNet, not {}",
                        inner.model.id
                    )));
                }
                let mut outs = inner.outputs(&image, &["layer4", "fc"]).await?;
                let logits = outs.remove(1);
                let feat = outs.remove(0);
                let cls = if class >= 0 {
                    class as usize
                } else {
                    top_k(logits.data(), 1)[0].0
                };
                let (c, h, w) = (feat.shape()[1], feat.shape()[2], feat.shape()[3]);
                let fc = &inner.weights["fc.weight"];
                let row = &fc.data()[cls * c..(cls + 1) * c];
                let mut map = vec![0f32; h * w];
                for (ch, &wt) in row.iter().enumerate() {
                    let plane = &feat.data()[ch * h * w..(ch + 1) * h * w];
                    map.iter_mut().zip(plane).for_each(|(m, &v)| *m += wt * v);
                }
                let (lo, hi) = map
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let span = if hi > lo { hi - lo } else { 1.0 };
                map.iter_mut().for_each(|v| *v = (*v - lo) / span);
                Ok(JsValue::from(FeatureMap {
                    channels: 1,
                    height: h,
                    width: w,
                    data: map,
                }))
            }
            .await;
            (inner, r)
        })
    }
}
