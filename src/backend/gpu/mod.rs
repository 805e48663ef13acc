//! The GPU backend on wgpu: WebGPU in the browser, Vulkan / Metal / DX12 natively.
//!
//! Kernels live in `shaders/*.wgsl`, one file per op family, each with its Rust side in
//! `kernels/` (uniforms, buffers, constants, grids); layer shapes reach them as uniforms,
//! so one pipeline per kernel serves every layer.

mod context;
mod kernels;
mod model;
mod tuning;
mod weights;

#[cfg(not(target_arch = "wasm32"))]
pub use context::list_adapters;
pub use context::{ErrorScopes, GpuContext, GpuOptions, Kernels};
pub use kernels::Precision;
pub use model::{GpuModel, MemoryReport, StepClock};
pub use tuning::Tuning;
pub use weights::{GpuStream, GpuWeights};

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A one-shot value handed from a wgpu callback to an `async` caller.
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

pub(crate) struct OneShot<T>(Arc<Mutex<Slot<T>>>);

impl<T> OneShot<T> {
    pub(crate) fn new() -> Self {
        OneShot(Arc::new(Mutex::new(Slot {
            value: None,
            waker: None,
        })))
    }
    /// A setter for the callback.
    pub(crate) fn sender(&self) -> impl FnOnce(T) + use<T> {
        let s = self.0.clone();
        move |v| {
            let mut g = s.lock().unwrap();
            g.value = Some(v);
            if let Some(w) = g.waker.take() {
                w.wake();
            }
        }
    }
}

impl<T> Future for OneShot<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut g = self.0.lock().unwrap();
        match g.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
