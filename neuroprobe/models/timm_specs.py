"""timm models by name: ``timm:NAME[?weights=pretrained|none|FILE][&seed=N][&KEY=VALUE...]``
(the optional extra ``pip install 'neuroprobe[timm]'``).

* ``NAME`` is any name :func:`timm.create_model` takes, with a pretrained tag
  (``vit_small_patch16_224.augreg_in21k``) or a Hugging Face hub id (``hf-hub:org/name``, also
  written ``hf_hub:org/name``), passed through to timm as it is.
* ``weights`` (default ``pretrained``): timm's pretrained weights (``pretrained=True``; timm reads
  them from the Hugging Face cache or downloads them); ``none`` builds the architecture with
  random weights drawn from ``torch.manual_seed(seed)`` (``pretrained=False``, offline); a path
  loads a state dict (``.pt``/``.pth`` with ``torch.load(weights_only=True)``, or
  ``.safetensors``) into the architecture.
* Other parameters go to :func:`timm.create_model` as keyword arguments, numbers and
  ``true``/``false`` as such (``img_size=64``, ``num_classes=10``).
* Normalisation and input size come from the model's pretrained config through
  :func:`timm.data.resolve_data_config` (a ViT built with ``img_size`` keeps that size).
* Vision transformers record their token outputs as ``(B, C, H, W)`` grids (see
  :class:`.adapters.ImageClassifier`).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..errors import CheckpointError, suggest

_HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def _timm():
    try:
        import timm
        import timm.data
    except ImportError:
        raise CheckpointError("timm: models need the optional package timm, which is not "
                              "installed", hint="pip install 'neuroprobe[timm]' (or pip install "
                              "timm)") from None
    return timm


def _check_name(timm, name: str) -> None:
    if name.startswith(_HUB_PREFIXES) or timm.is_model(name):
        return
    base = name.split(".", 1)[0]
    names = timm.list_models()
    close = suggest(base, names, "model")
    if "." in name and timm.is_model(base):
        close = f"{base} exists; its pretrained tags: timm.list_pretrained('{base}*')"
    raise CheckpointError(f"timm has no model {name!r}",
                          hint=f"{close}; list them with timm.list_models('*{base[:8]}*')")


def _read_weights(path: Path) -> dict:
    from .encoders import _read_state_file

    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(f"{path} is not a loadable safetensors file "
                                  f"({type(err).__name__})") from None
    return _read_state_file(path)


def _first_sentence(err: Exception, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    cut = text.find(". ")
    text = text[:cut + 1] if 0 < cut < limit else text[:limit]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextlib.contextmanager
def _hub_warnings_off():
    """huggingface_hub logs a warning per failed request before raising; the raised error is
    reported in one line instead."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _create(timm, name: str, pretrained: bool, kwargs: dict):
    try:
        with _hub_warnings_off():
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise CheckpointError(f"timm model {name!r} does not take {kwargs}: "
                              f"{str(err).splitlines()[0][:160]}",
                              hint="drop or fix the KEY=VALUE parameters") from None
    except Exception as err:
        if not pretrained and not name.startswith(_HUB_PREFIXES):
            raise
        from huggingface_hub import constants

        raise CheckpointError(
            f"timm could not load {'the hub model' if not pretrained else 'pretrained weights of'}"
            f" {name!r} ({_first_sentence(err)}); timm reads them from the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}) or downloads them",
            hint=f"connect to the network once, or use timm:{name}?weights=none for random "
            "weights" if not name.startswith(_HUB_PREFIXES) else
            "connect to the network once so that the hub files are cached") from None


def build_timm_model(name: str, weights=None, **kwargs):
    """Build timm model ``name`` behind the normalisation of its pretrained config.

    Parameters
    ----------
    name : str
        A timm model name (with an optional pretrained tag) or ``hf-hub:org/name``.
    weights : str, Path or None
        ``"pretrained"``, ``None`` / ``"none"`` (random), or a state-dict file.
    **kwargs
        Passed to :func:`timm.create_model`.

    Returns
    -------
    ImageClassifier
        Its ``default_metadata`` holds the task, input size, weights and timm's data config.
    """
    from .classifier import ImageClassifier
    from .encoders import load_state_strict

    timm = _timm()
    if name.startswith("hf_hub:"):
        name = "hf-hub:" + name[len("hf_hub:"):]
    _check_name(timm, name)
    text = "none" if weights is None else str(weights)
    pretrained = text.lower() in ("pretrained", "default")
    path = None
    if not pretrained and text.lower() != "none":
        path = Path(text).expanduser()
        if not (path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.exists()):
            raise CheckpointError(f"timm weights {text!r} are neither pretrained, none nor a "
                                  "file", hint=f"write timm:{name}?weights=pretrained, "
                                  "?weights=none or ?weights=PATH")
    net = _create(timm, name, pretrained, kwargs)
    if path is not None:
        load_state_strict(net, _read_weights(path), source=str(path))
    config = timm.data.resolve_data_config({}, model=net)
    size = tuple(int(v) for v in config["input_size"][-2:])
    img = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if img is not None and not getattr(net, "dynamic_img_size", False):
        size = (img, img) if isinstance(img, int) else (int(img[0]), int(img[-1]))
    model = ImageClassifier(net, tuple(config["mean"]), tuple(config["std"]))
    model.default_metadata = {
        "task": "classification", "input_size": list(size),
        "weights": "pretrained" if pretrained else str(path or "none"),
        "timm": {"name": name, "interpolation": config.get("interpolation"),
                 "crop_pct": config.get("crop_pct"), "version": timm.__version__}}
    return model


def parse_kwargs(params: dict) -> dict:
    """The ``KEY=VALUE`` parameters of a ``timm:`` spec other than ``weights`` and ``seed``,
    as keyword arguments for :func:`timm.create_model`."""
    from .spec import literal

    kwargs = {k: literal(v) for k, v in params.items() if k not in ("weights", "seed")}
    taken = sorted(set(kwargs) & {"name", "model_name", "pretrained"})
    if taken:
        raise CheckpointError(f"parameter {taken[0]!r} of a timm: model is not a keyword for "
                              "timm.create_model here", hint="write timm:NAME?weights="
                              "pretrained|none|FILE for the weights")
    return kwargs


def seeded(fn, seed: int):
    """``fn()`` with the global torch RNG seeded with ``seed`` and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()
