"""Model adapters and checkpoints.

* :func:`load` (``neuroprobe.models.load(path)``) -> ``(module, metadata)``, loading safely
  (``weights_only=True``) from a neuroprobe checkpoint, a state dict plus ``arch``, TorchScript,
  ``torchvision:NAME[?weights=...]`` (:mod:`.torchvision_specs`), ``timm:NAME[?weights=...]``
  (:mod:`.timm_specs`, the optional extra ``neuroprobe[timm]``) or a built-in demo name.
* :func:`save` writes the one checkpoint format (architecture spec + state dict + metadata).
* Builders: :func:`build_saliency` (encoder + the study's decoder), :func:`build_scene`
  (encoder + classifier), :func:`build_torchvision`, :func:`build_timm`; encoders vgg16 /
  resnet18 / resnet50 / small / cifar-resnetN; the CIFAR-10 ResNets (``--arch cifar-resnet56``) in :mod:`.cifar`.
"""
import torch

from ..hooks import Recorder
from .adapters import (DECODERS, ImageClassifier, Normalize, SaliencyModel, SceneModel,
                       build_encoder_only, build_saliency, build_scene, build_timm,
                       build_torchvision, minmax_per_image)
from .checkpoint import LoadedModel, build, load, parse_arch, save
from .encoders import ENCODERS, build_encoder, encoder_info

__all__ = ["load", "save", "build", "parse_arch", "LoadedModel", "build_saliency", "build_scene",
           "build_torchvision", "build_timm", "build_encoder_only", "build_encoder", "encoder_info", "ENCODERS",
           "DECODERS", "SaliencyModel", "SceneModel", "ImageClassifier", "Normalize",
           "minmax_per_image", "dry_run"]


def dry_run(module, input_size=(224, 224), layers=None, device="cpu"):
    """Run a dummy input through ``module`` and return ``[(name, type, output shape)]`` for every
    sub-module (or the given layers).  Modules that did not run get shape ``None``."""
    names = layers or [n for n, _ in module.named_modules() if n]
    x = torch.zeros(1, 3, *input_size, device=device)
    with torch.no_grad(), Recorder(module, names, clone=False) as rec:
        module(x)
    rows = []
    mods = dict(module.named_modules())
    for n in rec.keys():
        calls = rec.calls(n)
        shape = None
        if calls:
            out = calls[-1]
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        rows.append((n, type(mods[n]).__name__, shape, len(calls)))
    return rows
