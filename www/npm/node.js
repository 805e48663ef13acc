// The package's entry point in Node (the "node" export condition): the browser API with
// Node's environment (the native addon from this machine's platform package where it is
// installed, else the wasm read from disk, its threads on worker_threads; downloads cached
// on disk). Where `navigator.gpu` exists (Deno), the wasm binding uses WebGPU.
import { _setEnv } from './index.js';
import * as env from './env-node.js';

_setEnv(env);

export { init, load, models, Model, WebcnnError } from './index.js';
