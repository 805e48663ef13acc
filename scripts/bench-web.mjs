// scripts/bench-web: webcnn (the packed npm package) and ONNX Runtime Web in headless
// chromium, each in a module worker, with 1 thread and (on a cross-origin isolated page)
// every core; batch 1 at 224x224, steady-state median; prints a table.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { installPackage, serve, root, ISOLATED } from '../tests/web/helpers.mjs';

const { values: opt } = parseArgs({
  options: { models: { type: 'string', default: 'resnet18,resnet50' }, iters: { type: 'string', default: '10' },
    'gpu-iters': { type: 'string', default: '3' } },
});
const models = opt.models.split(',');
const app = installPackage('webcnn-bench-web-');
try {
  execFileSync('npm', ['install', '--no-audit', '--no-fund', 'onnxruntime-web@1.30.0'], { cwd: app, stdio: 'pipe' });
  execFileSync(path.join(root, 'target/ort-venv/bin/python'),
    [path.join(root, 'scripts/ort_bench.py'), '--export', app, '--models', opt.models], { stdio: 'inherit' });
  fs.writeFileSync(path.join(app, 'index.html'), '<!doctype html><title>bench</title>');
  // Both engines run in a module worker, as a page that keeps its UI responsive would run
  // them (and as the demo does): there the calling thread may sleep while a pool computes.
  fs.writeFileSync(path.join(app, 'bench-worker.js'), `
import { load } from './node_modules/webcnn/index.js';
import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
const median = (v) => { v.sort((a, b) => a - b); return v[v.length >> 1]; };
const x = new Float32Array(3 * 224 * 224).map((_, i) => Math.sin(i));
async function time(n, f) {
  await f();
  const t = [];
  for (let i = 0; i < n; i++) { const t0 = performance.now(); await f(); t.push(performance.now() - t0); }
  return median(t);
}
onmessage = async ({ data: { engine, model, device, threads, iters } }) => {
  try {
    if (engine === 'webcnn') {
      const m = await load({ model, weights: 'synthetic:1', device, threads });
      if (device === 'cpu' && m.info.threads !== threads) throw new Error(\`webcnn runs \${m.info.threads} threads, not \${threads}\`);
      const ms = await time(iters, () => m.forward(x, [1, 3, 224, 224]));
      postMessage({ ms, adapter: m.info.adapter });
      m.dispose();
    } else if (engine === 'ort-webgpu') {
      const ortw = await import('./node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs');
      ortw.env.wasm.wasmPaths = '/node_modules/onnxruntime-web/dist/';
      const s = await ortw.InferenceSession.create(\`/\${model}.onnx\`, { executionProviders: ['webgpu'] });
      const feeds = { input: new ortw.Tensor('float32', x, [1, 3, 224, 224]) };
      postMessage({ ms: await time(iters, () => s.run(feeds)) });
      await s.release();
    } else {
      ort.env.wasm.numThreads = threads;
      ort.env.wasm.wasmPaths = '/node_modules/onnxruntime-web/dist/';
      const s = await ort.InferenceSession.create(\`/\${model}.onnx\`, { executionProviders: ['wasm'] });
      const feeds = { input: new ort.Tensor('float32', x, [1, 3, 224, 224]) };
      postMessage({ ms: await time(iters, () => s.run(feeds)) });
      await s.release();
    }
  } catch (e) {
    postMessage({ error: String((e && e.stack) || e) });
  }
};`);
  const plain = await serve(app);
  // The same files from a cross-origin isolated origin: webcnn and ORT-web get threads.
  const iso = await serve(app, {}, ISOLATED);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
      '--use-webgpu-adapter=swiftshader'],
  });
  // One fresh page (and worker) per measurement: an engine's thread count is fixed per page.
  const measure = async (base, job) => {
    const page = await browser.newPage();
    await page.goto(`${base}/index.html`);
    const r = await page.evaluate((job) => new Promise((resolve) => {
      const w = new Worker('/bench-worker.js', { type: 'module' });
      w.onmessage = (e) => resolve(e.data);
      w.onerror = (e) => resolve({ error: e.message });
      w.postMessage(job);
    }), job);
    await page.close();
    if (r.error) throw new Error(`${job.engine} ${job.model} ${job.device ?? ''}: ${r.error}`);
    return r;
  };
  const probe = await browser.newPage();
  await probe.goto(`${iso.base}/index.html`);
  const threads = await probe.evaluate(() => crossOriginIsolated && navigator.hardwareConcurrency);
  await probe.close();
  if (!threads) throw new Error('the isolated page is not cross-origin isolated');
  const iters = Number(opt.iters);
  const rows = [];
  for (const model of models) {
    const r = { model };
    r.ort = (await measure(plain.base, { engine: 'ort', model, threads: 1, iters })).ms;
    r.cpu = (await measure(plain.base, { engine: 'webcnn', model, device: 'cpu', threads: 1, iters })).ms;
    r.ortMt = (await measure(iso.base, { engine: 'ort', model, threads, iters })).ms;
    r.cpuMt = (await measure(iso.base, { engine: 'webcnn', model, device: 'cpu', threads, iters })).ms;
    const gpu = await measure(plain.base, { engine: 'webcnn', model, device: 'webgpu', iters: Number(opt['gpu-iters']) });
    Object.assign(r, { webgpu: gpu.ms, adapter: gpu.adapter });
    r.ortGpu = (await measure(plain.base, { engine: 'ort-webgpu', model, iters: Number(opt['gpu-iters']) })).ms;
    rows.push(r);
  }
  await browser.close();
  plain.server.close();
  iso.server.close();
  const cpu = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1] ?? os.cpus()[0]?.model;
  console.log(`${new Date().toISOString().slice(0, 10)}, ${cpu}, chromium ${browser.version()}, batch 1, 224x224, median\n`);
  console.log(`| model | ORT-web wasm, 1 thread | webcnn wasm, 1 thread | webcnn / ORT-web | ORT-web wasm, ${threads} threads | webcnn wasm, ${threads} threads | webcnn / ORT-web | ORT-web WebGPU | webcnn WebGPU | webcnn / ORT-web |`);
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  const ms = (v) => `${v.toFixed(0)} ms`;
  for (const r of rows) {
    console.log(`| ${r.model} | ${ms(r.ort)} | ${ms(r.cpu)} | ${(r.cpu / r.ort).toFixed(2)}x | ${ms(r.ortMt)} | ${ms(r.cpuMt)} | ${(r.cpuMt / r.ortMt).toFixed(2)}x | ${ms(r.ortGpu)} | ${ms(r.webgpu)} (${r.adapter}) | ${(r.webgpu / r.ortGpu).toFixed(2)}x |`);
  }
} finally {
  fs.rmSync(app, { recursive: true, force: true });
}
