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

export async function openFile() {
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

const SIZE = 'x-webcnn-size';

/** A cached download as its size (where stored) and body stream, or null. */
export async function cacheOpen(key) {
  let hit;
  try {
    hit = await (await open())?.match(key);
  } catch {
    return null;
  }
  if (!hit || !hit.body) return null;
  // The server's Content-Length, unless it counted compressed bytes (the body is decoded).
  const encoding = (hit.headers.get('content-encoding') || 'identity').trim().toLowerCase();
  const size = encoding === 'identity' ? Number(hit.headers.get('content-length')) || undefined : undefined;
  return { size, stream: hit.body };
}

/**
 * Keep a download in the Cache API as it arrives: a clone of the response (made before
 * its body is read) streams into `cache.put` inside the browser, so the page never holds
 * the file. Stored only when the whole body came; a file the reader refused is removed;
 * a failure to store costs only the cache (a warning), never the load.
 */
export async function cacheWriter(key, resp) {
  const cache = await open();
  if (!cache) return null;
  let stored;
  try {
    stored = cache.put(key, resp.clone());
  } catch (e) {
    console.warn(`webcnn: could not cache ${key}: ${(e && e.message) || e}`);
    return null;
  }
  return {
    write() {},
    async commit() {
      await stored.catch((e) => console.warn(`webcnn: could not cache ${key}: ${(e && e.message) || e}`));
    },
    // Not waited for: the clone may still be downloading the refused file.
    abort() {
      stored.catch(() => {}).then(() => cache.delete(key)).catch(() => {});
    },
  };
}

// GPU kernel choices measured on this browser's adapters (the JSON the wasm exports),
// kept in IndexedDB so that a layer shape is timed once per adapter, not on every load.
const TUNING_DB = 'webcnn';
const TUNING_STORE = 'gpu-tuning';

function tuningDb() {
  return new Promise((resolve) => {
    if (typeof indexedDB === 'undefined') return resolve(null);
    let req;
    try {
      req = indexedDB.open(TUNING_DB, 1);
    } catch {
      return resolve(null); // e.g. an opaque origin
    }
    req.onupgradeneeded = () => req.result.createObjectStore(TUNING_STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null);
    req.onblocked = () => resolve(null);
  });
}

/** The kept tuning JSON, or null. */
export async function tuningGet() {
  const db = await tuningDb();
  if (!db) return null;
  return new Promise((resolve) => {
    const done = (v) => { db.close(); resolve(v); };
    try {
      const req = db.transaction(TUNING_STORE).objectStore(TUNING_STORE).get('choices');
      req.onsuccess = () => done(typeof req.result === 'string' ? req.result : null);
      req.onerror = () => done(null);
    } catch {
      done(null);
    }
  });
}

/** Keep the tuning JSON; a failure only costs measuring again next time. */
export async function tuningPut(json) {
  const db = await tuningDb();
  if (!db) return;
  await new Promise((resolve) => {
    const done = () => { db.close(); resolve(); };
    try {
      const tx = db.transaction(TUNING_STORE, 'readwrite');
      tx.objectStore(TUNING_STORE).put(json, 'choices');
      tx.oncomplete = done;
      tx.onerror = tx.onabort = () => {
        console.warn(`webcnn: could not keep the GPU tuning: ${tx.error && tx.error.message}`);
        done();
      };
    } catch (e) {
      console.warn(`webcnn: could not keep the GPU tuning: ${(e && e.message) || e}`);
      done();
    }
  });
}
