// What loading weights costs in memory, measured where users load them: in headless
// chromium (the page's renderer process: JS, wasm memory and whatever the WebGPU client
// maps there; the GPU process, which holds SwiftShader's buffers, is reported beside it)
// and in Node. Each figure is the process's peak resident memory during `load()` above
// its resident memory just before (`VmHWM` reset through /proc/PID/clear_refs), the
// package's wasm already instantiated. Prints a table; `--json FILE` also writes it.
//   node scripts/load-memory.mjs [--models resnet50,vgg16] [--devices cpu,webgpu,node]
//        [--dtype f32|f16] [--source url|bytes|synthetic] [--cache | --cache-hit] [--repeat N] [--json FILE]
// With --repeat N each figure is the largest of N loads (the peak varies by tens of MB
// with the browser's timing).
// Needs scripts/build-npm (the packed tarball), the CLI (target/release or $WEBCNN_BIN) and
// chromium; Linux only (/proc).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { chromium } from 'playwright-core';
import { root, installPackage, serve } from '../tests/web/helpers.mjs';

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const models = opt('models', 'resnet50,vgg16').split(',');
const devices = opt('devices', 'cpu,webgpu,node').split(',');
const dtype = opt('dtype', 'f32');
const sourceKind = opt('source', 'url');
const jsonOut = opt('json', null);
const repeat = Number(opt('repeat', '1'));
// --cache: the package's default (downloads kept in the origin private file system); each
// page starts with an empty cache, so the figure is a first load's. --cache-hit: the load
// after that one, from the cache (the first, in another page of the same profile, is not
// measured).
const cacheHit = args.includes('--cache-hit');
const useCache = cacheHit || args.includes('--cache');
const cli = process.env.WEBCNN_BIN
  || [path.join(root, 'target/release/webcnn'), path.join(root, 'target/debug/webcnn')].find((p) => fs.existsSync(p));
if (!cli) throw new Error('build the CLI first (cargo build --release)');

const work = path.join(root, 'target/load-memory');
fs.mkdirSync(work, { recursive: true });
function weightsFile(model) {
  const file = path.join(work, `${model}-${dtype}.safetensors`);
  if (!fs.existsSync(file)) {
    const f32 = path.join(work, `${model}-f32.safetensors`);
    if (!fs.existsSync(f32)) execFileSync(cli, ['export-synthetic', model, '--seed', '1', '-o', f32]);
    if (dtype !== 'f32') execFileSync(cli, ['convert', f32, file, '--dtype', dtype]);
  }
  return file;
}

const kb = (pid, key) => {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
};
const resetPeak = (pid) => fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;

const app = installPackage('webcnn-load-memory-');
fs.writeFileSync(path.join(app, 'mem.html'), `<!doctype html><meta charset="utf-8">
<script type="module">
import { init, load } from './node_modules/webcnn/index.js';
window.ready = init().then(() => true);
window.run = async (weights, model, device, asBytes) => {
  const w = asBytes === 'bytes' ? await (await fetch(weights)).arrayBuffer()
    : asBytes === 'synthetic' ? 'synthetic:1' : weights;
  window.mark?.();
  const m = await load({ model, weights: w, device, cache: ${useCache} });
  const info = m.info;
  return { backend: info.backend, numClasses: info.numClasses, wasm: m[Symbol.for('webcnn.wasmMemory')]() };
};
</script>`);
fs.writeFileSync(path.join(app, 'mem-node.mjs'), `
import fs from 'node:fs';
import { init, load } from 'webcnn';
const [file, model] = process.argv.slice(2);
const kb = (key) => Number(new RegExp('^' + key + ':\\\\s+(\\\\d+) kB', 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
await init();
globalThis.gc?.();
fs.writeFileSync('/proc/self/clear_refs', '5');
const before = kb('VmRSS');
const m = await load({ model, weights: file, device: 'cpu' });
console.log(JSON.stringify({ before, peak: kb('VmHWM'), after: kb('VmRSS'), backend: m.info.backend, wasm: m[Symbol.for('webcnn.wasmMemory')]() }));
`);

const srv = await serve(app);
const rows = [];
const browserDevices = devices.filter((d) => d !== 'node');
let browser;
if (browserDevices.length) {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
      '--use-webgpu-adapter=swiftshader', '--js-flags=--expose-gc'],
  });
}
async function processes() {
  const cdp = await browser.newBrowserCDPSession();
  const { processInfo } = await cdp.send('SystemInfo.getProcessInfo');
  await cdp.detach();
  return processInfo;
}
for (let round = 0; round < repeat; round++) for (const model of models) {
  const file = weightsFile(model);
  const size = fs.statSync(file).size;
  fs.copyFileSync(file, path.join(app, path.basename(file)));
  for (const device of devices) {
    if (device === 'node') {
      const out = await new Promise((resolve, reject) => {
        const p = spawn(process.execPath, ['--expose-gc', 'mem-node.mjs', path.basename(file), model], { cwd: app });
        let s = '', e = '';
        p.stdout.on('data', (d) => { s += d; });
        p.stderr.on('data', (d) => { e += d; });
        p.on('close', (code) => (code === 0 ? resolve(JSON.parse(s)) : reject(new Error(e))));
      });
      rows.push({ model, device: 'node (cpu)', file: size, peak: out.peak - out.before, kept: out.after - out.before, wasm: out.wasm });
      continue;
    }
    // A new page per run: the renderer starts from the same state each time.
    const ctx = await browser.newContext();
    if (cacheHit) {
      const first = await ctx.newPage();
      await first.goto(`${srv.base}/mem.html`);
      await first.evaluate(() => window.ready);
      await first.evaluate(([w, m, d, b]) => window.run(w, m, d, b), [path.basename(file), model, device, sourceKind]);
      await first.close();
    }
    const page = await ctx.newPage();
    await page.goto(`${srv.base}/mem.html`);
    await page.evaluate(() => window.ready);
    await page.evaluate(() => globalThis.gc?.());
    // Every renderer is watched (which one hosts the page is the browser's choice): the
    // one whose peak grew is the page's.
    const watched = (await processes()).filter((p) => p.type === 'renderer' || p.type === 'GPU');
    for (const p of watched) resetPeak(p.id);
    const base = new Map(watched.map((p) => [p.id, kb(p.id, 'VmRSS')]));
    const info = await page.evaluate(([w, m, d, b]) => window.run(w, m, d, b),
      [path.basename(file), model, device, sourceKind]);
    const grew = (type, key) => Math.max(...watched.filter((p) => p.type === type).map((p) => kb(p.id, key) - base.get(p.id)));
    const peak = grew('renderer', 'VmHWM');
    const kept = grew('renderer', 'VmRSS');
    const gpuPeak = grew('GPU', 'VmHWM');
    rows.push({ model, device: `chromium ${info.backend}`, file: size, peak, kept, gpuPeak, wasm: info.wasm });
    await ctx.close();
  }
}
await browser?.close();
srv.server.close();
fs.rmSync(app, { recursive: true, force: true });

const worst = new Map();
for (const r of rows) {
  const k = `${r.model}|${r.device}`;
  const w = worst.get(k);
  if (!w || r.peak > w.peak) worst.set(k, r);
}
rows.splice(0, rows.length, ...worst.values());
const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m) || [])[1] || os.arch();
console.log(`load() memory: ${dtype} safetensors from ${sourceKind === 'bytes' ? 'an ArrayBuffer' : sourceKind === 'synthetic' ? 'synthetic:1' : 'a URL / path'}${cacheHit ? ', from the cache' : useCache ? ', kept in the cache' : ''}; ${repeat > 1 ? `largest of ${repeat} loads; ` : ''}${cpu}; ${new Date().toISOString().slice(0, 10)}`);
console.log('| model | where | file | peak above start | peak / file | kept after | wasm memory | GPU process peak |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.model} | ${r.device} | ${mb(r.file)} | ${mb(r.peak)} | ${(r.peak / r.file).toFixed(2)}x | ${mb(r.kept)} | ${mb(r.wasm)} | ${Number.isNaN(r.gpuPeak ?? NaN) ? '-' : mb(r.gpuPeak)} |`);
}
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ cpu, dtype, source: sourceKind, rows }, null, 2));
