// Node: the wasm is read from the file next to this module; downloads are cached in
// $WEBCNN_CACHE or ~/.cache/webcnn, in the CLI's layout (`hub/OWNER--NAME/REVISION/FILE`).
import { mkdir, readFile as fsReadFile, rename, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const name = 'node';

export async function wasmSource(build) {
  return fsReadFile(fileURLToPath(new URL(`./${build}/webcnn_bg.wasm`, import.meta.url)));
}

export function onMainThread() {
  return true;
}

/** The threaded build spawns web workers, which Node does not have: one thread. */
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
    const err = new Error(`reading weights ${path}: ${e.message}`);
    err.code = 'IO';
    throw err;
  }
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

export async function cacheGet(key) {
  try {
    return new Uint8Array(await fsReadFile(cachePath(key)));
  } catch {
    return null;
  }
}

export async function cachePut(key, bytes) {
  const path = cachePath(key);
  const tmp = `${path}.${process.pid}.part`;
  try {
    await mkdir(dirname(path), { recursive: true });
    await writeFile(tmp, bytes);
    await rename(tmp, path);
  } catch (e) {
    process.emitWarning(`webcnn: could not cache ${key} in ${path}: ${e.message}`);
  }
}

/** Node has no WebGPU here: nothing to keep. */
export async function tuningGet() {
  return null;
}

export async function tuningPut() {}
