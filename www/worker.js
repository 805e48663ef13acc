// The inference worker: loads the wasm library, downloads weights (kept in the Cache
// API), prepares the model on WebGPU or the CPU backend, and answers the page's requests.
// Messages in: {id, cmd, args}; out: {id, ok, result | error} and {id, progress}.
import init, { Classifier, modelIds, modelInfo } from './webcnn.js';

const CACHE = 'webcnn-weights-v1';
const ready = init();
let clf = null;
let lastLoad = null;

async function fetchWeights(url, id) {
  const cache = 'caches' in self ? await caches.open(CACHE) : null;
  const hit = cache && await cache.match(url);
  if (hit) {
    const bytes = new Uint8Array(await hit.arrayBuffer());
    postMessage({ id, progress: { loaded: bytes.length, total: bytes.length, cached: true } });
    return bytes;
  }
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new Error(`network error downloading ${url}: ${e.message || e}`);
  }
  if (!resp.ok) throw new Error(`downloading ${url} failed: HTTP ${resp.status}`);
  const total = Number(resp.headers.get('content-length')) || 0;
  const reader = resp.body.getReader();
  const chunks = [];
  let loaded = 0, last = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    const now = performance.now();
    if (now - last > 100) { postMessage({ id, progress: { loaded, total } }); last = now; }
  }
  if (total && loaded !== total) throw new Error(`downloading ${url}: got ${loaded} of ${total} bytes`);
  const bytes = new Uint8Array(loaded);
  let off = 0;
  for (const c of chunks) { bytes.set(c, off); off += c.length; }
  postMessage({ id, progress: { loaded, total: loaded } });
  if (cache) await cache.put(url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }));
  return bytes;
}

async function load(args, id) {
  const t0 = performance.now();
  const bytes = args.weightsBytes ? new Uint8Array(args.weightsBytes)
    : args.weightsUrl ? await fetchWeights(args.weightsUrl, id) : undefined;
  const t1 = performance.now();
  if (clf) { clf.free(); clf = null; }
  clf = await Classifier.create(args.model, bytes, args.seed ?? 1, args.device ?? 'auto');
  lastLoad = { ...args, weightsBytes: undefined, bytes };
  return {
    backend: await describe(clf.backend), notice: clf.notice ?? null,
    weightsMs: t1 - t0, prepareMs: performance.now() - t1,
    info: JSON.parse(modelInfo(args.model)),
  };
}

// wgpu leaves the adapter's name empty in browsers: name it from GPUAdapterInfo.
async function describe(backend) {
  if (!backend.startsWith('WebGPU')) return backend;
  try {
    const info = (await navigator.gpu.requestAdapter())?.info;
    const name = info && (info.description || [info.vendor, info.architecture, info.device].filter(Boolean).join(' '));
    return name ? `WebGPU: ${name}` : backend;
  } catch {
    return backend;
  }
}

async function recreate() {
  if (!lastLoad) throw new Error('no model loaded');
  clf = await Classifier.create(lastLoad.model, lastLoad.bytes, lastLoad.seed ?? 1, lastLoad.device ?? 'auto');
}

// A lost GPU device fails the run: drop the model, prepare it on a new device and run again.
async function withModel(f) {
  if (!clf) await recreate();
  try {
    return await f(clf);
  } catch (e) {
    if (!/device lost|GPU error/i.test(String((e && e.message) || e))) throw e;
    try { clf.free(); } catch {}
    clf = null;
    await recreate();
    return await f(clf);
  }
}

const handlers = {
  models: async () => modelIds().map((id) => JSON.parse(modelInfo(id))),
  loseDevice: async () => clf?.debugLoseDevice() ?? false,
  load,
  classify: ({ image, top }) => withModel(async (c) => {
    const t0 = performance.now();
    const predictions = JSON.parse(await c.classify(new Uint8Array(image), top ?? 5));
    return { predictions, ms: performance.now() - t0 };
  }),
  features: ({ image, node }) => withModel(async (c) => {
    const f = await c.features(new Uint8Array(image), node);
    const r = { channels: f.channels, height: f.height, width: f.width, data: f.data };
    f.free();
    return r;
  }),
  cam: ({ image, cls }) => withModel(async (c) => {
    const f = await c.cam(new Uint8Array(image), cls ?? -1);
    const r = { height: f.height, width: f.width, data: f.data };
    f.free();
    return r;
  }),
};

async function handle({ id, cmd, args }) {
  try {
    await ready;
    const result = await handlers[cmd](args ?? {}, id);
    postMessage({ id, ok: true, result });
  } catch (e) {
    postMessage({ id, ok: false, error: String((e && e.message) || e) });
  }
}

// One request at a time, in order: a run never overlaps another on the same model.
let queue = Promise.resolve();
self.onmessage = (ev) => { queue = queue.then(() => handle(ev.data)); };
