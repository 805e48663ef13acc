// The native Node addon (src/node/ in the crate, shipped in the per-platform packages
// webcnn-<platform>) fitted to the interface index.js drives the wasm binding through:
// options cross as JSON, every call that computes returns a Promise settled on libuv's
// worker threads. Only Node's entry point (node.js) loads it.

function coded(code, message) {
  return Object.assign(new Error(message), { code });
}

/** The binding interface over `addon` (the `.node` module). */
export function adapt(addon) {
  const json = (options) => {
    try {
      return JSON.stringify(options);
    } catch (e) {
      throw coded('BAD_ARGUMENT', `the options do not convert to JSON: ${e.message}`);
    }
  };
  const Input = {
    encoded: (bytes) => addon.Input.encoded(bytes),
    // The addon takes a Uint8Array; a canvas's Uint8ClampedArray is the same bytes.
    pixels: (data, width, height, channels) => addon.Input.pixels(
      data instanceof Uint8ClampedArray ? new Uint8Array(data.buffer, data.byteOffset, data.length) : data,
      width, height, channels),
    tensor: (data, shape) => {
      if (!(data instanceof Float32Array)) throw coded('BAD_ARGUMENT', 'tensor data must be a Float32Array');
      return addon.Input.tensor(data, shape);
    },
  };
  return {
    binding: 'native',
    addon,
    checkOptions: (options, namedLater) => addon.checkOptions(json(options), namedLater),
    Engine: {
      begin: async (options, total) => addon.begin(json(options), total ?? null),
      synthetic: async (options) => addon.synthetic(json(options)),
    },
    Input,
    cpuThreads: () => addon.cpuThreads(),
    initThreadPool: (n) => addon.initThreadPool(n),
  };
}
