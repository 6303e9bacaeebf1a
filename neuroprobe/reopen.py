"""Reopen what a run was made with: its model and its concept set (gallery, ablate).

A run folder names its model and concept set in ``summary.json``; :func:`reopen` builds them
again the way the run used them, so that a command working on a finished run (``neuroprobe
gallery``, ``neuroprobe ablate``) sees the same network and the same images.
"""
from __future__ import annotations

import torch

from .errors import UserError
from .run import model_spec as recorded_model_spec

__all__ = ["reopen"]


def reopen(summary: dict, model_spec: str | None = None, concepts: str | None = None,
           device=None, arch: str | None = None, trust: bool = False):
    """The model (in eval mode) and concept set a run was made with.

    Read from the run's ``summary.json`` (``summary``) unless ``model_spec`` / ``concepts``
    are given; the concept set is reopened with the run's own options (seed, size, root,
    split, ...) and cut to the run's first ``n`` images.  The run's stand-in model is rebuilt
    with its fixed seed.  ``arch`` and ``trust`` are passed to :func:`neuroprobe.models.load`.
    """
    from .concepts import open_concepts
    from .models import load

    device = device or "cpu"
    cfg = summary.get("config", {})
    minfo = cfg.get("model") or {}
    spec = model_spec or recorded_model_spec(minfo)   # a relative path: the absolute one
    if not spec:
        raise UserError("summary.json does not name the model of this run",
                        hint="pass --model PATH")
    if spec.startswith("stand-in:") and not model_spec:
        try:   # the dissect command's documented stand-in (random weights, fixed seed)
            from .models.standin import stand_in

            model = stand_in()[0].to(device)
        except (ImportError, AttributeError):
            raise UserError(f"cannot rebuild the run's stand-in model {spec!r}",
                            hint="pass --model PATH") from None
    else:
        model, _ = load(spec, arch=arch or (None if model_spec else minfo.get("arch")),
                        trust=trust, device=device)
    ccfg = cfg.get("concepts") or {}
    name = concepts or ccfg.get("spec") or ccfg.get("path") or ccfg.get("name")
    if not name:
        raise UserError("summary.json does not name the concept set of this run",
                        hint="pass --concepts NAME")
    dataset = None
    if not concepts:
        overrides = {k: ccfg[k] for k in ("seed", "n", "image_size", "mask_size", "observers",
                                          "root", "split") if ccfg.get(k) is not None}
        try:
            dataset = open_concepts(name, **overrides)
        except UserError:
            dataset = None
    if dataset is None:
        dataset = open_concepts(name)
    n = ccfg.get("n")
    if n is not None and len(dataset) > int(n):   # the run used the first n images
        dataset = _Subset(dataset, int(n))
    return model.eval(), dataset


class _Subset(torch.utils.data.Dataset):
    """The first ``n`` items of a concept dataset, keeping its attributes."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def __getattr__(self, name):
        return getattr(self.__dict__["dataset"], name)
