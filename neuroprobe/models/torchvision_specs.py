"""torchvision models by name: ``torchvision:NAME[?weights=DEFAULT|ENUM|none|FILE][&seed=N]``.

* ``weights`` (default ``DEFAULT``) is resolved through torchvision's own registry
  (:func:`torchvision.models.get_model_weights`): ``DEFAULT`` is the enum's ``DEFAULT`` member
  (``IMAGENET1K_V2`` for resnet50), any member name (``IMAGENET1K_V1``,
  ``IMAGENET1K_SWAG_E2E_V1``) picks that one, ``imagenet`` means ``IMAGENET1K_V1`` where it
  exists (the name neuroprobe used before) and ``DEFAULT`` otherwise, ``none`` builds the
  architecture with random weights drawn from ``torch.manual_seed(seed)`` (offline), and a path
  reads a state-dict file.
* The network is built by torchvision's own builder with the weights enum, so everything the
  builder does for those weights (number of classes, ViT-H/14's 518x518 input, GoogLeNet's
  ``transform_input``) holds.  The weights file itself is read with
  ``torch.load(weights_only=True)`` from the torch hub cache (``torch.hub.get_dir()/checkpoints``),
  downloaded there first when missing; offline, the error names that path and ``?weights=none``.
* Normalisation (mean, std) and input size come from the weights' transforms (``crop_size``);
  detection models normalise inside (neuroprobe adds none), optical-flow models take [-1, 1],
  and the input size is 224x224 where the transforms give none.
* ``architecture_only=True`` (``neuroprobe layers``) builds the same architecture without
  reading any weights: random weights, no file, no network.

Every model of :func:`torchvision.models.list_models` builds with ``weights=none``
(classification, quantized classification, detection, segmentation, video, optical flow;
detection and segmentation backbones get no pretrained backbone either).  Only
image models take the ``(B, 3, H, W)`` batches that ``layers``/``dissect`` feed: video models
want ``(B, 3, T, H, W)`` and optical-flow models two images, so those load (for the Python API)
but ``layers``/``dissect`` refuse them in one line.
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from pathlib import Path

from ..errors import CheckpointError, suggest
from .hubcache import cache_file, ensure_cached, weights_state_dict
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .tvimport import import_torchvision

__all__ = ["build_torchvision_net", "resolve_weights", "weight_names", "task_of", "check_name",
           "cache_file", "ensure_cached", "weights_state_dict"]

#: torchvision sub-packages -> the task neuroprobe records
_TASKS = {"detection": "detection", "segmentation": "segmentation", "video": "video",
          "optical_flow": "optical-flow", "quantization": "classification"}


def task_of(name: str) -> str:
    """The task of torchvision model ``name`` from the sub-package that defines it."""
    torchvision = import_torchvision()

    module = torchvision.models.get_model_builder(name).__module__.split(".")
    return _TASKS.get(module[2] if len(module) > 2 else "", "classification")


def check_name(name: str) -> None:
    """Refuse a name torchvision does not know, with the closest ones."""
    torchvision = import_torchvision()

    available = torchvision.models.list_models()
    if name not in available:
        raise CheckpointError(f"torchvision has no model {name!r}",
                              hint=suggest(name, available, "model") +
                              "; torchvision.models.list_models() lists them all")


def weight_names(name: str) -> list[str]:
    """The member names of ``name``'s weights enum, then ``DEFAULT``."""
    torchvision = import_torchvision()

    enum = torchvision.models.get_model_weights(name)
    return [m for m in enum.__members__ if m != "DEFAULT"] + ["DEFAULT"]


def resolve_weights(name: str, text: str | None):
    """``weights`` text -> a torchvision weights enum member, ``None`` (random) or a
    :class:`Path` (a state-dict file).

    Raises
    ------
    CheckpointError
        For an enum name ``name``'s weights do not have (the message lists the valid ones).
    """
    torchvision = import_torchvision()

    text = "DEFAULT" if text is None else str(text)
    if text.lower() == "none":
        return None
    if "/" in text or "\\" in text or text.endswith((".pt", ".pth", ".bin")) \
            or Path(text).expanduser().is_file():
        return Path(text).expanduser()
    enum = torchvision.models.get_model_weights(name)
    members = enum.__members__
    if text.lower() == "imagenet":   # neuroprobe's older spelling
        return members.get("IMAGENET1K_V1", enum.DEFAULT)
    key = {k.upper(): k for k in members}.get(text.upper())
    if key is None:
        raise CheckpointError(f"torchvision model {name!r} has no weights {text!r}",
                              hint="valid: " + ", ".join(weight_names(name)) +
                              ", none (random) or a state-dict file")
    return members[key]


@contextlib.contextmanager
def _safe_weights(name: str):
    """While active, torchvision builders read weights through :func:`weights_state_dict`
    (``weights_only=True``, one-line offline errors) instead of torch.hub's
    ``load_state_dict_from_url`` (which unpickles with ``weights_only=False``)."""
    import_torchvision()
    from torchvision.models._api import WeightsEnum

    original = WeightsEnum.get_state_dict
    WeightsEnum.get_state_dict = lambda self, *args, **kwargs: weights_state_dict(self, name)
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = original


@contextlib.contextmanager
def _quiet_builders():
    """torchvision's and torch's warnings while a network is built (GoogLeNet's future
    initialisation, deprecated quantized tensors) are about their code, not for the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _architecture_kwargs(builder, weights) -> dict:
    """Keyword arguments that give the architecture ``weights`` would give, without them: no
    pretrained backbone, the weights' number of classes and (ViT) image size, quantized where the
    weights are."""
    params = inspect.signature(builder).parameters
    kwargs = {}
    if "weights_backbone" in params:
        kwargs["weights_backbone"] = None
    if weights is None:
        return kwargs
    meta = weights.meta
    # what torchvision's builders themselves overwrite for weights (``_ovewrite_named_param``)
    if meta.get("categories"):
        kwargs["num_classes"] = len(meta["categories"])
    if builder.__module__.endswith("vision_transformer") and meta.get("min_size"):
        kwargs["image_size"] = int(meta["min_size"][0])
    if "quantize" in params:
        kwargs["quantize"] = True
    return kwargs


#: normalisation of tasks whose transforms carry no mean/std: detection models normalise inside
#: (GeneralizedRCNNTransform), optical flow takes [-1, 1] (torchvision's OpticalFlow transform)
_OWN_NORMALISATION = {"detection": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                      "optical-flow": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def _transform_info(name: str, weights) -> dict:
    """Mean, std and input size from the transforms of ``weights`` (of ``DEFAULT`` for random
    weights); where the transforms carry no mean/std, what the task's models expect
    (:data:`_OWN_NORMALISATION`), else ImageNet's; 224x224 where they carry no crop size."""
    torchvision = import_torchvision()

    if weights is None:
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError, KeyError):
            weights = None
    mean, std = _OWN_NORMALISATION.get(task_of(name), (IMAGENET_MEAN, IMAGENET_STD))
    size = (224, 224)
    if weights is not None:
        t = weights.transforms()
        mean = tuple(getattr(t, "mean", None) or mean)
        std = tuple(getattr(t, "std", None) or std)
        crop = getattr(t, "crop_size", None)
        if crop:
            size = (int(crop[0]), int(crop[-1]))
    return {"mean": mean, "std": std, "input_size": size}


def build_torchvision_net(name: str, weights=None, *, architecture_only: bool = False,
                          num_classes: int | None = None):
    """Build torchvision model ``name`` -> ``(net, info)``.

    Parameters
    ----------
    name : str
        A name of :func:`torchvision.models.list_models`.
    weights : str, Path or None
        As :func:`resolve_weights` takes them (``None``: random).
    architecture_only : bool
        Build the architecture the weights would give, with random weights (no file read).
    num_classes : int, optional
        Replace the classifier's size (random weights only).

    Returns
    -------
    net : torch.nn.Module
    info : dict
        ``weights`` (the enum member's name, a path or ``"none"``), ``task``, ``mean``,
        ``std``, ``input_size``.
    """
    torchvision = import_torchvision()

    check_name(name)
    resolved = resolve_weights(name, "none" if weights is None else weights)
    builder = torchvision.models.get_model_builder(name)
    enum = resolved if resolved is not None and not isinstance(resolved, Path) else None
    info = {"task": task_of(name), **_transform_info(name, enum)}
    if enum is not None and not architecture_only and num_classes is None:
        ensure_cached(enum, name)   # before building: offline, fail before allocating
        with _safe_weights(name), _quiet_builders():
            net = builder(weights=enum)
        info["weights"] = f"{type(enum).__name__}.{enum.name}"
        return net, info
    kwargs = _architecture_kwargs(builder, enum)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    with _quiet_builders():
        net = builder(weights=None, **kwargs)
    info["weights"] = "none" if enum is None else f"{type(enum).__name__}.{enum.name} " \
        "(architecture only)"
    if isinstance(resolved, Path) and not architecture_only:
        from .encoders import _read_state_file, load_state_strict

        load_state_strict(net, _read_state_file(resolved), source=str(resolved))
        info["weights"] = str(resolved)
    fixed = getattr(net, "image_size", None)   # a ViT takes only the size it was built for
    if isinstance(fixed, int) and type(net).__name__ == "VisionTransformer":
        info["input_size"] = (fixed, fixed)
    return net, info
