// scripts/bench-web: webcnn (the packed npm package) and ONNX Runtime Web in one headless
// chromium page, batch 1 at 224x224, steady-state median; prints a table.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { installPackage, serve, root } from '../tests/web/helpers.mjs';

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
  fs.writeFileSync(path.join(app, 'index.html'),
    '<script type="importmap">{ "imports": { "webcnn": "./node_modules/webcnn/index.js" } }</script>');
  const srv = await serve(app);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
      '--use-webgpu-adapter=swiftshader'],
  });
  const page = await browser.newPage();
  await page.goto(`${srv.base}/index.html`);
  const rows = [];
  for (const model of models) {
    const r = await page.evaluate(async ({ model, iters, gpuIters }) => {
      const median = (v) => { v.sort((a, b) => a - b); return v[v.length >> 1]; };
      const x = new Float32Array(3 * 224 * 224).map((_, i) => Math.sin(i));
      const time = async (n, f) => {
        await f();
        const t = [];
        for (let i = 0; i < n; i++) { const t0 = performance.now(); await f(); t.push(performance.now() - t0); }
        return median(t);
      };
      const { load } = await import('webcnn');
      const out = {};
      for (const device of ['cpu', 'webgpu']) {
        const m = await load({ model, weights: 'synthetic:1', device });
        out[device] = await time(device === 'cpu' ? iters : gpuIters, () => m.forward(x, [1, 3, 224, 224]));
        if (device === 'webgpu') out.adapter = m.info.adapter;
        m.dispose();
      }
      const ort = await import('/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs');
      ort.env.wasm.numThreads = 1;
      ort.env.wasm.wasmPaths = '/node_modules/onnxruntime-web/dist/';
      const s = await ort.InferenceSession.create(`/${model}.onnx`, { executionProviders: ['wasm'] });
      const feeds = { input: new ort.Tensor('float32', x, [1, 3, 224, 224]) };
      out.ort = await time(iters, () => s.run(feeds));
      await s.release();
      return out;
    }, { model, iters: Number(opt.iters), gpuIters: Number(opt['gpu-iters']) });
    rows.push({ model, ...r });
  }
  await browser.close();
  srv.server.close();
  const cpu = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1] ?? os.cpus()[0]?.model;
  console.log(`${new Date().toISOString().slice(0, 10)}, ${cpu}, chromium ${browser.version()}, batch 1, 224x224, median\n`);
  console.log('| model | ORT-web wasm, 1 thread | webcnn wasm CPU, 1 thread | webcnn / ORT-web | webcnn WebGPU |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.model} | ${r.ort.toFixed(0)} ms | ${r.cpu.toFixed(0)} ms | ${(r.cpu / r.ort).toFixed(2)}x | ${r.webgpu.toFixed(0)} ms (${r.adapter}) |`);
  }
} finally {
  fs.rmSync(app, { recursive: true, force: true });
}
