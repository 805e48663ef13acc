// webcnn in Node (the native addon; the wasm, one thread) against
// onnxruntime-node (its native CPU build) on the same architectures, batch 1 and 8: the
// table scripts/bench-node prints. Each engine runs in a process of its own (a binding is
// fixed per process), one after another, so they never share the cores.
//   node scripts/bench-node.mjs --app DIR --onnx DIR [--models resnet18,...] [--batches 1,8]
//                               [--threads N] [--iters N] [--rounds N] [--engines ort,native,wasm]
// DIR (--app) has webcnn and onnxruntime-node installed; --onnx holds MODEL-bBATCH.onnx.
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
};

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

/** Median ms of `iters` runs of `run` after two warm-up runs; the best of `rounds`. */
async function time(run, iters, rounds) {
  await run();
  await run();
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const ms = [];
    for (let i = 0; i < iters; i++) {
      const t0 = performance.now();
      await run();
      ms.push(performance.now() - t0);
    }
    best = Math.min(best, median(ms));
  }
  return best;
}

const INPUT = { alexnet: 224, resnet18: 224, resnet50: 224, vgg16: 224 };

/** One engine's times, `{ 'model/batch': ms }`, measured in this process. */
async function child(engine, opts) {
  const req = (await import('node:module')).createRequire(path.join(opts.app, 'package.json'));
  const out = {};
  if (engine === 'ort') {
    const ort = req('onnxruntime-node');
    for (const model of opts.models) {
      for (const batch of opts.batches) {
        const file = path.join(opts.onnx, `${model}-b${batch}.onnx`);
        const s = await ort.InferenceSession.create(file, {
          intraOpNumThreads: opts.threads, interOpNumThreads: 1, executionMode: 'sequential',
          graphOptimizationLevel: 'all',
        });
        const n = INPUT[model];
        const x = new ort.Tensor('float32', new Float32Array(batch * 3 * n * n).fill(0.5), [batch, 3, n, n]);
        out[`${model}/${batch}`] = await time(() => s.run({ [s.inputNames[0]]: x }), opts.iters, opts.rounds);
        await s.release?.();
      }
    }
    out.version = req('onnxruntime-node/package.json').version;
    return out;
  }
  const webcnn = await import(pathToFileURL(req.resolve('webcnn')));
  const binding = engine === 'native' ? 'native' : 'wasm';
  const threads = engine === 'wasm' ? 1 : opts.threads;
  for (const model of opts.models) {
    const m = await webcnn.load({ model, weights: 'synthetic:1', device: 'cpu', binding, threads });
    out.threads = m.info.threads;
    out.binding = m.info.binding;
    for (const batch of opts.batches) {
      const n = INPUT[model];
      const x = new Float32Array(batch * 3 * n * n).fill(0.5);
      out[`${model}/${batch}`] = await time(() => m.forward(x, [batch, 3, n, n]), opts.iters, opts.rounds);
    }
    m.dispose();
  }
  return out;
}

const opts = {
  app: path.resolve(arg('app')),
  onnx: path.resolve(arg('onnx')),
  models: arg('models', 'resnet18,resnet50,vgg16,alexnet').split(','),
  batches: arg('batches', '1,8').split(',').map(Number),
  threads: Number(arg('threads', os.availableParallelism())),
  iters: Number(arg('iters', 10)),
  rounds: Number(arg('rounds', 1)),
};
const engine = arg('child');
if (engine) {
  console.log(JSON.stringify(await child(engine, opts)));
} else {
  const engines = arg('engines', 'ort,native,wasm').split(',');
  const res = {};
  for (const e of engines) {
    const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), ...process.argv.slice(2), '--child', e],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 });
    res[e] = JSON.parse(out.trim().split('\n').at(-1));
    process.stderr.write(`${e} done\n`);
  }
  const cpu = os.cpus()[0]?.model?.trim() ?? 'unknown CPU';
  const f = (v) => (v === undefined ? '-' : v.toFixed(1));
  console.log(`${cpu} (${os.cpus().length} CPUs), ${opts.threads} threads, ${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ` +
    `onnxruntime-node ${res.ort.version}; median of ${opts.iters} runs after 2 warm-up, best of ${opts.rounds} round(s), ms\n`);
  console.log('| model | batch | onnxruntime-node | webcnn native | native / ORT | webcnn wasm (1 thread) | wasm / ORT |');
  console.log('|---|---|---|---|---|---|---|');
  for (const model of opts.models) {
    for (const batch of opts.batches) {
      const k = `${model}/${batch}`;
      const [o, n] = [res.ort[k], res.native[k]];
      const w = res.wasm?.[k];
      console.log(`| ${model} | ${batch} | ${f(o)} | ${f(n)} | ${(n / o).toFixed(2)}x | ${f(w)} | ${w === undefined ? '-' : `${(w / o).toFixed(1)}x`} |`);
    }
  }
}
