"""ONNX Runtime on the CPU next to webcnn's CPU backend, in one run: the ratio table.

The ONNX models are torchvision's ResNet-18/50, ResNeXt-50 32x4d, Wide ResNet-50-2, VGG-16
and AlexNet at 224x224 (eval mode,
random weights), built layer by layer with onnx.helper so that no PyTorch install is needed.
A `--models` entry ending in .onnx is a file both engines read (webcnn through its importer:
`webcnn bench --models FILE.onnx`), e.g. torch.onnx.export's ResNet-50 from
scripts/make-onnx-torchvision.py --full, next to the zoo id `resnet50`.
Run through scripts/bench-ort, which makes the virtual environment and builds webcnn.

    python scripts/ort_bench.py --webcnn target/release/webcnn [--threads 2] [--iters 20] [--batch 1] [--rounds 3]
        [--torch PYTHON]   (also PyTorch eager, scripts/torch_bench.py run by that interpreter)
        [--cpu-kernels AVX2,portable]   (webcnn once per kernel set, a column pair each)
    python scripts/ort_bench.py --export DIR --models resnet18,resnet50   (the .onnx files only)
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, batch):
        self.nodes, self.inits, self.n = [], [], 0
        self.x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])
        self.rng = np.random.default_rng(0)

    def name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def init(self, arr):
        n = self.name("w")
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), n))
        return n

    def op(self, kind, inputs, **attrs):
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv(self, x, cin, cout, k, s=1, p=0, bias=True, groups=1):
        w = self.init(self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2 / (cin // groups * k * k)))
        ins = [x, w] + ([self.init(self.rng.standard_normal(cout) * 0.01)] if bias else [])
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], group=groups)

    def bn(self, x, c):
        scale = self.init(1 + 0.1 * self.rng.standard_normal(c))
        shift = self.init(0.1 * self.rng.standard_normal(c))
        mean = self.init(0.1 * self.rng.standard_normal(c))
        var = self.init(1 + 0.1 * self.rng.random(c))
        return self.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)

    def relu(self, x):
        return self.op("Relu", [x])

    def maxpool(self, x, k, s, p=0):
        return self.op("MaxPool", [x], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])

    def linear(self, x, fin, fout):
        w = self.init(self.rng.standard_normal((fout, fin)) * np.sqrt(1 / fin))
        b = self.init(self.rng.standard_normal(fout) * 0.01)
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, y, name):
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, None)
        g = helper.make_graph(self.nodes, name, [self.x], [out], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def resnet(batch, blocks, bottleneck, groups=1, per_group=64):
    """torchvision's ResNet; ResNeXt and Wide ResNet widen (and group) the bottleneck's 3x3."""
    b = Builder(batch)
    x = b.relu(b.bn(b.conv("input", 3, 64, 7, 2, 3, bias=False), 64))
    x = b.maxpool(x, 3, 2, 1)
    cin = 64
    for stage, (width, count) in enumerate(zip([64, 128, 256, 512], blocks)):
        for i in range(count):
            s = 2 if stage > 0 and i == 0 else 1
            cout = width * 4 if bottleneck else width
            if bottleneck:
                inner = width * per_group // 64 * groups
                y = b.relu(b.bn(b.conv(x, cin, inner, 1, bias=False), inner))
                y = b.relu(b.bn(b.conv(y, inner, inner, 3, s, 1, bias=False, groups=groups), inner))
                y = b.bn(b.conv(y, inner, cout, 1, bias=False), cout)
            else:
                y = b.relu(b.bn(b.conv(x, cin, width, 3, s, 1, bias=False), width))
                y = b.bn(b.conv(y, width, width, 3, 1, 1, bias=False), width)
            short = x if s == 1 and cin == cout else b.bn(b.conv(x, cin, cout, 1, s, bias=False), cout)
            x = b.relu(b.op("Add", [y, short]))
            cin = cout
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    return b.model(b.linear(x, cin, 1000), "resnet")


def vgg16(batch):
    b = Builder(batch)
    x, cin = "input", 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            x = b.maxpool(x, 2, 2)
        else:
            x, cin = b.relu(b.conv(x, cin, v, 3, 1, 1)), v
    # At 224x224 the adaptive 7x7 average pool is the identity.
    x = b.op("Flatten", [x])
    x = b.relu(b.linear(x, 512 * 7 * 7, 4096))
    x = b.relu(b.linear(x, 4096, 4096))
    return b.model(b.linear(x, 4096, 1000), "vgg16")


def alexnet(batch):
    b = Builder(batch)
    x = b.maxpool(b.relu(b.conv("input", 3, 64, 11, 4, 2)), 3, 2)
    x = b.maxpool(b.relu(b.conv(x, 64, 192, 5, 1, 2)), 3, 2)
    x = b.relu(b.conv(x, 192, 384, 3, 1, 1))
    x = b.relu(b.conv(x, 384, 256, 3, 1, 1))
    x = b.maxpool(b.relu(b.conv(x, 256, 256, 3, 1, 1)), 3, 2)
    # At 224x224 the adaptive 6x6 average pool is the identity.
    x = b.op("Flatten", [x])
    x = b.relu(b.linear(x, 256 * 6 * 6, 4096))
    x = b.relu(b.linear(x, 4096, 4096))
    return b.model(b.linear(x, 4096, 1000), "alexnet")


MODELS = {
    "resnet18": lambda n: resnet(n, [2, 2, 2, 2], False),
    "resnet50": lambda n: resnet(n, [3, 4, 6, 3], True),
    "resnext50_32x4d": lambda n: resnet(n, [3, 4, 6, 3], True, groups=32, per_group=4),
    "wide_resnet50_2": lambda n: resnet(n, [3, 4, 6, 3], True, per_group=128),
    "vgg16": vgg16,
    "alexnet": alexnet,
}


def time_ort(model, batch, threads, iters):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # An .onnx file as it is (its input's name and fixed sizes), else a built model.
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    t = time.perf_counter()
    sess.run(None, {inp.name: x})
    first = time.perf_counter() - t
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    return first, statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--webcnn", help="the webcnn binary (release build)")
    ap.add_argument("--export", metavar="DIR", help="only write the .onnx models into DIR (for scripts/bench-web)")
    ap.add_argument("--models", default="resnet18,resnet50,vgg16,alexnet")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="turns each engine takes (best median kept)")
    ap.add_argument("--torch", metavar="PYTHON", help="a Python with torch and torchvision: adds PyTorch eager")
    ap.add_argument("--cpu-kernels", help="webcnn's CPU kernel sets to time, comma-separated (default: the best)")
    a = ap.parse_args()
    if a.export:
        os.makedirs(a.export, exist_ok=True)
        for name in a.models.split(","):
            onnx.save(MODELS[name](a.batch), os.path.join(a.export, f"{name}.onnx"))
        return
    if not a.webcnn:
        ap.error("--webcnn is required")
    kernel_sets = a.cpu_kernels.split(",") if a.cpu_kernels else [None]
    rows = []
    for name in a.models.split(","):
        # Engines take turns, round after round, and each keeps its best median: a noisy
        # neighbour on a shared machine then slows both sides of a ratio, not one.
        # An .onnx file: ONNX Runtime and webcnn both read that file.
        model = name if name.endswith(".onnx") else MODELS[name](a.batch)
        ort_ms, torch_ms = [], []
        ours_ms = [[] for _ in kernel_sets]
        for _ in range(a.rounds):
            ort_ms.append(time_ort(model, a.batch, a.threads, a.iters)[1] * 1e3)
            for ks, ms in zip(kernel_sets, ours_ms):
                out = subprocess.run(
                    [a.webcnn, "bench", "--models", name, "--device", "cpu", "--json",
                     "--iters", str(a.iters), "--batch", str(a.batch)]
                    + (["--cpu-kernels", ks] if ks else []),
                    check=True, capture_output=True, text=True,
                    env={**os.environ, "RAYON_NUM_THREADS": str(a.threads)},
                ).stdout
                ms.append(json.loads(out.strip().splitlines()[-1])["median_ms"])
            if a.torch and not name.endswith(".onnx"):
                out = subprocess.run(
                    [a.torch, os.path.join(os.path.dirname(__file__), "torch_bench.py"), "--models", name,
                     "--threads", str(a.threads), "--iters", str(a.iters), "--batch", str(a.batch)],
                    check=True, capture_output=True, text=True,
                ).stdout
                torch_ms.append(json.loads(out.strip().splitlines()[-1])["median_ms"])
        rows.append((os.path.basename(name), min(ort_ms), [min(ms) for ms in ours_ms], min(torch_ms) if torch_ms else None))
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"{time.strftime('%Y-%m-%d')}, {cpu}, {a.threads} threads, batch {a.batch}, "
          f"onnxruntime {ort.__version__}, best of {a.rounds} rounds of the median of {a.iters} runs\n")
    head = "| model | ONNX Runtime ms | webcnn CPU ms | webcnn / ORT | images/s ORT | images/s webcnn |"
    for ks in kernel_sets[1:]:
        head += f" webcnn {ks} ms | webcnn {ks} / ORT |"
    if kernel_sets[0]:
        head = head.replace("webcnn CPU ms", f"webcnn {kernel_sets[0]} ms", 1)
    if a.torch:
        head += " PyTorch eager ms | webcnn / PyTorch |"
    print(head)
    print("|---" * head.count(" |") + "|")
    for name, om, wms, tm in rows:
        wm = wms[0]
        line = f"| {name} | {om:.1f} | {wm:.1f} | {wm / om:.2f}x | {a.batch * 1e3 / om:.1f} | {a.batch * 1e3 / wm:.1f} |"
        for other in wms[1:]:
            line += f" {other:.1f} | {other / om:.2f}x |"
        if tm is not None:
            line += f" {tm:.1f} | {wm / tm:.2f}x |"
        elif a.torch:
            line += " - | - |"
        print(line)


if __name__ == "__main__":
    main()
