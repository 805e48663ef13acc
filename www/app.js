// The demo page: UI only. Inference runs in www/worker.js so the page never freezes.
const $ = (id) => document.getElementById(id);
const worker = new Worker('./worker.js', { type: 'module' });
let nextId = 1;
const pending = new Map();

worker.onmessage = (ev) => {
  const { id, ok, result, error, progress } = ev.data;
  const p = pending.get(id);
  if (!p) return;
  if (progress) { p.onProgress?.(progress); return; }
  pending.delete(id);
  ok ? p.resolve(result) : p.reject(new Error(error));
};
worker.onerror = (e) => showError(`worker failed: ${e.message || e}`);

function call(cmd, args = {}, onProgress) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onProgress });
    worker.postMessage({ id, cmd, args });
  });
}

// Repositories of torchvision's ImageNet weights as published by timm.
const HUB = new Set(['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
  'vgg11', 'vgg11_bn', 'vgg13', 'vgg13_bn', 'vgg16', 'vgg16_bn', 'vgg19', 'vgg19_bn']);
const hubUrl = (id) => `https://huggingface.co/timm/${id}.tv_in1k/resolve/main/model.safetensors`;

const state = { models: [], info: null, image: null, runs: 0, timing: {}, loading: null };

function setStatus(s) { $('status').textContent = s; }
function showError(msg) {
  $('error').textContent = msg;
  $('error').hidden = false;
  setStatus('error');
}
function clearError() { $('error').hidden = true; $('error').textContent = ''; }
const fmtMs = (ms) => (ms == null ? '-' : `${ms.toFixed(0)} ms`);
const fmtBytes = (b) => (b > 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : `${(b / 1024).toFixed(0)} KiB`);

function renderTiming() {
  const t = state.timing;
  $('timing').textContent = `weights load: ${fmtMs(t.weights)} · prepare: ${fmtMs(t.prepare)} · ` +
    `first run: ${fmtMs(t.first)} · steady run: ${fmtMs(t.steady)}`;
}

const WEIGHTS_EXT = /\.(safetensors|pth|pt|bin|onnx)$/i;
const ONNX_EXT = /\.onnx$/i;
const LABELS_EXT = /\.(txt|json)$/i;

function weightsChoice() {
  const src = document.querySelector('input[name=wsrc]:checked').value;
  const model = $('model').value;
  if (src === 'file') {
    // The weights, and beside them (optionally) a label file naming the head's classes.
    const all = [...$('weights-file').files];
    const f = all.find((x) => WEIGHTS_EXT.test(x.name));
    if (!f) throw new Error('pick a weights file (.safetensors, a PyTorch .pth / .pt / .bin, or an .onnx model)');
    return { kind: 'file', file: f, labels: all.find((x) => LABELS_EXT.test(x.name)) };
  }
  if (src === 'url') {
    const url = $('weights-url').value.trim();
    if (!url) throw new Error('enter a weights URL');
    return { kind: 'url', url };
  }
  if (src === 'hub' && HUB.has(model)) return { kind: 'url', url: hubUrl(model) };
  return { kind: 'synthetic' };
}

async function loadModel() {
  clearError();
  const model = $('model').value;
  let choice;
  try { choice = weightsChoice(); } catch (e) { showError(e.message); return; }
  setStatus('loading');
  $('predictions').replaceChildren();
  const query = new URLSearchParams(location.search);
  // ?threads=N caps the CPU backend's threads (used only on a cross-origin isolated page).
  const threads = Number(query.get('threads')) || undefined;
  const args = { model, seed: 1, device: query.get('device') || 'auto', threads };
  if (choice.kind === 'file') {
    // The File itself: posting it copies no bytes, and the package streams it in pieces.
    // An .onnx file is the model itself (graph and weights); the model list does not apply.
    if (ONNX_EXT.test(choice.file.name)) args.onnxFile = choice.file;
    else args.weightsFile = choice.file;
    args.labels = choice.labels;
  }
  if (choice.kind === 'url') args.weightsUrl = choice.url;
  $('progress-box').hidden = choice.kind !== 'url';
  const job = call('load', args, (p) => {
    $('progress').max = p.total || 1;
    $('progress').value = p.loaded;
    const pct = p.total ? ` (${((100 * p.loaded) / p.total).toFixed(0)}%)` : '';
    $('progress-text').textContent = p.cached ? `${fmtBytes(p.loaded)} from the browser cache`
      : `${fmtBytes(p.loaded)}${p.total ? ` of ${fmtBytes(p.total)}` : ''}${pct}`;
  });
  state.loading = job;
  try {
    const r = await job;
    if (state.loading !== job) return;
    state.info = r.info;
    state.runs = 0;
    state.timing = { weights: r.weightsMs, prepare: r.prepareMs };
    $('backend').textContent = r.backend + (r.notice ? ` (${r.notice})` : '');
    $('model-name').textContent = r.onnx ? `ONNX model: ${r.info.id}` : '';
    $('stage').replaceChildren(...r.info.featureNodes.map((n) => new Option(n, n)));
    $('cam-toggle').hidden = !r.info.cam;
    renderTiming();
    setStatus('ready');
    if (state.image) await classify();
  } catch (e) {
    if (state.loading === job) showError(e.message);
  }
}

async function classify() {
  if (!state.image || !state.info) return;
  clearError();
  setStatus('running');
  try {
    const r = await call('classify', { image: state.image, top: 5 });
    state.runs += 1;
    if (state.runs === 1) state.timing.first = r.ms; else state.timing.steady = r.ms;
    renderTiming();
    renderPredictions(r.predictions);
    setStatus('done');
    $('again').disabled = false;
    drawFeatures().catch((e) => showError(e.message));
    if ($('show-cam').checked) drawCam().catch((e) => showError(e.message));
  } catch (e) {
    $('predictions').replaceChildren();
    showError(e.message);
  }
}

function renderPredictions(preds) {
  $('predictions').replaceChildren(...preds.map((p) => {
    const li = document.createElement('li');
    li.dataset.testid = 'prediction';
    li.dataset.label = p.label;
    li.dataset.probability = String(p.probability);
    const text = document.createElement('span');
    text.textContent = `${p.label} — ${(p.probability * 100).toFixed(2)}%`;
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.style.width = `${Math.max(0.5, p.probability * 100)}%`;
    li.append(text, bar);
    return li;
  }));
}

async function drawFeatures() {
  const node = $('stage').value;
  if (!node || !state.image) return;
  const t = await call('features', { image: state.image, node });
  // [1, C, H, W] maps, or [1, N] vectors shown as one row.
  const [channels, height, width] = t.shape.length === 4 ? t.shape.slice(1) : [1, 1, t.shape[1]];
  const f = { channels, height, width, data: t.data };
  const plane = f.height * f.width;
  const shown = Math.min(f.channels, 64);
  const canvases = [];
  for (let c = 0; c < shown; c++) {
    const data = f.data.subarray(c * plane, (c + 1) * plane);
    let lo = Infinity, hi = -Infinity;
    for (const v of data) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const cv = document.createElement('canvas');
    cv.width = f.width; cv.height = f.height;
    cv.title = `${node} channel ${c}`;
    const ctx = cv.getContext('2d');
    const img = ctx.createImageData(f.width, f.height);
    for (let i = 0; i < plane; i++) {
      const g = hi > lo ? Math.round((255 * (data[i] - lo)) / (hi - lo)) : 0;
      img.data.set([g, g, g, 255], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
    canvases.push(cv);
  }
  $('features').replaceChildren(...canvases);
}

function heat(v) { // dark blue -> cyan -> yellow -> red
  const r = Math.min(255, Math.max(0, 255 * (1.5 - Math.abs(4 * v - 3))));
  const g = Math.min(255, Math.max(0, 255 * (1.5 - Math.abs(4 * v - 2))));
  const b = Math.min(255, Math.max(0, 255 * (1.5 - Math.abs(4 * v - 1))));
  return [r, g, b];
}

async function drawCam() {
  if (!state.info?.cam || !state.image) { $('cam').hidden = true; return; }
  const c = await call('cam', { image: state.image, cls: -1 });
  const m = { height: c.shape[0], width: c.shape[1], data: c.data };
  const cv = $('cam');
  cv.width = m.width; cv.height = m.height;
  const ctx = cv.getContext('2d');
  const img = ctx.createImageData(m.width, m.height);
  m.data.forEach((v, i) => img.data.set([...heat(v), 255], 4 * i));
  ctx.putImageData(img, 0, 0);
  cv.hidden = false;
}

async function setImage(blob) {
  state.image = await blob.arrayBuffer();
  const img = $('preview');
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  $('cam').hidden = true;
  await classify();
}

function wire() {
  $('model').onchange = loadModel;
  for (const r of document.querySelectorAll('input[name=wsrc]')) r.onchange = loadModel;
  $('weights-file').onchange = () => { document.querySelector('input[value=file]').checked = true; loadModel(); };
  $('weights-url').onchange = () => { document.querySelector('input[value=url]').checked = true; loadModel(); };
  $('image').onchange = () => { const f = $('image').files[0]; if (f) setImage(f); };
  $('again').onclick = () => classify();
  $('stage').onchange = () => drawFeatures().catch((e) => showError(e.message));
  $('show-cam').onchange = () => ($('show-cam').checked ? drawCam().catch((e) => showError(e.message)) : ($('cam').hidden = true));
  $('preview').onerror = () => { $('preview').hidden = true; };
  const drop = $('drop');
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const files = [...e.dataTransfer.files];
    const f = files[0];
    if (!f) return;
    if (files.some((x) => WEIGHTS_EXT.test(x.name))) {
      // Dropped weights (with their label file, if one comes along) become the weights source.
      const dt = new DataTransfer();
      files.filter((x) => WEIGHTS_EXT.test(x.name) || LABELS_EXT.test(x.name)).forEach((x) => dt.items.add(x));
      $('weights-file').files = dt.files;
      document.querySelector('input[value=file]').checked = true;
      loadModel();
    } else {
      setImage(f);
    }
  };
  document.onpaste = (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith('image/'));
    if (item) setImage(item.getAsFile());
  };
}

async function main() {
  wire();
  const params = new URLSearchParams(location.search);
  try {
    state.models = await call('models');
  } catch (e) {
    showError(`the wasm module failed to start: ${e.message}`);
    return;
  }
  $('model').replaceChildren(...state.models.map((m) => new Option(
    `${m.id} (${(m.params / 1e6).toFixed(1)}M params, ${(m.macs / 1e9).toFixed(2)} GMACs)`, m.id)));
  $('model').value = state.models.some((m) => m.id === params.get('model')) ? params.get('model') : 'resnet18';
  if (params.get('weights')) {
    $('weights-url').value = params.get('weights');
    document.querySelector('input[value=url]').checked = true;
  }
  await loadModel();
  if (!state.image && !params.has('noimage')) {
    const demo = await fetch('demo.png');
    if (demo.ok) await setImage(await demo.blob());
  }
}

// For tests and curious users: simulate a lost GPU device (the next run recovers).
window.webcnnDebug = { loseDevice: () => call('loseDevice') };

main();
