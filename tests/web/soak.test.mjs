// The short version of scripts/soak-web: the package classifies the same image again and
// again in a worker on the CPU (wasm, a thread per core) and on WebGPU (SwiftShader; few
// runs, it is slow); answers identical, no page error, memory of page and workers flat.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { soakDemo, table } from './soak.mjs';

test('a worker classifies again and again with the same answers and flat memory', { timeout: 900_000 }, async () => {
  // One thread on both devices: with a pool (the threaded build, which an isolated page
  // loads even for WebGPU), measuring memory waits a minute (see soak.mjs); the full soak
  // (scripts/soak-web) runs the pool.
  const rows = [
    ...await soakDemo({ devices: ['cpu'], runs: 50, warm: 10, threads: 1 }),
    ...await soakDemo({ devices: ['webgpu'], runs: 10, warm: 2, threads: 1 }),
  ];
  console.log(table(rows, '10 (cpu) / 2 (webgpu)'));
  for (const r of rows) {
    assert.equal(r.changed, 0, `${r.backend}: answers changed`);
    assert.deepEqual(r.errors, [], `${r.backend}: page errors`);
    assert.ok(r.startBytes > 0 && r.endBytes > 0, 'memory was measured');
    assert.ok(r.growth <= 5, `${r.backend}: JS memory grew ${r.growth.toFixed(2)}%`);
    assert.ok(r.startWasm > 0 && r.wasmGrowth <= 5, `${r.backend}: wasm memory grew ${r.wasmGrowth.toFixed(2)}%`);
  }
  assert.match(rows[0].backend, /^CPU \(wasm, 1 thread\)/);
  assert.match(rows[1].backend, /^WebGPU: /);
});
