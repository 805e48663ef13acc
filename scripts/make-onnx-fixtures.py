#!/usr/bin/env python3
"""Writes the small ONNX test models in tests/fixtures/onnx/ and ONNX Runtime's outputs for
them (run offline, once; the files are committed). Needs: pip install onnx onnxruntime numpy.

Each case is MODEL.onnx (plus external data where the case keeps some) and MODEL.json with
the input and ONNX Runtime's output: {"input_shape", "input", "output_shape", "output"}.
The graphs are built by hand in the layouts exporters write (torch.onnx.export's
Conv/BN/Relu/Add residual blocks, the model zoo's LRN AlexNet and pre-activation ResNet v2),
at reduced widths, with weights from a fixed seed.
    python3 scripts/make-onnx-fixtures.py tests/fixtures/onnx
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/onnx"
os.makedirs(out_dir, exist_ok=True)
rng = np.random.default_rng(7)


def w(*shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    scale = scale if scale is not None else 1.0 / np.sqrt(fan_in)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def bn(prefix, c, inits):
    names = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    vals = [
        rng.uniform(0.5, 1.5, c),
        rng.standard_normal(c) * 0.1,
        rng.standard_normal(c) * 0.1,
        rng.uniform(0.5, 1.5, c),
    ]
    for n, v in zip(names, vals):
        inits.append(numpy_helper.from_array(v.astype(np.float32), n))
    return names


def save(name, graph, opset, input_shape, dtype_f16=(), external=()):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(model)
    x = rng.standard_normal(input_shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {graph.input[0].name: x})[0]
    path = os.path.join(out_dir, f"{name}.onnx")
    if external:
        # These initializers go to NAME.data beside the model.
        for t in model.graph.initializer:
            if t.name in external:
                onnx.external_data_helper.set_external_data(t, f"{name}.data")
        onnx.save_model(model, path, save_as_external_data=False)
        onnx.external_data_helper.write_external_data_tensors(model, out_dir)
        onnx.save_model(model, path)
    else:
        onnx.save_model(model, path)
    meta = {
        "input_shape": list(x.shape),
        "input": [float(v) for v in x.ravel()],
        "output_shape": list(y.shape),
        "output": [float(v) for v in y.ravel()],
    }
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(meta, f)
    print(name, x.shape, "->", y.shape)


def node(op, ins, outs, name=None, **attrs):
    return helper.make_node(op, ins, outs, name=name or outs[0], **attrs)


# 1. torch.onnx.export's layout of a residual network (opset 13, a symbolic batch):
# Conv + BN + Relu, MaxPool, a basic block with its Add, GlobalAveragePool, Flatten, Gemm.
inits = []
inits += [numpy_helper.from_array(w(8, 3, 3, 3), "conv1.weight"), numpy_helper.from_array(w(8), "conv1.bias")]
bn1 = bn("bn1", 8, inits)
inits += [numpy_helper.from_array(w(8, 8, 3, 3), "layer1.conv1.weight")]
bnA = bn("layer1.bn1", 8, inits)
inits += [numpy_helper.from_array(w(8, 8, 3, 3), "layer1.conv2.weight")]
bnB = bn("layer1.bn2", 8, inits)
inits += [numpy_helper.from_array(w(5, 8), "fc.weight"), numpy_helper.from_array(w(5), "fc.bias")]
nodes = [
    node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    node("BatchNormalization", ["c1"] + bn1, ["b1"], epsilon=1e-5),
    node("Relu", ["b1"], ["r1"]),
    node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    node("Conv", ["p1", "layer1.conv1.weight"], ["l1c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    node("BatchNormalization", ["l1c1"] + bnA, ["l1b1"]),
    node("Relu", ["l1b1"], ["l1r1"]),
    node("Conv", ["l1r1", "layer1.conv2.weight"], ["l1c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    node("BatchNormalization", ["l1c2"] + bnB, ["l1b2"]),
    node("Add", ["l1b2", "p1"], ["l1add"]),
    node("Relu", ["l1add"], ["layer1"]),
    node("GlobalAveragePool", ["layer1"], ["gap"]),
    node("Flatten", ["gap"], ["flat"], axis=1),
    node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1, alpha=1.0, beta=1.0),
]
g = helper.make_graph(
    nodes, "resnet_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
save("resnet_block", g, 13, [2, 3, 32, 32])

# 2. The model zoo's older layout (opset 10): AlexNet's Conv + Relu + LRN + MaxPool with
# ceil_mode, a pre-activation (ResNet v2) BN + Relu before a conv, Clip(0, inf) by
# attributes, AveragePool not counting its padding, Dropout, a Reshape whose shape is
# computed (Shape, Gather, Unsqueeze, Concat), Gemm with transB = 0 and alpha / beta, Softmax.
inits = []
inits += [numpy_helper.from_array(w(6, 3, 5, 5), "conv1_w"), numpy_helper.from_array(w(6), "conv1_b")]
pre = bn("preact", 6, inits)
inits += [numpy_helper.from_array(w(6, 6, 3, 3), "conv2_w"), numpy_helper.from_array(w(6), "conv2_b")]
inits += [numpy_helper.from_array(w(6 * 4 * 4, 4), "fc_w"), numpy_helper.from_array(w(4), "fc_b")]
inits += [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"), numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one")]
nodes = [
    node("Conv", ["data", "conv1_w", "conv1_b"], ["conv1"], kernel_shape=[5, 5], strides=[2, 2], pads=[2, 2, 2, 2]),
    node("Relu", ["conv1"], ["relu1"]),
    node("LRN", ["relu1"], ["norm1"], size=5, alpha=1e-4, beta=0.75, bias=2.0),
    node("MaxPool", ["norm1"], ["pool1"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    node("BatchNormalization", ["pool1"] + pre, ["preact_bn"], epsilon=1e-3),
    node("Clip", ["preact_bn"], ["preact_relu"], min=0.0),
    node("Conv", ["preact_relu", "conv2_w", "conv2_b"], ["conv2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    node("AveragePool", ["conv2"], ["pool2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
    node("Dropout", ["pool2"], ["drop"], ratio=0.5),
    node("Shape", ["drop"], ["shape"]),
    node("Gather", ["shape", "zero"], ["batch"], axis=0),
    node("Unsqueeze", ["batch"], ["batch1"], axes=[0]),
    node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
    node("Reshape", ["drop", "target"], ["flat"]),
    node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=0, alpha=0.5, beta=2.0),
    node("Softmax", ["fc"], ["prob"], axis=1),
]
g = helper.make_graph(
    nodes, "zoo_like", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 30, 30])],
    [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 4])], inits)
save("zoo_lrn_preact", g, 10, [1, 3, 30, 30])

# 3. Newer exports (opset 17): grouped and dilated convolutions, auto_pad SAME_UPPER,
# Clip(0, inf) by inputs, MatMul + Add as a linear layer, float16 initializers and
# initializers kept in an external file; a fixed batch of 2.
inits = []
cw = w(8, 2, 3, 3)
inits += [numpy_helper.from_array(cw.astype(np.float16), "gconv.weight")]
inits += [numpy_helper.from_array(w(8, 8, 3, 3), "dconv.weight"), numpy_helper.from_array(w(8), "dconv.bias")]
inits += [numpy_helper.from_array(w(8, 3), "proj.weight"), numpy_helper.from_array(w(3), "proj.bias")]
inits += [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "clip_min")]
nodes = [
    node("Conv", ["x", "gconv.weight_f32"], ["gconv"], kernel_shape=[3, 3], group=2, auto_pad="SAME_UPPER"),
    node("Clip", ["gconv", "clip_min"], ["gclip"]),
    node("Conv", ["gclip", "dconv.weight", "dconv.bias"], ["dconv"], dilations=[2, 2], pads=[2, 2, 2, 2]),
    node("Relu", ["dconv"], ["drelu"]),
    node("GlobalAveragePool", ["drelu"], ["gap"]),
    node("Flatten", ["gap"], ["flat"]),
    node("MatMul", ["flat", "proj.weight"], ["mm"]),
    node("Add", ["mm", "proj.bias"], ["out"]),
]
# ONNX Runtime computes Conv in the weight's type: the f16 weight is cast for it, and the
# importer reads the f16 initializer directly (a Cast of an initializer is folded the same).
nodes.insert(0, node("Cast", ["gconv.weight"], ["gconv.weight_f32"], to=TensorProto.FLOAT))
g = helper.make_graph(
    nodes, "newer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 12, 12])],
    [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])], inits)
save("grouped_matmul", g, 17, [2, 4, 12, 12], external=("dconv.weight",))

# 4. What the first three do not hold (opset 13, a symbolic batch): one convolution weight
# used by two nodes (tied weights), and MatMul + Add heads wider than a small constant, the
# second with a float16 bias read through a Cast.
inits = []
inits += [numpy_helper.from_array(w(6, 3, 3, 3), "stem.weight")]
inits += [numpy_helper.from_array(w(6, 6, 3, 3), "tied.weight"), numpy_helper.from_array(w(6), "tied.bias")]
inits += [numpy_helper.from_array(w(6, 100), "fc1.weight"), numpy_helper.from_array(w(100), "fc1.bias")]
inits += [numpy_helper.from_array(w(100, 80), "fc2.weight"),
          numpy_helper.from_array(w(80).astype(np.float16), "fc2.bias")]
nodes = [
    node("Conv", ["x", "stem.weight"], ["stem"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    node("Relu", ["stem"], ["r0"]),
    node("Conv", ["r0", "tied.weight", "tied.bias"], ["t1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    node("Relu", ["t1"], ["r1"]),
    node("Conv", ["r1", "tied.weight", "tied.bias"], ["t2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    node("Relu", ["t2"], ["r2"]),
    node("GlobalAveragePool", ["r2"], ["gap"]),
    node("Flatten", ["gap"], ["flat"]),
    node("MatMul", ["flat", "fc1.weight"], ["mm1"]),
    node("Add", ["mm1", "fc1.bias"], ["h1"]),
    node("Relu", ["h1"], ["hr"]),
    node("Cast", ["fc2.bias"], ["fc2.bias_f32"], to=TensorProto.FLOAT),
    node("MatMul", ["hr", "fc2.weight"], ["mm2"]),
    node("Add", ["fc2.bias_f32", "mm2"], ["out"]),
]
g = helper.make_graph(
    nodes, "tied_wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
    [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 80])], inits)
save("tied_wide_heads", g, 13, [2, 3, 10, 10])

# 5. A mean over H and W in place of the global pool (opset 13: axes an attribute), without
# the kept dimensions, straight into a Gemm.
inits = [numpy_helper.from_array(w(4, 3, 3, 3), "c.weight"), numpy_helper.from_array(w(6, 4), "fc.weight"),
         numpy_helper.from_array(w(6), "fc.bias")]
nodes = [
    node("Conv", ["x", "c.weight"], ["c"], kernel_shape=[3, 3]),
    node("Relu", ["c"], ["r"]),
    node("ReduceMean", ["r"], ["mean"], axes=[-1, -2], keepdims=0),
    node("Gemm", ["mean", "fc.weight", "fc.bias"], ["out"], transB=1),
]
g = helper.make_graph(
    nodes, "reduce_mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
    [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6])], inits)
save("reduce_mean_head", g, 13, [2, 3, 9, 9])
