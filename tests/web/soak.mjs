// The browser soak, shared by `scripts/soak-web` (200 classifications per backend) and its
// short CI version (tests/web/soak.test.mjs): the installed package classifies the same
// image again and again in a module worker of a cross-origin isolated page, on WebGPU
// (SwiftShader) and on the CPU (wasm, a thread per core). The answers must not change,
// the worker must keep answering, and the memory of the page and its workers must stay flat.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { root, installPackage, serve, webcnn, ISOLATED } from './helpers.mjs';

const COMMON = ['--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
  // performance.measureUserAgentSpecificMemory() answers at the next full GC, which an
  // idle page may not have for a minute: measure at once (the flag web platform tests
  // use), after a gc().
  '--js-flags=--expose-gc', '--enable-blink-features=ForceEagerMeasureMemory'];
const WEBGPU = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader'];

const WORKER = `
import { load } from './node_modules/webcnn/index.js';
let model, image;
onmessage = async ({ data: { cmd, device, count, threads } }) => {
  try {
    if (cmd === 'gc') {
      globalThis.gc();
      postMessage({});
    } else if (cmd === 'load') {
      model = await load({ model: 'resnet18', weights: 'r18.safetensors', device, threads });
      image = new Uint8Array(await (await fetch('demo.png')).arrayBuffer());
      postMessage({ info: model.info });
    } else {
      const answers = [];
      for (let i = 0; i < count; i++) {
        const top = await model.classify(image, { topK: 5 });
        answers.push(top.map((p) => p.label + ' ' + p.probability).join('; '));
      }
      postMessage({ answers, wasm: model[Symbol.for('webcnn.wasmMemory')]() });
    }
  } catch (e) {
    postMessage({ error: (e.code ?? '') + ': ' + e.message });
  }
};`;

/**
 * `runs` classifications on each device in `devices` ('webgpu', 'cpu'); memory compared
 * from run `warm` on; `threads` as `load` takes it. Returns one row per device. (With a
 * thread pool, measuring memory waits a minute: the pool's idle workers, asleep inside
 * the wasm, answer the measurement only when it times out.)
 */
export async function soakDemo({ devices, runs, warm, threads, log = () => {} }) {
  const app = installPackage('webcnn-soak-');
  webcnn('export-synthetic', 'resnet18', '--seed', '3', '-o', path.join(app, 'r18.safetensors'));
  fs.copyFileSync(path.join(root, 'www/demo.png'), path.join(app, 'demo.png'));
  fs.writeFileSync(path.join(app, 'soak-worker.js'), WORKER);
  fs.writeFileSync(path.join(app, 'index.html'), '<!doctype html><title>soak</title>');
  const srv = await serve(app, {}, ISOLATED);
  const rows = [];
  try {
    for (const device of devices) {
      const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
        args: [...COMMON, ...(device === 'webgpu' ? WEBGPU : ['--disable-gpu'])] });
      try {
        const page = await browser.newPage();
        const errors = [];
        page.on('pageerror', (e) => errors.push(e.message));
        await page.goto(`${srv.base}/index.html`);
        await page.evaluate(() => {
          const w = new Worker('/soak-worker.js', { type: 'module' });
          window.ask = (msg) => new Promise((resolve) => {
            w.onmessage = (e) => resolve(e.data);
            w.onerror = (e) => resolve({ error: `worker error: ${e.message}` });
            w.postMessage(msg);
          });
        });
        const ask = async (msg) => {
          const r = await page.evaluate((m) => window.ask(m), msg);
          if (r.error) throw new Error(`${device}: ${r.error}`);
          return r;
        };
        // Bytes of the page and its workers (JS heaps, buffers, wasm memory).
        const memory = () => page.evaluate(async () => {
          const m = performance.measureUserAgentSpecificMemory();
          globalThis.gc();
          await window.ask({ cmd: 'gc' });
          return (await m).bytes;
        });
        const { info } = await ask({ cmd: 'load', device, threads });
        const backend = info.backend === 'webgpu' ? `WebGPU: ${info.adapter}` : `CPU (wasm, ${info.threads} thread${info.threads > 1 ? 's' : ''})`;
        let busy = 0, wasm = 0;
        const timed = async (msg) => {
          const t = Date.now();
          const r = await ask(msg);
          busy += Date.now() - t;
          wasm = r.wasm;
          return r.answers;
        };
        const answers = [...await timed({ cmd: 'run', count: warm })];
        const startWasm = wasm;
        let t = Date.now();
        const startBytes = await memory();
        log(`${device}: memory measured in ${Date.now() - t} ms`);
        for (let done = warm; done < runs;) {
          const n = Math.min(50, runs - done);
          answers.push(...await timed({ cmd: 'run', count: n }));
          done += n;
          log(`${device}: ${done}/${runs}`);
        }
        t = Date.now();
        const endBytes = await memory();
        log(`${device}: memory measured in ${Date.now() - t} ms`);
        rows.push({ device, backend, runs: answers.length, changed: answers.filter((a) => a !== answers[0]).length,
          errors, startBytes, endBytes, growth: (100 * (endBytes - startBytes)) / startBytes,
          startWasm, endWasm: wasm, wasmGrowth: (100 * (wasm - startWasm)) / startWasm,
          msPerRun: busy / answers.length });
      } finally {
        await browser.close();
      }
    }
  } finally {
    srv.server.close();
    fs.rmSync(app, { recursive: true, force: true });
  }
  return rows;
}

export function table(rows, warm) {
  const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;
  const pct = (v) => `${v >= 0 ? '+' : ''}${v.toFixed(2)}%`;
  const lines = [`| backend | classifications | answers changed | page errors | JS memory after run ${warm} | at the end | growth | wasm memory after run ${warm} | at the end | growth | ms per run |`,
    '|---|---|---|---|---|---|---|---|---|---|---|'];
  for (const r of rows) {
    lines.push(`| ${r.backend} | ${r.runs} | ${r.changed} | ${r.errors.length} | ${mb(r.startBytes)} | ${mb(r.endBytes)} | ${pct(r.growth)} | ${mb(r.startWasm)} | ${mb(r.endWasm)} | ${pct(r.wasmGrowth)} | ${r.msPerRun.toFixed(0)} |`);
  }
  return lines.join('\n');
}
