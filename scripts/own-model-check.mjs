// The own-model check, second half: the three fine-tuned models scripts/own_model_check.py
// made (safetensors and .pth, 5 / 37 / 10 classes, their label files) classify a photograph
// in the CLI (CPU and GPU backends), in Node through the packed tarball and in the demo in
// headless chromium (dropped files, CPU backend); every probability shown is compared with
// PyTorch's float64 one for the same label. Prints a table; fails past `--tol` (1e-4).
//   node scripts/own-model-check.mjs DIR PHOTO.png [--tol 1e-4]
// Needs the CLI (target/release or $WEBCNN_BIN), scripts/build-npm and `trunk build`.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { root, installPackage } from '../tests/web/helpers.mjs';

const [dir, photo] = process.argv.slice(2).map((p) => path.resolve(p));
const tolArg = process.argv.indexOf('--tol');
const TOL = tolArg > 0 ? Number(process.argv[tolArg + 1]) : 1e-4;
const cli = process.env.WEBCNN_BIN
  || [path.join(root, 'target/release/webcnn'), path.join(root, 'target/debug/webcnn')].find((p) => fs.existsSync(p));
const ref = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8'));
const rows = [];
let failed = false;

function compare(where, name, file, preds) {
  const r = ref.models[name];
  let worst = 0;
  for (const p of preds) {
    const i = r.labels.indexOf(p.label);
    if (i < 0) throw new Error(`${where} ${name}: unknown label '${p.label}'`);
    worst = Math.max(worst, Math.abs(p.probability - r.probs[i]));
  }
  const top = r.labels[r.probs.indexOf(Math.max(...r.probs))];
  const ok = preds[0].label === top && worst <= TOL && preds.length > 0;
  if (!ok) failed = true;
  rows.push({ where, name, file, shown: preds.length, top: preds[0].label, worst, ok });
}

const topFor = (name) => Math.min(5, ref.models[name].labels.length);

// The CLI, both backends.
for (const name of Object.keys(ref.models)) {
  const arch = ref.models[name].arch;
  for (const ext of ['safetensors', 'pth']) {
    for (const device of ['cpu', 'gpu']) {
      const out = execFileSync(cli, ['classify', photo, '--model', arch, '--weights', path.join(dir, `${name}.${ext}`),
        '--labels', path.join(dir, `${name}.txt`), '--json', '--top', String(topFor(name)), '--device', device],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
      compare(`CLI ${device}`, name, ext, JSON.parse(out).results[0].predictions);
    }
  }
}

// Node, the packed package.
const app = installPackage('webcnn-own-model-');
fs.writeFileSync(path.join(app, 'entry.mjs'), "export * from 'webcnn';\n");
const pkg = await import(pathToFileURL(path.join(app, 'entry.mjs')));
const png = new Uint8Array(fs.readFileSync(photo));
for (const name of Object.keys(ref.models)) {
  for (const ext of ['safetensors', 'pth']) {
    const m = await pkg.load({ weights: path.join(dir, `${name}.${ext}`), model: ref.models[name].arch,
      labels: path.join(dir, `${name}.txt`), device: 'cpu' });
    compare('Node', name, ext, await m.classify(png, { topK: topFor(name) }));
    m.dispose();
  }
}

// The demo: the weights and the label file dropped together, then the photograph.
const dist = path.join(root, 'dist');
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  // /w/: the check's own files (the page's first model comes from there).
  const file = url.pathname.startsWith('/w/') ? path.join(dir, path.basename(url.pathname))
    : path.join(dist, url.pathname === '/' ? 'index.html' : path.normalize(url.pathname));
  if (!file.startsWith(dist) && !file.startsWith(path.resolve(dir))) { res.writeHead(403).end(); return; }
  fs.readFile(file, (err, body) => {
    if (err) { res.writeHead(404).end(); return; }
    const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css', '.png': 'image/png' };
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' }).end(body);
  });
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-gpu'] });
const status = (page, want) => page.waitForFunction((w) => w.includes(document.querySelector('[data-testid=status]').textContent),
  want, { timeout: 600_000 }).then(() => page.textContent('[data-testid=status]'));
const act = async (page, f) => { await page.$eval('[data-testid=status]', (e) => { e.textContent = ''; }); await f(); };
try {
  for (const name of Object.keys(ref.models)) {
    for (const ext of ['safetensors', 'pth']) {
      const page = await browser.newPage();
      const base = `http://127.0.0.1:${server.address().port}`;
      await page.goto(`${base}/?model=${ref.models[name].arch}&weights=${encodeURIComponent(`${base}/w/${name}.safetensors`)}&noimage=1`);
      if (await status(page, ['ready', 'error']) !== 'ready') throw new Error(await page.textContent('[data-testid=error]'));
      await act(page, () => page.setInputFiles('[data-testid=weights-input]',
        [path.join(dir, `${name}.${ext}`), path.join(dir, `${name}.txt`)]));
      if (await status(page, ['ready', 'done', 'error']) === 'error') throw new Error(await page.textContent('[data-testid=error]'));
      await act(page, () => page.setInputFiles('[data-testid=image-input]', photo));
      if (await status(page, ['done', 'error']) !== 'done') throw new Error(await page.textContent('[data-testid=error]'));
      const preds = await page.$$eval('[data-testid=prediction]', (els) => els.map((e) => ({
        label: e.dataset.label, probability: Number(e.dataset.probability) })));
      compare('demo (chromium, CPU)', name, ext, preds);
      await page.close();
    }
  }
} finally {
  await browser.close();
  server.close();
  fs.rmSync(app, { recursive: true, force: true });
}

const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m) || [])[1] || os.arch();
console.log(`own-model check: PyTorch ${ref.torch} / torchvision ${ref.torchvision} (float64) vs webcnn; ${cpu}; ${new Date().toISOString().slice(0, 10)}`);
console.log('| where | model | file | shown | top-1 | largest difference | ok |');
console.log('|---|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.where} | ${r.name} | .${r.file} | ${r.shown} | ${r.top} | ${r.worst.toExponential(1)} | ${r.ok ? 'yes' : 'NO'} |`);
}
if (failed) {
  console.error(`some probabilities differ from PyTorch's by more than ${TOL}`);
  process.exit(1);
}
