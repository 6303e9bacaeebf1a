"""Record and edit what layers of any ``nn.Module`` compute.

The one piece of neuroprobe meant to be imported into other projects::

    from neuroprobe.hooks import Recorder, ablate

    with Recorder(model, ["layer3", "layer4.*.conv2"], stop=True) as rec:
        model(images)                       # stops right after the last requested layer
    feats = rec["layer3"]                   # (B, C, H, W), detached clone

    with Recorder(model, "layer4", edit=ablate([12, 40])):
        logits = model(images)              # units 12 and 40 of layer4 zeroed downstream

Layers are named by dotted module names (as in ``model.named_modules()``), glob patterns
(``"layer4.*.conv2"``) or the module objects themselves.

Rules worth knowing
-------------------
* **Clone** (default on): outputs are copied when recorded, so an in-place operation later in the
  forward pass (``ReLU(inplace=True)`` after a conv) cannot change the record.
* **Several calls**: a module that runs several times in one forward pass (a shared ReLU in a
  torchvision ResNet block, a weight-shared block) has every call kept, in order, in
  :meth:`Recorder.calls`.  ``rec[name]`` returns the output only when there was exactly one call
  and raises otherwise, so that no one silently analyses the wrong call.  ``edit`` functions are
  applied to every call.
* **Stop**: with ``stop=True`` the forward pass is interrupted (by :class:`StopForward`, swallowed
  when the ``with`` block exits) as soon as every requested layer has run once.  Outputs of
  modules called several times then hold their calls up to that point only.
* **Hooks are always removed**, also when the body raises.
* **Tokens**: ``tokens_to_grid=True`` reshapes transformer outputs ``(B, N, C)`` to ``(B, C, H, W)``
  by dropping the leading class / register tokens (``N - H*W`` of them, ``H = W`` when not given),
  so ViT layers can be dissected like conv layers.  By default (``tokens_to_grid="auto"``) a
  model that has a ``token_grid()`` method (neuroprobe's wrapper of torchvision and timm models,
  :class:`neuroprobe.models.ImageClassifier`) gives the grid of its current input, so its token
  outputs are grids everywhere neuroprobe records layers (``dissect``, ``layers``); other models'
  outputs are left as they are.
"""
from __future__ import annotations

import fnmatch
import math
from collections import OrderedDict
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import LayerNotFound, UserError, suggest

#: the one line for a TorchScript model, whose modules take no Python hooks
SCRIPT_HOOKS_MESSAGE = ("the model is TorchScript (torch.jit), whose layers cannot take the "
                        "forward hooks that record them")
SCRIPT_HOOKS_HINT = ("save the model's state dict (torch.save(model.state_dict(), PATH)) and "
                     "load it with --arch, or use a command that only runs the model")


def is_script_hook_error(err: BaseException) -> bool:
    """Whether ``err`` is torch's refusal to hook a TorchScript module."""
    return isinstance(err, RuntimeError) and "not supported on ScriptModules" in str(err)



__all__ = ["Recorder", "StopForward", "resolve_layers", "layer_aliases", "ablate", "clamp",
           "record", "tokens_to_grid", "layer_names"]

EditFn = Callable[[torch.Tensor, str], torch.Tensor]


class StopForward(Exception):
    """Raised inside a forward pass to stop it after the last needed layer."""


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module (the root module, ``""``, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layers(model: nn.Module, layers) -> "OrderedDict[str, nn.Module]":
    """Turn names, glob patterns or module objects into an ordered ``{name: module}``.

    A name (or pattern) that names no module is also looked up under each top-level child:
    for a wrapped model (a torchvision classifier behind its normalisation, ``net.layer4``;
    an encoder inside a saliency model, ``encoder.conv5_3``) the bare ``layer4`` resolves to
    ``net.layer4`` when exactly one child holds it.  :func:`layer_aliases` gives the names as
    the user wrote them.

    Raises :class:`~neuroprobe.errors.LayerNotFound` with the closest existing names when a
    name or pattern matches nothing (or, relative to a child, more than one child).
    """
    return OrderedDict((name, module) for name, (module, _) in _resolve(model, layers).items())


def layer_aliases(model: nn.Module, layers) -> "OrderedDict[str, str]":
    """``{resolved dotted name: the name as given}`` for the layers of :func:`resolve_layers`
    (a bare ``layer4`` of a wrapped model maps ``net.layer4 -> layer4``; a pattern
    ``layer4.*`` maps ``net.layer4.0 -> layer4.0``; module objects keep their own name)."""
    return OrderedDict((name, alias) for name, (_, alias) in _resolve(model, layers).items())


def _matches(named, spec: str) -> list[str]:
    if any(ch in spec for ch in "*?["):
        return [n for n in named if fnmatch.fnmatchcase(n, spec)]
    return [spec] if spec in named else []


def _resolve(model: nn.Module, layers) -> "OrderedDict[str, tuple[nn.Module, str]]":
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    named = OrderedDict((n, m) for n, m in model.named_modules() if n)
    by_module = {id(m): n for n, m in named.items()}
    children = [n for n, _ in model.named_children()]
    out: "OrderedDict[str, tuple[nn.Module, str]]" = OrderedDict()
    for spec in layers:
        if isinstance(spec, nn.Module):
            name = by_module.get(id(spec))
            if name is None:
                if spec is model:
                    name = ""
                else:
                    raise LayerNotFound("the given module object is not a sub-module of the model")
            out[name] = (spec, name)
            continue
        spec = str(spec)
        if spec == "" and spec not in named:
            out[""] = (model, "")
            continue
        hits = _matches(named, spec)
        prefix = ""
        if not hits:   # relative to exactly one top-level child (a wrapped model)
            found = {c: _matches(named, f"{c}.{spec}") for c in children}
            found = {c: h for c, h in found.items() if h}
            if len(found) > 1:
                raise LayerNotFound(f"layer {spec!r} is ambiguous in {type(model).__name__}: "
                                    + ", ".join(h[0] for h in found.values()),
                                    hint="write the full dotted name")
            if found:
                prefix, hits = next(iter(found.items()))
                prefix += "."
        if not hits:
            pattern = any(ch in spec for ch in "*?[")
            what = f"layer pattern {spec!r} matches no layer of" if pattern \
                else f"unknown layer {spec!r} in"
            raise LayerNotFound(f"{what} {type(model).__name__}",
                                hint=suggest(spec.replace("*", ""), named, "name") +
                                ("" if pattern else
                                 "; `neuroprobe layers --model ...` lists them all"))
        for n in hits:
            out[n] = (named[n], n[len(prefix):])
    if not out:
        raise LayerNotFound("no layer given")
    return out


def tokens_to_grid(x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Reshape transformer tokens ``(B, N, C)`` to a ``(B, C, H, W)`` grid.

    The leading ``N - H*W`` tokens (class / register tokens) are dropped.  Without ``grid`` the
    largest square ``H = W = floor(sqrt(N))`` is used.
    """
    if x.dim() != 3:
        raise UserError(f"tokens_to_grid expects (batch, tokens, channels), got shape "
                        f"{tuple(x.shape)}")
    b, n, c = x.shape
    if grid is None:
        side = math.isqrt(n)
        grid = (side, side)
    h, w = grid
    extra = n - h * w
    if extra < 0:
        raise UserError(f"cannot form a {h}x{w} grid from {n} tokens")
    return x[:, extra:, :].transpose(1, 2).reshape(b, c, h, w)


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_tensors(o, fn) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, Mapping):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    return obj


class Recorder:
    """Context manager that records (and optionally edits) layers of a model.

    Parameters
    ----------
    model : nn.Module
    layers : str, nn.Module or sequence of them
        Dotted names, glob patterns or module objects.
    outputs, inputs : bool
        Record the layers' outputs (default) and/or their first positional input.
    clone : bool
        Copy recorded tensors (default True) so later in-place ops cannot alter them.
    detach : bool
        Detach recorded tensors from the autograd graph (default True).
    retain_grad : bool
        Also record the gradient that flows back into each layer's output (see :meth:`grad`).
    edit : callable or dict
        ``fn(output, layer_name) -> new_output`` applied to the output of every call (or a dict
        from layer name to such a function).  See :func:`ablate` and :func:`clamp`.
    stop : bool
        Stop the forward pass once every layer has run (the exception is swallowed on exit).
    tokens_to_grid : bool, (H, W) or "auto"
        Reshape recorded ``(B, N, C)`` outputs to ``(B, C, H, W)`` (see :func:`tokens_to_grid`).
        ``"auto"`` (default): with the grid ``model.token_grid()`` returns while the model runs
        (models without that method, or that return ``None``: no reshaping).
    """

    def __init__(self, model: nn.Module, layers, *, outputs: bool = True, inputs: bool = False,
                 clone: bool = True, detach: bool = True, retain_grad: bool = False,
                 edit: EditFn | Mapping[str, EditFn] | None = None, stop: bool = False,
                 tokens_to_grid: bool | tuple[int, int] | str = "auto"):
        self.model = model
        resolved = _resolve(model, layers)
        self.layers = OrderedDict((n, m) for n, (m, _) in resolved.items())
        #: names as given (a bare ``layer4`` of a wrapped model) -> recorded dotted names
        self._alias = {a: n for n, (_, a) in resolved.items() if a != n}
        self.record_outputs = outputs
        self.record_inputs = inputs
        self.clone = clone
        self.detach = detach
        self.retain_grad = retain_grad
        if isinstance(edit, Mapping):
            edit = {self._alias.get(k, k): v for k, v in edit.items()}
            unknown = set(edit) - set(self.layers)
            if unknown:
                raise LayerNotFound(f"edit names layers that are not recorded: {sorted(unknown)}")
        self.edit = edit
        self.stop = stop
        self.grid = tokens_to_grid
        self._handles: list = []
        self._outputs: dict[str, list] = {}
        self._inputs: dict[str, list] = {}
        self._grads: dict[str, list] = {}
        self._seen: set[str] = set()

    # -- context manager --------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        self.reset()
        try:
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except RuntimeError as err:
            self.remove()
            if not is_script_hook_error(err):
                raise
            raise UserError(SCRIPT_HOOKS_MESSAGE, hint=SCRIPT_HOOKS_HINT) from None
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def remove(self) -> None:
        """Remove every hook this recorder installed (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def reset(self) -> None:
        """Forget what was recorded (e.g. between batches)."""
        self._outputs = {n: [] for n in self.layers}
        self._inputs = {n: [] for n in self.layers}
        self._grads = {n: [] for n in self.layers}
        self._seen = set()

    # -- the hook ---------------------------------------------------------------------------
    def _edit_fn(self, name: str):
        if self.edit is None:
            return None
        if isinstance(self.edit, Mapping):
            return self.edit.get(name)
        return self.edit

    def _keep(self, value):
        def fn(t: torch.Tensor) -> torch.Tensor:
            if self.detach:
                t = t.detach()
            grid = self._grid()
            if grid and t.dim() == 3 and self.grid == "auto" and t.shape[1] < grid[0] * grid[1]:
                grid = False   # fewer tokens than patches (a pooled head): not a grid
            if grid and t.dim() == 3:
                t = tokens_to_grid(t, None if grid is True else tuple(grid))
            elif self.clone:
                t = t.clone()
            return t

        return _map_tensors(value, fn)

    def _grid(self):
        """The reshaping asked for: ``False``, ``True`` (square) or ``(H, W)``; under
        ``"auto"`` the model's own grid where it has one and its token count fits."""
        if not isinstance(self.grid, str):
            return self.grid
        if self.grid != "auto":
            raise ValueError(f"tokens_to_grid={self.grid!r}: give True, False, (H, W) or 'auto'")
        fn = getattr(self.model, "token_grid", None)
        return (fn() or False) if callable(fn) else False

    def _make_hook(self, name: str):
        def hook(module, args, output):
            edit = self._edit_fn(name)
            if edit is not None:
                new = edit(output, name)
                if new is not None:
                    output = new
            if self.record_inputs:
                self._inputs[name].append(self._keep(args[0] if len(args) == 1 else args))
            if self.record_outputs:
                self._outputs[name].append(self._keep(output))
            if self.retain_grad and isinstance(output, torch.Tensor) and output.requires_grad:
                index = len(self._grads[name])
                self._grads[name].append(None)

                def store(grad, _name=name, _i=index):
                    self._grads[_name][_i] = grad.detach().clone()

                output.register_hook(store)
            self._seen.add(name)
            if self.stop and len(self._seen) == len(self.layers):
                raise StopForward()
            return output if edit is not None else None

        return hook

    # -- access -----------------------------------------------------------------------------
    def _one(self, store: dict, name: str, what: str):
        name = self._name(name)
        calls = store[name]
        if len(calls) == 1:
            return calls[0]
        if not calls:
            raise UserError(f"layer {name!r} did not run in the recorded forward pass "
                            f"(nothing recorded for its {what})")
        raise UserError(f"layer {name!r} ran {len(calls)} times in one forward pass; use "
                        f"rec.calls({name!r}) to choose a call")

    def _name(self, name) -> str:
        if isinstance(name, nn.Module):
            for n, m in self.layers.items():
                if m is name:
                    return n
        if name not in self.layers and name in self._alias:
            name = self._alias[name]
        if name not in self.layers:
            raise LayerNotFound(f"layer {name!r} is not recorded",
                                hint=suggest(str(name), self.layers, "recorded layer"))
        return name

    def __getitem__(self, name) -> torch.Tensor:
        """Output of the layer's single call (see the module docstring for several calls)."""
        return self._one(self._outputs, name, "output")

    def __contains__(self, name) -> bool:
        return name in self.layers or name in self._alias

    def keys(self) -> list[str]:
        return list(self.layers)

    def items(self):
        return [(n, self[n]) for n in self.layers]

    def calls(self, name, what: str = "output") -> list:
        """Every recorded call of a layer, in order (``what`` = output, input or grad)."""
        store = {"output": self._outputs, "input": self._inputs, "grad": self._grads}[what]
        return list(store[self._name(name)])

    def input(self, name) -> torch.Tensor:
        """First positional input of the layer's single call (needs ``inputs=True``)."""
        return self._one(self._inputs, name, "input")

    def grad(self, name) -> torch.Tensor:
        """Gradient of the loss w.r.t. the layer's output (needs ``retain_grad=True`` and a
        backward pass)."""
        g = self._one(self._grads, name, "gradient")
        if g is None:
            raise UserError(f"no gradient reached layer {name!r}: call backward() inside or "
                            "after the with-block, on an output that depends on it")
        return g


# -- edits ------------------------------------------------------------------------------------

def _unit_index(units) -> list[int]:
    if isinstance(units, int):
        return [units]
    return [int(u) for u in units]


def _channel_view(output: torch.Tensor, channel_dim: int):
    if not isinstance(output, torch.Tensor):
        raise UserError("unit edits need a layer whose output is a single tensor")
    return output


def ablate(units: int | Iterable[int], *, channel_dim: int = 1) -> EditFn:
    """An ``edit`` function that sets the given units (channels) to zero."""
    idx = _unit_index(units)

    def fn(output: torch.Tensor, name: str) -> torch.Tensor:
        out = _channel_view(output, channel_dim).clone()
        out.index_fill_(channel_dim, torch.tensor(idx, device=out.device), 0)
        return out

    return fn


def clamp(units: int | Iterable[int], value: float, *, channel_dim: int = 1) -> EditFn:
    """An ``edit`` function that sets the given units (channels) to a constant ``value``."""
    idx = _unit_index(units)

    def fn(output: torch.Tensor, name: str) -> torch.Tensor:
        out = _channel_view(output, channel_dim).clone()
        out.index_fill_(channel_dim, torch.tensor(idx, device=out.device), float(value))
        return out

    return fn


def record(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | str, *,
           stop: bool = True, **kwargs) -> "OrderedDict[str, torch.Tensor]":
    """Run ``model(x)`` and return ``{layer: output}`` (stopping after the last layer)."""
    with Recorder(model, layers, stop=stop, **kwargs) as rec:
        model(x)
    return OrderedDict((n, rec[n]) for n in rec.keys())
