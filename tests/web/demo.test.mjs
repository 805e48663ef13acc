// The web demo in a real browser: Debian's chromium, headless, driven by playwright-core.
// Needs `trunk build` (dist/) and the CLI (target/debug/webcnn): scripts/test does both.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { torchSaveFromSafetensors } from './helpers.mjs';

const root = path.resolve(import.meta.dirname, '../..');
const dist = path.join(root, 'dist');
const cli = process.env.WEBCNN_BIN || path.join(root, 'target/debug/webcnn');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'webcnn-web-'));
const demo = path.join(root, 'www/demo.png');
const COMMON = ['--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];
const WEBGPU = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader'];
const LONG = 600_000;

let server, base, expected, expectedPets, expectedOnnx, csp;
const violations = [];
const hits = new Map();

before(() => {
  assert.ok(fs.existsSync(path.join(dist, 'index.html')), 'dist/ is missing: run `trunk build` first');
  execFileSync(cli, ['export-synthetic', 'resnet18', '--seed', '3', '-o', path.join(tmp, 'r18.safetensors')]);
  execFileSync(cli, ['export-synthetic', 'vgg11_cifar', '--seed', '1', '-o', path.join(tmp, 'other.safetensors')]);
  fs.writeFileSync(path.join(tmp, 'notes.png'), 'this is text, not an image');
  // A user's own model: resnet18 fine-tuned for 3 classes, saved by torch.save, and its labels.
  execFileSync(cli, ['export-synthetic', 'resnet18', '--seed', '4', '--classes', '3', '-o', path.join(tmp, 'pets3.safetensors')]);
  fs.writeFileSync(path.join(tmp, 'pets3.pth'), torchSaveFromSafetensors(path.join(tmp, 'pets3.safetensors')));
  fs.writeFileSync(path.join(tmp, 'pets3.txt'), 'cat\ndog\nbird\n');
  // An ONNX model (a small residual network, 32x32 inputs, 5 classes) with its names.
  fs.copyFileSync(path.join(root, 'tests/fixtures/onnx/resnet_block.onnx'), path.join(tmp, 'resnet_block.onnx'));
  fs.writeFileSync(path.join(tmp, 'block5.txt'), 'ant\nbee\ncow\ndeer\nelk\n');
  expectedOnnx = JSON.parse(execFileSync(cli, ['classify', demo, '--model', path.join(tmp, 'resnet_block.onnx'),
    '--labels', path.join(tmp, 'block5.txt'), '--json', '--device', 'cpu'],
  { stdio: ['ignore', 'pipe', 'ignore'] })).results[0].predictions;
  expectedPets = JSON.parse(execFileSync(cli, ['classify', demo, '--model', 'resnet18', '--weights',
    path.join(tmp, 'pets3.pth'), '--labels', path.join(tmp, 'pets3.txt'), '--json', '--device', 'cpu'],
  { stdio: ['ignore', 'pipe', 'ignore'] })).results[0].predictions;
  const out = execFileSync(cli, ['classify', demo, '--model', 'resnet18', '--weights',
    path.join(tmp, 'r18.safetensors'), '--json', '--top', '5', '--device', 'cpu']);
  expected = JSON.parse(out).results[0].predictions;
  csp = fs.readFileSync(path.join(dist, 'index.html'), 'utf8')
    .match(/http-equiv="Content-Security-Policy" content="([^"]+)"/)?.[1];
  assert.ok(csp, 'dist/index.html declares a Content-Security-Policy');
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm',
    '.css': 'text/css', '.png': 'image/png' };
  server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    hits.set(url.pathname, (hits.get(url.pathname) || 0) + 1);
    const file = url.pathname.startsWith('/w/') ? path.join(tmp, path.basename(url.pathname))
      : path.join(dist, url.pathname === '/' ? 'index.html' : path.normalize(url.pathname));
    if (!file.startsWith(tmp) && !file.startsWith(dist)) { res.writeHead(403).end(); return; }
    fs.readFile(file, (err, body) => {
      if (err) { res.writeHead(404).end(); return; }
      // Every response carries the page's policy, so the worker runs under it too, and
      // the headers that isolate the page (as `trunk serve` sends them): wasm threads.
      res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream',
        'content-length': body.length, 'content-security-policy': csp,
        'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' });
      res.end(body);
    });
  });
  return new Promise((r) => server.listen(0, '127.0.0.1', () => {
    base = `http://127.0.0.1:${server.address().port}`;
    r();
  }));
});

after(() => {
  server?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

// Clear the status before an action, so waiting cannot match the previous one.
async function act(page, action) {
  await page.$eval('[data-testid=status]', (e) => { e.textContent = ''; });
  await action();
}

async function status(page, want, timeout = LONG) {
  await page.waitForFunction((w) => {
    const s = document.querySelector('[data-testid=status]').textContent;
    return w.includes(s);
  }, want, { timeout });
  return page.textContent('[data-testid=status]');
}

async function predictions(page) {
  return page.$$eval('[data-testid=prediction]', (els) => els.map((e) => ({
    label: e.dataset.label, probability: Number(e.dataset.probability), text: e.textContent })));
}

function assertSameAsCli(preds) {
  assert.equal(preds.length, 5);
  preds.forEach((p, i) => {
    assert.equal(p.label, expected[i].label, `rank ${i + 1}`);
    assert.ok(Math.abs(p.probability - expected[i].probability) < 1e-3,
      `rank ${i + 1}: ${p.probability} vs CLI ${expected[i].probability}`);
    assert.ok(p.text.includes(p.label) && p.text.includes('%'));
  });
}

const weightsUrl = () => `${base}/w/r18.safetensors`;

test('WebGPU on SwiftShader: the top-5 equal the CLI, then weights come from the cache', { timeout: LONG }, async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...COMMON, ...WEBGPU] });
  try {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    page.on('console', (m) => m.type() === 'error' && console.log('[page]', m.text()));
    await page.goto(`${base}/?model=resnet18&weights=${encodeURIComponent(weightsUrl())}&noimage=1&device=webgpu`);
    assert.equal(await status(page, ['ready', 'error']), 'ready', await page.textContent('[data-testid=error]'));
    const backend = await page.textContent('[data-testid=backend]');
    assert.match(backend, /^WebGPU: /);
    const adapter = await page.evaluate(async () => {
      const a = await navigator.gpu?.requestAdapter();
      return a ? [a.info.description, a.info.vendor, a.info.architecture, a.info.device].filter(Boolean) : [];
    });
    assert.ok(adapter.length > 0, 'the page sees a WebGPU adapter');
    assert.ok(adapter.some((n) => backend.includes(n)), `backend '${backend}' names the adapter (${adapter})`);
    await act(page, () => page.setInputFiles('[data-testid=image-input]', demo));
    assert.equal(await status(page, ['done', 'error']), 'done', await page.textContent('[data-testid=error]'));
    assertSameAsCli(await predictions(page));
    assert.match(await page.textContent('[data-testid=timing]'), /weights load: \d+ ms.*first run: \d+ ms/);
    assert.equal(hits.get('/w/r18.safetensors'), 1);
    // The README's picture of the demo is this page (WEBCNN_SCREENSHOT=docs/demo.png writes it).
    const shot = process.env.WEBCNN_SCREENSHOT
      ? path.resolve(root, process.env.WEBCNN_SCREENSHOT) : path.join(root, 'target/screenshots/demo.png');
    fs.mkdirSync(path.dirname(shot), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(fs.statSync(shot).size > 10_000, 'the screenshot has content');

    // The GPU device is lost: the next run prepares the model again and gives the same answer.
    assert.equal(await page.evaluate(() => window.webcnnDebug.loseDevice()), true);
    await act(page, () => page.click('#again'));
    assert.equal(await status(page, ['done', 'error']), 'done', await page.textContent('[data-testid=error]'));
    assertSameAsCli(await predictions(page));
    assert.match(await page.textContent('[data-testid=backend]'), /^WebGPU: /);

    // A second visit loads the same weights URL from the cache: no new request.
    const again = await ctx.newPage();
    await again.goto(`${base}/?model=resnet18&weights=${encodeURIComponent(weightsUrl())}&noimage=1&device=webgpu`);
    assert.equal(await status(again, ['ready', 'error']), 'ready');
    assert.equal(hits.get('/w/r18.safetensors'), 1, 'weights were downloaded again');

    // Without ?device=webgpu the page takes 'auto', which prefers the CPU (wasm) backend
    // to a software adapter such as SwiftShader, and says so.
    const auto = await ctx.newPage();
    await auto.goto(`${base}/?model=resnet18&weights=${encodeURIComponent(weightsUrl())}&noimage=1`);
    assert.equal(await status(auto, ['ready', 'error']), 'ready');
    assert.match(await auto.textContent('[data-testid=backend]'), /^CPU \(wasm, \d+ threads\) \(.*software renderer/);
  } finally {
    await browser.close();
  }
});

test('the page ships a strict Content-Security-Policy and loads no third-party script', () => {
  assert.doesNotMatch(csp, /'unsafe-eval'|'unsafe-inline'/);
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'/);
  const html = fs.readFileSync(path.join(dist, 'index.html'), 'utf8');
  for (const [, src] of html.matchAll(/<script[^>]*src="([^"]+)"/g)) {
    assert.ok(!/^(https?:)?\/\//.test(src), `third-party script ${src}`);
  }
  const trunk = fs.readFileSync(path.join(import.meta.dirname, '../../Trunk.toml'), 'utf8');
  assert.ok(trunk.includes(`"Content-Security-Policy" = "${csp}"`), 'trunk serve sends the same policy');
  assert.ok(trunk.includes('"Cross-Origin-Opener-Policy" = "same-origin"'), 'trunk serve isolates the page');
  assert.ok(trunk.includes('"Cross-Origin-Embedder-Policy" = "require-corp"'), 'trunk serve isolates the page');
});

test('without WebGPU the CPU (wasm) backend, a thread per core, gives the same top-5 (under the CSP header)', { timeout: LONG }, async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...COMMON, '--disable-gpu'] });
  try {
    const page = await browser.newPage();
    // The page and its worker run under the Content-Security-Policy header: nothing may
    // be refused (the console reports each refusal, the worker's too).
    const refused = [];
    page.on('console', (m) => /Content Security Policy/i.test(m.text()) && refused.push(m.text()));
    await page.goto(`${base}/?model=resnet18&weights=${encodeURIComponent(weightsUrl())}&noimage=1`);
    assert.equal(await status(page, ['ready', 'error']), 'ready', await page.textContent('[data-testid=error]'));
    // The page is cross-origin isolated, so the worker's CPU backend has a thread per core.
    const cores = await page.evaluate(() => crossOriginIsolated && navigator.hardwareConcurrency);
    assert.ok(cores >= 2, `cross-origin isolated with 2+ cores (${cores})`);
    assert.match(await page.textContent('[data-testid=backend]'), new RegExp(`^CPU \\(wasm, ${cores} threads\\)`));
    await act(page, () => page.setInputFiles('[data-testid=image-input]', demo));
    assert.equal(await status(page, ['done', 'error']), 'done', await page.textContent('[data-testid=error]'));
    assertSameAsCli(await predictions(page));
    assert.deepEqual(refused, []);
  } finally {
    await browser.close();
  }
});

test('a non-image and a mismatched weights file show errors, and the page recovers', { timeout: LONG }, async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...COMMON, '--disable-gpu'] });
  try {
    const page = await browser.newPage();
    await page.goto(`${base}/?model=resnet18&weights=${encodeURIComponent(weightsUrl())}&noimage=1`);
    assert.equal(await status(page, ['ready', 'error']), 'ready');

    await act(page, () => page.setInputFiles('[data-testid=image-input]', path.join(tmp, 'notes.png')));
    assert.equal(await status(page, ['error', 'done']), 'error');
    assert.match(await page.textContent('[data-testid=error]'), /cannot decode image/);
    await act(page, () => page.setInputFiles('[data-testid=image-input]', demo));
    assert.equal(await status(page, ['done', 'error']), 'done');
    assert.equal(await page.isHidden('[data-testid=error]'), true);

    await act(page, () => page.setInputFiles('[data-testid=weights-input]', path.join(tmp, 'other.safetensors')));
    assert.equal(await status(page, ['error', 'ready', 'done']), 'error');
    assert.match(await page.textContent('[data-testid=error]'), /missing weight 'conv1\.weight'/);
    await act(page, () => page.setInputFiles('[data-testid=weights-input]', path.join(tmp, 'r18.safetensors')));
    assert.equal(await status(page, ['done', 'error']), 'done', await page.textContent('[data-testid=error]'));
    assertSameAsCli(await predictions(page));

    // A download that fails is a visible error too.
    await page.goto(`${base}/?model=resnet18&weights=${encodeURIComponent(`${base}/w/absent.safetensors`)}&noimage=1`);
    assert.equal(await status(page, ['error', 'ready']), 'error');
    assert.match(await page.textContent('[data-testid=error]'), /HTTP 404/);
  } finally {
    await browser.close();
  }
});

test("your own fine-tuned .pth, then an .onnx model, each with its label file: the CLI's answers, in the page (CPU)", { timeout: LONG }, async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...COMMON, '--disable-gpu'] });
  try {
    const page = await browser.newPage();
    await page.goto(`${base}/?model=resnet18&weights=${encodeURIComponent(weightsUrl())}&noimage=1`);
    assert.equal(await status(page, ['ready', 'error']), 'ready');
    await act(page, () => page.setInputFiles('[data-testid=image-input]', demo));
    assert.equal(await status(page, ['done', 'error']), 'done');
    await act(page, () => page.setInputFiles('[data-testid=weights-input]',
      [path.join(tmp, 'pets3.pth'), path.join(tmp, 'pets3.txt')]));
    assert.equal(await status(page, ['done', 'error']), 'done', await page.textContent('[data-testid=error]'));
    const preds = await predictions(page);
    assert.equal(preds.length, 3);
    preds.forEach((p, i) => {
      assert.equal(p.label, expectedPets[i].label, `rank ${i + 1}`);
      assert.ok(Math.abs(p.probability - expectedPets[i].probability) < 1e-4, `${p.probability} vs ${expectedPets[i].probability}`);
    });
    assert.deepEqual(preds.map((p) => p.label).sort(), ['bird', 'cat', 'dog']);
    // An .onnx file is the model: picked with its label file, it replaces the zoo's.
    await act(page, () => page.setInputFiles('[data-testid=weights-input]',
      [path.join(tmp, 'resnet_block.onnx'), path.join(tmp, 'block5.txt')]));
    assert.equal(await status(page, ['done', 'error']), 'done', await page.textContent('[data-testid=error]'));
    assert.equal(await page.textContent('[data-testid=model-name]'), 'ONNX model: resnet_block');
    const onnx = await predictions(page);
    assert.equal(onnx.length, 5);
    onnx.forEach((p, i) => {
      assert.equal(p.label, expectedOnnx[i].label, `rank ${i + 1}`);
      assert.ok(Math.abs(p.probability - expectedOnnx[i].probability) < 1e-4, `${p.probability} vs ${expectedOnnx[i].probability}`);
    });
  } finally {
    await browser.close();
  }
});
