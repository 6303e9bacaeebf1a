"""The engine under every command that reads a concept set: one pass runner and a run store.

:mod:`~neuroprobe.engine.runner` (:func:`run_pass`): loader, forward pass, skip handling,
sharding and checkpoint cadence for any per-batch callback.  :mod:`~neuroprobe.engine.store`
(:class:`RunStore`): a run folder's key, lock, checkpoints, spool and the model's fingerprint.
"""
from .runner import OUTPUT, forward, model_input, run_pass
from .store import RunStore, check_model, model_fingerprint

__all__ = ["run_pass", "forward", "model_input", "OUTPUT", "RunStore", "model_fingerprint",
           "check_model"]
