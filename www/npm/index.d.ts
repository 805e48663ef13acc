// Types of the `webcnn` package. The values that cross into the engine (options, results,
// model facts) are declared by the binding, generated from the crate's Rust types
// (src/binding.rs); the model ids and error codes from the crate's lists. What is
// written here is the JS API around them.

import type { ErrorCode } from './codes.js';
import type { ModelId } from './models.js';
import type {
  CamMap, CropMode, Device, Interpolation, ModelInfo, ModelSpec, Precision, Prediction,
  Preprocess, PreprocessOptions, Tensor, Tuning,
} from './types.js';
export type {
  ErrorCode, CamMap, CropMode, Device, Interpolation, ModelId, ModelInfo, ModelSpec, Precision,
  Prediction, Preprocess, PreprocessOptions, Tensor, Tuning,
};

/** Every error this package throws or rejects with; match on `code` (ErrorCode), never on the message. */
export class WebcnnError extends Error {
  readonly name: 'WebcnnError';
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown });
}

/** The 35 models of the zoo. */
export function models(): ModelSpec[];

/**
 * A URL, `'hf:OWNER/NAME'` (that Hub repository's model.safetensors), `'synthetic:SEED'`
 * (untrained weights from the golden PRNG), or the bytes of a .safetensors file.
 */
export type WeightsSource = string | ArrayBuffer | Uint8Array | Blob;

/**
 * An ONNX model (graph and weights in one file, as `torch.onnx.export` writes it): its
 * bytes, a Blob or File, a URL, or a path or URL ending in .onnx.
 */
export type OnnxSource = `${string}.onnx` | URL | ArrayBuffer | Uint8Array | Blob;

export interface Progress {
  phase: 'download' | 'prepare';
  loaded: number;
  /** 0 when the server sends no length. */
  total: number;
  /** The weights came from the cache. */
  cached?: boolean;
}

export interface LoadOptions {
  /**
   * The architecture; may be left out for an `hf:` repository whose timm config.json names
   * it, or where `weights` is an .onnx file (for ONNX bytes, see OnnxLoadOptions).
   */
  model?: ModelId;
  /**
   * safetensors, a PyTorch checkpoint (`torch.save`: .pth / .pt / .bin) or an ONNX model (.onnx, with `model` left out). The head's size
   * comes from the weights: a fine-tuned classifier of any class count, or none (a
   * feature extractor, whose classify() and cam() reject with NO_CLASSIFIER).
   */
  weights: WeightsSource;
  /**
   * Names of the head's classes: an array, or a label file (a Blob / File, its URL, or a path in Node): one
   * per line, a JSON array, a JSON object of index to name, or a timm config.json with
   * label_names. A count other than the head's rejects with BAD_LABELS. Default: the id's
   * own (ImageNet, CIFAR-10) where the count is theirs, else 'class 0' .. 'class N-1'.
   */
  labels?: string[] | string | URL | Blob;
  /** The eval transform your model was trained with; each setting given overrides the id's default (BAD_ARGUMENT if out of range). */
  preprocess?: PreprocessOptions;
  /**
   * 'auto' (default): the GPU on a hardware adapter, else the CPU; 'gpu' (or 'webgpu') forces
   * the GPU: WebGPU in a browser, wgpu (Vulkan, Metal, DX12) under Node's native binding.
   */
  device?: Device;
  /**
   * What WebGPU stores weights and activations as: 'f32' (default) or 'f16' (half the
   * memory; within 1e-2 of f32, computed in f32; needs the adapter's shader-f16, else
   * loading on 'webgpu' fails with DEVICE_LIMIT). The CPU backend always uses f32.
   */
  precision?: Precision;
  /**
   * How WebGPU picks each convolution's kernel: 'auto' (default) takes the static table
   * for adapter kinds it knows (software renderers, the main GPU vendors) and times the
   * kernels on other adapters; 'table' never times; 'measure' times every layer shape not
   * yet remembered for this adapter. Timed choices are kept in IndexedDB (browsers), so
   * each shape is timed once per adapter.
   */
  tuning?: Tuning;
  onProgress?: (p: Progress) => void;
  /** Keep downloads in the origin private file system, else the Cache API (browsers), or $WEBCNN_CACHE / ~/.cache/webcnn (Node). Default true. */
  cache?: boolean;
  /** The Hub's address for `hf:` (default: $HF_ENDPOINT in Node, else https://huggingface.co). */
  hfEndpoint?: string;
  /** The wasm module, if not the file next to the package's module (single-threaded build). */
  wasm?: WasmSource;
  /**
   * The CPU backend's threads: 'auto' (default) takes every core under Node's native
   * binding, and in a browser where the page is cross-origin isolated (COOP + COEP headers),
   * else 1; fixed by the first load or init.
   */
  threads?: number | 'auto';
  /**
   * Which engine computes, fixed by the first load: 'auto' (default) takes Node's native
   * addon where its platform package (webcnn-linux-x64-gnu, ...) is installed, else the
   * wasm; 'native' fails where there is none; 'wasm' always the wasm. `info.binding` says
   * which ran.
   */
  binding?: 'auto' | 'native' | 'wasm';
}

export type WasmSource = string | URL | Response | BufferSource | WebAssembly.Module;

/** Raw 8-bit pixels, row-major, RGB or RGBA. */
export interface RawImage {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
  channels: 3 | 4;
}

/** Encoded bytes (JPEG, PNG, WebP, GIF, BMP), a Blob or File, browser image sources, or raw pixels. */
export type ImageInput =
  | Blob
  | Uint8Array
  | ArrayBuffer
  | RawImage
  | ImageData
  | ImageBitmap
  | HTMLImageElement
  | HTMLCanvasElement
  | OffscreenCanvas;

export class Model {
  private constructor();
  readonly info: ModelInfo;
  classify(image: ImageInput, options?: { topK?: number }): Promise<Prediction[]>;
  /** The logits of a `[n, 3, h, w]` tensor (already normalised). */
  forward(data: Float32Array, shape: number[]): Promise<Tensor>;
  features<K extends string>(input: ImageInput | Tensor, nodes: K[]): Promise<Record<K, Tensor>>;
  cam(image: ImageInput, options?: { class?: number }): Promise<CamMap>;
  /** Frees the weights and GPU buffers; later calls reject with code 'DISPOSED'. */
  dispose(): void;
}

/**
 * Options for an ONNX model: the file is the graph and its weights (`info.id` is its
 * name); an operator webcnn does not run rejects with UNSUPPORTED_OP.
 */
export interface OnnxLoadOptions extends Omit<LoadOptions, 'model' | 'weights'> {
  model: OnnxSource;
  weights?: never;
  /**
   * Initializers kept in external data files, by the location the model names: bytes, a
   * Blob, a URL or a path. Default: read from beside the model where it is a URL or path.
   */
  externalData?: Record<string, WeightsSource>;
}

export function load(options: LoadOptions | OnnxLoadOptions): Promise<Model>;

/** Load the engine (native addon or wasm) ahead of time (load() does it on first use). */
export function init(options?: { wasm?: WasmSource; threads?: number | 'auto'; binding?: 'auto' | 'native' | 'wasm' }): Promise<void>;
