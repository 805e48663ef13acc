"""The three fine-tuned models of the own-model check, made in PyTorch as a user makes them,
and PyTorch's float64 probabilities for a photograph: torchvision's ResNet-18 with
`fc = nn.Linear(512, 5)`, ResNet-50 with a 37-class `fc`, VGG-16 with
`classifier[6] = nn.Linear(4096, 10)`; each saved with `torch.save(model.state_dict())`
(`.pth`) and as safetensors, with a label file. BatchNorm statistics are drawn away from
their initial values, as training leaves them. Run by scripts/own-model-check.
    python scripts/own_model_check.py OUTDIR PHOTO.png
"""

import json
import sys

import torch
import torch.nn as nn
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

# (name, architecture, classes, head scale: confident answers that are not one-hot).
MODELS = [
    ("pets5_resnet18", "resnet18", 5, 20.0),
    ("breeds37_resnet50", "resnet50", 37, 0.3),
    ("waste10_vgg16", "vgg16", 10, 20.0),
]


def build(arch, classes, scale):
    m = getattr(torchvision.models, arch)(weights=None)
    if arch.startswith("vgg"):
        m.classifier[6] = nn.Linear(4096, classes)
    else:
        m.fc = nn.Linear(m.fc.in_features, classes)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
        # A head whose answers are not all alike.
        last = m.classifier[6] if arch.startswith("vgg") else m.fc
        last.weight.mul_(scale)
    return m.eval()


def main():
    out, photo = sys.argv[1], sys.argv[2]
    torch.manual_seed(27)
    # torchvision's eval transform on PIL, the one the CLI's defaults reproduce.
    tf = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    x = tf(Image.open(photo).convert("RGB")).unsqueeze(0)
    ref = {}
    for name, arch, classes, scale in MODELS:
        m = build(arch, classes, scale)
        sd = m.state_dict()
        torch.save(sd, f"{out}/{name}.pth")
        save_file({k: v.contiguous() for k, v in sd.items()}, f"{out}/{name}.safetensors")
        labels = [f"{name.split('_')[0]} {chr(65 + i % 26)}{i}" for i in range(classes)]
        with open(f"{out}/{name}.txt", "w") as f:
            f.write("\n".join(labels) + "\n")
        with torch.no_grad():
            p = torch.softmax(m.double()(x.double()), dim=1)[0]
        ref[name] = {"arch": arch, "labels": labels, "probs": p.tolist()}
        print(f"{name}: top {labels[int(p.argmax())]} {float(p.max()):.4f}", flush=True)
    with open(f"{out}/reference.json", "w") as f:
        json.dump({"torch": torch.__version__, "torchvision": torchvision.__version__, "models": ref}, f)


if __name__ == "__main__":
    main()
