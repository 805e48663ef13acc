// The README's Node example: classify an image and pull a feature map on the CPU backend.
//   node node.mjs [IMAGE] [WEIGHTS]
// WEIGHTS: a .safetensors path or URL, hf:OWNER/NAME, or synthetic:SEED (untrained).
import { readFile } from 'node:fs/promises';
import { load, WebcnnError } from 'webcnn';

const [image = 'cat.png', weights = 'hf:timm/resnet18.tv_in1k'] = process.argv.slice(2);
try {
  const model = await load({
    model: 'resnet18',
    weights,
    onProgress: ({ phase, loaded, total }) => {
      if (phase === 'download' && total) process.stderr.write(`\rdownloading ${(100 * loaded / total).toFixed(0)}%`);
    },
  });
  console.log(`backend: ${model.info.backend}`);
  const bytes = await readFile(image);
  for (const p of await model.classify(bytes, { topK: 5 })) {
    console.log(`${(100 * p.probability).toFixed(2).padStart(6)}%  ${p.label} (${p.index})`);
  }
  const { layer4 } = await model.features(bytes, ['layer4']);
  console.log(`layer4: [${layer4.shape.join(', ')}]`);
  model.dispose();
} catch (e) {
  if (!(e instanceof WebcnnError)) throw e;
  console.error(`error ${e.code}: ${e.message}`);
  process.exitCode = 1;
}
