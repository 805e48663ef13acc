// The inference worker: a message bridge from the page to the `webcnn` package (www/npm),
// which downloads and caches the weights, prepares the model on WebGPU or the CPU (wasm),
// and recovers from a lost GPU device. Messages in: {id, cmd, args};
// out: {id, ok, result | error, code} and {id, progress}.
import { load, models } from './npm/index.js';

let model = null;

const handlers = {
  models: async () => models(),
  // For the tests: destroy the GPU device; the next call recovers inside the package.
  loseDevice: async () => model?.[Symbol.for('webcnn.loseDevice')]() ?? false,
  load: async (args, id) => {
    const t0 = performance.now();
    let t1 = t0;
    if (model) { model.dispose(); model = null; }
    // An .onnx file is the model (graph and weights); else a zoo id with its weights.
    const onnx = args.onnxFile ?? (/\.onnx(?:[?#].*)?$/i.test(args.weightsUrl ?? '') ? args.weightsUrl : null);
    const source = onnx ? { model: onnx }
      : { model: args.model, weights: args.weightsFile ?? args.weightsUrl ?? `synthetic:${args.seed ?? 1}` };
    model = await load({
      ...source,
      labels: args.labels ?? undefined,
      device: args.device ?? 'auto',
      threads: args.threads,
      onProgress: (p) => {
        if (p.phase === 'download') postMessage({ id, progress: p });
        else if (p.loaded === 0) t1 = performance.now();
      },
    });
    const { info } = model;
    return {
      backend: info.backend === 'webgpu' ? `WebGPU: ${info.adapter}`
        : info.threads > 1 ? `CPU (wasm, ${info.threads} threads)` : 'CPU (wasm)',
      notice: info.notice,
      weightsMs: t1 - t0,
      prepareMs: performance.now() - t1,
      onnx: Boolean(onnx),
      // The zoo's facts (none for an ONNX model), with what the weights decided.
      info: { ...models().find((m) => m.id === info.id), id: info.id, numClasses: info.numClasses,
        classNames: info.classNames, featureNodes: info.featureNodes, cam: info.cam },
    };
  },
  classify: async ({ image, top }) => {
    const t0 = performance.now();
    const predictions = await loaded().classify(new Uint8Array(image), { topK: top ?? 5 });
    return { predictions, ms: performance.now() - t0 };
  },
  features: async ({ image, node }) => (await loaded().features(new Uint8Array(image), [node]))[node],
  cam: ({ image, cls }) => loaded().cam(new Uint8Array(image), cls >= 0 ? { class: cls } : {}),
};

function loaded() {
  if (!model) throw new Error('no model is loaded');
  return model;
}

async function handle({ id, cmd, args }) {
  try {
    const result = await handlers[cmd](args ?? {}, id);
    postMessage({ id, ok: true, result });
  } catch (e) {
    postMessage({ id, ok: false, error: String((e && e.message) || e), code: e?.code ?? null });
  }
}

// One request at a time, in order (the package queues too; this keeps load ordered).
let queue = Promise.resolve();
self.onmessage = (ev) => { queue = queue.then(() => handle(ev.data)); };
