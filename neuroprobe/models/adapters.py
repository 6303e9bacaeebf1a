"""Model adapters: a uniform view of the study's two model families.

* :class:`SaliencyModel` = normalisation + encoder + decoder.  The default decoder is the one of
  He et al. (CVPR 2019): a 1x1 convolution C->1 without bias, bilinear upsampling to the output
  size and per-image min-max normalisation to [0, 1].  Other decoders plug in by name
  (:data:`DECODERS`).
* :class:`SceneModel` = normalisation + encoder + classifier (global average pool + linear).
* :class:`ImageClassifier` (:mod:`.classifier`) wraps a torchvision or timm network with its
  normalisation.

Every adapter takes images as float tensors in ``[0, 1]`` (NCHW) and owns its normalisation.
Layer names are dotted module names of the adapter: ``encoder.conv5_3``, ``encoder.layer4``,
``net.layer4`` (torchvision classifiers).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, suggest
from .cifar import build_cifar_resnet
from .classifier import ImageClassifier
from .normalize import Normalize
from .encoders import IMAGENET_MEAN, IMAGENET_STD, build_encoder, encoder_info


def minmax_per_image(s: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rescale each image's map to [0, 1] (a constant map becomes 0)."""
    flat = s.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(s)


class ConvDecoder(nn.Module):
    """The study's decoder: 1x1 conv C->1 (no bias), bilinear upsampling, min-max per image."""

    def __init__(self, channels: int, output_size=None, normalize: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1, bias=False)
        self.output_size = tuple(output_size) if output_size else None
        self.normalize = normalize

    def forward(self, features: torch.Tensor, size=None) -> torch.Tensor:
        s = self.conv(features)
        size = self.output_size or size
        if size is not None:
            s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False)
        return minmax_per_image(s) if self.normalize else s


class DeepDecoder(nn.Module):
    """A slightly deeper decoder (3x3 conv C->64, ReLU, 1x1 conv 64->1), same output rules."""

    def __init__(self, channels: int, output_size=None, normalize: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 1, 1, bias=False)
        self.output_size = tuple(output_size) if output_size else None
        self.normalize = normalize

    def forward(self, features, size=None):
        s = self.conv2(torch.relu(self.conv1(features)))
        size = self.output_size or size
        if size is not None:
            s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False)
        return minmax_per_image(s) if self.normalize else s


DECODERS: dict[str, Callable[..., nn.Module]] = {"conv1x1": ConvDecoder, "deep": DeepDecoder}


class SaliencyModel(nn.Module):
    """Encoder + saliency decoder; ``forward(x in [0,1]) -> (B, 1, H, W)`` in [0, 1]."""

    task = "saliency"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor, raw: bool = False) -> torch.Tensor:
        feats = self.encoder(self.normalize(x))
        if raw:  # unnormalised logits at input size, for losses that need them
            dec = self.decoder
            s = dec.conv(feats) if isinstance(dec, ConvDecoder) else dec.conv2(
                torch.relu(dec.conv1(feats)))
            return F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(feats, size=x.shape[-2:])


class SceneModel(nn.Module):
    """Encoder + scene classifier (global average pooling, linear); returns logits."""

    task = "scene"

    def __init__(self, encoder: nn.Module, channels: int, num_classes: int, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.encoder(self.normalize(x))).flatten(1))


# -- builders: architecture spec (name + kwargs) -> module --------------------------------------

def build_saliency(encoder: str = "vgg16", decoder: str = "conv1x1", weights=None,
                   output_size=None) -> SaliencyModel:
    info = encoder_info(encoder)
    if decoder not in DECODERS:
        raise CheckpointError(f"unknown decoder {decoder!r}", hint=suggest(decoder, DECODERS,
                                                                            "decoder"))
    enc = build_encoder(encoder, weights)
    return SaliencyModel(enc, DECODERS[decoder](info.channels, output_size), info.mean, info.std)


def build_scene(encoder: str = "vgg16", num_classes: int = 6, weights=None) -> SceneModel:
    info = encoder_info(encoder)
    return SceneModel(build_encoder(encoder, weights), info.channels, int(num_classes),
                      info.mean, info.std)


def build_encoder_only(encoder: str = "vgg16", weights=None) -> nn.Module:
    """The bare encoder behind a normalisation (for dissecting a pretrained trunk)."""
    info = encoder_info(encoder)
    model = nn.Sequential()
    model.add_module("normalize", Normalize(info.mean, info.std))
    model.add_module("encoder", build_encoder(encoder, weights))
    return model


def build_torchvision(name: str, weights=None, num_classes: int | None = None, *,
                      architecture_only: bool = False) -> ImageClassifier:
    """torchvision model ``name`` behind the normalisation of its weights (see
    :mod:`.torchvision_specs`; ``weights=None``: random).  Its ``default_metadata`` carries the
    task, input size and the weights that were loaded."""
    from .torchvision_specs import build_torchvision_net

    net, info = build_torchvision_net(name, weights, architecture_only=architecture_only,
                                      num_classes=num_classes)
    model = ImageClassifier(net, info["mean"], info["std"])
    model.default_metadata = {"task": info["task"], "input_size": list(info["input_size"]),
                              "weights": info["weights"]}
    return model


def build_timm(name: str, weights=None, **kwargs) -> ImageClassifier:
    """timm model ``name`` behind the normalisation of its pretrained config (see
    :mod:`.timm_specs`; ``weights=None``: random)."""
    from .timm_specs import build_timm_model

    return build_timm_model(name, weights, **kwargs)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cifar-resnet": build_cifar_resnet,
    "saliency": build_saliency,
    "scene": build_scene,
    "encoder": build_encoder_only,
    "torchvision": build_torchvision,
    "timm": build_timm,
}


def default_layers(module: nn.Module, arch: dict | None = None) -> list[str]:
    """Layers worth dissecting for a built model (prefixed dotted names)."""
    arch = arch or {}
    kwargs = arch.get("kwargs", {})
    if arch.get("builder") in ("saliency", "scene", "encoder"):
        info = encoder_info(kwargs.get("encoder", "vgg16"))
        return [f"encoder.{n}" for n in info.layers]
    if arch.get("builder") == "cifar-resnet":
        return ["layer1", "layer2", "layer3"]
    names = {n for n, _ in module.named_modules()}
    if arch.get("builder") == "timm":
        # timm's own list of feature layers (stages / blocks), the last two
        info = getattr(getattr(module, "net", None), "feature_info", None) or []
        found = [f"net.{f['module']}" for f in info
                 if isinstance(f, dict) and f"net.{f.get('module')}" in names]
        if found:
            return found[-2:]
    if arch.get("builder") in ("torchvision", "timm"):
        prefix = "net.encoder.layers.encoder_layer_"   # torchvision's ViT blocks
        vit = sorted((n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()),
                     key=lambda n: int(n[len(prefix):]))
        for cand in (["net.layer3", "net.layer4"], ["net.features"], vit[-2:]):
            if cand and all(c in names for c in cand):
                return cand
        return [n for n, m in module.named_children()][-1:]
    return []
