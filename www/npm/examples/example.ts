// The README's TypeScript example; the tests type-check it against the shipped index.d.ts.
import { load, models, WebcnnError, type ModelSpec, type Prediction, type Tensor } from 'webcnn';

export async function run(weights: ArrayBuffer, image: Blob): Promise<void> {
  const zoo: ModelSpec[] = models();
  console.log(zoo.map((m) => `${m.id}: ${m.params} params`).join('\n'));
  const m = await load({
    model: 'resnet50',
    weights,
    device: 'auto',
    onProgress: ({ phase, loaded, total }) => console.log(phase, loaded, total),
  });
  console.log(m.info.backend, m.info.adapter ?? 'CPU', m.info.notice ?? '');
  const top: Prediction[] = await m.classify(image, { topK: 5 });
  console.log(top[0].label, top[0].probability);
  const logits: Tensor = await m.forward(new Float32Array(3 * 224 * 224), [1, 3, 224, 224]);
  console.log(logits.shape);
  const feats = await m.features(image, ['layer2', 'layer4']);
  console.log(feats.layer2.shape, feats.layer4.data.length);
  const cam = await m.cam(image, { class: top[0].index });
  console.log(cam.shape, cam.class);
  try {
    await m.classify(image, { topK: 0 });
  } catch (e) {
    if (e instanceof WebcnnError && e.code === 'BAD_ARGUMENT') console.log('rejected:', e.message);
  }
  m.dispose();
}
