//! The values that cross the wasm binding's boundary as JS values: tensors as
//! `Float32Array`, failures as `Error`s with a `code`. The plain values (options, facts,
//! predictions) are the shared ones of [`crate::binding`], whose TypeScript declarations
//! tsify writes into the binding's `webcnn.d.ts`, which the package's `index.d.ts`
//! re-exports. What JS hands in is checked here, once.

use crate::binding::{CamMap as RustCam, Failure};
use crate::Tensor as RustTensor;
use js_sys::Float32Array;
use serde::Serialize;
use tsify::Tsify;
use wasm_bindgen::prelude::*;

/// A JS `Error` with the failure's `code`.
pub fn js_err(f: Failure) -> JsValue {
    coded(f.code, &f.message)
}

/// A JS `Error` with `message` and `code`.
pub fn coded(code: &str, message: &str) -> JsValue {
    let o = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&o, &"code".into(), &code.into());
    o.into()
}

pub fn js_bad(msg: impl Into<String>) -> JsValue {
    js_err(crate::binding::bad(msg))
}

/// `v` as a JS object: maps as plain objects, `None` as `null` (what the types declare).
pub fn to_js<T: Serialize>(v: &T) -> JsValue {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or_else(|e| js_bad(format!("internal: a result did not convert: {e}")))
}

/// What JS passed, parsed into `T`; a mismatch is a BAD_ARGUMENT saying what did not fit.
pub fn from_js<T: serde::de::DeserializeOwned>(v: JsValue) -> Result<T, JsValue> {
    serde_wasm_bindgen::from_value(v).map_err(|e| {
        let msg = e.to_string();
        js_bad(msg.strip_prefix("Error: ").unwrap_or(&msg))
    })
}

/// A whole number in `min..=u32::MAX` (JS numbers are doubles; a string is not one).
pub fn whole(v: &JsValue, what: &str, min: u32) -> Result<u32, JsValue> {
    v.as_f64()
        .filter(|d| d.fract() == 0.0 && *d >= min as f64 && *d <= u32::MAX as f64)
        .map(|d| d as u32)
        .ok_or_else(|| {
            let shown = v
                .as_string()
                .map_or_else(|| format!("{v:?}"), |s| format!("'{s}'"));
            js_bad(format!(
                "{what} must be {} integer, not {shown}",
                if min == 0 {
                    "a non-negative"
                } else {
                    "a positive"
                }
            ))
        })
}

// The zoo's ids, a union type the package build writes from the crate's list (models.d.ts).
#[wasm_bindgen(typescript_custom_section)]
const MODEL_ID: &str = "import type { ModelId } from '../models.js';";

/// Values and their shape (row-major).
#[derive(Tsify, Serialize)]
pub struct Tensor {
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(type = "Float32Array")]
    pub data: JsValue,
    pub shape: Vec<u32>,
}

impl From<RustTensor> for Tensor {
    fn from(t: RustTensor) -> Self {
        Tensor {
            data: Float32Array::from(t.data()).into(),
            shape: crate::binding::dims(t.shape()),
        }
    }
}

/// Named outputs, in the order asked for (a JS object).
pub struct Outputs(pub Vec<(String, Tensor)>);

impl Serialize for Outputs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A class activation map.
#[derive(Tsify, Serialize)]
pub struct CamMap {
    /// h * w values in [0, 1], row-major.
    #[serde(with = "serde_wasm_bindgen::preserve")]
    #[tsify(type = "Float32Array")]
    pub data: JsValue,
    pub shape: [u32; 2],
    /// The class mapped (the top class unless one was asked for).
    pub class: u32,
}

impl From<RustCam> for CamMap {
    fn from(c: RustCam) -> Self {
        CamMap {
            data: Float32Array::from(&c.data[..]).into(),
            shape: c.shape,
            class: c.class,
        }
    }
}
