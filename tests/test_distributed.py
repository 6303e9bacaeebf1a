"""Dissection under torchrun (gloo, 2 CPU processes) equals a single-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this PyTorch build has no torch.distributed")

ARGS = ["--quiet", "dissect", "--model", "demo", "--limit", "24", "--batch-size", "4"]


def _run(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd + ARGS + ["--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_two_processes_equal_single_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    _run([sys.executable, "-m", "neuroprobe"], single)
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--standalone", "-m", "neuroprobe"], multi)
    assert proc.stdout.count("results in") == 1   # rank 0 reports, rank 1 is silent
    for name in ("units.csv", "region_nss.csv"):
        assert (multi / name).read_bytes() == (single / name).read_bytes(), name
    for name in ("top_images.npz", "scores.npz"):
        assert (multi / name).read_bytes() == (single / name).read_bytes(), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (multi, single))
    assert sa["config_hash"] == sb["config_hash"]
    assert sa["detectors_per_concept"] == sb["detectors_per_concept"]
    # nothing but the results: no rank spool or lock left in the output folder
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir()
                                                             if p.name != ".state")
