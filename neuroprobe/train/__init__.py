"""Training: the study's model variants from one recipe, and the built-in demo models.

* :mod:`.recipe`: :class:`TrainConfig`, :func:`train` / :func:`fit` (frozen, finetune-last,
  finetune-all; saliency, scene and recognition tasks), resume, validation, training curves.
* :mod:`.losses`: differentiable negative NSS, KL and CC losses and their weighted sums.
* :mod:`.data`: training data (synthetic world, OSIE, SALICON, image folders).
* :mod:`.demo`: the built-in demo models (``python -m neuroprobe.train.demo --rebuild``).
"""
from .losses import cc_loss, combined_loss, kl_loss, nss_loss, parse_loss
from .recipe import TASKS, VARIANTS, TrainConfig, fit, setup_variant, train

__all__ = ["TrainConfig", "train", "fit", "setup_variant", "VARIANTS", "TASKS", "nss_loss",
           "kl_loss", "cc_loss", "combined_loss", "parse_loss"]
