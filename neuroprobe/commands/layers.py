"""``neuroprobe layers --model PATH``: every layer with its output shape."""
from __future__ import annotations

from . import add_command
from ._common import add_model_options, nonnegative_int, positive_int

__all__ = ["add_model_options", "load_model_from_args", "register"]


def load_model_from_args(args, *, architecture_only: bool = False):
    """The model of ``--model/--arch/--trust-checkpoint`` on ``--device``;
    ``architecture_only``: torchvision and timm models without their weights (see
    :func:`neuroprobe.models.load`)."""
    from ..models import load
    from ..utils import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    return load(args.model, arch=args.arch, trust=args.trust_checkpoint, device=device,
                architecture_only=architecture_only)


def register(subparsers) -> None:
    p = add_command(subparsers, "layers", "list every layer of a model with its output shape",
                    _run)
    add_model_options(p)
    p.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="dummy input size (default: the model's own)")
    p.add_argument("--depth", type=nonnegative_int, default=None,
                   help="only names with at most this many dots")


def _run(args) -> int:
    from ..models import dry_run

    from ..errors import UserError
    from ..utils import model_device

    # the layers and their shapes depend on the architecture only: no weights are read
    module, meta = load_model_from_args(args, architecture_only=True)
    size = tuple(args.input_size or meta.get("input_size") or (224, 224))
    try:
        rows = dry_run(module, size, device=model_device(module))
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UserError(f"model {args.model} does not run on a 1x3x{size[0]}x{size[1]} image "
                        f"({type(err).__name__}: {first})",
                        hint="layers feeds one image batch (B, 3, H, W); try --input-size H W, "
                        "or list a video or optical-flow model's modules in Python") from None
    dissect = set(meta.get("layers") or [])
    width = max((len(r[0]) for r in rows), default=10)
    weights = meta.get("weights")
    note = "  weights: not loaded (layers need only the architecture)" \
        if weights and "architecture only" in weights else ""
    print(f"model: {args.model}  task: {meta.get('task')}  variant: {meta.get('variant')}  "
          f"input: {size[0]}x{size[1]}{note}")
    print(f"{'layer':<{width}}  {'type':<18} output shape")
    for name, kind, shape, ncalls in rows:
        if args.depth is not None and name.count(".") > args.depth:
            continue
        mark = "  *" if name in dissect else ""
        calls = f"  (called {ncalls}x)" if ncalls > 1 else ""
        shape_s = "not run" if shape is None else "x".join(map(str, shape)) if isinstance(
            shape, tuple) else shape
        print(f"{name:<{width}}  {kind:<18} {shape_s}{calls}{mark}")
    if dissect:
        print("* = default layers for `neuroprobe dissect`")
    return 0
