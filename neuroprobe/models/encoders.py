"""Encoders: the convolutional trunks that saliency and scene models share.

Each encoder is an ``nn.Sequential`` whose children carry readable names, so that layers are
addressed the way papers name them:

* ``vgg16``: ``conv1_1, relu1_1, ..., pool4, conv5_1, ..., conv5_3, relu5_3`` (pool5 and the
  fully-connected layers removed, as in He et al. 2019: a 224x224 input gives 14x14x512).
* ``resnet18`` / ``resnet50``: ``conv1, bn1, relu, maxpool, layer1 .. layer4`` (no pooling or fc).
* ``cifar-resnet20`` / ``32`` / ``44`` / ``56``: the CIFAR-10 ResNets of
  :mod:`neuroprobe.models.cifar` without pooling and classifier (``conv1, bn1, relu, layer1 ..
  layer3``; 64 channels at 1/4 resolution); ``weights`` is the path of a published file.
* ``small``: a compact 5-stage CNN (``stem, block1 .. block4`` with 16, 32, 64, 128, 128
  channels; 128 channels at 1/16 resolution, 0.6 M parameters, about 0.17 GMAC for a 224x224
  input) used for the built-in demo models, trainable on a 2-core CPU in minutes.

``weights`` is ``None`` (random initialisation, explicit), ``"imagenet"`` (torchvision's ImageNet
weights, taken from the torch hub cache or downloaded; never silently replaced by random ones) or
the path of a state-dict file.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, suggest
from .cifar import build_trunk
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .tvimport import import_torchvision



@dataclass(frozen=True)
class EncoderInfo:
    name: str
    channels: int            # channels of the last layer
    layers: tuple            # layers worth dissecting (names inside the encoder)
    last_block: tuple        # children that form the last block (fine-tuned by finetune-last)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    torchvision_name: str | None = None


_VGG16_CFG = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]

ENCODERS: dict[str, EncoderInfo] = {
    "vgg16": EncoderInfo("vgg16", 512, ("conv3_3", "conv4_3", "conv5_1", "conv5_2", "conv5_3"),
                         ("conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3"),
                         torchvision_name="vgg16"),
    "resnet18": EncoderInfo("resnet18", 512, ("layer2", "layer3", "layer4"), ("layer4",),
                            torchvision_name="resnet18"),
    "resnet50": EncoderInfo("resnet50", 2048, ("layer2", "layer3", "layer4"), ("layer4",),
                            torchvision_name="resnet50"),
    **{f"cifar-resnet{d}": EncoderInfo(f"cifar-resnet{d}", 64, ("layer1", "layer2", "layer3"),
                                       ("layer3",)) for d in (20, 32, 44, 56)},
    "small": EncoderInfo("small", 128, ("block2", "block3", "block4"), ("block4",),
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
}


def _vgg16() -> nn.Sequential:
    mods: "OrderedDict[str, nn.Module]" = OrderedDict()
    cin = 3
    for b, widths in enumerate(_VGG16_CFG, start=1):
        for i, cout in enumerate(widths, start=1):
            mods[f"conv{b}_{i}"] = nn.Conv2d(cin, cout, 3, padding=1)
            mods[f"relu{b}_{i}"] = nn.ReLU(inplace=True)
            cin = cout
        if b < 5:
            mods[f"pool{b}"] = nn.MaxPool2d(2, 2)
    return nn.Sequential(mods)


def _vgg16_from_torchvision(state: dict) -> dict:
    """Rename torchvision's ``features.N.*`` keys to the named VGG encoder (fc keys dropped)."""
    names = [n for n in _vgg16()._modules]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and parts[1].isdigit():
            out[f"{names[int(parts[1])]}.{parts[2]}"] = value
    return out


def _resnet(name: str) -> nn.Sequential:
    torchvision = import_torchvision()

    net = getattr(torchvision.models, name)(weights=None)
    return nn.Sequential(OrderedDict(
        (n, getattr(net, n)) for n in ("conv1", "bn1", "relu", "maxpool",
                                       "layer1", "layer2", "layer3", "layer4")))


def _conv_bn(cin: int, cout: int, stride: int) -> list:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


SMALL_WIDTHS = (16, 32, 64, 128, 128)  # stem, block1 .. block4


def _small() -> nn.Sequential:
    def block(cin, cout, stride):
        conv1, bn1, relu1 = _conv_bn(cin, cout, stride)
        conv2, bn2, relu2 = _conv_bn(cout, cout, 1)
        return nn.Sequential(OrderedDict(conv1=conv1, bn1=bn1, relu1=relu1,
                                         conv2=conv2, bn2=bn2, relu2=relu2))

    w = SMALL_WIDTHS
    stem = nn.Sequential(OrderedDict(zip(("conv", "bn", "relu"), _conv_bn(3, w[0], 2))))
    return nn.Sequential(OrderedDict(
        stem=stem, block1=block(w[0], w[1], 2), block2=block(w[1], w[2], 2),
        block3=block(w[2], w[3], 2), block4=block(w[3], w[4], 1)))


def encoder_info(name: str) -> EncoderInfo:
    if name not in ENCODERS:
        raise CheckpointError(f"unknown encoder {name!r}", hint=suggest(name, ENCODERS, "encoder"))
    return ENCODERS[name]


def build_encoder(name: str, weights: str | os.PathLike | None = None) -> nn.Sequential:
    """Build an encoder by name with ``weights`` = None | "imagenet" | path (see module doc)."""
    info = encoder_info(name)
    if name == "vgg16":
        enc = _vgg16()
    elif name.startswith("resnet"):
        enc = _resnet(name)
    elif name.startswith("cifar-resnet"):
        enc = build_trunk(int(name[len("cifar-resnet"):]))
    else:
        enc = _small()
    if weights is None or str(weights).lower() == "none":
        return enc
    if str(weights).lower() == "imagenet":
        if info.torchvision_name is None:
            raise CheckpointError(f"encoder {name!r} has no ImageNet weights",
                                  hint="use --weights none or a path")
        state = imagenet_state_dict(info.torchvision_name)
    else:
        state = _read_state_file(Path(weights))
    load_state_strict(enc, encoder_state_for(name, state), source=str(weights))
    return enc


def encoder_state_for(name: str, state: dict) -> dict:
    """A state dict saved from a whole network, as the keys of encoder ``name``: torchvision's
    VGG ``features.N`` renamed, a ResNet's ``fc`` / a CIFAR ResNet's ``linear`` dropped, a
    DataParallel ``module.`` prefix or a neuroprobe model's ``encoder.`` prefix removed."""
    state = strip_prefix(state, "module.")
    if name == "vgg16" and any(k.startswith("features.") for k in state):
        state = _vgg16_from_torchvision(state)
    elif name.startswith("resnet"):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    elif name.startswith("cifar-resnet"):
        state = {k: v for k, v in state.items() if not k.startswith("linear.")}
    # accept encoder state dicts saved from a whole model ("encoder.xxx")
    if state and all(k.startswith("encoder.") for k in state if not k.startswith("decoder")):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    """``state`` without ``prefix`` when every key carries it (``module.``: a model saved while
    wrapped in ``nn.DataParallel`` / ``DistributedDataParallel``); otherwise unchanged."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def add_legacy_bn_counters(module: nn.Module, state: dict) -> dict:
    """``state`` with a zero ``num_batches_tracked`` for every BatchNorm of ``module`` when the
    state dict has none of them but all their running statistics: a file saved before torch
    0.4.1 added that counter.  torch's own BatchNorm fills it with 0 the same way when it loads
    such a state dict with its version metadata; the counter only matters for training with
    ``momentum=None``.  Any other mismatch is left for :func:`load_state_strict` to report."""
    counters = [f"{n}.num_batches_tracked" if n else "num_batches_tracked"
                for n, m in module.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not counters or any(c in state for c in counters):
        return state
    if not all(c[:-len("num_batches_tracked")] + "running_mean" in state for c in counters):
        return state
    out = dict(state)
    for c in counters:
        out[c] = torch.tensor(0, dtype=torch.long)
    return out


def _read_state_file(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist",
                              hint="pass --weights imagenet, none, or an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a loadable state dict ({type(err).__name__})",
                              hint="expected a file saved with torch.save(model.state_dict())")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def load_state_strict(module: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that names missing/unexpected keys.

    Before comparing, a pre-0.4.1 state dict gets its BatchNorm counters
    (:func:`add_legacy_bn_counters`); nothing else is filled in or dropped."""
    state = add_legacy_bn_counters(module, state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shape:
            parts.append("shape mismatch at " + _few(
                [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape]))
        raise CheckpointError(f"{source} does not fit the architecture: " + "; ".join(parts),
                              hint="check --arch / the encoder name")
    module.load_state_dict(state, strict=True)


def _few(items: list, n: int = 4) -> str:
    head = ", ".join(items[:n])
    return f"[{head}{', ...' if len(items) > n else ''}] ({len(items)})"


def imagenet_state_dict(tv_name: str) -> dict:
    """torchvision's ImageNet weights (``IMAGENET1K_V1``, the study's) for ``tv_name`` from the
    torch hub cache, else downloaded; read with ``weights_only=True``
    (:func:`.hubcache.weights_state_dict`).

    Raises :class:`CheckpointError` saying where to put the file when neither works.
    """
    import_torchvision()
    from torchvision.models import get_model_weights

    from .hubcache import cache_file, weights_state_dict

    weights = get_model_weights(tv_name).IMAGENET1K_V1
    try:
        return weights_state_dict(weights, tv_name)
    except CheckpointError as err:
        raise CheckpointError(err.message, hint=f"download {weights.url} into "
                              f"{cache_file(weights).parent}, or pass --weights none or "
                              "--weights PATH") from None
