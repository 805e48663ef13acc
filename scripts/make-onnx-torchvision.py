#!/usr/bin/env python3
"""torchvision's AlexNet, VGG-16, VGG-16-BN, ResNet-18, ResNet-50 and a ResNeXt exported by
torch.onnx.export, with ONNX Runtime's outputs beside them (run offline, once).

    python3 scripts/make-onnx-torchvision.py tests/fixtures/onnx/tv          # the test files
    python3 scripts/make-onnx-torchvision.py --dynamo tests/fixtures/onnx/tv # torch >= 2.9's exporter
    python3 scripts/make-onnx-torchvision.py --full DIR [--only=resnet50,...] # full size

Test files keep torchvision's modules and forward code unchanged but build them at a
fraction of their width (every Conv2d, BatchNorm2d and Linear made with its channels divided;
the graphs torch.onnx.export writes are torchvision's, node for node) with weights from a
fixed seed. Each model is exported at opset 13 and at the newest opset the exporter writes,
with and without constant folding, with a dynamic and a static batch (not every combination
for every model: see CASES); `--dynamo` adds torch's dynamo exporter's files (the default
exporter from torch 2.9; its opset 18 and its default; see DYNAMO). `--full` writes the same models at full width (the documented
full-size check, `scripts/onnx-full-check`).

Each case is NAME.onnx and NAME.json: {"input_shape", "output_shape", "output", "opset",
"folding", "dynamic"}. The input is not stored: element i of the flattened input is
((i * 7919) % 1000) / 500 - 1, computed in float64 and rounded to float32, as the tests
compute it.
Needs: pip install torch torchvision onnx onnxruntime numpy (made with torch 2.5.1,
torchvision 0.20.1, onnxruntime 1.23).
"""
import contextlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from torch import nn

full = "--full" in sys.argv
only = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--only=")), None)
dynamo = "--dynamo" in sys.argv
args = [a for a in sys.argv[1:] if a not in ("--full", "--dynamo") and not a.startswith("--only=")]
out_dir = args[0] if args else "tests/fixtures/onnx/tv"
os.makedirs(out_dir, exist_ok=True)
NEWEST = torch.onnx._constants.ONNX_MAX_OPSET


@contextlib.contextmanager
def narrow(k):
    """torch.nn's Conv2d, BatchNorm2d and Linear with channels divided by k (the image's 3
    input channels and the classifier's outputs kept), while a model is built."""
    if k == 1:
        yield
        return
    conv, bn, lin = nn.Conv2d, nn.BatchNorm2d, nn.Linear

    class Conv(conv):
        def __init__(self, cin, cout, *a, **kw):
            super().__init__(cin if cin == 3 else cin // k, cout // k, *a, **kw)

    class BN(bn):
        def __init__(self, c, *a, **kw):
            super().__init__(c // k, *a, **kw)

    class Linear(lin):
        def __init__(self, cin, cout, *a, **kw):
            super().__init__(cin // k, cout if cout == CLASSES else cout // k, *a, **kw)

    nn.Conv2d, nn.BatchNorm2d, nn.Linear = Conv, BN, Linear
    try:
        yield
    finally:
        nn.Conv2d, nn.BatchNorm2d, nn.Linear = conv, bn, lin


CLASSES = 1000 if full else 10
R = torchvision.models.resnet
# (name, constructor, width divisor for the test files, input size)
MODELS = {
    "alexnet": (lambda: torchvision.models.alexnet(num_classes=CLASSES), 32, 224),
    "vgg16": (lambda: torchvision.models.vgg16(num_classes=CLASSES), 32, 224),
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(num_classes=CLASSES), 32, 224),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=CLASSES), 16, 64),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=CLASSES), 32, 64),
    # torchvision's ResNeXt block (grouped 3x3 convs, 32 groups); for the test files one
    # block per stage (resnext50_32x4d has 3, 4, 6, 3), 8 channels per group before the
    # width is divided.
    "resnext50_32x4d": (
        (lambda: torchvision.models.resnext50_32x4d(num_classes=CLASSES)) if full
        else (lambda: R.ResNet(R.Bottleneck, [1, 1, 1, 1], num_classes=CLASSES, groups=32, width_per_group=8)),
        8, 64),
}
# (model, opset, constant folding, dynamic batch, batch)
CASES = [
    ("resnet18", 13, True, True, 2),
    ("resnet18", 13, False, False, 1),
    ("resnet18", NEWEST, True, False, 2),
    ("resnet18", NEWEST, False, True, 1),
    ("resnet50", 13, True, True, 2),
    ("resnet50", NEWEST, False, True, 1),
    ("resnext50_32x4d", NEWEST, True, True, 1),
    ("alexnet", 13, True, True, 1),
    ("alexnet", NEWEST, False, False, 1),
    ("vgg16", NEWEST, True, True, 1),
    ("vgg16_bn", NEWEST, False, False, 1),
]
# torch's dynamo exporter (the default from torch 2.9; `--dynamo`, made with torch 2.15):
# (model, opset, dynamic batch, batch); it folds and optimises the graph itself.
DYNAMO = [
    ("resnet18", 18, True, 2),
    ("resnet50", None, True, 1),
    ("alexnet", None, False, 1),
    ("vgg16", 18, False, 1),
    ("vgg16_bn", None, True, 1),
]
if dynamo:
    CASES = [(m, opset, None, dyn, batch) for m, opset, dyn, batch in DYNAMO]
if full:
    CASES = [(m, NEWEST, True, True, 1) for m in MODELS]
if only:
    CASES = [c for c in CASES if c[0] in only]


def synth_input(shape):
    i = np.arange(int(np.prod(shape)), dtype=np.int64)
    return (((i * 7919) % 1000) / 500.0 - 1.0).astype(np.float32).reshape(shape)


for name, opset, folding, dynamic, batch in CASES:
    make, k, size = MODELS[name]
    size = 224 if full else size
    torch.manual_seed(sum(map(ord, name)))
    with narrow(1 if full else k):
        model = make()
    model.eval()
    # Running statistics away from 0 / 1, as trained ones are.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.from_numpy(synth_input([batch, 3, size, size]))
    if folding is None:
        # The dynamo exporter: its own opset unless one is asked for.
        case = f"{name}-dynamo-op{opset or 'default'}-{'dyn' if dynamic else 'static'}"
        path = os.path.join(out_dir, f"{case}.onnx")
        torch.onnx.export(
            model, (x,), path, opset_version=opset, input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None, dynamo=True,
            external_data=False)
        if opset is None:
            import onnx
            opset = next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))
            named = os.path.join(out_dir, f"{name}-dynamo-op{opset}-{'dyn' if dynamic else 'static'}.onnx")
            os.replace(path, named)
            path, case = named, os.path.basename(named)[:-5]
    else:
        case = f"{name}-op{opset}-{'fold' if folding else 'nofold'}-{'dyn' if dynamic else 'static'}"
        path = os.path.join(out_dir, f"{case}.onnx")
        torch.onnx.export(
            model, (x,), path, opset_version=opset, do_constant_folding=folding,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
            dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    meta = {"input_shape": list(x.shape), "output_shape": list(y.shape),
            "output": [float(v) for v in y.ravel()], "opset": opset, "folding": folding,
            "dynamic": dynamic, "exporter": "dynamo" if folding is None else "torchscript",
            "torch": torch.__version__.split("+")[0]}
    with open(os.path.join(out_dir, f"{case}.json"), "w") as f:
        json.dump(meta, f)
    print(f"{case}: {os.path.getsize(path)} bytes, {tuple(x.shape)} -> {y.shape}, ORT vs torch {err:.1e}")
