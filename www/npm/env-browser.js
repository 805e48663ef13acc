// Browsers and bundlers: the wasm is a URL next to this module; downloaded weights are
// kept in the origin private file system (written to disk piece by piece as they
// arrive), else in the Cache API.
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

/** A cached download as its size (where stored) and body stream, or null. */
async function cacheApiOpen(key) {
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
 * Keep a download in the Cache API as it arrives: its pieces, as the page reads them, are
 * written into `cache.put`'s body, each waited for before the next is read, so the page
 * holds no more than a piece or two of the file (a clone of the response would buffer
 * whatever the cache had not taken yet: the whole file when the cache is the slower).
 * Pieces must not be reused after `write`. Stored only when the whole body came; a failure
 * to store costs only the cache (a warning), never the load.
 */
async function cacheApiWriter(key, resp) {
  const cache = await open();
  if (!cache) return null;
  const pipe = new TransformStream();
  const writer = pipe.writable.getWriter();
  const headers = { 'content-type': 'application/octet-stream' };
  // The length of the decoded body, where the server gave it (see cacheOpen).
  const encoding = (resp.headers.get('content-encoding') || 'identity').trim().toLowerCase();
  const length = resp.headers.get('content-length');
  if (encoding === 'identity' && length) headers['content-length'] = length;
  let broken = false;
  const warn = (e) => {
    if (!broken) console.warn(`webcnn: could not cache ${key}: ${(e && e.message) || e}`);
    broken = true;
  };
  const stored = cache.put(key, new Response(pipe.readable, { headers })).catch(warn);
  return {
    async write(chunk) {
      if (broken) return;
      try {
        await writer.ready;
        await writer.write(chunk);
      } catch (e) {
        warn(e);
      }
    },
    async commit() {
      if (broken) return;
      await writer.close().catch(warn);
      await stored;
    },
    async abort() {
      broken = true;
      await writer.abort(new Error('the download failed')).catch(() => {});
      await stored;
      await cache.delete(key).catch(() => {});
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

// The origin private file system: one file per download, named by a hash of its key.
const DIR = 'webcnn-weights-v1';

async function opfs() {
  try {
    if (typeof navigator === 'undefined' || !navigator.storage?.getDirectory) return null;
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(DIR, { create: true });
  } catch {
    return null; // e.g. an opaque origin, or private browsing without storage
  }
}

async function fileName(key) {
  const hash = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(key));
  return `${[...new Uint8Array(hash)].map((b) => b.toString(16).padStart(2, '0')).join('')}.bin`;
}

/**
 * A cached download as its size and body stream, or null. The file is read as a response
 * body (a byte stream the loader reads into one reused buffer: 1.03x the file at the peak
 * for VGG-16 on the CPU backend, where `slice().arrayBuffer()` pieces left 1.5x of garbage).
 */
export async function cacheOpen(key) {
  const dir = await opfs();
  if (dir) {
    try {
      const file = await (await dir.getFileHandle(await fileName(key))).getFile();
      // An empty file is a download that never completed.
      if (file.size > 0) return { size: file.size, stream: new Response(file).body };
    } catch {
      // not cached here
    }
  }
  return cacheApiOpen(key);
}

/** Forget a cached download that could not be read. */
export async function cacheDrop(key) {
  const dir = await opfs();
  if (dir) await dir.removeEntry(await fileName(key)).catch(() => {});
  await (await open())?.delete(key).catch(() => {});
}

/**
 * Keep a download as it arrives: in the origin private file system each piece is written
 * to disk before the next is read (the file takes its name only when complete, on
 * `commit`), so the page never holds the file; where there is none, in the Cache API
 * (whose pieces must not be reused after `write`: `copies` tells). A failure to store
 * costs only the cache (a warning), never the load.
 */
export async function cacheWriter(key, resp) {
  const dir = await opfs();
  if (!dir) return cacheApiWriter(key, resp);
  let name, out;
  try {
    name = await fileName(key);
    out = await (await dir.getFileHandle(name, { create: true })).createWritable();
  } catch {
    return cacheApiWriter(key, resp);
  }
  let broken = false;
  const warn = (e) => {
    if (!broken) console.warn(`webcnn: could not cache ${key}: ${(e && e.message) || e}`);
    broken = true;
  };
  return {
    // The file system has copied a piece when its write resolves: the reader may reuse it.
    copies: true,
    async write(chunk) {
      if (broken) return;
      await out.write(chunk).catch(warn);
    },
    async commit() {
      if (broken) {
        await out.abort().catch(() => {});
        await dir.removeEntry(name).catch(() => {});
        return;
      }
      await out.close().catch(warn);
    },
    async abort() {
      broken = true;
      await out.abort().catch(() => {});
      await dir.removeEntry(name).catch(() => {});
    },
  };
}
