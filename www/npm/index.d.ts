// Types of the `webcnn` package (hand-written; the binding underneath is internal).

/** Stable error codes: match on `err.code`, never on the message (generated: codes.d.ts). */
import type { ErrorCode } from './codes.js';
export type { ErrorCode };

export class WebcnnError extends Error {
  readonly name: 'WebcnnError';
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown });
}

export type ModelId =
  | 'alexnet' | 'alexnet_lrn'
  | 'vgg11' | 'vgg11_bn' | 'vgg13' | 'vgg13_bn' | 'vgg16' | 'vgg16_bn' | 'vgg19' | 'vgg19_bn'
  | 'vgg11_cifar' | 'vgg11_bn_cifar' | 'vgg13_cifar' | 'vgg13_bn_cifar'
  | 'vgg16_cifar' | 'vgg16_bn_cifar' | 'vgg19_cifar' | 'vgg19_bn_cifar'
  | 'resnet18' | 'resnet34' | 'resnet50' | 'resnet101' | 'resnet152'
  | 'resnet18_caffe' | 'resnet34_caffe' | 'resnet50_caffe' | 'resnet101_caffe' | 'resnet152_caffe'
  | 'resnet50_gn' | 'resnet101_gn'
  | 'resnext50_32x4d' | 'resnext101_32x8d' | 'resnext101_64x4d'
  | 'wide_resnet50_2' | 'wide_resnet101_2';

export interface ModelSpec {
  id: ModelId;
  /** Parameter count. */
  params: number;
  /** Multiply-accumulates of one image at the default input size. */
  macs: number;
  /** Default input: [channels, height, width]. */
  input: [number, number, number];
  /** The id's own head; a fine-tuned checkpoint brings its own (see ModelInfo). */
  labels: 'imagenet1k' | 'cifar10';
  numClasses: number;
  /** Stage outputs for `features()` (any torchvision node name works). */
  featureNodes: string[];
  /** Whether `cam()` works (ResNets). */
  cam: boolean;
  /** The eval transform the package applies to images (timm's settings). */
  preprocess: Preprocess;
}

/** The 35 models of the zoo. */
export function models(): ModelSpec[];

export type Device = 'auto' | 'webgpu' | 'cpu';

/**
 * A URL, `'hf:OWNER/NAME'` (that Hub repository's model.safetensors), `'synthetic:SEED'`
 * (untrained weights from the golden PRNG), or the bytes of a .safetensors file.
 */
export type WeightsSource = string | ArrayBuffer | Uint8Array | Blob;

export interface Progress {
  phase: 'download' | 'prepare';
  loaded: number;
  /** 0 when the server sends no length. */
  total: number;
  /** The weights came from the cache. */
  cached?: boolean;
}

/**
 * How images become the input tensor: timm's eval transform (`resolve_data_config` +
 * `create_transform`), resized pixels equal to PIL's. torchvision's `Resize(256)` +
 * `CenterCrop(224)` is `{ size: [224, 224], cropPct: 0.875, interpolation: 'bilinear', cropMode: 'center' }`.
 */
export interface Preprocess {
  /** The input's [height, width] (a number: square). */
  size: [number, number];
  /** The image is scaled to floor(size / cropPct) before the crop. */
  cropPct: number;
  /** PIL's filters, antialiased when shrinking. */
  interpolation: 'bilinear' | 'bicubic' | 'nearest';
  /** 'center': shorter side scaled, then cropped; 'squash': both sides; 'border': longer side, padded with the mean colour. */
  cropMode: 'center' | 'squash' | 'border';
  mean: [number, number, number];
  std: [number, number, number];
}

export interface LoadOptions {
  /** The architecture; may be left out for an `hf:` repository whose timm config.json names it. */
  model?: ModelId;
  /**
   * safetensors or a PyTorch checkpoint (`torch.save`: .pth / .pt / .bin). The head's size
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
  preprocess?: Partial<Omit<Preprocess, 'size'>> & { size?: [number, number] | number };
  /** 'auto' (default): WebGPU on a hardware adapter, else the CPU (wasm); 'webgpu' forces WebGPU. */
  device?: Device;
  /**
   * What WebGPU stores weights and activations as: 'f32' (default) or 'f16' (half the
   * memory; within 1e-2 of f32, computed in f32; needs the adapter's shader-f16, else
   * loading on 'webgpu' fails with DEVICE_LIMIT). The CPU backend always uses f32.
   */
  precision?: 'f32' | 'f16';
  /**
   * How WebGPU picks each convolution's kernel: 'auto' (default) takes the static table
   * for adapter kinds it knows (software renderers, the main GPU vendors) and times the
   * kernels on other adapters; 'table' never times; 'measure' times every layer shape not
   * yet remembered for this adapter. Timed choices are kept in IndexedDB (browsers), so
   * each shape is timed once per adapter.
   */
  tuning?: 'auto' | 'table' | 'measure';
  onProgress?: (p: Progress) => void;
  /** Keep downloads in the origin private file system, else the Cache API (browsers), or $WEBCNN_CACHE / ~/.cache/webcnn (Node). Default true. */
  cache?: boolean;
  /** The Hub's address for `hf:` (default: $HF_ENDPOINT in Node, else https://huggingface.co). */
  hfEndpoint?: string;
  /** The wasm module, if not the file next to the package's module (single-threaded build). */
  wasm?: WasmSource;
  /**
   * The CPU backend's threads: 'auto' (default) takes every core where the page is
   * cross-origin isolated (COOP + COEP headers), else 1; fixed by the first load or init.
   */
  threads?: number | 'auto';
}

export type WasmSource = string | URL | Response | BufferSource | WebAssembly.Module;

export interface ModelInfo {
  id: ModelId;
  backend: 'webgpu' | 'cpu';
  /** The WebGPU adapter's name, or null on the CPU. */
  adapter: string | null;
  /** What the device stores values as ('f32' on the CPU). */
  precision: 'f32' | 'f16';
  /** Threads the CPU backend computes on (1 on WebGPU and without cross-origin isolation). */
  threads: number;
  /** Layer shapes whose kernels this model timed on its adapter so far (its first run of an input size prepares a plan); 0 on the CPU, and where the table or kept choices decided. */
  tunedShapes: number;
  /** Why the CPU runs although 'auto' was asked for, else null. */
  notice: string | null;
  inputSize: [number, number, number];
  /** The transform applied to images. */
  preprocess: Preprocess;
  /** Where the class names come from: the id's own sets, numbers, or the `labels` option. */
  labels: 'imagenet1k' | 'cifar10' | 'numbered' | 'custom';
  /** Classes of the head the weights hold; 0 for a feature extractor. */
  numClasses: number;
  /** One name per class. */
  classNames: readonly string[];
  /** What reading the weights unwrapped (a checkpoint's 'state_dict' entry, a 'module.' prefix). */
  notices: string[];
  /** Weights holding NaN or Inf. */
  warnings: string[];
}

export interface Prediction {
  index: number;
  label: string;
  probability: number;
}

export interface Tensor {
  data: Float32Array;
  shape: number[];
}

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

export interface CamMap {
  /** h * w values in [0, 1], row-major. */
  data: Float32Array;
  shape: [number, number];
  /** The class mapped (the top class unless one was asked for). */
  class: number;
}

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

export function load(options: LoadOptions): Promise<Model>;

/** Load the wasm module ahead of time (load() does it on first use). */
export function init(options?: { wasm?: WasmSource; threads?: number | 'auto' }): Promise<void>;
