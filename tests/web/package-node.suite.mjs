// The npm package in Node, installed from its packed tarballs into an empty folder as a
// user would: golden parity through forward/features, classify equal to the CLI,
// overlapping calls, dispose, every error code, the README's Node and TypeScript examples.
// Run once per binding (package-node.test.mjs: the platform package left out, so the wasm
// runs; package-node-native.test.mjs: installed, so the native addon runs), by the file
// that sets globalThis.WEBCNN_TEST_BINDING. Tests of what does not depend on the binding
// (the package's files, its README, its download cache) run in the wasm file only.
// Needs scripts/build-npm (the tarballs) and the CLI (target/debug/webcnn).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { pathToFileURL } from 'node:url';
import zlib from 'node:zlib';
import {
  root, golden, installPackage, webcnn, synthInput, readNpy, relL2, encodePng, testPixels, serve,
  torchSaveFromSafetensors,
} from './helpers.mjs';

const TOL = 1e-4;
const BINDING = globalThis.WEBCNN_TEST_BINDING;
if (!['wasm', 'native'].includes(BINDING)) throw new Error('run package-node.test.mjs or package-node-native.test.mjs');
const NATIVE = BINDING === 'native';
// Tests of the package itself, not of a binding: run with the wasm only.
const ONCE = NATIVE && 'binding-neutral: runs in package-node.test.mjs';
const execFileAsync = promisify(execFile);
let app, pkg, srv;
const files = {};

function exportWeights(model, seed, classes) {
  const c = classes === undefined ? '' : `-c${classes}`;
  const f = path.join(app, `${model}-s${seed}${c}.safetensors`);
  if (!fs.existsSync(f)) {
    webcnn('export-synthetic', model, '--seed', String(seed), ...(c ? ['--classes', String(classes)] : []), '-o', f);
  }
  return f;
}

/** A safetensors file of f32 tensors `{ key: [shape, Float32Array] }`. */
function safetensors(tensors) {
  const header = {};
  let off = 0;
  for (const [k, [shape, data]] of Object.entries(tensors)) {
    header[k] = { dtype: 'F32', shape, data_offsets: [off, off + data.length * 4] };
    off += data.length * 4;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return new Uint8Array(Buffer.concat([len, Buffer.from(json),
    ...Object.values(tensors).map(([, d]) => Buffer.from(d.buffer))]));
}

async function rejects(promise, code, pattern) {
  await assert.rejects(promise, (e) => {
    assert.equal(e.name, 'WebcnnError', `${e}`);
    assert.ok(e instanceof pkg.WebcnnError);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

before(async () => {
  app = installPackage(`webcnn-npm-node-${BINDING}-`, { native: NATIVE });
  // Resolve 'webcnn' the way the user's code does (package exports, node condition).
  fs.writeFileSync(path.join(app, 'entry.mjs'), "export * from 'webcnn';\n");
  pkg = await import(pathToFileURL(path.join(app, 'entry.mjs')));
  files.r18 = exportWeights('resnet18', 3);
  files.pixels = testPixels(320, 240);
  files.png = path.join(app, 'test.png');
  fs.writeFileSync(files.png, encodePng(320, 240, files.pixels));
  fs.copyFileSync(path.join(root, 'www/demo.png'), path.join(app, 'demo.png'));
  process.env.WEBCNN_CACHE = path.join(app, 'cache');
  srv = await serve(app, {
    '/missing.safetensors': (req, res) => res.writeHead(404).end(),
    // As a CDN serves it: compressed on the wire, Content-Length the encoded size.
    '/gz/r18.safetensors': (req, res) => {
      const body = zlib.gzipSync(fs.readFileSync(files.r18), { level: 1 });
      res.writeHead(200, { 'content-encoding': 'gzip', 'content-length': body.length }).end(body);
    },
    '/br/r18.safetensors': (req, res) => {
      const body = zlib.brotliCompressSync(fs.readFileSync(files.r18), { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 1 } });
      res.writeHead(200, { 'content-encoding': 'br', 'content-length': body.length }).end(body);
    },
    // Half the file, then the connection drops.
    '/cut/r18.safetensors': (req, res) => {
      const body = fs.readFileSync(files.r18);
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, body.length >> 1), () => res.destroy());
    },
    '/timm/resnet18.tv_in1k/resolve/main/model.safetensors': (req, res) => {
      const body = fs.readFileSync(files.r18);
      res.writeHead(200, { 'content-length': body.length }).end(body);
    },
  });
  process.env.HF_ENDPOINT = srv.base;
});

after(() => {
  srv?.server.close();
  if (app) fs.rmSync(app, { recursive: true, force: true });
});

test('the installed package exposes the API and the model zoo', { skip: ONCE }, () => {
  const meta = JSON.parse(fs.readFileSync(path.join(app, 'node_modules/webcnn/package.json'), 'utf8'));
  assert.equal(meta.name, 'webcnn');
  assert.equal(meta.type, 'module');
  for (const f of ['index.js', 'node.js', 'index.d.ts', 'wasm/webcnn_bg.wasm', 'README.md', 'LICENSE-MIT', 'LICENSE-APACHE']) {
    assert.ok(fs.existsSync(path.join(app, 'node_modules/webcnn', f)), f);
  }
  for (const f of ['load', 'models', 'init', 'WebcnnError', 'Model']) assert.ok(pkg[f], f);
  const zoo = pkg.models();
  assert.equal(zoo.length, 35);
  assert.ok(zoo.find((m) => m.id === 'resnext50_32x4d').cam);
  const r50 = zoo.find((m) => m.id === 'resnet50');
  assert.equal(r50.params, 25557032);
  assert.deepEqual(r50.input, [3, 224, 224]);
  assert.equal(r50.labels, 'imagenet1k');
  assert.ok(r50.cam);
  assert.ok(r50.featureNodes.includes('layer4'));
  assert.equal(zoo.find((m) => m.id === 'vgg16_cifar').labels, 'cifar10');
  // Callers get copies: changing one does not change the package's table.
  r50.params = 0;
  assert.equal(pkg.models().find((m) => m.id === 'resnet50').params, 25557032);
});

for (const name of ['resnet18-s1', 'resnet18-s1-2x3x96x128', 'resnet50_gn-s1', 'resnet50_caffe-s1-2x3x96x128',
  'alexnet_lrn-s1', 'vgg11_bn_cifar-s1']) {
  test(`golden ${name} through forward, weights as bytes`, async () => {
    const c = JSON.parse(fs.readFileSync(path.join(golden, 'models', `${name}.json`), 'utf8'));
    const weights = new Uint8Array(fs.readFileSync(exportWeights(c.model, c.weights_seed)));
    const m = await pkg.load({ model: c.model, weights, device: 'cpu' });
    assert.equal(m.info.backend, 'cpu');
    assert.equal(m.info.binding, BINDING, 'the native addon where its platform package is installed, else the wasm');
    assert.equal(m.info.precision, 'f32');
    if (NATIVE) assert.equal(m.info.threads, os.availableParallelism(), 'the native CPU backend takes every core');
    else assert.equal(m.info.threads, 1, 'Node runs the single-threaded build');
    const y = await m.forward(synthInput(c.input_shape, c.input_seed), c.input_shape);
    assert.deepEqual(y.shape, c.output_shape);
    assert.ok(y.data instanceof Float32Array);
    const e = relL2(y.data, c.output);
    assert.ok(e <= TOL, `${name}: relative L2 ${e}`);
    m.dispose();
  });
}

test('classify on raw pixels, RGBA pixels, PNG bytes and a Blob equals `webcnn classify --json`', async () => {
  const cliOut = JSON.parse(webcnn('classify', files.png, '--model', 'resnet18', '--weights', files.r18,
    '--json', '--top', '5', '--device', 'cpu'));
  const want = cliOut.results[0].predictions;
  const m = await pkg.load({ model: 'resnet18', weights: files.r18, device: 'cpu' });
  const png = new Uint8Array(fs.readFileSync(files.png));
  const rgba = new Uint8ClampedArray(320 * 240 * 4).map((_, i) => (i % 4 === 3 ? 255 : files.pixels[(i >> 2) * 3 + (i % 4)]));
  const inputs = {
    pixels: { data: files.pixels, width: 320, height: 240, channels: 3 },
    rgba: { data: rgba, width: 320, height: 240, channels: 4 },
    png,
    arrayBuffer: png.buffer.slice(png.byteOffset, png.byteOffset + png.byteLength),
    blob: new Blob([png], { type: 'image/png' }),
  };
  for (const [kind, image] of Object.entries(inputs)) {
    const got = await m.classify(image, { topK: 5 });
    assert.equal(got.length, 5);
    got.forEach((p, i) => {
      assert.equal(p.index, want[i].class, `${kind} #${i}`);
      assert.equal(p.label, want[i].label);
      assert.ok(Math.abs(p.probability - want[i].probability) < 1e-5, `${kind}: ${p.probability} vs ${want[i].probability}`);
    });
  }
  m.dispose();
});

for (const dir of ['resnet18-s1-1x3x64x64', 'vgg16_cifar-s1-2x3x32x32', 'alexnet_lrn-s1-1x3x227x227']) {
  test(`features by node name equal the golden maps: ${dir}`, async () => {
    const meta = JSON.parse(fs.readFileSync(path.join(golden, 'features', dir, 'meta.json'), 'utf8'));
    const m = await pkg.load({ model: meta.model, weights: `synthetic:${meta.weights_seed}`, device: 'cpu' });
    const nodes = Object.keys(meta.nodes);
    const x = { data: synthInput(meta.input_shape, meta.input_seed), shape: meta.input_shape };
    const got = await m.features(x, nodes);
    assert.deepEqual(Object.keys(got), nodes);
    for (const node of nodes) {
      const want = readNpy(path.join(golden, 'features', dir, `${node}.npy`));
      assert.deepEqual(got[node].shape, want.shape, node);
      const e = relL2(got[node].data, want.data);
      assert.ok(e <= TOL, `${dir} ${node}: relative L2 ${e}`);
    }
    m.dispose();
  });
}

test('a fine-tuned head saved by torch.save: golden outputs, its own labels, and a headless backbone', async () => {
  // resnet18 with a 3-class head, as a training script saves it (.pth, DataParallel).
  const c = JSON.parse(fs.readFileSync(path.join(golden, 'models', 'resnet18-s1-c3-1x3x64x64.json'), 'utf8'));
  const pth = torchSaveFromSafetensors(exportWeights('resnet18', c.weights_seed, 3));
  const m = await pkg.load({ model: 'resnet18', weights: pth, labels: ['cat', 'dog', 'bird'], device: 'cpu' });
  assert.equal(m.info.numClasses, 3);
  assert.equal(m.info.labels, 'custom');
  assert.deepEqual([...m.info.classNames], ['cat', 'dog', 'bird']);
  assert.equal(m.info.notices.length, 2, m.info.notices.join('; '));
  assert.match(m.info.notices[1], /module\./);
  const y = await m.forward(synthInput(c.input_shape, c.input_seed), c.input_shape);
  assert.deepEqual(y.shape, [1, 3]);
  const e = relL2(y.data, c.output);
  assert.ok(e <= TOL, `relative L2 ${e}`);
  const top = await m.classify(new Uint8Array(fs.readFileSync(files.png)), { topK: 5 });
  assert.equal(top.length, 3);
  assert.deepEqual(top.map((p) => p.label).sort(), ['bird', 'cat', 'dog']);
  m.dispose();
  // A label file by path (one per line), and one of another count.
  fs.writeFileSync(path.join(app, 'labels3.txt'), 'cat\ndog\nbird\n');
  const m2 = await pkg.load({ model: 'resnet18', weights: pth, labels: path.join(app, 'labels3.txt'), device: 'cpu' });
  assert.equal(m2.info.classNames[2], 'bird');
  m2.dispose();
  await rejects(pkg.load({ model: 'resnet18', weights: pth, labels: ['cat', 'dog'], device: 'cpu' }), 'BAD_LABELS', /2 labels for a head of 3 classes/);
  // No labels: numbered.
  const m3 = await pkg.load({ model: 'resnet18', weights: pth, device: 'cpu' });
  assert.equal(m3.info.labels, 'numbered');
  assert.equal(m3.info.classNames[0], 'class 0');
  m3.dispose();
  // A headless backbone: features, and classify / cam say why they cannot.
  const hl = await pkg.load({ model: 'resnet18', weights: exportWeights('resnet18', 1, 0), device: 'cpu' });
  assert.equal(hl.info.numClasses, 0);
  const png = new Uint8Array(fs.readFileSync(files.png));
  await rejects(hl.classify(png), 'NO_CLASSIFIER', /feature extractor/);
  await rejects(hl.cam(png), 'NO_CLASSIFIER');
  const f = await hl.features(png, ['flatten']);
  assert.deepEqual(f.flatten.shape, [1, 512]);
  hl.dispose();
});

test("hf: with timm's layout (config.json + pytorch_model.bin): the architecture, classes and labels come from the repository", async () => {
  const c = JSON.parse(fs.readFileSync(path.join(golden, 'models', 'resnet18-s1-c3-1x3x64x64.json'), 'utf8'));
  const dir = path.join(app, 'me/pets/resolve/main');
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(path.join(root, 'tests/fixtures/own-model/timm/resnet18-ft3/config.json'), path.join(dir, 'config.json'));
  fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), torchSaveFromSafetensors(exportWeights('resnet18', c.weights_seed, 3)));
  const m = await pkg.load({ weights: 'hf:me/pets', device: 'cpu' });
  assert.equal(m.info.id, 'resnet18');
  assert.equal(m.info.numClasses, 3);
  assert.deepEqual([...m.info.classNames], ['cat', 'dog', 'bird']);
  assert.deepEqual(m.info.preprocess.size, [224, 224]);
  assert.equal(m.info.preprocess.interpolation, 'bilinear');
  const y = await m.forward(synthInput(c.input_shape, c.input_seed), c.input_shape);
  const e = relL2(y.data, c.output);
  assert.ok(e <= TOL, `relative L2 ${e}`);
  m.dispose();
  // A model id that disagrees with the config is named.
  await rejects(pkg.load({ model: 'resnet50', weights: 'hf:me/pets', device: 'cpu' }), 'BAD_ARGUMENT', /architecture 'resnet18', not 'resnet50'/);
  // The transform can be set by hand too.
  const p = await pkg.load({ weights: 'hf:me/pets', device: 'cpu', preprocess: { size: 96, interpolation: 'bicubic' } });
  assert.deepEqual(p.info.preprocess.size, [96, 96]);
  assert.equal(p.info.preprocess.interpolation, 'bicubic');
  assert.equal((await p.classify(new Uint8Array(fs.readFileSync(files.png)))).length, 3);
  p.dispose();
  await rejects(pkg.load({ weights: 'hf:me/pets', device: 'cpu', preprocess: { cropPct: 2 } }), 'BAD_ARGUMENT', /crop_pct/);
  await rejects(pkg.load({ weights: 'hf:me/pets', device: 'cpu', preprocess: { zoom: 2 } }), 'BAD_ARGUMENT', /unknown field `zoom`/);
});

test('weights served compressed (gzip, br) load: the decoded bytes are checked, not the encoded length', async () => {
  const want = await pkg.load({ model: 'resnet18', weights: files.r18, device: 'cpu' });
  const x = synthInput([1, 3, 64, 64], 1);
  const y0 = await want.forward(x, [1, 3, 64, 64]);
  for (const enc of ['gz', 'br']) {
    const m = await pkg.load({ model: 'resnet18', weights: `${srv.base}/${enc}/r18.safetensors`, device: 'cpu', cache: false });
    const y = await m.forward(x, [1, 3, 64, 64]);
    assert.deepEqual([...y.data], [...y0.data], enc);
    m.dispose();
  }
  want.dispose();
});

test('weights stream into the wasm: memory grows by the tensors, not the file beside them; every source reads the same', { skip: NATIVE && 'wasm memory: the wasm binding only' }, async () => {
  // In a fresh process (wasm memory never shrinks), ResNet-18 from a file path grows the
  // wasm memory by about its tensors (the file's size); reading the file whole would
  // hold the file and its tensors at once (twice the size).
  const size = fs.statSync(files.r18).size;
  const script = `import { load } from 'webcnn';
const m = await load({ model: 'resnet18', weights: process.argv.at(-1), device: 'cpu' });
console.log(m[Symbol.for('webcnn.wasmMemory')]());`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script, files.r18], { cwd: app, encoding: 'utf8' });
  const wasm = Number(out.trim());
  assert.ok(wasm > size && wasm < 1.15 * size + (8 << 20), `wasm memory ${wasm} bytes for a ${size}-byte file`);
  const m = await pkg.load({ model: 'resnet18', weights: files.r18, device: 'cpu' });
  const x = synthInput([1, 3, 64, 64], 2);
  const want = [...(await m.forward(x, [1, 3, 64, 64])).data];
  m.dispose();
  const bytes = new Uint8Array(fs.readFileSync(files.r18));
  for (const [what, weights] of [['a Blob', new Blob([bytes])], ['an ArrayBuffer', bytes.buffer], ['a URL', `${srv.base}/${path.basename(files.r18)}`]]) {
    const o = await pkg.load({ model: 'resnet18', weights, device: 'cpu', cache: false });
    assert.deepEqual([...(await o.forward(x, [1, 3, 64, 64])).data], want, what);
    o.dispose();
  }
  // A download cut off halfway is a DOWNLOAD error and leaves nothing in the cache.
  await rejects(pkg.load({ model: 'resnet18', weights: `${srv.base}/cut/r18.safetensors`, device: 'cpu' }), 'DOWNLOAD');
  const urls = path.join(app, 'cache/urls');
  assert.deepEqual(fs.existsSync(urls) ? fs.readdirSync(urls) : [], [], 'no file or .part kept');
  // A file that is not weights fails as it streams in, and is not cached either.
  await rejects(pkg.load({ model: 'resnet18', weights: `${srv.base}/demo.png`, device: 'cpu' }), 'WEIGHTS_FORMAT');
  assert.deepEqual(fs.existsSync(urls) ? fs.readdirSync(urls) : [], [], 'no file or .part kept');
});

test('a cached copy that breaks off or stalls is dropped and downloaded again; a stalled cache never hangs a load', { skip: ONCE }, async () => {
  // The package's own module with a cache that misbehaves in each way a browser's storage
  // or a disk can: a read error halfway, a read that never ends, an open or a write that
  // never answers. Each load still gives the same answer, from the network.
  const url = `${srv.base}/${path.basename(files.r18)}`;
  const script = `
import fs from 'node:fs';
import os from 'node:os';
import * as index from './node_modules/webcnn/index.js';
import * as base from './node_modules/webcnn/env-node.js';
const [file, url, mode] = process.argv.slice(2);
const bytes = new Uint8Array(fs.readFileSync(file));
const warned = [], dropped = [];
const never = new Promise(() => {});
index._setEnv({
  ...base,
  cacheStallMs: 300,
  warn: (m) => warned.push(m),
  cacheDrop: async (key) => { dropped.push(key); },
  cacheOpen: async () => {
    if (mode === 'open-stall') return never;
    if (mode === 'write-stall') return null;
    return { size: bytes.length, chunks: (async function* () {
      yield bytes.subarray(0, 1 << 16);
      if (mode === 'error') throw new Error('the disk went away');
      await never;
    })() };
  },
  cacheWriter: async () => (mode === 'write-stall' ? { copies: true, write: () => never, commit: async () => {}, abort: () => {} } : null),
});
const m = await index.load({ model: 'resnet18', weights: url, device: 'cpu' });
const x = new Float32Array(3 * 64 * 64).map((_, i) => Math.sin(i));
const y = await m.forward(x, [1, 3, 64, 64]);
console.log(JSON.stringify({ y: [...y.data.slice(0, 8)], warned, dropped }));`;
  fs.writeFileSync(path.join(app, 'cache-faults.mjs'), script);
  const m = await pkg.load({ model: 'resnet18', weights: files.r18, device: 'cpu' });
  const x = new Float32Array(3 * 64 * 64).map((_, i) => Math.sin(i));
  const want = [...(await m.forward(x, [1, 3, 64, 64])).data.slice(0, 8)];
  m.dispose();
  const hits = () => srv.hits.get(`/${path.basename(files.r18)}`) ?? 0;
  for (const [mode, warning, drops] of [
    ['error', /cached copy of .* could not be read \(the disk went away\); downloading it again/, 1],
    ['stall', /cached copy of .* could not be read \(no data for 0.3 s\)/, 1],
    ['open-stall', /the cache did not answer for 0.3 s; .* is downloaded without it/, 0],
    ['write-stall', /the cache took nothing for 0.3 s; .* is not kept/, 0],
  ]) {
    const before = hits();
    // Not execFileSync: the server answering the child runs in this process.
    const { stdout } = await execFileAsync(process.execPath, ['cache-faults.mjs', files.r18, url, mode], { cwd: app, timeout: 60_000 });
    const out = JSON.parse(stdout);
    assert.deepEqual(out.y, want, mode);
    assert.equal(out.warned.length, 1, `${mode}: ${out.warned}`);
    assert.match(out.warned[0], warning, mode);
    assert.equal(out.dropped.length, drops, mode);
    assert.equal(hits(), before + 1, `${mode}: downloaded once`);
  }
});

test('overlapping calls are queued and each gets its own answer', async () => {
  const m = await pkg.load({ model: 'resnet18', weights: 'synthetic:2', device: 'cpu' });
  const a = { data: files.pixels, width: 320, height: 240, channels: 3 };
  const b = { data: testPixels(200, 300), width: 200, height: 300, channels: 3 };
  const x = synthInput([1, 3, 64, 64], 7);
  const calls = () => [
    m.classify(a, { topK: 3 }),
    m.features(b, ['layer3']),
    m.forward(x, [1, 3, 64, 64]),
    m.classify(b, { topK: 3 }),
    m.cam(a),
    m.classify(a, { topK: 0 }),
    m.features(a, ['no_such_node']),
    m.classify(b, { topK: 2 }),
  ];
  const together = await Promise.allSettled(calls());
  const oneByOne = [];
  for (const c of calls().map((p) => p.then((v) => ({ status: 'fulfilled', value: v }), (e) => ({ status: 'rejected', reason: e })))) {
    oneByOne.push(await c);
  }
  assert.deepEqual(together.map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'rejected', 'rejected', 'fulfilled']);
  assert.deepEqual(together, oneByOne);
  assert.notDeepEqual(together[0].value, together[3].value);
  m.dispose();
});

test('dispose frees the model; every later call rejects with DISPOSED', async () => {
  const m = await pkg.load({ model: 'resnet18', weights: 'synthetic:1', device: 'cpu' });
  const pending = m.classify(files.pixels.length ? { data: files.pixels, width: 320, height: 240, channels: 3 } : null);
  m.dispose();
  m.dispose(); // twice is harmless
  // A call queued before dispose either finished or is told the model is gone.
  await pending.then(() => {}, (e) => assert.equal(e.code, 'DISPOSED'));
  await rejects(m.classify(new Uint8Array(fs.readFileSync(files.png))), 'DISPOSED');
  await rejects(m.forward(new Float32Array(3 * 64 * 64), [1, 3, 64, 64]), 'DISPOSED');
  await rejects(m.features(new Uint8Array(fs.readFileSync(files.png)), ['layer1']), 'DISPOSED');
  await rejects(m.cam(new Uint8Array(fs.readFileSync(files.png))), 'DISPOSED');
});

test('ONNX models (a path, bytes, a URL, as weights; torchvision exports) equal ONNX Runtime; features by value name; UNSUPPORTED_OP', async () => {
  const dir = path.join(root, 'tests/fixtures/onnx');
  const fixture = (name) => JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8'));
  const block = fixture('resnet_block');
  const x = new Float32Array(block.input);
  const bytes = new Uint8Array(fs.readFileSync(path.join(dir, 'resnet_block.onnx')));
  fs.copyFileSync(path.join(dir, 'zoo_lrn_preact.onnx'), path.join(app, 'zoo_lrn_preact.onnx'));
  for (const [how, options] of [
    ['path', { model: path.join(dir, 'resnet_block.onnx') }],
    ['bytes', { model: bytes }],
    ['ArrayBuffer', { model: bytes.slice().buffer }],
    ['weights', { weights: path.join(dir, 'resnet_block.onnx') }],
  ]) {
    const m = await pkg.load({ ...options, device: 'cpu' });
    assert.equal(m.info.id, how === 'path' || how === 'weights' ? 'resnet_block' : 'onnx', how);
    assert.equal(m.info.numClasses, 5);
    assert.deepEqual(m.info.inputSize, [3, 32, 32]);
    const y = await m.forward(x, block.input_shape);
    assert.deepEqual(y.shape, block.output_shape);
    const e = relL2(y.data, block.output);
    assert.ok(e <= TOL, `resnet_block from ${how}: relative L2 ${e}`);
    m.dispose();
  }
  // torch.onnx.export's files of torchvision models (reduced widths; the input is the
  // script's formula).
  for (const name of ['resnet18-op20-nofold-dyn', 'vgg16_bn-op20-nofold-static', 'resnext50_32x4d-op20-fold-dyn',
    'resnet50-dynamo-op20-dyn']) {
    const want = JSON.parse(fs.readFileSync(path.join(dir, 'tv', `${name}.json`), 'utf8'));
    const n = want.input_shape.reduce((a, b) => a * b);
    const input = Float32Array.from({ length: n }, (_, i) => ((i * 7919) % 1000) / 500 - 1);
    const m = await pkg.load({ model: path.join(dir, 'tv', `${name}.onnx`), device: 'cpu' });
    const y = await m.forward(input, want.input_shape);
    const e = relL2(y.data, want.output);
    assert.ok(e <= TOL, `${name}: relative L2 ${e}`);
    m.dispose();
  }
  // Initializers in an external data file: read from beside a model given as a path or a
  // URL, or given as externalData.
  const ext = fixture('grouped_matmul');
  const extBytes = new Uint8Array(fs.readFileSync(path.join(dir, 'grouped_matmul.onnx')));
  for (const f of ['grouped_matmul.onnx', 'grouped_matmul.data']) fs.copyFileSync(path.join(dir, f), path.join(app, f));
  for (const [how, options] of [
    ['path', { model: path.join(dir, 'grouped_matmul.onnx') }],
    ['URL', { model: `${srv.base}/grouped_matmul.onnx` }],
    ['externalData', { model: extBytes, externalData: { 'grouped_matmul.data': new Blob([fs.readFileSync(path.join(dir, 'grouped_matmul.data'))]) } }],
  ]) {
    const m = await pkg.load({ ...options, device: 'cpu' });
    const y = await m.forward(new Float32Array(ext.input), ext.input_shape);
    const e = relL2(y.data, ext.output);
    assert.ok(e <= TOL, `grouped_matmul (external data, ${how}): relative L2 ${e}`);
    m.dispose();
  }
  // Served over HTTP (and kept in the cache), the model zoo's older layout.
  const zoo = fixture('zoo_lrn_preact');
  const m = await pkg.load({ model: new URL(`${srv.base}/zoo_lrn_preact.onnx`), device: 'cpu' });
  assert.equal(m.info.id, 'zoo_lrn_preact');
  const y = await m.forward(new Float32Array(zoo.input), zoo.input_shape);
  const e = relL2(y.data, zoo.output);
  assert.ok(e <= TOL, `zoo_lrn_preact: relative L2 ${e}`);
  m.dispose();
  // Intermediate values by their ONNX names; labels and classify on the imported head.
  const labelled = await pkg.load({ model: bytes, device: 'cpu', labels: ['a', 'b', 'c', 'd', 'e'] });
  const f = await labelled.features({ data: x.subarray(0, 3 * 32 * 32), shape: [1, 3, 32, 32] }, ['layer1', 'gap']);
  assert.deepEqual(f.layer1.shape, [1, 8, 8, 8]);
  assert.deepEqual(f.gap.shape, [1, 8, 1, 1]);
  const top = await labelled.classify(new Uint8Array(fs.readFileSync(files.png)), { topK: 2 });
  assert.equal(top.length, 2);
  assert.ok(['a', 'b', 'c', 'd', 'e'].includes(top[0].label));
  labelled.dispose();
  // An operator webcnn does not run: named with its node, before any weight is used.
  const selu = bytes.slice();
  const at = Buffer.from(selu).indexOf('Relu');
  selu.set(new TextEncoder().encode('Selu'), at);
  await rejects(pkg.load({ model: selu, device: 'cpu' }), 'UNSUPPORTED_OP', /'Selu' \(node 'r1'\).*GlobalAveragePool/);
  await rejects(pkg.load({ model: bytes, weights: files.r18 }), 'BAD_ARGUMENT', /holds its weights/);
  await rejects(pkg.load({ model: new Uint8Array(100).fill(0xff), device: 'cpu' }), 'WEIGHTS_FORMAT', /ONNX/);
  await rejects(pkg.load({ model: extBytes, device: 'cpu' }), 'WEIGHTS_FORMAT', /'grouped_matmul\.data': pass it as externalData/);
  await rejects(pkg.load({ model: extBytes, device: 'cpu', externalData: { 'grouped_matmul.data': new Uint8Array(10) } }),
    'WEIGHTS_FORMAT', /grouped_matmul\.data/);
  // A location outside the model's folder is never fetched.
  const outside = Buffer.from(extBytes);
  outside.write('../gggggggggggggggg', outside.indexOf('grouped_matmul.data'));
  fs.writeFileSync(path.join(app, 'outside.onnx'), outside);
  await rejects(pkg.load({ model: path.join(app, 'outside.onnx'), device: 'cpu' }), 'WEIGHTS_FORMAT', /'\.\.\/g+' is not in the model's folder/);
  await rejects(pkg.load({ model: path.join(app, 'missing.onnx'), device: 'cpu' }), 'IO');
});

test('every error code, with the model usable afterwards', async () => {
  const png = new Uint8Array(fs.readFileSync(files.png));
  await rejects(pkg.load({ model: 'resnet19', weights: 'synthetic:1' }), 'UNKNOWN_MODEL', /resnet18/);
  await rejects(pkg.load({ model: 'resnet34', weights: files.r18, device: 'cpu' }), 'WEIGHTS_MISSING_KEY', /layer1\.2/);
  await rejects(pkg.load({ model: 'resnet18', weights: exportWeights('resnet34', 1), device: 'cpu' }), 'WEIGHTS_UNEXPECTED_KEY', /layer1\.2/);
  await rejects(pkg.load({ model: 'resnet18', weights: safetensors({ 'conv1.weight': [[1, 1, 1, 1], new Float32Array(1)] }), device: 'cpu' }),
    'WEIGHTS_SHAPE', /conv1\.weight/);
  await rejects(pkg.load({ model: 'resnet18', weights: new Uint8Array(1000).fill(7), device: 'cpu' }), 'WEIGHTS_FORMAT');
  const r18 = fs.readFileSync(files.r18);
  await rejects(pkg.load({ model: 'resnet18', weights: new Uint8Array(r18.subarray(0, r18.length / 2)), device: 'cpu' }), 'WEIGHTS_FORMAT');
  await rejects(pkg.load({ model: 'resnet18', weights: `${srv.base}/missing.safetensors`, device: 'cpu' }), 'DOWNLOAD', /404/);
  await rejects(pkg.load({ model: 'resnet18', weights: 'http://127.0.0.1:1/w.safetensors', device: 'cpu' }), 'DOWNLOAD');
  await rejects(pkg.load({ model: 'resnet18', weights: path.join(app, 'nope.safetensors'), device: 'cpu' }), 'IO');
  // Node has no WebGPU; the native binding's GPU is wgpu's (lavapipe here: see the GPU test).
  if (!NATIVE) await rejects(pkg.load({ model: 'resnet18', weights: 'synthetic:1', device: 'webgpu' }), 'NO_WEBGPU');
  await rejects(pkg.load({ model: 'resnet18', weights: 'synthetic:1', device: 'tpu' }), 'BAD_ARGUMENT');
  await rejects(pkg.load({ model: 'resnet18', weights: 'synthetic:1', precision: 'f8' }), 'BAD_ARGUMENT', /precision/);
  await rejects(pkg.load({ model: 'resnet18' }), 'BAD_ARGUMENT', /weights/);
  await rejects(pkg.load({ model: 'resnet18', weights: 42 }), 'BAD_ARGUMENT');
  await rejects(pkg.load({ model: 'resnet18', weights: 'hf:not-a-repo' }), 'BAD_ARGUMENT');
  await rejects(pkg.load(), 'BAD_ARGUMENT');
  await rejects(pkg.load({ model: 'resnet18', weights: 'synthetic:1', threads: 0 }), 'BAD_ARGUMENT', /threads/);
  await rejects(pkg.load({ model: 'resnet18', weights: 'synthetic:1', threads: 'many' }), 'BAD_ARGUMENT', /threads/);

  const m = await pkg.load({ model: 'resnet18', weights: files.r18, device: 'cpu' });
  const want = await m.classify(png);
  await rejects(m.classify(new Uint8Array([1, 2, 3, 4])), 'BAD_IMAGE');
  await rejects(m.classify(png.subarray(0, png.length / 2)), 'BAD_IMAGE');
  await rejects(m.classify({ data: new Uint8Array(10), width: 5, height: 5, channels: 3 }), 'BAD_IMAGE');
  await rejects(m.classify({ data: new Uint8Array(50), width: 5, height: 5, channels: 2 }), 'BAD_IMAGE');
  await rejects(m.classify('cat.png'), 'BAD_ARGUMENT');
  await rejects(m.forward(new Float32Array(10), [1, 3, 2, 2]), 'BAD_INPUT_SHAPE');
  await rejects(m.forward(new Float32Array(224 * 224), [1, 1, 224, 224]), 'BAD_INPUT_SHAPE');
  await rejects(m.forward([1, 2, 3], [1, 3, 1, 1]), 'BAD_ARGUMENT');
  for (const topK of [0, -1, 1.5, '5']) await rejects(m.classify(png, { topK }), 'BAD_ARGUMENT', /topK/);
  await rejects(m.features(png, ['layer9']), 'BAD_ARGUMENT', /layer4/);
  await rejects(m.features(png, []), 'BAD_ARGUMENT');
  await rejects(m.cam(png, { class: 1000 }), 'BAD_ARGUMENT', /out of range/);
  await rejects(m.cam(png, { class: -2 }), 'BAD_ARGUMENT');
  // After all that, the same answer as before.
  assert.deepEqual(await m.classify(png), want);
  const cam = await m.cam(png, { class: want[0].index });
  assert.deepEqual(cam.shape, [7, 7]);
  assert.equal(cam.class, want[0].index);
  assert.ok(Math.min(...cam.data) === 0 && Math.max(...cam.data) === 1);
  m.dispose();

  const vgg = await pkg.load({ model: 'vgg11_cifar', weights: 'synthetic:1', device: 'cpu' });
  await rejects(vgg.cam(png), 'BAD_ARGUMENT', /ResNet/);
  const tiny = await pkg.load({ model: 'alexnet', weights: 'synthetic:1', device: 'cpu' });
  await rejects(tiny.forward(new Float32Array(3 * 8 * 8), [1, 3, 8, 8]), 'BAD_INPUT_SHAPE', /features/);
  vgg.dispose();
  tiny.dispose();
});

test('hf: downloads once into the cache (HF_ENDPOINT), with progress', { skip: ONCE }, async () => {
  const before = srv.hits.get('/timm/resnet18.tv_in1k/resolve/main/model.safetensors') ?? 0;
  const seen = [];
  const m1 = await pkg.load({ model: 'resnet18', weights: 'hf:timm/resnet18.tv_in1k', device: 'cpu', onProgress: (p) => seen.push(p) });
  assert.ok(fs.existsSync(path.join(app, 'cache/hub/timm--resnet18.tv_in1k/main/model.safetensors')), 'cached in the CLI layout');
  const dl = seen.filter((p) => p.phase === 'download');
  assert.ok(dl.length > 0 && dl.at(-1).loaded === dl.at(-1).total && dl.at(-1).total === fs.statSync(files.r18).size);
  assert.deepEqual(seen.filter((p) => p.phase === 'prepare').map((p) => p.loaded), [0, 1]);
  const seen2 = [];
  const m2 = await pkg.load({ model: 'resnet18', weights: 'hf:timm/resnet18.tv_in1k', device: 'cpu', onProgress: (p) => seen2.push(p) });
  assert.equal(srv.hits.get('/timm/resnet18.tv_in1k/resolve/main/model.safetensors'), before + 1, 'the second load makes no request');
  assert.ok(seen2[0].cached);
  const png = new Uint8Array(fs.readFileSync(files.png));
  assert.deepEqual(await m1.classify(png), await m2.classify(png));
  m1.dispose();
  m2.dispose();
});

test('the wasm can be passed explicitly; a missing wasm file is a clear error', { skip: ONCE }, () => {
  const other = installPackage('webcnn-npm-wasm-');
  try {
    const wasm = path.join(other, 'node_modules/webcnn/wasm/webcnn_bg.wasm');
    fs.renameSync(wasm, path.join(other, 'moved.wasm'));
    fs.writeFileSync(path.join(other, 'run.mjs'), `
      import { readFileSync } from 'node:fs';
      import { load } from 'webcnn';
      try { await load({ model: 'resnet18', weights: 'synthetic:1' }); } catch (e) { console.log(e.code, e.message); }
      const m = await load({ model: 'resnet18', weights: 'synthetic:1', wasm: readFileSync('moved.wasm') });
      console.log(m.info.backend, (await m.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32])).shape.join('x'));
    `);
    const out = execFileSync('node', ['run.mjs'], { cwd: other, encoding: 'utf8' }).trim().split('\n');
    assert.match(out[0], /^INTERNAL loading the wasm module failed: .*webcnn_bg\.wasm/);
    assert.equal(out[1], 'cpu 1x1000');
  } finally {
    fs.rmSync(other, { recursive: true, force: true });
  }
});

test("error codes come from the crate's one list: the package's codes.js and ErrorCode type, every code the Rust side maps to, the README", { skip: ONCE }, async () => {
  const rust = fs.readFileSync(path.join(root, 'src/error.rs'), 'utf8');
  const list = rust.slice(rust.indexOf('error_codes! {'));
  const declared = [...list.slice(0, list.indexOf('\n}\n')).matchAll(/=> "([A-Z_]+)"/g)].map((m) => m[1]);
  const shipped = (await import(pathToFileURL(path.join(app, 'node_modules/webcnn/codes.js')))).default;
  assert.deepEqual(shipped, declared, 'codes.js is the list in src/error.rs');
  const dts = fs.readFileSync(path.join(app, 'node_modules/webcnn/codes.d.ts'), 'utf8');
  assert.deepEqual([...dts.matchAll(/\| '([A-Z_]+)'/g)].map((m) => m[1]), declared);
  // Every code Error::error_code maps to is in the list (the compiler checks the names).
  const mapped = new Set([...rust.slice(rust.indexOf('fn error_code'), rust.indexOf('error_codes! {')).matchAll(/ErrorCode::([A-Za-z]+)/g)].map((m) => m[1]));
  assert.ok(mapped.size >= 14, `${mapped.size} codes mapped`);
  // index.js keeps no list of its own, and raises only listed codes.
  const js = fs.readFileSync(path.join(root, 'www/npm/index.js'), 'utf8');
  for (const [, c] of js.matchAll(/(?:fail|WebcnnError)\('([A-Z_]+)'/g)) assert.ok(declared.includes(c), `index.js raises ${c}`);
  const readme = fs.readFileSync(path.join(root, 'www/npm/README.md'), 'utf8');
  for (const c of declared) assert.ok(readme.includes(`\`${c}\``), `README lacks ${c}`);
});

test('the types that cross the boundary are generated from the Rust ones, not written twice', { skip: ONCE }, () => {
  const shipped = fs.readFileSync(path.join(app, 'node_modules/webcnn/types.d.ts'), 'utf8');
  assert.match(shipped, /^\/\/ Generated by scripts\/build-npm from the crate's types/);
  const rust = ['src/binding.rs', 'src/wasm/types.rs', 'src/preprocess.rs'].map((f) => fs.readFileSync(path.join(root, f), 'utf8')).join('\n');
  const index = fs.readFileSync(path.join(root, 'www/npm/index.d.ts'), 'utf8');
  for (const name of ['ModelInfo', 'ModelSpec', 'Preprocess', 'PreprocessOptions', 'Prediction', 'Tensor', 'CamMap', 'EngineOptions']) {
    assert.match(rust, new RegExp(`pub struct ${name} \\{`), `the crate has struct ${name}`);
    assert.match(shipped, new RegExp(`export interface ${name} \\{`), `types.d.ts declares ${name}`);
    assert.doesNotMatch(index, new RegExp(`interface ${name}\\b`), `index.d.ts writes ${name} again`);
  }
  for (const name of ['Device', 'Precision', 'Tuning', 'Interpolation', 'CropMode', 'Backend', 'Binding']) {
    assert.match(shipped, new RegExp(`export type ${name} = "`), `types.d.ts declares ${name}`);
  }
  // The binding's internals (its classes, its init) are not part of the shipped types.
  assert.doesNotMatch(shipped, /export (class|function|default)/);
  // Ids from the crate's zoo.
  const ids = fs.readFileSync(path.join(app, 'node_modules/webcnn/models.d.ts'), 'utf8');
  assert.deepEqual([...ids.matchAll(/\| '(\w+)'/g)].map((m) => m[1]), pkg.models().map((m) => m.id));
});

test("the README shows the examples the tests run, verbatim", { skip: ONCE }, () => {
  const readme = fs.readFileSync(path.join(root, 'www/npm/README.md'), 'utf8');
  for (const f of ['node.mjs', 'browser.html', 'example.ts']) {
    const text = fs.readFileSync(path.join(root, 'www/npm/examples', f), 'utf8').trim();
    assert.ok(readme.includes(text), `www/npm/README.md does not contain examples/${f}`);
  }
});

test("the README's Node example runs and agrees with the CLI", () => {
  fs.copyFileSync(path.join(root, 'www/npm/examples/node.mjs'), path.join(app, 'node.mjs'));
  const out = execFileSync('node', ['node.mjs', 'demo.png', path.basename(files.r18)], { cwd: app, encoding: 'utf8' });
  const want = JSON.parse(webcnn('classify', path.join(app, 'demo.png'), '--model', 'resnet18', '--weights', files.r18,
    '--json', '--top', '5', '--device', 'cpu')).results[0].predictions;
  const lines = out.trim().split('\n');
  assert.equal(lines[0], 'backend: cpu');
  want.forEach((p, i) => assert.ok(lines[1 + i].endsWith(`${p.label} (${p.class})`), `${lines[1 + i]} vs ${p.label}`));
  assert.equal(lines[6], 'layer4: [1, 512, 7, 7]');
  // An error is reported with its code.
  const bad = spawnSync('node', ['node.mjs', 'demo.png', 'missing.safetensors'], { cwd: app, encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /error IO/);
});

test("the README's TypeScript example type-checks against the shipped .d.ts", { skip: ONCE }, () => {
  fs.copyFileSync(path.join(root, 'www/npm/examples/example.ts'), path.join(app, 'example.ts'));
  fs.writeFileSync(path.join(app, 'bad.ts'), "import { load } from 'webcnn';\nexport const m = load({ model: 'resnet51', weights: 1 });\n");
  const config = (files) => JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext',
      lib: ['es2022', 'dom'], types: [] },
    files,
  });
  const tsc = path.join(root, 'node_modules/.bin/tsc');
  fs.writeFileSync(path.join(app, 'tsconfig.json'), config(['example.ts']));
  const ok = spawnSync(tsc, ['-p', app], { encoding: 'utf8' });
  assert.equal(ok.status, 0, ok.stdout + ok.stderr);
  // The types do reject a wrong model id and wrong weights.
  fs.writeFileSync(path.join(app, 'tsconfig.json'), config(['bad.ts']));
  const bad = spawnSync(tsc, ['-p', app], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stdout, /resnet51/);
});

test('a panic inside the binding is an INTERNAL error; the next calls run on a fresh instance', async () => {
  const x = synthInput([1, 3, 32, 32], 5);
  const a = await pkg.load({ model: 'resnet18_caffe', weights: 'synthetic:1', device: 'cpu' });
  const b = await pkg.load({ model: 'vgg11_cifar', weights: 'synthetic:2', device: 'cpu' });
  const ya = Array.from((await a.forward(x, [1, 3, 32, 32])).data);
  const yb = Array.from((await b.forward(x, [1, 3, 32, 32])).data);
  await rejects(a[Symbol.for('webcnn.panic')](), 'INTERNAL', /(trapped|native binding panicked): panicked at [\s\S]*test hook panicked[\s\S]*prepared again on the next call/);
  // The model that panicked and another model of the same instance both work again.
  assert.deepEqual(Array.from((await a.forward(x, [1, 3, 32, 32])).data), ya);
  assert.deepEqual(Array.from((await b.forward(x, [1, 3, 32, 32])).data), yb);
  // A second panic, on the new instance, recovers the same way; new models load too.
  await rejects(b[Symbol.for('webcnn.panic')](), 'INTERNAL');
  const c = await pkg.load({ model: 'resnet18_caffe', weights: 'synthetic:1', device: 'cpu' });
  assert.deepEqual(Array.from((await c.forward(x, [1, 3, 32, 32])).data), ya);
  assert.deepEqual(Array.from((await b.forward(x, [1, 3, 32, 32])).data), yb);
  for (const m of [a, b, c]) m.dispose();
});

test('NaN inputs give NaN outputs and a warning', async () => {
  const m = await pkg.load({ model: 'vgg11_cifar', weights: 'synthetic:1', device: 'cpu' });
  const x = synthInput([1, 3, 32, 32], 2);
  x[7] = NaN;
  const warnings = [];
  const warn = console.warn;
  console.warn = (msg) => warnings.push(String(msg));
  try {
    const y = await m.forward(x, [1, 3, 32, 32]);
    assert.ok(y.data.every((v) => Number.isNaN(v)), 'NaN reaches every logit, as in PyTorch');
  } finally {
    console.warn = warn;
  }
  assert.match(warnings.join('\n'), /1 of 3072 input values are NaN or Inf/);
  m.dispose();
});

test("the package README's option and field names are the .d.ts's; the README's wasm sizes are the package's", { skip: ONCE }, () => {
  const readme = fs.readFileSync(path.join(root, 'www/npm/README.md'), 'utf8');
  // The package's own declarations, and those the binding's build generates from Rust.
  const dts = ['www/npm/index.d.ts', 'www/npm/types.d.ts'].map((f) => fs.readFileSync(path.join(root, f), 'utf8')).join('\n');
  const members = (name) => {
    const body = dts.match(new RegExp(`interface ${name} \\{([\\s\\S]*?)\\n\\}`))?.[1];
    assert.ok(body, `the .d.ts files have interface ${name}`);
    return new Set([...body.matchAll(/^ {2,4}(?:readonly )?(\w+)\??:/gm)].map((m) => m[1]));
  };
  const api = readme.match(/## API\n\n```ts\n([\s\S]*?)```/)?.[1];
  assert.ok(api, 'the package README has its API block');
  const check = (shown, iface) => {
    const known = members(iface);
    assert.ok(shown.length > 0, `the API block shows ${iface}`);
    for (const k of shown) assert.ok(known.has(k), `the README shows '${k}', which ${iface} does not have`);
    for (const k of known) assert.ok(readme.includes(k), `${iface}.${k} is not in the package README`);
  };
  const loadCall = api.match(/load\(\{\n([\s\S]*?)\n\}\);/)[1];
  check([...loadCall.matchAll(/^ {2}(\w+)[,:]/gm)].map((m) => m[1]), 'LoadOptions');
  check(api.match(/m\.info;\s+\/\/ \{ ([^}]*) \}/)[1].split(',').map((s) => s.trim().split(':')[0]), 'ModelInfo');
  check(api.match(/preprocess: \{[^}]*\}, \/\/ optional: your transform \(([^)]*)\)/)[1].split(',').map((s) => s.trim()), 'Preprocess');

  // The wasm sizes the main README gives are the packed files' (within 3%): the size is watched.
  const main = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  for (const [file, shown] of [['wasm/webcnn_bg.wasm', /`webcnn_bg\.wasm` ([\d.]+) MB \(([\d.]+) MB gzipped\)/],
    ['wasm-mt/webcnn_bg.wasm', /`wasm-mt\/webcnn_bg\.wasm` ([\d.]+) MB \(([\d.]+) MB gzipped\)/]]) {
    const m = main.match(shown);
    assert.ok(m, `README.md gives the size of ${file}`);
    const bytes = fs.readFileSync(path.join(app, 'node_modules/webcnn', file));
    const gz = zlib.gzipSync(bytes, { level: 9 }).length;
    for (const [said, real] of [[Number(m[1]), bytes.length], [Number(m[2]), gz]]) {
      assert.ok(Math.abs(said * 1e6 - real) <= 0.03 * real,
        `README.md gives ${file} as ${said} MB; scripts/build-npm made ${(real / 1e6).toFixed(2)} MB: update the README`);
    }
  }
});

/** Runs `script` (an ES module) in a fresh Node in the app's folder; its stdout. */
function runIn(script, arg = '{}', env = {}) {
  return execFileSync(process.execPath, ['--input-type=module', '-e', script, arg],
    { cwd: app, encoding: 'utf8', env: { ...process.env, ...env } }).trim();
}
const PROBE = `import { load } from 'webcnn';
try {
  const m = await load({ model: 'alexnet', weights: 'synthetic:1', device: 'cpu', ...JSON.parse(process.argv.at(-1)) });
  console.log(m.info.binding, m.info.threads);
} catch (e) { console.log(e.code, e.message); }`;

test('without its platform package the wasm runs; binding: "native" then says why', { skip: NATIVE && 'the fallback: runs in package-node.test.mjs' }, () => {
  assert.ok(!fs.existsSync(path.join(app, 'node_modules/webcnn-linux-x64-gnu')), 'installed without the platform package');
  assert.equal(runIn(PROBE), 'wasm 1');
  assert.match(runIn(PROBE, '{"binding":"native"}'), /^BAD_ARGUMENT no native binding: webcnn-linux-\w+-\w+ is not installed/);
});

test('the native binding is taken where its platform package is installed; binding: "wasm", WEBCNN_BINDING=wasm and threads', { skip: !NATIVE && 'the native binding only' }, () => {
  const meta = JSON.parse(fs.readFileSync(path.join(app, 'node_modules/webcnn-linux-x64-gnu/package.json'), 'utf8'));
  assert.deepEqual([meta.os, meta.cpu, meta.libc], [['linux'], ['x64'], ['glibc']]);
  assert.equal(runIn(PROBE), `native ${os.availableParallelism()}`);
  assert.equal(runIn(PROBE, '{"threads":1}'), 'native 1');
  assert.equal(runIn(PROBE, '{"binding":"wasm"}'), 'wasm 1');
  assert.equal(runIn(PROBE, '{}', { WEBCNN_BINDING: 'wasm' }), 'wasm 1');
  assert.match(runIn(PROBE, '{"binding":"native"}', { WEBCNN_BINDING: 'wasm' }), /^BAD_ARGUMENT no native binding: WEBCNN_BINDING=wasm/);
  assert.match(runIn(PROBE, '{"binding":"gpu"}'), /^BAD_ARGUMENT binding must be/);
});

test('native calls run off the event loop: timers fire while a model computes', { skip: !NATIVE && 'the native binding only' }, async () => {
  const m = await pkg.load({ model: 'resnet50', weights: 'synthetic:1', device: 'cpu' });
  const x = synthInput([1, 3, 224, 224], 1);
  await m.forward(x, [1, 3, 224, 224]);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const t0 = performance.now();
  await Promise.all([m.forward(x, [1, 3, 224, 224]), m.classify({ data: files.pixels, width: 320, height: 240, channels: 3 })]);
  const ms = performance.now() - t0;
  clearInterval(timer);
  assert.ok(ticks >= 3, `${ticks} timer ticks during ${ms.toFixed(0)} ms of computing`);
  m.dispose();
});

// Every golden model case takes lavapipe about 8 minutes (compiling each model's kernels is
// most of it): CI runs one case of each family and head kind, WEBCNN_NODE_GPU_ALL=1 all
// of them (scripts/test-node-gpu). The Rust suite runs every case on the GPU backend too.
const GPU_SHORT = ['alexnet_lrn-s1', 'resnet18-s1-2x3x96x128', 'resnet18-s1-c3-1x3x64x64', 'resnet50_caffe-s1-2x3x96x128',
  'resnet50-s1-c37-2x3x96x96', 'vgg11_bn-s1-2x3x96x128', 'vgg11_bn-s1-c4-1x3x64x64', 'vgg11_bn_cifar-s1'];
const GPU_ALL = process.env.WEBCNN_NODE_GPU_ALL === '1';

test(`device: 'gpu' (wgpu) runs ${GPU_ALL ? 'every' : 'a case of each family of the'} golden model case${GPU_ALL ? '' : 's'}; a lost device is recovered`, { skip: !NATIVE && 'the native binding only' }, async () => {
  const dir = path.join(golden, 'models');
  const all = fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
  assert.ok(all.length >= 40, `${all.length} golden model cases`);
  const cases = GPU_ALL ? all : GPU_SHORT.map((n) => `${n}.json`);
  for (const f of cases) assert.ok(all.includes(f), `${f} is a golden case`);
  for (const f of cases) {
    const c = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
    const weights = c.classes === undefined ? `synthetic:${c.weights_seed}` : exportWeights(c.model, c.weights_seed, c.classes);
    const m = await pkg.load({ model: c.model, weights, device: 'gpu' });
    assert.equal(m.info.backend, 'gpu');
    assert.equal(m.info.binding, 'native');
    assert.ok(m.info.adapter, 'the adapter is named');
    const y = await m.forward(synthInput(c.input_shape, c.input_seed), c.input_shape);
    assert.deepEqual(y.shape, c.output_shape, f);
    const e = relL2(y.data, c.output);
    assert.ok(e <= TOL, `${f} on ${m.info.adapter}: relative L2 ${e}`);
    m.dispose();
  }
  const m = await pkg.load({ model: 'resnet18', weights: files.r18, device: 'gpu' });
  const png = new Uint8Array(fs.readFileSync(files.png));
  const want = await m.classify(png);
  assert.ok(m[Symbol.for('webcnn.loseDevice')](), 'the device was destroyed');
  assert.deepEqual(await m.classify(png), want, 'the model is prepared on a new device and answers the same');
  m.dispose();
});
