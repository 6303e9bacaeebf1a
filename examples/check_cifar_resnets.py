"""Are the CIFAR-10 ResNet weights really right?  Checks that need no CIFAR-10 test set.

No CIFAR-10 images are available offline, so this checks what can be checked on real photographs
that are here:

1. photographs shipped with scikit-image, shrunk to the networks' 32x32: the class and the
   confidence of ResNet-20, ResNet-56 and the seeded random ResNet-56 (``chelsea`` is a cat);
2. the 700 OSIE photographs at 32x32 (scenes, not CIFAR classes, so no answer is right): how often
   two independently trained networks (ResNet-20, ResNet-56) name the same class, how often
   ResNet-56 keeps its answer for the mirrored image (it was trained with flips), the mean top
   softmax probability, and the same for two random networks.

Run from the project root: ``python examples/check_cifar_resnets.py [OSIE_DIR]``
(default ``../shared/data/osie``; the weights are read from ``../shared/data/cifar-resnet``).
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from neuroprobe.models import load

torch.set_num_threads(1)
root = Path("../shared/data/cifar-resnet")
r20 = load(root / "resnet20-12fca82f.th", arch="cifar-resnet20").module
r56, meta = load(root / "resnet56-4bfd9763.th", arch="cifar-resnet56")
rand0 = load("random:cifar-resnet56?seed=0").module
rand1 = load("random:cifar-resnet56?seed=1").module
classes = meta["classes"]
print(f"stored CIFAR-10 test accuracy (best_prec1): ResNet-56 {meta['best_prec1']:.2f}")


def thumb(rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(rgb[..., :3])).permute(2, 0, 1)[None].float()
    return F.interpolate(x / 255, size=(32, 32), mode="area")


def softmax(model, x):
    with torch.no_grad():
        return F.softmax(model(x), 1)


print("\n| photograph (scikit-image) | ResNet-20 | ResNet-56 | random ResNet-56 |")
print("|---|---|---|---|")
for name in ("chelsea", "astronaut", "coffee", "rocket"):
    x = thumb(getattr(data, name)())
    cells = []
    for model in (r20, r56, rand0):
        p = softmax(model, x)[0]
        cells.append(f"{classes[int(p.argmax())]} {float(p.max()):.2f}")
    print(f"| {name} | " + " | ".join(cells) + " |")

osie = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/osie") / "stimuli"
paths = sorted(osie.glob("*.jpg"))
xs = torch.cat([thumb(np.asarray(Image.open(p).convert("RGB"))) for p in paths])
p20, p56, p56f = softmax(r20, xs), softmax(r56, xs), softmax(r56, xs.flip(-1))
q0, q1 = softmax(rand0, xs), softmax(rand1, xs)


def freq(p):
    return np.bincount(p.argmax(1).numpy(), minlength=10) / len(p)


def agree(a, b):
    return float((a.argmax(1) == b.argmax(1)).float().mean())


print(f"\nOSIE photographs at 32x32: {len(paths)}")
print(f"ResNet-20 and ResNet-56 name the same class: {agree(p20, p56):.3f} "
      "(chance for independent guesses with these class frequencies: "
      f"{float((freq(p20) * freq(p56)).sum()):.3f})")
print(f"ResNet-56 keeps its class for the mirrored image: {agree(p56, p56f):.3f}")
print(f"mean top probability: ResNet-20 {float(p20.max(1)[0].mean()):.3f}, "
      f"ResNet-56 {float(p56.max(1)[0].mean()):.3f}, random {float(q0.max(1)[0].mean()):.3f}")
print(f"classes used by ResNet-56: {np.bincount(p56.argmax(1).numpy(), minlength=10).tolist()}; "
      f"by the random network: {np.bincount(q0.argmax(1).numpy(), minlength=10).tolist()}; "
      f"two random networks agree: {agree(q0, q1):.3f}")
