import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from neuroprobe import compare
from neuroprobe.concepts.base import ConceptDataset, Label, LabelTable


class Tiny(ConceptDataset):
    """4 images 8x8 (masks 8x8): label 1 'head' in a 2x2 corner, label 2 'text' in a 4x2 strip."""

    name = "tiny"

    def __init__(self):
        self.labels = LabelTable([Label(1, "head", "part"), Label(2, "text", "object")],
                                 ["object", "part"])
        self.image_size = (8, 8)
        self.mask_size = (8, 8)
        self.has_fixations = True

    def __len__(self):
        return 4

    def __getitem__(self, i):
        layer = torch.zeros(1, 8, 8, dtype=torch.int64)
        layer[0, :2, :2] = 1
        layer[0, 4:8, 6:8] = 2
        img = torch.zeros(3, 8, 8)
        img[0] = (layer[0] == 1).float()      # red channel = head mask
        img[1] = (layer[0] == 2).float()      # green channel = text mask
        img[2] = torch.rand(8, 8, generator=torch.Generator().manual_seed(i))  # varies per image
        # fixations: 3 on the head, 1 on background
        fix = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [5.0, 1.0]])
        whole = torch.zeros(0, dtype=torch.int64)
        return {"image": img, "layers": layer, "whole": whole,
                "categories": self.present_categories(layer, whole), "fixations": fix,
                "observers": torch.zeros(4, dtype=torch.int64), "id": f"tiny:{i}"}


class RedSaliency(nn.Module):
    """Saliency = the red channel (exactly the head mask)."""

    def forward(self, x):
        return x[:, :1]


def test_category_preference_by_hand():
    pref = compare.category_preference(RedSaliency(), Tiny())
    # all saliency mass on the head (area 4/64) -> preference 16; none on text
    assert pref[1] == pytest.approx(16.0)
    assert pref[2] == pytest.approx(0.0)


def test_fixation_preference_by_hand():
    pref = compare.fixation_preference(Tiny())
    assert pref[1] == pytest.approx((3 / 4) / (4 / 64))
    assert pref[2] == pytest.approx(0.0)


def _write_run(path, rows, thr=0.04):
    path.mkdir()
    with open(path / "units.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (path / "summary.json").write_text(json.dumps({"config": {"iou_threshold": thr}}))


def _row(unit, label, score, det, layer="l4"):
    return {"layer": layer, "unit": unit, "label": label, "category": "object", "score": score,
            "detector": det}


def test_count_table_and_changed_units(tmp_path):
    _write_run(tmp_path / "frozen", [_row(0, "text", 0.1, 1), _row(1, "text", 0.2, 1),
                                     _row(2, "head", 0.01, 0)])
    _write_run(tmp_path / "tuned", [_row(0, "head", 0.1, 1), _row(1, "text", 0.2, 1),
                                    _row(2, "head", 0.3, 1)])
    a, b = compare.load_run(tmp_path / "frozen"), compare.load_run(tmp_path / "tuned")
    table = {r["label"]: r for r in compare.count_table([a, b])}
    assert table["text"]["frozen"] == 2 and table["text"]["tuned"] == 1
    assert table["head"]["difference"] == 2
    changed = compare.changed_units(a, b)
    assert [(c["unit"], c["label_a"], c["label_b"]) for c in changed] == [
        (0, "text", "head"), (2, "", "head")]
    with pytest.raises(Exception, match="not a dissection run"):
        compare.load_run(tmp_path)


def test_unit_ious_by_hand():
    """IoU of each unit for its own label from per-image counts, under image weights."""
    # 3 images; unit 0 (label 2) fires on images 0 and 2, unit 1 (label 0 = none) on image 1
    table = {"label": np.array([2, 0]), "counted": np.array([True, True]),
             "image": np.array([0, 2, 1]), "unit": np.array([0, 0, 1]),
             "inter": np.array([3, 1, 5]), "act": np.array([4, 2, 9]),
             "truth_image": np.array([0, 1, 2]), "truth_label": np.array([2, 2, 2]),
             "truth": np.array([5, 7, 2])}
    pos = np.arange(3)
    w = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    iou = compare.unit_ious(table, pos, w)
    # all ones: inter 4, act 6, truth 14 -> 4 / (6 + 14 - 4)
    assert iou[0, 0] == 4 / 16
    assert iou[1, 0] == (2 * 3 + 1) / (2 * 4 + 2 + 2 * 5 + 2 - (2 * 3 + 1))
    assert iou[2, 0] == 0.0   # only image 1 drawn: no activation, truth only
    assert (iou[:, 1] == 0).all()   # a unit without a label scores 0
    table["counted"] = np.array([False, True])
    assert (compare.unit_ious(table, pos, w)[:, 0] == 0).all()


def test_bootstrap_weights_draw_n_images():
    w = compare.bootstrap_weights(7, 50, np.random.default_rng(0))
    assert w.shape == (50, 7) and (w.sum(1) == 7).all() and (w >= 0).all()


def test_cka_matrix_between_variants():
    torch.manual_seed(0)
    ds = Tiny()
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    acts = compare.collect_activations(net, ds, ["0"], reduce="flatten")
    assert acts["0"].shape == (4, 4 * 64)
    rows = compare.cka_matrix({"a": acts["0"], "b": acts["0"] * 3}, unbiased=False)
    assert rows[0]["cka"] == pytest.approx(1.0)


