// Node: the wasm is read from the file next to this module; downloads are cached in
// $WEBCNN_CACHE or ~/.cache/webcnn, in the CLI's layout (`hub/OWNER--NAME/REVISION/FILE`).
import { createReadStream } from 'node:fs';
import { mkdir, open as fsOpen, readFile as fsReadFile, rename, stat, unlink } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { adapt } from './native.js';

export const name = 'node';

export async function wasmSource(build) {
  return fsReadFile(fileURLToPath(new URL(`./${build}/webcnn_bg.wasm`, import.meta.url)));
}

const require = createRequire(import.meta.url);

/**
 * This machine's platform package (`webcnn-linux-x64-gnu`, ...), as napi-rs names them:
 * platform, architecture and, on Linux, the C library.
 */
export function nativePackage() {
  const { platform, arch } = process;
  if (platform === 'linux') {
    const glibc = process.report?.getReport?.()?.header?.glibcVersionRuntime;
    return `webcnn-linux-${arch}-${glibc ? 'gnu' : 'musl'}`;
  }
  if (platform === 'win32') return `webcnn-win32-${arch}-msvc`;
  return `webcnn-${platform}-${arch}`;
}

/**
 * The native addon fitted to the binding interface, from this machine's platform package
 * where it is installed, of this package's version, and loads; else `{ why }` it is not
 * used (then the wasm runs). WEBCNN_BINDING=wasm asks for the wasm.
 */
export function nativeBinding() {
  if (process.env.WEBCNN_BINDING === 'wasm') return { why: 'WEBCNN_BINDING=wasm' };
  const name = nativePackage();
  let meta;
  try {
    meta = require(`${name}/package.json`);
  } catch {
    return { why: `${name} is not installed (no native build for this platform, or optional dependencies were left out)` };
  }
  const own = require('./package.json').version;
  if (meta.version !== own) return { why: `${name} is version ${meta.version}, webcnn is ${own}` };
  try {
    return { binding: adapt(require(name)) };
  } catch (e) {
    return { why: `${name} did not load: ${e.message}` };
  }
}

export function onMainThread() {
  return true;
}

/**
 * The wasm binding's threaded build is not used in Node: its pool of worker_threads never
 * starts there (each thread spins); Node's native binding computes on every core instead.
 */
export function threadsSupported() {
  return false;
}

/** A weights string that names a local file (a path or a file: URL), else null. */
export function localFile(spec) {
  if (spec.startsWith('file:')) return fileURLToPath(spec);
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(spec) ? null : spec;
}

export async function readFile(path) {
  try {
    return new Uint8Array(await fsReadFile(path));
  } catch (e) {
    throw ioError(`reading weights ${path}: ${e.message}`);
  }
}

function ioError(message) {
  const err = new Error(message);
  err.code = 'IO';
  return err;
}

// Files are read in pieces of this size (the wasm converts each as it comes).
const PIECE = 4 << 20;

/** A file's size and its bytes as an async iterable of pieces. */
async function pieces(path, what) {
  let size;
  try {
    const s = await stat(path);
    if (!s.isFile()) throw new Error('not a file');
    size = s.size;
  } catch (e) {
    throw ioError(`reading ${what} ${path}: ${e.message}`);
  }
  async function* chunks() {
    try {
      for await (const c of createReadStream(path, { highWaterMark: PIECE })) yield c;
    } catch (e) {
      throw ioError(`reading ${what} ${path}: ${e.message}`);
    }
  }
  return { size, chunks: chunks() };
}

export function openFile(path) {
  return pieces(path, 'weights');
}

export function hfEndpoint() {
  return process.env.HF_ENDPOINT || undefined;
}

function cacheDir() {
  if (process.env.WEBCNN_CACHE) return process.env.WEBCNN_CACHE;
  const base = process.env.XDG_CACHE_HOME || (homedir() ? join(homedir(), '.cache') : tmpdir());
  return join(base, 'webcnn');
}

function cachePath(key) {
  // 'hf:OWNER/NAME[@REVISION][#FILE]' (checked by the caller: no separators or '..').
  const hf = /^hf:([^/@#]+)\/([^/@#]+)(?:@([^/#]+))?(?:#([^/]+))?$/.exec(key);
  if (hf) return join(cacheDir(), 'hub', `${hf[1]}--${hf[2]}`, hf[3] ?? 'main', hf[4] ?? 'model.safetensors');
  return join(cacheDir(), 'urls', `${createHash('sha256').update(key).digest('hex')}.safetensors`);
}

/** A cached download as pieces, or null. */
export async function cacheOpen(key) {
  try {
    return await pieces(cachePath(key), 'cached weights');
  } catch {
    return null;
  }
}

/** Forget a cached download that could not be read. */
export async function cacheDrop(key) {
  await unlink(cachePath(key)).catch(() => {});
}

/** What the package has to say beside an answer (Node's warnings, not stdout). */
export function warn(message) {
  process.emitWarning(message);
}

/**
 * Keep a download in the cache as it arrives: written to a private `.part` file, renamed
 * into place on commit. A failure to write costs only the cache (a warning), never the load.
 */
export async function cacheWriter(key) {
  const path = cachePath(key);
  const tmp = `${path}.${process.pid}.part`;
  const warn = (e) => process.emitWarning(`webcnn: could not cache ${key} in ${path}: ${e.message}`);
  let fh;
  try {
    await mkdir(dirname(path), { recursive: true });
    fh = await fsOpen(tmp, 'w');
  } catch (e) {
    warn(e);
    return null;
  }
  let broken = false;
  const drop = async () => {
    broken = true;
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
  };
  return {
    // Written to the file when `write` resolves: the reader may reuse the piece.
    copies: true,
    async write(chunk) {
      if (broken) return;
      try {
        for (let off = 0; off < chunk.length;) off += (await fh.write(chunk, off)).bytesWritten;
      } catch (e) {
        warn(e);
        await drop();
      }
    },
    async commit() {
      if (broken) return;
      try {
        await fh.close();
        await rename(tmp, path);
      } catch (e) {
        warn(e);
        await unlink(tmp).catch(() => {});
      }
    },
    abort: () => (broken ? undefined : drop()),
  };
}

/** Node has no WebGPU here: nothing to keep. */
export async function tuningGet() {
  return null;
}

export async function tuningPut() {}
