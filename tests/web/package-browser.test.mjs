// The npm package in headless chromium, installed from its tarball: the README's browser
// example page (import map, no bundler) classifies like the CLI, and a golden case passes,
// on WebGPU (SwiftShader) and with WebGPU disabled (CPU, wasm); a lost GPU device is
// recovered inside the package; on a cross-origin isolated page the CPU backend runs on a
// pool of web workers. Needs scripts/build-npm and the CLI.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { root, golden, installPackage, webcnn, synthInput, relL2, serve, ISOLATED } from './helpers.mjs';

const COMMON = ['--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];
const WEBGPU = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader'];
const LONG = 600_000;
const CASE = 'resnet18-s1-2x3x96x128';

let app, srv, iso, expected, goldenCase;

before(async () => {
  app = installPackage('webcnn-npm-browser-');
  fs.copyFileSync(path.join(root, 'www/npm/examples/browser.html'), path.join(app, 'browser.html'));
  fs.copyFileSync(path.join(root, 'www/demo.png'), path.join(app, 'demo.png'));
  webcnn('export-synthetic', 'resnet18', '--seed', '3', '-o', path.join(app, 'r18-s3.safetensors'));
  webcnn('export-synthetic', 'resnet18', '--seed', '1', '-o', path.join(app, 'r18-s1.safetensors'));
  expected = JSON.parse(webcnn('classify', path.join(app, 'demo.png'), '--model', 'resnet18', '--weights',
    path.join(app, 'r18-s3.safetensors'), '--json', '--top', '5', '--device', 'cpu')).results[0].predictions;
  goldenCase = JSON.parse(fs.readFileSync(path.join(golden, 'models', `${CASE}.json`), 'utf8'));
  webcnn('export-synthetic', 'resnet18_caffe', '--seed', '1', '-o', path.join(app, 'caffe.safetensors'));
  for (const f of ['resnet_block.onnx', 'zoo_lrn_preact.onnx', 'grouped_matmul.onnx', 'grouped_matmul.data', 'tv/resnet50-op13-fold-dyn.onnx']) {
    fs.copyFileSync(path.join(root, 'tests/fixtures/onnx', f), path.join(app, path.basename(f)));
  }
  let gone = false;
  srv = await serve(app, {
    '/flaky.safetensors': (req, res) => {
      if (gone) { res.writeHead(404).end(); return; }
      const body = fs.readFileSync(path.join(app, 'caffe.safetensors'));
      res.writeHead(200, { 'content-length': body.length }).end(body);
    },
    '/make-flaky-gone': (req, res) => { gone = true; res.end('ok'); },
    '/make-flaky-back': (req, res) => { gone = false; res.end('ok'); },
  });
  // The same files with COOP + COEP: a cross-origin isolated page, where wasm threads work.
  iso = await serve(app, {}, ISOLATED);
  // A module worker that runs the golden case, as a page that keeps its UI free would.
  fs.writeFileSync(path.join(app, 'golden-worker.js'), `
import { load } from './node_modules/webcnn/index.js';
onmessage = async ({ data: { x, shape, threads, panic } }) => {
  try {
    const weights = await (await fetch('r18-s1.safetensors')).arrayBuffer();
    const m = await load({ model: 'resnet18', weights, device: 'cpu', threads });
    const first = await m.forward(new Float32Array(x), shape);
    let panicked = null;
    if (panic) {
      // A panic retires the wasm instance (and its pool); the next call runs on a new one.
      panicked = await m[Symbol.for('webcnn.panic')]().then(() => 'resolved', (e) => e.code);
    }
    const again = await m.forward(new Float32Array(x), shape);
    const top = await m.classify(await (await fetch('demo.png')).blob(), { topK: 5 }).catch((e) => e.code);
    postMessage({ info: m.info, panicked, shape: first.shape, data: Array.from(first.data),
      same: first.data.every((v, i) => Object.is(v, again.data[i])), top,
      shared: first.data.buffer instanceof SharedArrayBuffer });
  } catch (e) {
    postMessage({ error: \`\${e.code}: \${e.message}\` });
  }
};`);
});

after(() => {
  srv?.server.close();
  iso?.server.close();
  if (app) fs.rmSync(app, { recursive: true, force: true });
});

async function examplePage(browser, device) {
  const page = await browser.newPage();
  page.on('console', (m) => m.type() === 'error' && console.log('[page]', m.text()));
  await page.goto(`${srv.base}/browser.html?weights=r18-s3.safetensors&image=demo.png&device=${device}`);
  await page.waitForSelector('#out[data-state=done], #out[data-state=error]', { timeout: LONG });
  assert.equal(await page.getAttribute('#out', 'data-state'), 'done', await page.textContent('#out'));
  return page;
}

function assertSameAsCli(top, tol) {
  assert.equal(top.length, 5);
  top.forEach((p, i) => {
    assert.equal(p.index, expected[i].class, `#${i}: ${p.label} vs ${expected[i].label}`);
    assert.equal(p.label, expected[i].label);
    assert.ok(Math.abs(p.probability - expected[i].probability) < tol, `${p.probability} vs ${expected[i].probability}`);
  });
}

/** Runs the golden case through `forward` in the page (weights as an ArrayBuffer). */
async function goldenInPage(page, device, loseDevice = false) {
  const c = goldenCase;
  const x = Array.from(synthInput(c.input_shape, c.input_seed));
  return page.evaluate(async ({ x, shape, device, loseDevice }) => {
    const { load } = await import('webcnn');
    const weights = await (await fetch('r18-s1.safetensors')).arrayBuffer();
    const m = await load({ model: 'resnet18', weights, device });
    const data = new Float32Array(x);
    const first = await m.forward(data, shape);
    let recovered = null, lost = null;
    if (loseDevice) {
      lost = m[Symbol.for('webcnn.loseDevice')]();
      recovered = Array.from((await m.forward(data, shape)).data);
    }
    const info = m.info;
    m.dispose();
    let disposed = null;
    try { await m.forward(data, shape); } catch (e) { disposed = e.code; }
    return { info, shape: first.shape, data: Array.from(first.data), lost, recovered, disposed };
  }, { x, shape: c.input_shape, device, loseDevice });
}

test('WebGPU (SwiftShader): the example page equals the CLI; a golden case; device loss recovered', { timeout: LONG }, async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...COMMON, ...WEBGPU] });
  try {
    const page = await examplePage(browser, 'webgpu');
    const { info, top } = await page.evaluate(() => window.lastResult);
    assert.equal(info.backend, 'webgpu');
    assert.ok(info.adapter && info.adapter.length > 0, 'the adapter is named');
    assert.equal(info.notice, null);
    assertSameAsCli(top, 1e-3);
    const r = await goldenInPage(page, 'webgpu', true);
    assert.equal(r.info.backend, 'webgpu');
    assert.deepEqual(r.shape, goldenCase.output_shape);
    const e = relL2(r.data, goldenCase.output);
    assert.ok(e <= 1e-4, `${CASE} on WebGPU: relative L2 ${e}`);
    assert.equal(r.lost, true, 'the device was destroyed');
    const e2 = relL2(r.recovered, goldenCase.output);
    assert.ok(e2 <= 1e-4, `after device loss: relative L2 ${e2}`);
    assert.equal(r.disposed, 'DISPOSED');

    // 'auto' prefers the CPU backend to a software adapter, and says why.
    const auto = await page.evaluate(async () => {
      const { load } = await import('webcnn');
      const m = await load({ model: 'resnet18', weights: 'synthetic:1', device: 'auto' });
      const info = m.info;
      m.dispose();
      return info;
    });
    assert.equal(auto.backend, 'cpu');
    assert.match(auto.notice, /software renderer/);

    // Recovery needs the weights again: when they cannot be had, the call fails with
    // DEVICE_LOST, saying why, and the next call tries again.
    const lost = await page.evaluate(async () => {
      const { load } = await import('webcnn');
      const m = await load({ model: 'resnet18_caffe', weights: 'flaky.safetensors', device: 'webgpu', cache: false });
      const x = new Float32Array(3 * 32 * 32);
      const before = Array.from((await m.forward(x, [1, 3, 32, 32])).data.slice(0, 5));
      await fetch('/make-flaky-gone');
      m[Symbol.for('webcnn.loseDevice')]();
      let failure = null;
      try { await m.forward(x, [1, 3, 32, 32]); } catch (e) { failure = { code: e.code, message: e.message }; }
      await fetch('/make-flaky-back');
      const after = Array.from((await m.forward(x, [1, 3, 32, 32])).data.slice(0, 5));
      return { before, failure, after, backend: m.info.backend };
    });
    // A panic inside a WebGPU call (whose trap lands in a microtask) still settles the
    // call, as INTERNAL, and the next call runs on a new wasm instance.
    const panic = await page.evaluate(async () => {
      const { load } = await import('webcnn');
      const m = await load({ model: 'resnet18_caffe', weights: 'synthetic:1', device: 'webgpu' });
      const x = new Float32Array(3 * 32 * 32).fill(0.5);
      const before = Array.from((await m.forward(x, [1, 3, 32, 32])).data.slice(0, 5));
      const code = await m[Symbol.for('webcnn.panic')]().then(() => 'resolved', (e) => e.code);
      const after = Array.from((await m.forward(x, [1, 3, 32, 32])).data.slice(0, 5));
      return { code, before, after, backend: m.info.backend };
    });
    assert.equal(panic.code, 'INTERNAL');
    assert.equal(panic.backend, 'webgpu');
    assert.deepEqual(panic.after, panic.before);
    assert.equal(lost.failure?.code, 'DEVICE_LOST', JSON.stringify(lost.failure));
    assert.match(lost.failure.message, /new device failed: .*404/);
    assert.equal(lost.backend, 'webgpu');
    assert.deepEqual(lost.after, lost.before);

    // f16 storage where the adapter has shader-f16 (within 1e-2 of f32); else loading
    // says so, as DEVICE_LIMIT.
    const half = await page.evaluate(async () => {
      const { load } = await import('webcnn');
      const x = new Float32Array(3 * 32 * 32).map((_, i) => Math.sin(i));
      const full = await load({ model: 'resnet18_caffe', weights: 'synthetic:1', device: 'webgpu' });
      const want = Array.from((await full.forward(x, [1, 3, 32, 32])).data);
      const fullPrecision = full.info.precision;
      full.dispose();
      try {
        const m = await load({ model: 'resnet18_caffe', weights: 'synthetic:1', device: 'webgpu', precision: 'f16' });
        const got = Array.from((await m.forward(x, [1, 3, 32, 32])).data);
        const precision = m.info.precision;
        m.dispose();
        return { want, got, precision, fullPrecision };
      } catch (e) {
        return { code: e.code, message: e.message, fullPrecision };
      }
    });
    // ONNX models by URL on WebGPU: ONNX Runtime's outputs (tests/fixtures/onnx).
    // grouped_matmul keeps a weight in grouped_matmul.data, fetched from beside it.
    for (const name of ['resnet_block', 'zoo_lrn_preact', 'grouped_matmul', 'tv/resnet50-op13-fold-dyn']) {
      const want = JSON.parse(fs.readFileSync(path.join(root, 'tests/fixtures/onnx', `${name}.json`), 'utf8'));
      // torchvision's exports hold no input: it is make-onnx-torchvision.py's formula.
      want.input ??= Array.from({ length: want.input_shape.reduce((a, b) => a * b) }, (_, i) => ((i * 7919) % 1000) / 500 - 1);
      const got = await page.evaluate(async ({ name, x, shape }) => {
        const { load } = await import('webcnn');
        const m = await load({ model: `${name.split('/').pop()}.onnx`, device: 'webgpu' });
        const y = await m.forward(new Float32Array(x), shape);
        m.dispose();
        return { id: m.info.id, backend: m.info.backend, shape: y.shape, data: Array.from(y.data) };
      }, { name, x: want.input, shape: want.input_shape });
      assert.equal(got.id, name.split('/').pop());
      assert.equal(got.backend, 'webgpu');
      assert.deepEqual(got.shape, want.output_shape);
      const e = relL2(got.data, want.output);
      assert.ok(e <= 1e-4, `${name}.onnx on WebGPU: relative L2 ${e}`);
    }

    assert.equal(half.fullPrecision, 'f32');
    if (half.code) {
      assert.equal(half.code, 'DEVICE_LIMIT', half.message);
      assert.match(half.message, /shader-f16/);
      console.log(`f16 not run: ${half.message}`);
    } else {
      assert.equal(half.precision, 'f16');
      const e = relL2(half.got, half.want);
      assert.ok(e <= 1e-2, `f16 against f32 on WebGPU: relative L2 ${e}`);
      console.log(`f16 on WebGPU: relative L2 ${e} against f32`);
    }

    // Kernel choices timed in the browser ('measure'; 'auto' does on adapters the table
    // does not know) are kept in IndexedDB per adapter: the next load times nothing and
    // runs the same kernels; a cache that is not JSON is timed again and written over.
    const tuned = await page.evaluate(async () => {
      const { load } = await import('webcnn');
      const opts = { model: 'vgg11_cifar', weights: 'synthetic:2', device: 'webgpu' };
      const x = new Float32Array(3 * 32 * 32).map((_, i) => Math.cos(i));
      const idb = (mode, value) => new Promise((resolve, reject) => {
        const open = indexedDB.open('webcnn');
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const store = open.result.transaction('gpu-tuning', mode).objectStore('gpu-tuning');
          const req = mode === 'readwrite' ? store.put(value, 'choices') : store.get('choices');
          req.onsuccess = () => { open.result.close(); resolve(req.result); };
          req.onerror = () => reject(req.error);
        };
      });
      const run = async (tuning) => {
        const m = await load({ ...opts, tuning });
        const y = Array.from((await m.forward(x, [1, 3, 32, 32])).data);
        const shapes = m.info.tunedShapes;
        m.dispose();
        return { y, shapes };
      };
      const first = await run('measure');
      const kept = await idb('readonly');
      const second = await run('measure');
      const table = await run('table');
      await idb('readwrite', 'not json {');
      const again = await run('measure');
      const rewritten = await idb('readonly');
      let bad = null;
      try { await load({ ...opts, tuning: 'fast' }); } catch (e) { bad = e.code; }
      return { first, kept, second, table, again, rewritten, bad };
    });
    assert.ok(tuned.first.shapes > 0, 'measure times the layer shapes');
    const entries = Object.values(JSON.parse(tuned.kept));
    assert.equal(entries.length, 1, tuned.kept);
    assert.equal(Object.keys(entries[0]).length, tuned.first.shapes, tuned.kept);
    assert.equal(tuned.second.shapes, 0, 'the kept choices are used');
    assert.deepEqual(tuned.second.y, tuned.first.y);
    assert.equal(tuned.table.shapes, 0);
    assert.ok(relL2(tuned.table.y, tuned.first.y) <= 1e-4);
    assert.equal(tuned.again.shapes, tuned.first.shapes, 'an unreadable cache is timed again');
    const shapeKeys = (json) => Object.values(JSON.parse(json)).map((e) => Object.keys(e).sort());
    assert.deepEqual(shapeKeys(tuned.rewritten), shapeKeys(tuned.kept));
    assert.equal(tuned.bad, 'BAD_ARGUMENT');
    console.log(`tuning on WebGPU: ${tuned.first.shapes} shapes timed, kept in IndexedDB`);
  } finally {
    await browser.close();
  }
});

test('WebGPU disabled: auto runs on the CPU (wasm) with a notice; a golden case; webgpu is NO_WEBGPU', { timeout: LONG }, async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...COMMON, '--disable-gpu'] });
  try {
    const page = await examplePage(browser, 'auto');
    const { info, top } = await page.evaluate(() => window.lastResult);
    assert.equal(info.backend, 'cpu');
    assert.equal(info.adapter, null);
    assert.ok(info.notice, 'auto says why it runs on the CPU');
    assertSameAsCli(top, 1e-5);
    const r = await goldenInPage(page, 'auto');
    assert.equal(r.info.backend, 'cpu');
    const e = relL2(r.data, goldenCase.output);
    assert.ok(e <= 1e-4, `${CASE} on the CPU (wasm): relative L2 ${e}`);
    // Browser image sources: the same pixels as the PNG, through a canvas.
    const kinds = await page.evaluate(async () => {
      const { load } = await import('webcnn');
      const m = await load({ model: 'resnet18', weights: 'r18-s3.safetensors', device: 'cpu' });
      const blob = await (await fetch('demo.png')).blob();
      const bitmap = await createImageBitmap(blob);
      const img = new Image();
      img.src = URL.createObjectURL(blob);
      const canvas = document.createElement('canvas');
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext('2d').drawImage(bitmap, 0, 0);
      const imageData = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
      const out = {};
      for (const [k, v] of Object.entries({ file: new File([blob], 'demo.png'), bitmap, img, canvas, imageData })) {
        out[k] = await m.classify(v, { topK: 5 });
      }
      m.dispose();
      return out;
    });
    for (const [kind, top] of Object.entries(kinds)) {
      assert.deepEqual(top.map((p) => p.index), expected.map((p) => p.class), kind);
      top.forEach((p, i) => assert.ok(Math.abs(p.probability - expected[i].probability) < 1e-3, `${kind}: ${p.probability}`));
    }
    const code = await page.evaluate(async () => {
      const { load } = await import('webcnn');
      try { await load({ model: 'resnet18', weights: 'synthetic:1', device: 'webgpu' }); return 'loaded'; } catch (e) { return e.code; }
    });
    assert.equal(code, 'NO_WEBGPU');
  } finally {
    await browser.close();
  }
});

test('cross-origin isolated: the CPU backend computes on a pool of web workers; a golden case', { timeout: LONG }, async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...COMMON, '--disable-gpu'] });
  try {
    const page = await browser.newPage();
    const warnings = [];
    page.on('console', (m) => {
      if (m.type() === 'error') console.log('[page]', m.text());
      if (m.type() === 'warning' || m.type() === 'error') warnings.push(m.text());
    });
    await page.goto(`${iso.base}/browser.html?weights=r18-s3.safetensors&image=demo.png&device=cpu`);
    await page.waitForSelector('#out[data-state=done], #out[data-state=error]', { timeout: LONG });
    assert.equal(await page.getAttribute('#out', 'data-state'), 'done', await page.textContent('#out'));
    const cores = await page.evaluate(() => crossOriginIsolated && navigator.hardwareConcurrency);
    assert.ok(cores >= 2, `the page is cross-origin isolated with 2+ cores (${cores})`);
    // On the window's thread, which spins while the pool works, the pool leaves it a core.
    const { info, top } = await page.evaluate(() => window.lastResult);
    assert.equal(info.backend, 'cpu');
    assert.equal(info.threads, cores - 1);
    assertSameAsCli(top, 1e-5);

    // In a worker the pool takes every core, and the golden case holds.
    const c = goldenCase;
    const x = Array.from(synthInput(c.input_shape, c.input_seed));
    const inWorker = (threads) => page.evaluate((job) => new Promise((resolve) => {
      const w = new Worker('/golden-worker.js', { type: 'module' });
      w.onmessage = (e) => { resolve(e.data); w.terminate(); };
      w.onerror = (e) => resolve({ error: e.message });
      w.postMessage(job);
    }), { x, shape: c.input_shape, threads, panic: threads === undefined });
    const tops = [];
    for (const threads of [undefined, 1, 2]) {
      const r = await inWorker(threads);
      assert.equal(r.panicked, threads === undefined ? 'INTERNAL' : null);
      assert.equal(r.error, undefined, r.error);
      assert.equal(r.info.threads, threads ?? cores, `threads: ${threads}`);
      assert.deepEqual(r.shape, c.output_shape);
      const e = relL2(r.data, c.output);
      assert.ok(e <= 1e-4, `${CASE} with ${r.info.threads} threads: relative L2 ${e}`);
      assert.equal(r.same, true, 'two runs give the same bits');
      assert.equal(r.shared, false, 'outputs are plain arrays, not views of shared memory');
      tops.push(r.top);
    }
    // The pool and the single-threaded build classify alike.
    for (const t of tops.slice(1)) {
      assert.deepEqual(t.map((p) => p.index), tops[0].map((p) => p.index));
      t.forEach((p, i) => assert.ok(Math.abs(p.probability - tops[0][i].probability) < 1e-5));
    }
    const bad = await inWorker(0);
    assert.match(bad.error, /^BAD_ARGUMENT: threads must be/);
    // The pool's workers start the module as wasm-bindgen wants now: no deprecation notice.
    assert.ok(!warnings.some((w) => w.includes('deprecated')), warnings.join('\n'));
  } finally {
    await browser.close();
  }
});
