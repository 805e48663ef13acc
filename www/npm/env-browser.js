// Browsers and bundlers: the wasm is a URL next to this module; downloaded weights are
// kept in the Cache API (where the page has it).
const CACHE = 'webcnn-weights-v1';

export const name = 'browser';

/** `build`: 'wasm' (single-threaded) or 'wasm-mt' (threaded). */
export async function wasmSource(build) {
  return new URL(`./${build}/webcnn_bg.wasm`, import.meta.url);
}

/** A window's thread (not a worker), where a thread may not sleep on shared memory. */
export function onMainThread() {
  return typeof WorkerGlobalScope === 'undefined' || !(globalThis instanceof WorkerGlobalScope);
}

/** Shared wasm memory needs a cross-origin isolated page (COOP + COEP headers). */
export function threadsSupported() {
  return globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer === 'function'
    && typeof Worker === 'function';
}

/** Browsers read no local files: every other string is a URL. */
export function localFile() {
  return null;
}

export async function readFile() {
  throw new Error('no local files in browsers');
}

export function hfEndpoint() {
  return undefined;
}

async function open() {
  try {
    return typeof caches !== 'undefined' ? await caches.open(CACHE) : null;
  } catch {
    return null; // e.g. an opaque origin
  }
}

export async function cacheGet(key) {
  const hit = await (await open())?.match(key);
  return hit ? new Uint8Array(await hit.arrayBuffer()) : null;
}

export async function cachePut(key, bytes) {
  try {
    await (await open())?.put(key, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }));
  } catch (e) {
    console.warn(`webcnn: could not cache ${key}: ${(e && e.message) || e}`);
  }
}
