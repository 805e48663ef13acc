// The npm package in Node on the wasm binding: installed without its platform package, as
// where no native build exists (the tests are in package-node.suite.mjs).
globalThis.WEBCNN_TEST_BINDING = 'wasm';
await import('./package-node.suite.mjs');
