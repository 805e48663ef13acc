// webcnn: AlexNet, VGG and ResNet on WebGPU or the CPU (wasm), in browsers and Node.
// This module is the public API; the wasm binding (`./wasm/webcnn.js`, made from the
// crate's src/wasm/) does the work; on cross-origin isolated pages its threaded build
// (`./wasm-mt/`) computes on a pool of web workers. Environment specifics (finding the wasm,
// the weights cache) live in env-browser.js / env-node.js; `node.js` selects the latter.
import MODELS from './models.js';
import ERROR_CODES from './codes.js';
import * as browserEnv from './env-browser.js';

let env = browserEnv;
/** @internal Node's entry point installs its environment here. */
export function _setEnv(e) {
  env = e;
}

// The crate's error codes (generated from src/error.rs).
const CODES = new Set(ERROR_CODES);

/** Every error this package throws or rejects with. */
export class WebcnnError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = 'WebcnnError';
    this.code = code;
  }
}

function wrap(e) {
  if (e instanceof WebcnnError) return e;
  if (e && CODES.has(e.code)) return new WebcnnError(e.code, e.message);
  // A wasm trap or another unexpected failure.
  return new WebcnnError('INTERNAL', `internal error: ${(e && e.message) || e}`, { cause: e });
}

const fail = (code, message) => { throw new WebcnnError(code, message); };

function checkThreads(threads) {
  if (threads !== undefined && threads !== 'auto' && !(Number.isInteger(threads) && threads >= 1)) {
    fail('BAD_ARGUMENT', `threads must be 'auto' or a whole number >= 1, not ${threads}`);
  }
}

/** The threads the CPU backend may use here: 1 unless shared memory is allowed. */
function threadsAvailable(threads) {
  checkThreads(threads);
  if (!env.threadsSupported()) return 1;
  if (threads !== undefined && threads !== 'auto') return Math.min(threads, 64);
  const cores = (typeof navigator !== 'undefined' && navigator.hardwareConcurrency) || 1;
  // A worker sleeps while the pool computes, so the pool takes every core; a window's
  // thread may not sleep on shared memory and spins instead, so it leaves that core.
  return Math.max(1, Math.min(env.onMainThread() ? cores - 1 : cores, 64));
}

let ready = null;
let wasmModule = null;
// Bumped when the wasm instance traps: a trap (a Rust panic) leaves the instance's
// state half-updated, so the next call gets a fresh instance and models rebuild on it.
let generation = 0;

/** The wasm binding's JS module: a fresh module record (and instance) per generation. */
function importBinding(build) {
  if (generation === 0) {
    return build === 'wasm-mt' ? import('./wasm-mt/webcnn.js') : import('./wasm/webcnn.js');
  }
  const url = new URL(`./${build}/webcnn.js?instance=${generation}`, import.meta.url).href;
  return import(/* webpackIgnore: true */ /* @vite-ignore */ url);
}

/** A trap in the wasm (a panic, an out-of-bounds access): its instance is unusable. */
function trapped(e) {
  return typeof WebAssembly !== 'undefined' && e instanceof WebAssembly.RuntimeError;
}

// Per generation: a promise that rejects when that instance panics (its Rust panic
// hook calls back just before the trap), so calls in flight on it settle.
const panics = new Map();
function panicOf(gen) {
  if (!panics.has(gen)) {
    let reject;
    const promise = new Promise((_, r) => { reject = r; });
    promise.catch(() => {});
    panics.set(gen, { promise, reject, message: null });
  }
  return panics.get(gen);
}

/** Instance `gen` is done for: the next init makes a new one. */
function retireGeneration(gen, message) {
  const p = panicOf(gen);
  p.message ??= message;
  p.reject(new WebAssembly.RuntimeError(`panic: ${p.message}`));
  if (gen === generation) {
    generation++;
    ready = null;
    wasmModule = null;
  }
}

/** After a trap in instance `gen`: retire it; true if `e` was a trap. */
function retire(e, gen) {
  if (!trapped(e)) return false;
  retireGeneration(gen, e.message);
  return true;
}

/** The panic message of instance `gen`, else what the trap said. */
function trapMessage(e, gen) {
  return panics.get(gen)?.message ?? e.message;
}
/**
 * Load the wasm module (done by `load` on first use). `wasm`: a URL, Response, bytes or
 * compiled module to use instead of the file next to this module (single-threaded build).
 * `threads`: the CPU backend's threads, 'auto' (default: every core where the page is
 * cross-origin isolated, else 1) or a number; fixed by the first call.
 */
let wasmExports = null;
/** Make `mod` the current instance, told to report its panics. */
function watch(mod, exports) {
  const gen = generation;
  mod.onPanic((message) => retireGeneration(gen, message));
  wasmModule = mod;
  wasmExports = exports;
}

let initOptions = {};
export function init({ wasm, threads, binding = 'auto' } = {}) {
  if (!ready) {
    ready = (async () => {
      if (!['auto', 'native', 'wasm'].includes(binding)) {
        fail('BAD_ARGUMENT', `binding must be 'auto', 'native' or 'wasm', not ${binding}`);
      }
      checkThreads(threads);
      // Node's native addon where its platform package is installed and loads, unless the
      // wasm is asked for (or given).
      if (binding !== 'wasm' && wasm === undefined && env.nativeBinding) {
        const found = await env.nativeBinding();
        if (found.binding) {
          const n = threads === undefined || threads === 'auto' ? null : Math.min(threads, 256);
          if (n !== null) found.binding.initThreadPool(n);
          wasmModule = found.binding;
          wasmExports = null;
          initOptions = { wasm, threads, binding };
          return;
        }
        if (binding === 'native') fail('BAD_ARGUMENT', `no native binding: ${found.why}`);
      } else if (binding === 'native') {
        fail('BAD_ARGUMENT', env.nativeBinding ? 'the native binding cannot take a `wasm` module' : 'the native binding is for Node; here the wasm runs');
      }
      const usable = threadsAvailable(threads);
      const n = wasm === undefined ? usable : 1;
      // `wasm` (given only for the single-threaded build, n = 1) replaces the bundled file.
      const build = n > 1 ? 'wasm-mt' : 'wasm';
      const mod = await importBinding(build);
      const exports = await mod.default({ module_or_path: wasm ?? await env.wasmSource(build) });
      if (n > 1) await mod.initThreadPool(n);
      watch(mod, exports);
      initOptions = { wasm, threads, binding };
    })();
    ready.catch(() => { ready = null; });
  }
  return ready;
}

/** The model zoo: id, parameter count, MACs, input size, label set, feature nodes. */
export function models() {
  return MODELS.map((m) => structuredClone(m));
}

/** Where the weights come from; `read` gives the bytes (again, after a device loss). */
// Weights reach the wasm in pieces of this size: a piece is copied into wasm memory and
// converted there, so neither JS nor wasm holds the whole file beside its tensors.
const PIECE = 4 << 20;

/**
 * Where the weights come from: `feed(open, onProgress)` streams them into the sink that
 * `await open(totalBytes | undefined)` gives (`await sink.push(chunk)` for each piece, in
 * order); `seed` for synthetic ones.
 */
function weightsSource(weights, opts) {
  if (typeof weights === 'string') {
    const syn = /^synthetic(?::(\d+))?$/.exec(weights);
    if (syn) {
      const seed = Number(syn[1] ?? 1);
      if (!Number.isSafeInteger(seed) || seed > 0xffffffff) fail('BAD_ARGUMENT', `bad synthetic seed in '${weights}'`);
      return { seed, feed: async () => {} };
    }
    let url = weights, key = weights;
    const file = weights.startsWith('hf:') ? null : env.localFile(weights);
    if (file) {
      return {
        feed: async (open) => {
          const { size, chunks } = await env.openFile(file);
          const sink = await open(size);
          for await (const c of chunks) await sink.push(c);
        },
      };
    } else if (weights.startsWith('hf:')) {
      const [repo, revision = 'main'] = weights.slice(3).split(/@(.*)/s, 2);
      // The Hub's rule for names (as the CLI checks it): no '..', '--' or separators.
      const part = (p) => /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/.test(p) && !p.includes('..') && !p.includes('--');
      if (repo.split('/').length !== 2 || !repo.split('/').every(part) || !part(revision)) {
        fail('BAD_ARGUMENT', `bad Hub repository '${weights.slice(3)}': use hf:OWNER/NAME or hf:OWNER/NAME@REVISION`);
      }
      const endpoint = (opts.hfEndpoint ?? env.hfEndpoint() ?? 'https://huggingface.co').replace(/\/+$/, '');
      const base = `${endpoint}/${repo}/resolve/${revision}`;
      const cache = opts.cache !== false;
      // timm's layout: config.json (if the repository has one), then model.safetensors,
      // else pytorch_model.bin.
      return {
        hub: true,
        config: async () => {
          const b = await downloadSmall(`${base}/config.json`, `${weights}#config.json`, cache);
          return b && new TextDecoder().decode(b);
        },
        feed: async (open, onProgress) => {
          if (await download(`${base}/model.safetensors`, weights, open, onProgress, cache, true)) return;
          if (await download(`${base}/pytorch_model.bin`, `${weights}#pytorch_model.bin`, open, onProgress, cache, true)) return;
          fail('DOWNLOAD', `'${weights.slice(3)}' has neither model.safetensors nor pytorch_model.bin (HTTP 404)`);
        },
      };
    } else if (typeof location !== 'undefined' && location.href) {
      url = new URL(weights, location.href).href;
      key = url;
    }
    return { feed: (open, onProgress) => download(url, key, open, onProgress, opts.cache !== false) };
  }
  const pushAll = (bytes) => async (open) => {
    const sink = await open(bytes.length);
    for (let o = 0; o < bytes.length; o += PIECE) await sink.push(bytes.subarray(o, o + PIECE));
  };
  if (weights instanceof ArrayBuffer) return { feed: pushAll(new Uint8Array(weights)) };
  if (ArrayBuffer.isView(weights)) {
    return { feed: pushAll(new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength)) };
  }
  if (typeof Blob !== 'undefined' && weights instanceof Blob) {
    return {
      feed: async (open) => {
        const sink = await open(weights.size);
        for await (const c of chunksOf(weights.stream())) await sink.push(c);
      },
    };
  }
  return fail('BAD_ARGUMENT', "weights must be a URL, 'hf:OWNER/NAME', 'synthetic:SEED', an ArrayBuffer, a Uint8Array or a Blob");
}

/**
 * A byte stream's chunks, read into one reused buffer where the stream lets a reader bring
 * its own (a fetch body, a Blob) and `reuse` allows: no garbage chunk per read for the
 * collector to catch up with. Each chunk is then valid until the next is asked for.
 */
export async function* chunksOf(stream, reuse = true) {
  let reader, buf = null;
  try {
    if (!reuse) throw new Error('a new buffer per chunk');
    reader = stream.getReader({ mode: 'byob' });
    buf = new ArrayBuffer(PIECE);
  } catch {
    reader = stream.getReader();
  }
  try {
    for (;;) {
      const { done, value } = await (buf ? reader.read(new Uint8Array(buf, 0, PIECE)) : reader.read());
      if (done) return;
      yield value;
      if (buf) buf = value.buffer;
    }
  } finally {
    reader.releaseLock();
  }
}

/** A small file's bytes (config.json), from the cache where kept; null for HTTP 404. */
async function downloadSmall(url, key, useCache) {
  const parts = [];
  const open = async () => ({ push: async (c) => { parts.push(c.slice()); } });
  if (!(await download(url, key, open, () => {}, useCache, true))) return null;
  const bytes = new Uint8Array(parts.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of parts) { bytes.set(c, off); off += c.length; }
  return bytes;
}

// A cache (the browser's storage, a disk) that makes no progress for this long is given up
// on and the network serves the load: a storage read that never ends must not hang a page.
const STALLED = Symbol('stalled');
const cacheStallMs = () => env.cacheStallMs ?? 30000;
function orStall(promise) {
  let timer;
  const stall = new Promise((resolve) => { timer = setTimeout(() => resolve(STALLED), cacheStallMs()); });
  return Promise.race([promise, stall]).finally(() => clearTimeout(timer));
}
const warn = (m) => (env.warn ?? console.warn)(`webcnn: ${m}`);

/**
 * Stream a cached copy into `open(total)`'s sink. False where the copy could not be read
 * (an error, or no data for a while): it is dropped, and the caller downloads instead.
 * The sink's own errors (a file that does not fit the model) pass through.
 */
async function fromCache(cached, key, open, onProgress) {
  const sink = await open(cached.size);
  const pieces = (cached.stream ? chunksOf(cached.stream) : cached.chunks)[Symbol.asyncIterator]();
  let loaded = 0;
  for (;;) {
    let next;
    try {
      next = await orStall(pieces.next());
      if (next === STALLED) throw new Error(`no data for ${cacheStallMs() / 1000} s`);
    } catch (e) {
      // Not waited for: a stalled read may never end.
      pieces.return?.()?.catch(() => {});
      warn(`the cached copy of ${key} could not be read (${(e && e.message) || e}); downloading it again`);
      await orStall(Promise.resolve(env.cacheDrop?.(key)).catch(() => {}));
      return false;
    }
    if (next.done) return true;
    await sink.push(next.value);
    loaded += next.value.length;
    onProgress({ phase: 'download', loaded, total: cached.size ?? loaded, cached: true });
  }
}

/**
 * Stream a URL (from the cache where kept) into `open(total)`'s sink, keeping it in the
 * cache as it arrives; false for HTTP 404 where `optional`. The sink's own errors (a bad
 * file) pass through; the network's are DOWNLOAD errors. `open` may be called again when
 * a cached copy breaks off.
 */
async function download(url, key, open, onProgress, useCache, optional = false) {
  if (useCache) {
    const cached = await orStall(env.cacheOpen(key).catch(() => null));
    if (cached === STALLED) {
      warn(`the cache did not answer for ${cacheStallMs() / 1000} s; ${key} is downloaded without it`);
      useCache = false;
    } else if (cached && (await fromCache(cached, key, open, onProgress))) {
      return true;
    }
  }
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    fail('DOWNLOAD', `network error downloading ${url}: ${(e && e.message) || e}`);
  }
  if (optional && resp.status === 404) return false;
  if (!resp.ok) fail('DOWNLOAD', `downloading ${url} failed: HTTP ${resp.status}`);
  // Content-Length counts the bytes on the wire: a compressed body (gzip, br) arrives
  // decoded, longer, so only an unencoded one is checked against it.
  const encoding = (resp.headers.get('content-encoding') || 'identity').trim().toLowerCase();
  const total = encoding === 'identity' ? Number(resp.headers.get('content-length')) || 0 : 0;
  let keep = useCache ? await orStall(env.cacheWriter(key, resp).catch(() => null)) : null;
  if (keep === STALLED) {
    warn(`the cache did not answer for ${cacheStallMs() / 1000} s; ${key} is downloaded without it`);
    keep = null;
  }
  let sink;
  try {
    sink = await open(total || undefined);
  } catch (e) {
    resp.body.cancel().catch(() => {});
    if (keep) await orStall(Promise.resolve(keep.abort()).catch(() => {}));
    throw e;
  }
  let loaded = 0;
  // A cache that keeps the pieces it is given (not `copies`) needs a fresh buffer each.
  const chunks = chunksOf(resp.body, !keep || keep.copies === true);
  try {
    for (;;) {
      let next;
      try {
        next = await chunks.next();
      } catch (e) {
        fail('DOWNLOAD', `downloading ${url} broke off after ${loaded} bytes: ${(e && e.message) || e}`);
      }
      if (next.done) break;
      const value = next.value;
      if (total && loaded + value.length > total) fail('DOWNLOAD', `downloading ${url}: more than the ${total} bytes announced`);
      await sink.push(value);
      // Kept before the next read (the cache takes each piece in turn).
      if (keep && (await orStall(keep.write(value))) === STALLED) {
        warn(`the cache took nothing for ${cacheStallMs() / 1000} s; ${key} is not kept`);
        Promise.resolve(keep.abort()).catch(() => {});
        keep = null;
      }
      loaded += value.length;
      onProgress({ phase: 'download', loaded, total });
    }
    if (total && loaded !== total) fail('DOWNLOAD', `downloading ${url}: got ${loaded} of ${total} bytes`);
  } catch (e) {
    chunks.return().catch(() => {});
    resp.body.cancel().catch(() => {});
    if (keep) await orStall(Promise.resolve(keep.abort()).catch(() => {}));
    throw e;
  }
  if (keep && (await orStall(keep.commit())) === STALLED) {
    warn(`the cache took nothing for ${cacheStallMs() / 1000} s; ${key} is not kept`);
  }
  return true;
}

/**
 * Load a model: weights fetched (and cached), checked against the model, and prepared
 * once on the device. Resolves to a Model.
 */
export async function load(options) {
  if (!options || typeof options !== 'object') fail('BAD_ARGUMENT', 'load() takes an options object: { model, weights, device }');
  const { device = 'auto', precision = 'f32', tuning = 'auto', onProgress } = options;
  let { model, weights } = options;
  // An ONNX model is its graph and weights in one file: given as `model` (or as
  // `weights` ending in .onnx), it is read like a weights file.
  const onnx = onnxModel(model, weights);
  if (onnx) {
    model = undefined;
    weights = onnx.source;
  }
  if (weights === undefined || weights === null) {
    fail('BAD_ARGUMENT', "weights are required: a URL, 'hf:OWNER/NAME', bytes, a Blob, or 'synthetic:SEED' for untrained weights");
  }
  checkThreads(options.threads);
  if (onProgress !== undefined && typeof onProgress !== 'function') fail('BAD_ARGUMENT', 'onProgress must be a function');
  const progress = (p) => { try { onProgress?.(p); } catch { /* the caller's callback */ } };
  const source = weightsSource(weights, options);
  try {
    await init({ wasm: options.wasm, threads: options.threads, binding: options.binding });
  } catch (e) {
    if (e instanceof WebcnnError) throw e;
    throw new WebcnnError('INTERNAL', `loading the wasm module failed: ${(e && e.message) || e}`, { cause: e });
  }
  // The engine's options; the binding checks them (a Hub repository's config.json may
  // name the architecture later) before any byte is fetched.
  const spec = { model, onnx: onnx?.name, device, precision, tuning, preprocess: options.preprocess ?? undefined };
  try {
    wasmModule.checkOptions(spec, Boolean(source.hub));
    spec.labels = await labelsText(options.labels);
    if (spec.labels !== undefined) wasmModule.checkOptions(spec, Boolean(source.hub));
  } catch (e) {
    throw wrap(e);
  }
  // Also what a model calls to prepare itself again (a lost device, a new instance).
  const create = async () => {
    const config = source.config ? await source.config().catch((e) => { throw wrap(e); }) : null;
    await init(initOptions).catch((e) => { throw wrap(e); });
    const gen = generation;
    const race = (p) => Promise.race([p, panicOf(gen).promise]);
    let loader = null;
    try {
      const cache = device === 'cpu' ? null : await env.tuningGet();
      let engine;
      if (source.seed !== undefined) {
        progress({ phase: 'prepare', loaded: 0, total: 1 });
        engine = await race(wasmModule.Engine.synthetic({ ...spec, seed: source.seed, tuningCache: cache ?? undefined }));
      } else {
        // The device is opened first; the weights then stream into it as they arrive (on
        // WebGPU the conv and linear weights go to the device piece by piece).
        const open = async (total) => {
          // A second call starts over (a cached copy that broke off is downloaded instead).
          try { loader?.free(); } catch { /* already consumed */ }
          loader = null;
          loader = await race(wasmModule.Engine.begin({ ...spec, tuningCache: cache ?? undefined, config: config ?? undefined }, total));
          return {
            push: async (chunk) => {
              if (await race(Promise.resolve(loader.push(chunk)))) await race(loader.settle());
            },
          };
        };
        await source.feed(open, progress);
        if (onnx) await feedExternal(loader, onnx.base, options.externalData, options, progress);
        progress({ phase: 'prepare', loaded: 0, total: 1 });
        engine = await race(loader.finish());
      }
      progress({ phase: 'prepare', loaded: 1, total: 1 });
      return { engine, gen, mod: wasmModule };
    } catch (e) {
      try { loader?.free(); } catch { /* a retired instance */ }
      retire(e, gen);
      throw wrap(e);
    }
  };
  const { engine, gen, mod } = await create();
  return new Model(engine, gen, mod, create);
}

const ONNX_NAME = /\.onnx(?:[?#].*)?$/i;

/**
 * `{ source, name }` where `model` is an ONNX model (bytes, a Blob or File, a URL, a path
 * or URL ending in .onnx) or `weights` is a path or URL ending in .onnx and `model` is
 * left out; else null. `name` (the file's stem) becomes the model's id.
 */
function onnxModel(model, weights) {
  const isUrl = typeof URL !== 'undefined' && model instanceof URL;
  const bytes = model instanceof ArrayBuffer || ArrayBuffer.isView(model);
  const blob = typeof Blob !== 'undefined' && model instanceof Blob;
  let source;
  if (isUrl || bytes || blob || (typeof model === 'string' && ONNX_NAME.test(model))) {
    if (weights !== undefined && weights !== null) {
      fail('BAD_ARGUMENT', 'an ONNX model holds its weights: leave `weights` out');
    }
    source = isUrl ? model.href : model;
  } else if ((model === undefined || model === null) && typeof weights === 'string' && ONNX_NAME.test(weights)) {
    source = weights;
  } else {
    return null;
  }
  // Where external data files are read from (beside the model), where it has a place.
  const base = typeof source === 'string' ? source : null;
  let where = typeof source === 'string' ? source : blob ? model.name ?? '' : '';
  where = where.replace(/[?#].*$/s, '').split(/[\\/]/).pop();
  const name = where.replace(/\.onnx$/i, '') || 'onnx';
  if (bytes && ArrayBuffer.isView(model)) source = new Uint8Array(model.buffer, model.byteOffset, model.byteLength);
  return { source, name, base };
}

/**
 * An ONNX model's external data files into `loader`: each from `given[location]` (bytes, a
 * Blob, a URL or path), else from beside the model (`base`, its URL or path). A location
 * may name only a file in the model's folder or below it.
 */
async function feedExternal(loader, base, given, options, onProgress) {
  for (const location of await loader.externalFiles()) {
    let src = given?.[location];
    if (src === undefined || src === null) {
      const inside = !/^([a-z][a-z0-9+.-]*:|[\\/])/i.test(location) && !location.split(/[\\/]/).includes('..');
      if (!inside) fail('WEIGHTS_FORMAT', `external data '${location}' is not in the model's folder`);
      if (base === null) {
        fail('WEIGHTS_FORMAT', `the model keeps weights in '${location}': pass it as externalData: { '${location}': bytes | Blob | URL }`);
      }
      if (env.localFile(base)) {
        src = base.replace(/[^\\/]*$/, '') + location;
      } else {
        const page = globalThis.location?.href;
        const from = page ? new URL(base, page) : new URL(base);
        src = new URL(location, from).href;
      }
    }
    const s = weightsSource(src instanceof URL ? src.href : src, options);
    if (s.seed !== undefined || s.hub) fail('BAD_ARGUMENT', `externalData '${location}' must be bytes, a Blob, a URL or a path`);
    let start = true;
    await s.feed(async () => {
      start = true;
      return { push: async (chunk) => { await loader.pushExternal(location, chunk, start); start = false; } };
    }, onProgress);
  }
}

/**
 * The `labels` option as the text the engine parses: an array of names, or a URL / local
 * path of a label file (lines, a JSON array or object, a timm config.json).
 */
async function labelsText(labels) {
  if (labels === undefined || labels === null) return undefined;
  if (Array.isArray(labels)) return JSON.stringify(labels);
  if (typeof Blob !== 'undefined' && labels instanceof Blob) return labels.text();
  if (typeof labels !== 'string' && !(typeof URL !== 'undefined' && labels instanceof URL)) {
    fail('BAD_ARGUMENT', 'labels must be an array of names, a label file (Blob / File), or its URL');
  }
  const where = String(labels);
  const file = env.localFile(where);
  try {
    if (file) return new TextDecoder().decode(await env.readFile(file));
    const url = typeof location !== 'undefined' ? new URL(where, location.href).href : where;
    const r = await fetch(url);
    if (!r.ok) fail('DOWNLOAD', `labels: ${url}: HTTP ${r.status}`);
    return await r.text();
  } catch (e) {
    if (e instanceof WebcnnError) throw e;
    throw new WebcnnError('IO', `labels: ${where}: ${(e && e.message) || e}`, { cause: e });
  }
}

/** The public `info` of an engine (the binding's `ModelInfo`), frozen. */
function describe(engine) {
  const info = engine.info;
  return Object.freeze({ ...info, classNames: Object.freeze(info.classNames) });
}

const IMAGE_HELP = 'an image is a Blob/File, encoded bytes (Uint8Array/ArrayBuffer), ImageData, ImageBitmap, an <img> or <canvas>, or { data, width, height, channels: 3 | 4 }';

/** Pixels of a browser image source (ImageBitmap, <img>, <canvas>, OffscreenCanvas, VideoFrame). */
async function drawnPixels(src) {
  if (typeof HTMLImageElement !== 'undefined' && src instanceof HTMLImageElement) {
    try { await src.decode(); } catch { fail('BAD_IMAGE', 'the <img> could not be decoded'); }
  }
  const width = src.naturalWidth || src.displayWidth || src.videoWidth || src.width;
  const height = src.naturalHeight || src.displayHeight || src.videoHeight || src.height;
  if (!width || !height) fail('BAD_IMAGE', 'the image has no size (not loaded yet?)');
  const canvas = typeof OffscreenCanvas !== 'undefined'
    ? new OffscreenCanvas(width, height)
    : Object.assign(document.createElement('canvas'), { width, height });
  const ctx = canvas.getContext('2d');
  ctx.drawImage(src, 0, 0, width, height);
  const d = ctx.getImageData(0, 0, width, height);
  return { kind: 'pixels', data: new Uint8Array(d.data.buffer), width, height, channels: 4 };
}

const isDrawable = (x) => ['ImageBitmap', 'HTMLImageElement', 'HTMLCanvasElement', 'OffscreenCanvas', 'VideoFrame']
  .some((t) => typeof globalThis[t] !== 'undefined' && x instanceof globalThis[t]);

/**
 * An image (or, with `tensors`, a `{ data: Float32Array, shape }`) as plain data: encoded
 * bytes, pixels, or a tensor. The binding checks it when the call makes its `Input`.
 */
async function readInput(x, { tensors = false } = {}) {
  if (x instanceof Uint8Array) return { kind: 'encoded', bytes: x };
  if (x instanceof ArrayBuffer) return { kind: 'encoded', bytes: new Uint8Array(x) };
  if (typeof Blob !== 'undefined' && x instanceof Blob) {
    return { kind: 'encoded', bytes: new Uint8Array(await x.arrayBuffer()) };
  }
  if (isDrawable(x)) return drawnPixels(x);
  if (x && typeof x === 'object') {
    if (tensors && x.data instanceof Float32Array) return { kind: 'tensor', data: x.data, shape: x.shape };
    if ((x.data instanceof Uint8Array || x.data instanceof Uint8ClampedArray) && x.width && x.height) {
      const channels = x.channels ?? (typeof ImageData !== 'undefined' && x instanceof ImageData ? 4 : x.data.length / (x.width * x.height));
      return { kind: 'pixels', data: x.data, width: x.width, height: x.height, channels };
    }
  }
  return fail('BAD_ARGUMENT', tensors ? `${IMAGE_HELP}, or a tensor { data: Float32Array, shape }` : IMAGE_HELP);
}

/** The binding's `Input` (of instance `mod`) for what `readInput` gave. */
function makeInput(mod, d) {
  if (d.kind === 'encoded') return mod.Input.encoded(d.bytes);
  if (d.kind === 'pixels') return mod.Input.pixels(d.data, d.width, d.height, d.channels);
  const input = mod.Input.tensor(d.data, d.shape);
  // NaN / Inf run through (the outputs they reach are NaN too, as in PyTorch), with a warning.
  if (input.nonFinite) console.warn(`webcnn: ${input.nonFinite} of ${d.data.length} input values are NaN or Inf; the outputs they reach will be too`);
  return input;
}

/** A model loaded on one device. Calls may overlap: they run one after another. */
export class Model {
  #engine;
  #gen; // the wasm instance generation the engine lives in
  #mod; // that instance's binding
  #info;
  #create;
  #queue = Promise.resolve();
  #disposed = false;

  constructor(engine, gen, mod, create) {
    this.#engine = engine;
    this.#gen = gen;
    this.#mod = mod;
    this.#info = describe(engine);
    this.#create = create;
  }

  /** `{ id, backend, adapter, precision, threads, tunedShapes, notice, inputSize, preprocess, labels, numClasses, classNames, featureNodes, cam, notices, warnings }`. */
  get info() {
    return this.#info;
  }

  #run(f) {
    const p = this.#queue.then(() => this.#call(f));
    this.#queue = p.catch(() => {});
    return p;
  }

  async #call(f) {
    const r = await this.#callOnce(f);
    // Kernel choices the call timed on this adapter (its first run of an input size
    // prepares a plan) are kept for the next load.
    if (this.#info.backend === 'webgpu' && this.#engine) {
      const n = this.#engine.tunedShapes();
      if (n !== this.#info.tunedShapes) {
        this.#info = Object.freeze({ ...this.#info, tunedShapes: n });
        await env.tuningPut(this.#engine.tuningCache());
      }
    }
    return r;
  }

  /** The wasm's CPU backend answers before it returns (a call there never waits). */
  #sync() {
    return this.#info.backend === 'cpu' && this.#info.binding === 'wasm';
  }

  async #callOnce(f) {
    if (this.#disposed) fail('DISPOSED', 'this model was disposed');
    // A recovery that failed earlier is tried again; an engine of a retired (trapped)
    // instance is left to that instance and made again on the current one.
    if (this.#gen !== generation) this.#engine = null;
    if (!this.#engine) await this.#recreate();
    const gen = this.#gen;
    try {
      // The CPU backend answers synchronously, so a trap is an exception here; a WebGPU
      // call may trap in a microtask, and then the instance's panic hook settles it.
      return await Promise.race([f(this.#engine, this.#sync(), this.#mod), panicOf(gen).promise]);
    } catch (e) {
      if (retire(e, gen)) {
        this.#engine = null;
        throw new WebcnnError('INTERNAL', `internal error (the wasm module trapped: ${trapMessage(e, gen)}); the model is prepared again on the next call`, { cause: e });
      }
      // The native addon dropped the model a panic left half-updated; other models run on.
      if (e && e.panicked) {
        this.#engine = null;
        throw new WebcnnError('INTERNAL', `internal error (the native binding panicked: ${e.message}); the model is prepared again on the next call`, { cause: e });
      }
      const err = wrap(e);
      // A lost GPU device: prepare the model on a new device once, then run again.
      if (this.#info.backend === 'cpu' || !['DEVICE_LOST', 'GPU'].includes(err.code)) throw err;
      try { this.#engine.free(); } catch { /* already gone with the device */ }
      this.#engine = null;
      try {
        await this.#recreate();
      } catch (e2) {
        if (e2.code === 'DISPOSED') throw e2;
        throw new WebcnnError(err.code, `${err.message}; preparing the model on a new device failed: ${e2.message}`, { cause: e2 });
      }
      try {
        return await f(this.#engine, this.#sync(), this.#mod);
      } catch (e3) {
        throw wrap(e3);
      }
    }
  }

  async #recreate() {
    const { engine, gen, mod } = await this.#create();
    if (this.#disposed) {
      engine.free();
      fail('DISPOSED', 'this model was disposed');
    }
    this.#engine = engine;
    this.#gen = gen;
    this.#mod = mod;
    // 'auto' may land on the CPU if no GPU comes back.
    this.#info = describe(engine);
  }

  /** Top-`topK` classes of one image: `[{ index, label, probability }]`, best first. */
  classify(image, { topK = 5 } = {}) {
    return this.#run(async (e, sync, mod) => {
      const x = makeInput(mod, await readInput(image));
      return (await (sync ? e.classifySync(x, topK) : e.classify(x, topK)))[0];
    });
  }

  /** The model on a `[n, 3, h, w]` float32 tensor (already normalised): the logits. */
  forward(data, shape) {
    return this.#run((e, sync, mod) => {
      const x = makeInput(mod, { kind: 'tensor', data, shape });
      return sync ? e.forwardSync(x) : e.forward(x);
    });
  }

  /** Outputs of torchvision nodes (`layer2`, `features.29`, ...) for an image or tensor. */
  features(input, nodes) {
    return this.#run(async (e, sync, mod) => {
      const x = makeInput(mod, await readInput(input, { tensors: true }));
      return sync ? e.featuresSync(x, nodes) : e.features(x, nodes);
    });
  }

  /** Class activation map of a ResNet: `{ data, shape: [h, w], class }`, values in [0, 1]. */
  cam(image, options = {}) {
    return this.#run(async (e, sync, mod) => {
      const x = makeInput(mod, await readInput(image));
      return sync ? e.camSync(x, options.class) : e.cam(x, options.class);
    });
  }

  /** Free the weights and buffers; later calls reject with code 'DISPOSED'. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#gen === generation) {
      try { this.#engine?.free(); } catch { /* already freed */ }
    }
    this.#engine = null;
  }

  /** @internal Bytes of the current wasm instance's memory (the soak tests watch it). */
  [Symbol.for('webcnn.wasmMemory')]() {
    return wasmExports?.memory?.buffer.byteLength ?? 0;
  }

  /** @internal Panic inside a call, as a bug would (tests of recovery from a trap). */
  [Symbol.for('webcnn.panic')]() {
    return this.#run((e, sync) => e._panic(sync));
  }

  /** @internal Destroy the GPU device, as a driver reset would (tests of recovery). */
  [Symbol.for('webcnn.loseDevice')]() {
    return this.#engine?._loseDevice() ?? false;
  }
}
