"""The documented stand-in for the demo model, used while the built-in demo models are missing.

``neuroprobe dissect`` without ``--model`` dissects the built-in demo model; an installation
without the demo checkpoints (neither shipped nor rebuilt into the cache, see :mod:`.zoo`)
dissects this stand-in instead and says so in ``summary.json``.  ``neuroprobe gallery`` rebuilds
it from the run's model spec (:data:`SPEC`): it is deterministic (fixed seed), so the same
network comes back.
"""
from __future__ import annotations

import torch

from . import zoo
from .adapters import build_saliency, default_layers

#: the model spec a run of the stand-in records (``summary.json``: config.model.spec)
SPEC = "stand-in:saliency:small:seed0"


def stand_in():
    """The stand-in for the demo model: the study's architecture on the small encoder
    (``saliency:small``) with random weights from ``torch.manual_seed(0)`` (the global RNG state
    is restored afterwards).

    Returns
    -------
    module : torch.nn.Module
        In eval mode, on the CPU.
    metadata : dict
        Task, variant, input size and the layers to dissect, as a loaded model's metadata.
    info : dict
        ``spec`` (:data:`SPEC`) and a ``note`` explaining what the model is.
    """
    arch = {"builder": "saliency", "kwargs": {"encoder": "small", "decoder": "conv1x1"}}
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        module = build_saliency("small").eval()
    finally:
        torch.random.set_rng_state(state)
    meta = {"task": "saliency", "variant": "stand-in", "input_size": [224, 224],
            "layers": default_layers(module, arch)}
    note = ("stand-in model: saliency:small with random weights (torch.manual_seed(0)), used "
            "because the built-in demo models are not installed yet; results show the "
            "pipeline, not a trained model")
    return module, meta, {"spec": SPEC, "note": note}


def demo_installed() -> bool:
    """Whether the demo model (``demo-frozen``) is shipped or rebuilt into the cache."""
    return any(zoo.demo_file("frozen", folder).is_file()
               for folder in (zoo.SHIPPED, zoo.cache_folder()))
