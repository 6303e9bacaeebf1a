"""The library side of ``neuroprobe popout`` (neuroprobe.saliency.popout_eval)."""
import math

import pytest

from neuroprobe.errors import UserError
from neuroprobe.saliency.popout_eval import evaluate_popout, popout_markdown, summarise_popout


def _row(model, feature, diff, gsi, fix, found, msr_d, msr_b):
    return {"model": model, "feature": feature, "difference": diff, "gsi": gsi,
            "fixations": fix, "found": found, "msr_distractor": msr_d, "msr_background": msr_b}


def test_summary_by_hand():
    nan, inf = float("nan"), float("inf")
    rows = [_row("a", "size", 1.5, 0.2, 1, True, 2.0, 1.0),
            _row("b", "size", 1.5, nan, 100, False, nan, nan),
            _row("a", "size", 1.5, nan, 3, True, inf, 3.0),
            _row("a", "size", 1.5, 0.4, 100, False, 1.0, 5.0)]
    s = summarise_popout(rows)
    assert [(r["model"], r["n"]) for r in s] == [("a", 3), ("b", 1)]   # order of appearance
    a, b = s
    assert a["gsi"] == pytest.approx(0.3)                 # NaN left out of the mean
    assert a["fixations"] == pytest.approx(104 / 3)
    assert a["found_pct"] == pytest.approx(200 / 3)
    assert a["top1_pct"] == pytest.approx(100 / 3)
    assert a["msr_distractor"] == pytest.approx(1.5)      # median of the finite 2 and 1
    assert a["msr_background"] == pytest.approx(3.0)
    assert math.isnan(b["gsi"]) and math.isnan(b["msr_distractor"]) and b["found_pct"] == 0
    md = popout_markdown(s)
    assert md.startswith("## Pop-out search arrays")
    assert "| a | size | 1.5 | 3 | 0.300 | 34.7 | 33 | 67 | 1.50 | 3.00 |" in md


def test_evaluate_popout_writes_the_run(tmp_path):
    run = evaluate_popout(["centre", "spectral"], tmp_path / "p", n=3, size=64, seed=1,
                          examples=2, device="cpu")
    assert len(run.rows) == 3 * 2
    assert {r["model"] for r in run.rows} == {"centre", "spectral"}
    assert len(run.summary) == 3 * 2          # one array per feature at its first level
    for f in ("per_array.csv", "arrays.csv", "summary.csv", "summary.md", "config.json",
              "popout_colour.png", "popout_orientation.png", "popout_size.png",
              "popout_examples.png"):
        assert (tmp_path / "p" / f).is_file(), f
    assert (tmp_path / "p" / "summary.md").read_text().startswith(run.markdown)
    assert run.config["n"] == 3 and run.out == tmp_path / "p"


@pytest.mark.parametrize("kwargs,needle", [
    ({"models": ["centre"], "n": 0}, "at least 1"),
    ({"models": ["centre"], "size": 40}, "56 pixels"),
    ({"models": ["observers"]}, "needs fixation data"),
])
def test_evaluate_popout_refuses_bad_input(tmp_path, kwargs, needle):
    models = kwargs.pop("models")
    with pytest.raises(UserError, match=needle):
        evaluate_popout(models, tmp_path / "p", **kwargs)
    assert not (tmp_path / "p").exists()      # nothing written
