// Shared by the package tests: installing the packed tarball as a user would, the golden
// PRNG, .npy and PNG files, a local HTTP server.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { execFileSync } from 'node:child_process';

export const root = path.resolve(import.meta.dirname, '../..');
export const cli = process.env.WEBCNN_BIN || path.join(root, 'target/debug/webcnn');
export const golden = path.join(root, 'tests/fixtures/golden');

/** A fresh folder with the packed package installed from its tarball (scripts/build-npm). */
export function installPackage(prefix, { native = false } = {}) {
  const dir = path.join(root, 'target/npm');
  const tgz = fs.existsSync(dir) && fs.readdirSync(dir).find((f) => /^webcnn-\d.*\.tgz$/.test(f));
  if (!tgz) throw new Error('target/npm/webcnn-*.tgz is missing: run scripts/build-npm first');
  const tarballs = [path.join(dir, tgz)];
  if (native) {
    // This machine's platform package, as npm picks it from the optional dependencies.
    const plat = fs.readdirSync(dir).find((f) => /^webcnn-linux-x64-gnu-\d.*\.tgz$/.test(f));
    if (!plat) throw new Error('target/npm/webcnn-linux-x64-gnu-*.tgz is missing: run scripts/build-npm first');
    tarballs.push(path.join(dir, plat));
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.writeFileSync(path.join(tmp, 'package.json'), JSON.stringify({ name: 'user-app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', ...tarballs], { cwd: tmp, stdio: 'pipe' });
  return tmp;
}

/** Run the CLI; returns stdout as text. */
export function webcnn(...args) {
  return execFileSync(cli, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

const M = (1n << 64n) - 1n;

function fnv1a64(s) {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(s)) h = ((h ^ BigInt(b)) * 0x100000001b3n) & M;
  return h;
}

/** The golden PRNG's `input` tensor (see the golden README): `(2u - 1) * sqrt(3)`. */
export function synthInput(shape, seed) {
  const n = shape.reduce((a, b) => a * b, 1);
  const s0 = fnv1a64('input') ^ BigInt(seed);
  const out = new Float32Array(n);
  for (let i = 1; i <= n; i++) {
    let z = (s0 + BigInt(i) * 0x9e3779b97f4a7c15n) & M;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
    z ^= z >> 31n;
    out[i - 1] = (2 * (Number(z >> 40n) / 16777216) - 1) * Math.sqrt(3);
  }
  return out;
}

/** A little-endian float32 .npy file: `{ shape, data }`. */
export function readNpy(file) {
  const b = fs.readFileSync(file);
  const hlen = b.readUInt16LE(8);
  const header = b.subarray(10, 10 + hlen).toString('latin1');
  if (!header.includes("'<f4'")) throw new Error(`${file}: not float32`);
  const shape = header.match(/\(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  const body = b.subarray(10 + hlen);
  const data = new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));
  return { shape, data };
}

/** ||a - b|| / ||b||. */
export function relL2(a, b) {
  if (a.length !== b.length) return Infinity;
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
  return Math.sqrt(num / den);
}

/** A PNG file of 8-bit RGB pixels. */
export function encodePng(width, height, rgb) {
  const crcTable = new Int32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c;
  });
  const crc = (buf) => {
    let c = -1;
    for (const byte of buf) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ -1) >>> 0;
  };
  const chunk = (type, data) => {
    const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const c = Buffer.alloc(4); c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0); ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    Buffer.from(rgb.buffer, rgb.byteOffset + y * width * 3, width * 3).copy(raw, y * (width * 3 + 1) + 1);
  }
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

/** Deterministic test pixels: smooth gradients plus texture, `width` x `height` RGB. */
export function testPixels(width, height) {
  const px = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      px[i] = (x * 255) / width;
      px[i + 1] = (y * 255) / height;
      px[i + 2] = ((x * 7 + y * 13) % 64) * 4;
    }
  }
  return px;
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.wasm': 'application/wasm', '.png': 'image/png', '.json': 'application/json' };

/**
 * Serve `dir` on 127.0.0.1; `hits` counts requests per path; `routes` maps a path to a
 * handler `(req, res) => void` that takes precedence; `headers` go on every file served.
 */
export function serve(dir, routes = {}, headers = {}) {
  const hits = new Map();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    hits.set(url.pathname, (hits.get(url.pathname) || 0) + 1);
    if (routes[url.pathname]) { routes[url.pathname](req, res); return; }
    const file = path.join(dir, path.normalize(decodeURIComponent(url.pathname)));
    if (!file.startsWith(dir)) { res.writeHead(403).end(); return; }
    fs.readFile(file, (err, body) => {
      if (err) { res.writeHead(404).end(); return; }
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
        'content-length': body.length, ...headers });
      res.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    resolve({ server, hits, base: `http://127.0.0.1:${server.address().port}` });
  }));
}

/** The headers that make a page cross-origin isolated (shared memory, wasm threads). */
export const ISOLATED = { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };

/**
 * A safetensors file's tensors as `torch.save` writes them from a DataParallel model inside a
 * training checkpoint: `{'epoch': 3, 'state_dict': {'module.' + key: tensor}}`, the zip
 * format with stored entries and protocol-2 pickle (what `torch.load` reads). For the tests
 * that load `.pth` files: the package must read them as PyTorch writes them.
 */
export function torchSaveFromSafetensors(file) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  const keys = Object.keys(header).filter((k) => k !== '__metadata__').sort();
  const parts = [];
  const op = (...bytes) => parts.push(Buffer.from(bytes));
  const str = (s) => { const t = Buffer.from(s, 'utf8'); const l = Buffer.alloc(4); l.writeUInt32LE(t.length); parts.push(Buffer.from('X'), l, t); };
  const int = (v) => { const l = Buffer.alloc(4); l.writeInt32LE(v); parts.push(Buffer.from('J'), l); };
  const raw = (s) => parts.push(Buffer.from(s, 'latin1'));
  op(0x80, 2);
  raw('}(');
  str('epoch'); int(3);
  str('state_dict');
  raw('ccollections\nOrderedDict\n)R(');
  const storages = [];
  keys.forEach((k, i) => {
    const { dtype, shape, data_offsets: [s, e] } = header[k];
    if (dtype !== 'F32') throw new Error(`${k}: ${dtype}`);
    storages.push(b.subarray(8 + n + s, 8 + n + e));
    str(`module.${k}`);
    raw('ctorch._utils\n_rebuild_tensor_v2\n((');
    str('storage'); raw('ctorch\nFloatStorage\n'); str(String(i)); str('cpu'); int((e - s) / 4);
    raw('tQ'); int(0);
    raw('('); shape.forEach(int); raw('t');
    const stride = shape.map((_, d) => shape.slice(d + 1).reduce((a, x) => a * x, 1));
    raw('('); stride.forEach(int); raw('t');
    op(0x89); raw('ccollections\nOrderedDict\n)RtR');
  });
  raw('uu.');
  const entries = [['archive/data.pkl', Buffer.concat(parts)], ['archive/byteorder', Buffer.from('little')],
    ...storages.map((d, i) => [`archive/data/${i}`, d]), ['archive/version', Buffer.from('3\n')]];
  // A zip of stored entries: local headers and data, then the central directory.
  const out = [];
  const central = [];
  let off = 0;
  for (const [name, data] of entries) {
    const nm = Buffer.from(name);
    const crc = zlib.crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14); local.writeUInt32LE(data.length, 18); local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nm.length, 26);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0); cd.writeUInt16LE(20, 4); cd.writeUInt16LE(20, 6);
    cd.writeUInt32LE(crc, 16); cd.writeUInt32LE(data.length, 20); cd.writeUInt32LE(data.length, 24);
    cd.writeUInt16LE(nm.length, 28); cd.writeUInt32LE(off, 42);
    out.push(local, nm, data);
    central.push(cd, nm);
    off += 30 + nm.length + data.length;
  }
  const cdBuf = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(entries.length, 8); end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cdBuf.length, 12); end.writeUInt32LE(off, 16);
  return new Uint8Array(Buffer.concat([...out, cdBuf, end]));
}
