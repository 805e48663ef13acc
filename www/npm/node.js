// The package's entry point in Node (the "node" export condition): the browser API with
// Node's environment (wasm read from disk, downloads cached on disk). Node has no
// WebGPU, so `device: 'auto'` runs on the CPU there; where `navigator.gpu` exists
// (Deno), WebGPU is used.
import { _setEnv } from './index.js';
import * as env from './env-node.js';

_setEnv(env);

export { init, load, models, Model, WebcnnError } from './index.js';
