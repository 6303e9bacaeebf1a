"""The CIFAR-10 residual networks of He et al. (CVPR 2016, section 4.2), as trained and published
by Y. Idelbayev (github.com/akamaster/pytorch_resnet_cifar10, BSD-2), written here so that the
published files load as they are.

Architecture (depth = 6n + 2: 20, 32, 44, 56, 110, ...): ``conv1`` 3x3 3->16 (stride 1, no
bias), ``bn1``, ReLU; three stages ``layer1``, ``layer2``, ``layer3`` of ``n`` BasicBlocks each
with 16, 32 and 64 channels and strides 1, 2, 2; global average pooling; ``linear`` 64->10.
A BasicBlock is 3x3 conv, BN, ReLU, 3x3 conv, BN, add the shortcut, ReLU.  The shortcut of a
block that changes size has no parameters (the paper's "option A"): it keeps every second pixel
(``x[:, :, ::2, ::2]``) and pads the new channels with zeros, ``planes // 4`` before and after.

State-dict keys are those of the published files without their ``module.`` prefix
(``conv1.weight``, ``layer2.0.bn1.running_mean``, ``linear.bias``, ...); the files predate
BatchNorm's ``num_batches_tracked`` counter (torch 0.4.1), see
:func:`neuroprobe.models.encoders.add_legacy_bn_counters`.

Inputs are images in ``[0, 1]``; the model normalises them with the ImageNet mean and std, as the
published training code did.  The networks were trained on 32x32 images but are convolutional up
to the pooling, so they run at any size (``layer3`` is a 56x56 map at 224x224 input).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` with ``pad`` zero channels before and after."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = int(pad)

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class BasicBlock(nn.Module):
    """3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU (the output is the block's ReLU)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2 or planes != 2 * in_planes:
                raise ValueError("option-A shortcuts halve the size and double the channels")
            self.shortcut: nn.Module = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def blocks_per_stage(depth: int) -> int:
    """``n`` of a depth ``6n + 2`` network (20 -> 3, 56 -> 9); a clear error otherwise."""
    depth = int(depth)
    if depth < 8 or (depth - 2) % 6:
        raise CheckpointError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110), not {depth}",
                              hint="use cifar-resnet20, cifar-resnet32, cifar-resnet44 or "
                              "cifar-resnet56")
    return (depth - 2) // 6


def build_trunk(depth: int) -> nn.Sequential:
    """``conv1, bn1, relu, layer1, layer2, layer3``: the network without pooling and ``linear``
    (the encoder behind ``--encoder cifar-resnetN``), convolutions initialised with
    ``kaiming_normal_`` as in the published training code."""
    n = blocks_per_stage(depth)
    mods: "OrderedDict[str, nn.Module]" = OrderedDict(
        conv1=nn.Conv2d(3, STAGE_WIDTHS[0], 3, 1, 1, bias=False),
        bn1=nn.BatchNorm2d(STAGE_WIDTHS[0]), relu=nn.ReLU())
    cin = STAGE_WIDTHS[0]
    for s, width in enumerate(STAGE_WIDTHS, start=1):
        stride = 1 if s == 1 else 2
        blocks = []
        for b in range(n):
            blocks.append(BasicBlock(cin, width, stride if b == 0 else 1))
            cin = width
        mods[f"layer{s}"] = nn.Sequential(*blocks)
    trunk = nn.Sequential(mods)
    for m in trunk.modules():   # the published training code's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    return trunk


class CifarResNet(nn.Module):
    """The whole classifier: ``normalize``, the trunk's modules at top level (``conv1``, ``bn1``,
    ``relu``, ``layer1`` .. ``layer3``), ``pool``, ``linear``; returns the 10 CIFAR-10 logits.

    Convolutions and ``linear`` start from ``kaiming_normal_`` as in the published training code,
    so a seeded untrained instance is this network before training (with BatchNorm's initial
    running statistics, mean 0 and variance 1)."""

    task = "classification"

    def __init__(self, depth: int = 56, num_classes: int = 10):
        super().__init__()
        self.depth = int(depth)
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        for name, mod in build_trunk(depth).named_children():
            self.add_module(name, mod)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(STAGE_WIDTHS[-1], int(num_classes))
        nn.init.kaiming_normal_(self.linear.weight)   # as the published training code
        classes = list(CIFAR10_CLASSES) if int(num_classes) == 10 else None
        #: metadata defaults the loader records for this architecture (whatever its weights)
        self.default_metadata = {"input_size": [32, 32], "classes": classes}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``layer3`` for images ``x`` in [0, 1] (normalised here)."""
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.features(x)).flatten(1))


def build_cifar_resnet(depth: int = 56, num_classes: int = 10) -> CifarResNet:
    """Builder behind ``--arch cifar-resnetN`` (``{"builder": "cifar-resnet", "kwargs":
    {"depth": N}}``)."""
    return CifarResNet(depth, num_classes)


def parse_cifar_arch(text: str) -> dict | None:
    """``cifar-resnet56`` -> ``{"builder": "cifar-resnet", "kwargs": {"depth": 56}}``; None
    for any other text."""
    if not text.startswith("cifar-resnet"):
        return None
    digits = text[len("cifar-resnet"):]
    if not digits.isdigit():
        raise CheckpointError(f"unknown architecture {text!r}",
                              hint="cifar-resnet20, cifar-resnet32, cifar-resnet44 or "
                              "cifar-resnet56")
    blocks_per_stage(int(digits))
    return {"builder": "cifar-resnet", "kwargs": {"depth": int(digits)}}


def infer_cifar_arch(state: dict) -> dict | None:
    """The architecture of a CIFAR ResNet state dict (prefix already removed), or None when the
    keys and shapes are not those of one: ``conv1.weight`` of shape (16, 3, 3, 3), stages
    ``layer1`` .. ``layer3`` with the same number of blocks, no ``layer4``, ``linear`` 64 -> K."""
    conv1 = state.get("conv1.weight")
    lin = state.get("linear.weight")
    if conv1 is None or lin is None or tuple(conv1.shape) != (16, 3, 3, 3) or \
            tuple(lin.shape[1:]) != (64,) or any(k.startswith("layer4.") for k in state):
        return None
    counts = []
    for s in (1, 2, 3):
        blocks = {k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}
        if not blocks or not all(b.isdigit() for b in blocks):
            return None
        counts.append(len(blocks))
    if len(set(counts)) != 1:
        return None
    return {"builder": "cifar-resnet",
            "kwargs": {"depth": 6 * counts[0] + 2, "num_classes": int(lin.shape[0])}}


def encoder_state(state: dict) -> dict:
    """A published file's (unwrapped) state dict as the trunk's: the classifier ``linear.*``
    entries dropped."""
    return {k: v for k, v in state.items() if not k.startswith("linear.")}
