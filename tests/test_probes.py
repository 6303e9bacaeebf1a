"""End-to-end probes on the built-in models and the synthetic world (tiny sizes)."""
import csv
import json

import pytest

from neuroprobe.cli import main
from neuroprobe.errors import UserError
from neuroprobe.probes import load_probe, run_probe


def test_concepts_probe_counts_equal_the_runs_summaries(tmp_path):
    report = run_probe("concepts-in-pretrained", tmp_path, limit=16)
    text = report.read_text()
    assert "runs/pretrained" in text and "runs/random" in text
    with open(tmp_path / "counts.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for run in ("pretrained", "random"):
        summary = json.loads((tmp_path / "runs" / run / "summary.json").read_text())
        expected = {(layer, label): n
                    for layer, per in summary["detectors_per_concept"].items()
                    for label, n in per.items()}
        got = {(r["layer"], r["label"]): int(r[run]) for r in rows if int(r[run])}
        assert got == expected
        assert summary["config"]["concepts"]["n"] == 16


def test_task_vs_domain_probe_cka(tmp_path):
    run_probe("task-vs-domain", tmp_path, limit=12)
    with open(tmp_path / "cka.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["a"], r["b"]) for r in rows} >= {("pretrained", "saliency"),
                                                  ("pretrained", "scene"),
                                                  ("saliency", "scene")}
    # only block4 is fine-tuned in the demo variants: earlier blocks are identical
    early = [float(r["cka"]) for r in rows if r["layer"] == "encoder.block2"]
    assert early and all(abs(c - 1) < 1e-6 for c in early)
    assert all(-0.2 < float(r["cka"]) <= 1 + 1e-9 for r in rows)


def test_bad_probe_and_model_override(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_probe("no-such-probe")
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "nonsense"\n')
    with pytest.raises(UserError, match="kind"):
        load_probe(str(bad))
    code = main(["--quiet", "probe", "concepts-in-pretrained", "--out", str(tmp_path / "o"),
                 "--model", "oops"])
    assert code == 2
