"""PyTorch eager on the CPU: torchvision's ResNet-18/50, VGG-16 and AlexNet at 224x224 (eval
mode, random weights, inference mode), one JSON line per model with the median and minimum
run time. Run by scripts/ort_bench.py when scripts/bench-ort is given --torch.

    python scripts/torch_bench.py --models resnet18,resnet50 --threads 2 --iters 20 --batch 1
"""

import argparse
import json
import statistics
import time

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,resnet50,vgg16,alexnet")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, 224, 224)
    for name in a.models.split(","):
        model = getattr(torchvision.models, name)(weights=None).eval()
        with torch.inference_mode():
            model(x)
            times = []
            for _ in range(a.iters):
                t = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t)
        print(json.dumps({"model": name, "median_ms": statistics.median(times) * 1e3,
                          "min_ms": min(times) * 1e3, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
