"""neuroprobe's checkpoint format and the safe loader behind ``--model``.

One file (``torch.save`` of a dict) holds everything needed to rebuild a model::

    {"format": "neuroprobe-checkpoint", "format_version": 1,
     "arch": {"builder": "saliency", "kwargs": {"encoder": "vgg16", "decoder": "conv1x1"}},
     "state_dict": {...},
     "metadata": {"task": "saliency", "variant": "frozen", "input_size": [224, 224],
                  "mean": [...], "std": [...], "layers": [...], "train_config": {...},
                  "neuroprobe_version": "0.1.0", ...}}

:func:`load` reads it with ``torch.load(weights_only=True)`` (no code runs while loading).  It also
accepts a plain state dict together with an architecture (``arch="resnet18"``,
``"saliency:vgg16"``), a TorchScript file, names such as ``torchvision:resnet50`` (torchvision's
``DEFAULT`` weights, ``?weights=IMAGENET1K_V1`` for another, ``?weights=none`` for random ones;
:mod:`.torchvision_specs`) and ``timm:vit_small_patch16_224`` (:mod:`.timm_specs`), and a fully
pickled module only with ``trust=True`` (``--trust-checkpoint``).
"""
from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .. import __version__
from ..errors import CheckpointError, suggest
from ..io import atomic_path
from ..plugins import load_plugins
from . import zoo
from .adapters import BUILDERS, build_encoder_only, build_torchvision, default_layers
from .encoders import IMAGENET_MEAN, IMAGENET_STD, load_state_strict, strip_prefix

FORMAT = "neuroprobe-checkpoint"
FORMAT_VERSION = 1


class LoadedModel(NamedTuple):
    """What :func:`load` returns: the module (in eval mode) and its metadata."""

    module: nn.Module
    metadata: dict


def _builders() -> dict:
    """Built-in builders and the loaded plugin builders (:mod:`neuroprobe.plugins`)."""
    return {**load_plugins("neuroprobe.models", tuple(sorted(BUILDERS))), **BUILDERS}


def build(arch: dict) -> nn.Module:
    """Build a module from an architecture spec ``{"builder": NAME, "kwargs": {...}}``."""
    builders = _builders()
    name = arch.get("builder")
    if name not in builders:
        raise CheckpointError(f"unknown model builder {name!r}",
                              hint=suggest(str(name), builders, "builder") +
                              "; third-party builders register under the entry point "
                              "group neuroprobe.models")
    builder = builders[name]
    kwargs = dict(arch.get("kwargs", {}))
    kwargs.pop("weights", None)  # weights come from the checkpoint's state dict
    try:
        return builder(**kwargs)
    except TypeError as err:
        raise CheckpointError(f"cannot build {name!r} with {kwargs}: {err}") from None


def parse_arch(text: str) -> dict:
    """``--arch`` text -> spec.  ``resnet18`` / ``torchvision:resnet18`` = torchvision classifier,
    ``saliency:vgg16``, ``scene:resnet18:6`` (6 classes), ``encoder:vgg16``, ``cifar-resnet56``
    (the CIFAR-10 ResNets of :mod:`neuroprobe.models.cifar`)."""
    from .cifar import parse_cifar_arch

    cifar = parse_cifar_arch(text)
    if cifar is not None:
        return cifar
    parts = text.split(":")
    if len(parts) == 1:
        return {"builder": "torchvision", "kwargs": {"name": parts[0]}}
    kind, rest = parts[0], parts[1:]
    if kind == "torchvision":
        return {"builder": "torchvision", "kwargs": {"name": rest[0]}}
    if kind in ("saliency", "encoder"):
        return {"builder": kind, "kwargs": {"encoder": rest[0]}}
    if kind == "scene":
        kw = {"encoder": rest[0]}
        if len(rest) > 1:
            kw["num_classes"] = int(rest[1])
        return {"builder": "scene", "kwargs": kw}
    return {"builder": kind, "kwargs": {"name": ":".join(rest)} if rest else {}}


def _metadata_defaults(module: nn.Module, arch: dict | None, meta: dict | None) -> dict:
    out = {"task": getattr(module, "task", "unknown"), "variant": None,
           "input_size": [224, 224], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
           "layers": default_layers(module, arch), "arch": arch,
           "neuroprobe_version": __version__}
    out.update(getattr(module, "default_metadata", None) or {})   # e.g. a CIFAR net's 32x32
    norm = getattr(module, "normalize", None)
    if norm is not None and hasattr(norm, "mean"):
        out["mean"] = [round(float(v), 6) for v in norm.mean.flatten()]
        out["std"] = [round(float(v), 6) for v in norm.std.flatten()]
    out.update(meta or {})
    return out


def save(path, module: nn.Module, arch: dict, metadata: dict | None = None) -> Path:
    """Write a neuroprobe checkpoint atomically and return its path."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
               "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
               "metadata": _metadata_defaults(module, arch, metadata)}
    # serialise in memory: torch.save names the archive after the file it writes, so writing
    # the temporary file directly would make identical models give different bytes
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/") or "/code/" in n
                   for n in zf.namelist())


def load(spec: str, *, arch: str | dict | None = None, trust: bool = False,
         device: str | torch.device = "cpu", architecture_only: bool = False) -> LoadedModel:
    """Load a model given a path or a name (see the module docstring).  Returns
    :class:`LoadedModel` ``(module, metadata)`` with the module in eval mode on ``device``.

    ``architecture_only=True`` builds ``torchvision:`` and ``timm:`` models with random weights
    and reads no weights file (what listing layers needs: no download, works offline); other
    specs load as usual (their architecture is in the file)."""
    module, meta = _load(str(spec), arch, trust, architecture_only)
    meta.setdefault("source", str(spec))
    module.eval().to(device)
    return LoadedModel(module, meta)


def _load_torchvision(spec: str, architecture_only: bool = False):
    """``torchvision:NAME[?weights=DEFAULT|ENUM|imagenet|none|FILE][&seed=N]`` (see
    :mod:`.torchvision_specs`).  Random weights (``weights=none``, or ``architecture_only``)
    are drawn from ``torch.manual_seed(seed)`` (default 0) without touching the caller's random
    state, so every load gives the same network."""
    from .spec import seed_of, split_spec

    name, params = split_spec(spec, "torchvision:")
    unknown = sorted(set(params) - {"weights", "seed"})
    if unknown:
        raise CheckpointError(f"unknown parameter {unknown[0]!r} in model {spec!r}",
                              hint="use torchvision:NAME?weights=DEFAULT|ENUM|none&seed=N")
    weights = params.get("weights", "DEFAULT")
    seed = seed_of(params, spec)
    a = {"builder": "torchvision", "kwargs": {"name": name}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_torchvision(name, weights=weights, architecture_only=architecture_only)
    loaded = module.default_metadata["weights"]
    is_enum = "_Weights." in loaded or "_QuantizedWeights." in loaded
    extra = {"variant": f"torchvision-{loaded.rsplit('.', 1)[-1]}" if is_enum
             else "torchvision-file"}
    if loaded == "none" or architecture_only:
        extra.update(variant=f"torchvision-none-seed{seed}", seed=seed)
    return module, _metadata_defaults(module, a, extra)


def _load_timm(spec: str, architecture_only: bool = False):
    """``timm:NAME[?weights=pretrained|none|FILE][&seed=N][&KEY=VALUE]`` (see
    :mod:`.timm_specs`); random weights are seeded as for torchvision."""
    from .spec import seed_of, split_spec
    from .timm_specs import build_timm_model, parse_kwargs, seeded

    name, params = split_spec(spec, "timm:")
    weights = params.get("weights", "pretrained")
    seed = seed_of(params, spec)
    kwargs = parse_kwargs(params)
    chosen = "none" if architecture_only else weights
    module = seeded(lambda: build_timm_model(name, chosen, **kwargs), seed)
    if architecture_only and str(weights).lower() != "none":
        module.default_metadata["weights"] = f"timm {weights} (architecture only)"
    a = {"builder": "timm", "kwargs": {"name": name, **kwargs}}
    loaded = module.default_metadata["weights"]
    extra = {"variant": "timm-pretrained" if loaded == "pretrained" else "timm-file"}
    if loaded == "none" or architecture_only:
        extra.update(variant=f"timm-none-seed{seed}", seed=seed)
    return module, _metadata_defaults(module, a, extra)


def _load(spec: str, arch, trust: bool, architecture_only: bool = False):
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec, architecture_only)
    if spec.startswith("timm:"):
        return _load_timm(spec, architecture_only)
    if spec.startswith("random:"):
        return _load_random(spec)
    if zoo.is_builtin(spec):
        return _load(str(builtin_file(spec)), None, False)

    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist",
                              hint="pass a checkpoint path, a built-in name "
                              f"({', '.join(zoo.builtin_names())}), torchvision:NAME or "
                              "timm:NAME")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a model file")
    if _is_torchscript(path):
        if not trust:
            # TorchScript is code: torch.jit.load runs the module's __setstate__ and more
            raise CheckpointError(
                f"{path} is a TorchScript file, which is code and can run anything when "
                "loaded, so it was not loaded",
                hint="save a state dict or a neuroprobe checkpoint instead, or pass "
                "--trust-checkpoint (trust=True) only if you trust where the file came from")
        try:
            with warnings.catch_warnings():   # "torch.jit.load is deprecated": not for users
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise CheckpointError(f"{path} looks like TorchScript but does not load: "
                                  f"{str(err).splitlines()[0][:160]}") from None
        return module, _metadata_defaults(module, None, {"task": "unknown",
                                                         "format": "torchscript"})
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not zipfile.is_zipfile(path) and not (len(head) == 2 and head[0] == 0x80):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip "
                              "archive nor a pickle)", hint="expected a file written by torch.save")
    try:
        with warnings.catch_warnings():   # e.g. "Detected pickle protocol 4": not for users
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (unpickling failed: "
                                  f"{str(err).splitlines()[0][:100]})",
                                  hint="expected a file written by torch.save") from None
        if not trust and "Unsupported operand" in str(err):
            # a pickle the safe unpickler cannot parse: it may hold arbitrary objects
            raise CheckpointError(
                f"{path} is a pickle that the safe loader cannot read (it may hold Python "
                "objects, which can run arbitrary code when loaded), so it was not loaded",
                hint="save it with torch.save(state_dict) instead, or pass "
                "--trust-checkpoint (trust=True) only if you trust where the file came from"
            ) from None
        if not trust:
            raise CheckpointError(
                f"{path} contains pickled Python objects, which can run arbitrary code when "
                "loaded, so it was not loaded",
                hint="save a state dict or a neuroprobe checkpoint instead, or pass "
                "--trust-checkpoint (trust=True) only if you trust where the file came from"
            ) from None
        obj = _load_trusted(path)
    except Exception as err:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120] if str(err) else ''})",
                              hint="expected a file written by torch.save") from None
    return _from_object(obj, path, arch)


def _check_payload(obj: dict, path: Path) -> None:
    """The fields of a neuroprobe checkpoint have the types :func:`save` writes; anything else
    (a hand-edited or foreign file) is refused in one line naming the field."""
    def bad(field: str, what: str):
        return CheckpointError(f"{path} is a damaged neuroprobe checkpoint: {field} {what}",
                               hint="write it again with neuroprobe (train, or "
                               "neuroprobe.models.save)")

    arch, meta, state = obj.get("arch"), obj.get("metadata"), obj.get("state_dict")
    if not isinstance(arch, dict) or not isinstance(arch.get("builder"), str):
        raise bad("'arch'", f"is a {type(arch).__name__}, not a dict with a 'builder'")
    if not isinstance(arch.get("kwargs", {}), dict):
        raise bad("'arch.kwargs'", "is not a dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise bad("'state_dict'", "is not a dict of tensors")
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise bad("'metadata'", f"is a {type(meta).__name__}, not a dict")
    size = meta.get("input_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise bad("'metadata.input_size'", f"is {size!r}, not two positive whole numbers")
    layers = meta.get("layers")
    if layers is not None and not (isinstance(layers, (list, tuple))
                                   and all(isinstance(v, str) for v in layers)):
        raise bad("'metadata.layers'", "is not a list of layer names")
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad(f"'metadata.{key}'", "is not three numbers")
    if meta.get("std") is not None and any(v <= 0 for v in meta["std"]):
        raise bad("'metadata.std'", "is not positive")


def _load_random(spec: str):
    """``random:ARCH[?seed=N]``: the architecture ``ARCH`` (as ``--arch`` takes it) with seeded
    random weights (seed 0 unless given), a control for dissection; the global RNG is restored."""
    text, _, query = spec[len("random:"):].partition("?")
    seed = 0
    if query:
        key, _, value = query.partition("=")
        if key != "seed" or not value.lstrip("-").isdigit():
            raise CheckpointError(f"cannot read {spec!r}",
                                  hint="write random:ARCH or random:ARCH?seed=N")
        seed = int(value)
    a = parse_arch(text)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        module = build(a)
    finally:
        torch.random.set_rng_state(state)
    return module, _metadata_defaults(module, a, {"variant": "random", "seed": seed,
                                                   "format": "random"})


def _load_trusted(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path} could not be unpickled even with trust: "
                              f"{type(err).__name__}: {err}") from None


def _from_object(obj, path: Path, arch):
    if isinstance(obj, nn.Module):
        return obj, _metadata_defaults(obj, None, {"format": "pickled-module"})
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a model or state dict")
    if obj.get("format") == FORMAT:
        missing = [k for k in ("arch", "state_dict") if k not in obj]
        if missing:
            raise CheckpointError(f"{path} is a damaged neuroprobe checkpoint (no {missing})")
        if obj.get("format_version", 1) > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer neuroprobe (format "
                                  f"{obj['format_version']})", hint="upgrade neuroprobe")
        _check_payload(obj, path)
        module = build(obj["arch"])
        load_state_strict(module, obj["state_dict"], source=str(path))
        return module, _metadata_defaults(module, obj["arch"], obj.get("metadata"))
    wrapped = isinstance(obj.get("state_dict"), dict)
    state = obj["state_dict"] if wrapped else obj
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is neither a neuroprobe checkpoint nor a state dict",
                              hint="expected torch.save(model.state_dict()) or a file written "
                              "by neuroprobe")
    state = strip_prefix(state, "module.")   # saved from a DataParallel wrapper
    # numbers and strings stored beside the state dict (e.g. a training script's "best_prec1",
    # "epoch") are kept in the metadata as they are, without replacing neuroprobe's own keys
    extras = {k: v for k, v in obj.items() if k != "state_dict" and
              isinstance(v, (int, float, str, bool))} if wrapped else {}
    own = {"format": "state-dict"}
    if arch is None:
        from .cifar import infer_cifar_arch

        arch = infer_cifar_arch(state)
        own["arch_inferred"] = arch is not None
    if arch is None:
        raise CheckpointError(f"{path} is a plain state dict without an architecture",
                              hint="pass --arch (e.g. resnet18, saliency:vgg16, scene:resnet18:6, "
                              "cifar-resnet56)")
    spec = parse_arch(arch) if isinstance(arch, str) else dict(arch)
    module = build(spec)
    if spec["builder"] in ("torchvision", "timm") and not any(k.startswith("net.")
                                                               for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
    load_state_strict(module, state, source=str(path))
    meta = _metadata_defaults(module, spec, own)
    for key, value in extras.items():
        meta.setdefault(key, value)
    return module, meta


def builtin_file(name: str) -> Path:
    """The checkpoint file of built-in model ``name`` (:mod:`.zoo`), writing the random control's
    file first when it is asked for and missing."""
    if zoo.BUILTIN.get(name) == "random":
        return random_control()
    return zoo.builtin_path(name)


def random_control(seed: int = 0) -> Path:
    """The demo encoder's architecture with seeded random weights (a control for dissection:
    what an untrained network of the same shape already 'detects').  Written once into the
    cache (:func:`.zoo.random_control_path`); returns its path."""
    pretrained_meta = load("demo-pretrained").metadata
    path = zoo.random_control_path(seed)
    if not path.is_file():
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            module = build_encoder_only("small")
        finally:
            torch.random.set_rng_state(state)
        save(path, module, {"builder": "encoder", "kwargs": {"encoder": "small"}},
             {"variant": "random", "task": "encoder", "seed": seed,
              "input_size": pretrained_meta.get("input_size"),
              "note": "random initialisation (seeded), the control for demo-pretrained"})
    return path


def describe(spec: str, **kwargs) -> str:  # pragma: no cover - convenience
    m, meta = load(spec, **kwargs)
    buf = io.StringIO()
    print(type(m).__name__, meta, file=buf)
    return buf.getvalue()
