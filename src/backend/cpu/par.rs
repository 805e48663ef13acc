//! Running a step's units in parallel: on the run's crew natively, rayon where a wasm
//! build has threads, in order where it has none; and each thread's scratch buffer.

#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
use rayon::prelude::*;

/// Floats a parallel task should touch at least: below this, waking a thread and splitting
/// costs more than the work (ResNet-50's 7x7 maps have 2048 planes of 49 floats).
#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
const GRAIN: usize = 16 * 1024;

/// `f(i, chunk)` over `out` split into `len`-sized chunks, in parallel where threads exist;
/// chunks are grouped so that each task touches about [`GRAIN`] floats or more.
pub(super) fn par_chunks(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    par_chunks_work(out, len, len, f)
}

/// [`par_chunks`] where each chunk touches `work` floats (its input, for a reduction).
pub(super) fn par_chunks_work(
    out: &mut [f32],
    len: usize,
    work: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let len = len.max(1);
    #[cfg(not(target_arch = "wasm32"))]
    {
        // The run's crew takes runs of chunks, a few per thread, each touching `GRAIN`
        // floats or more.
        let chunks = out.len().div_ceil(len);
        let min = GRAIN.div_ceil(work.max(1));
        let units = chunks.div_ceil(min).min(threads() * 8).max(1);
        let (total, dst) = (out.len(), OutPtr(out.as_mut_ptr()));
        let unit = |u: usize| {
            for i in u * chunks / units..(u + 1) * chunks / units {
                let at = i * len;
                // SAFETY: chunk i is `out[at..at + len]` (the last may be short): the units
                // cover disjoint runs of chunks.
                let c = unsafe { std::slice::from_raw_parts_mut(dst.at(at), len.min(total - at)) };
                f(i, c);
            }
        };
        if super::crew::par(units, unit).is_ok() {
            return;
        }
    }
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    out.par_chunks_mut(len)
        .enumerate()
        .with_min_len(GRAIN.div_ceil(work.max(1)))
        .for_each(|(i, c)| f(i, c));
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        let _ = work;
        out.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `f(i)` for `i` in `0..count`, in parallel where threads exist.
pub(super) fn par_for(count: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    let Err(f) = super::crew::par(count, f) else {
        return;
    };
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    (0..count).into_par_iter().for_each(f);
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    (0..count).for_each(f);
}

/// [`par_chunks`] with this thread's scratch buffer of `scratch` floats ([`with_scratch`]).
pub(super) fn par_chunks_scratch(
    out: &mut [f32],
    len: usize,
    work: usize,
    scratch: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    par_chunks_work(out, len, work, |i, c| with_scratch(scratch, |s| f(i, c, s)));
}

/// `f` with this thread's scratch buffer of `len` floats: kept from call to call, so no
/// allocation once it is large enough; it holds whatever an earlier use left.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            if s.len() < len {
                s.resize(len, 0.0);
            }
            f(&mut s[..len])
        }
        // In use further up this thread's stack (a nested parallel call): a buffer of its own.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

pub(super) fn parallelism() -> gemm_common::Parallelism {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        gemm_common::Parallelism::Rayon(rayon::current_num_threads())
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        gemm_common::Parallelism::None
    }
}

/// The output pointer shared by tiles that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);

// SAFETY: every tile writes only its own rows x columns of the output (see `kernels::conv2d`, `direct`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the whole (Send + Sync) wrapper, not the raw field.
    pub(super) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

pub(super) fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        1
    }
}

/// Run `f(task, scratch)` for every task, in parallel where threads exist, with the
/// thread's scratch buffer of `scratch` floats ([`with_scratch`]).
pub(super) fn par_tasks<T: Sync>(
    tasks: &[T],
    scratch: usize,
    f: impl Fn(&T, &mut [f32]) + Sync + Send,
) {
    let run = |t: &T| with_scratch(scratch, |buf| f(t, buf));
    #[cfg(not(target_arch = "wasm32"))]
    let Err(run) = super::crew::par(tasks.len(), |i| run(&tasks[i])).map_err(|_| run) else {
        return;
    };
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    tasks.par_iter().for_each(run);
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    tasks.iter().for_each(run);
}
