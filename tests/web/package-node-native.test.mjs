// The npm package in Node on the native binding: installed with this machine's platform
// package (webcnn-linux-x64-gnu), as npm does (the tests are in package-node.suite.mjs).
globalThis.WEBCNN_TEST_BINDING = 'native';
await import('./package-node.suite.mjs');
