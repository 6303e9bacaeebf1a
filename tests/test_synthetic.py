"""The synthetic concept world: determinism, mask alignment, rates, nesting, fixations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuroprobe.concepts import STUDY_CATEGORIES, collate, open_concepts
from neuroprobe.concepts import _draw as D
from neuroprobe.concepts.synthetic import (ANIMAL, KIND_LABEL, PERSON, SyntheticWorld,
                                           from_spec)
from neuroprobe.errors import ConceptSetError

N_RATE = 200  # images for the statistical tests


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(seed=11, n=N_RATE)


@pytest.fixture(scope="module")
def items(world):
    return [world[i] for i in range(N_RATE)]


def _same(a, b):
    for k in ("image", "layers", "whole", "categories", "fixations", "observers"):
        if not torch.equal(a[k], b[k]):
            return False
    return a["id"] == b["id"]


# ---------------------------------------------------------------------------------------------
# interface and determinism

def test_item_layout_and_label_table(world, items):
    it = items[0]
    assert it["image"].shape == (3, 224, 224) and it["image"].dtype == torch.float32
    assert 0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0
    assert it["layers"].shape == (3, 112, 112) and it["layers"].dtype == torch.int64
    assert it["whole"].dtype == torch.int64 and len(it["whole"]) == 2
    assert it["categories"].dtype == torch.bool and len(it["categories"]) == 5
    assert it["id"] == "synthetic:11:0"
    labels = world.labels
    assert world.categories == ["object", "part", "color", "texture", "scene"]
    for name, value in STUDY_CATEGORIES.items():
        assert labels.name(value) == name
        assert labels.category(value) == ("part" if name in ("person head", "person part",
                                                             "animal head", "animal part")
                                          else "object")
    assert labels.name(PERSON) == "person" and labels.name(ANIMAL) == "animal"
    assert all(i >= 100 for c in ("color", "texture", "scene") for i in
               (lab.id for lab in labels.labels_of(c)))
    for it in items[:40]:
        scene, texture = (int(v) for v in it["whole"])
        assert labels.category(scene) == "scene" and labels.category(texture) == "texture"
        for k, cat in enumerate(("object", "part", "color")):
            ids = [int(v) for v in it["layers"][k].unique() if v > 0]
            assert all(labels.category(i) == cat for i in ids)
            assert bool(it["categories"][k]) == bool(ids) or cat == "color"
        assert bool(it["categories"][2]) and bool(it["categories"][3]) and bool(it["categories"][4])
    batch = collate(items[:4])
    assert batch["layers"].shape == (4, 3, 112, 112) and len(batch["fixations"]) == 4


def test_determinism_from_seed_and_index(items):
    a = SyntheticWorld(seed=11, n=N_RATE)
    b = SyntheticWorld(seed=11, n=50)
    # random access in any order, and a differently sized world, give the same images
    for i in (7, 3, 30, 3):
        assert _same(a[i], items[i]) and _same(b[i], items[i])
    c = SyntheticWorld(seed=12, n=N_RATE)
    assert not torch.equal(c[3]["image"], items[3]["image"])
    # DataLoader workers see the same data (fork or spawn: only (seed, index) matter)
    loader = torch.utils.data.DataLoader(a, batch_size=2, collate_fn=collate,
                                         sampler=[5, 9], num_workers=1)
    batch = next(iter(loader))
    assert torch.equal(batch["image"][0], items[5]["image"])
    assert torch.equal(batch["layers"][1], items[9]["layers"])
    assert a[-1]["id"] == f"synthetic:11:{N_RATE - 1}"
    with pytest.raises(IndexError):
        a[N_RATE]


# ---------------------------------------------------------------------------------------------
# masks

def test_masks_align_with_drawn_pixels(world):
    """Objects change exactly the pixels their code covers (the background is drawn alike)."""
    ious = []
    for i in range(25):
        full = world.render(i)
        empty = world.render(i, objects=False)
        assert np.array_equal(
            world.render(i)["image"], full["image"])  # drawing is deterministic
        changed = np.abs(full["image"].astype(int) - empty["image"]).sum(axis=2) > 0
        coded = full["code"] > 0
        inter = (changed & coded).sum()
        union = (changed | coded).sum()
        if union:
            ious.append(inter / union)
        # and the mask layers are the code image sampled at the mask pixels
        it = world[i]
        ref = coded[1::2, 1::2]
        assert np.array_equal(it["layers"][0].numpy() > 0, ref)
        assert np.array_equal(it["layers"][1].numpy() > 0,
                              np.isin(it["layers"][0].numpy(), (PERSON, ANIMAL)))
    # anti-aliased glyph edges and coincidentally equal colours cost a little
    assert np.mean(ious) > 0.99 and min(ious) > 0.95


def test_colour_layer_known_colours_and_alignment(world):
    known = {(255, 0, 0): "red", (0, 0, 255): "blue", (255, 255, 0): "yellow",
             (0, 128, 0): "green", (255, 255, 255): "white", (0, 0, 0): "black",
             (128, 128, 128): "grey", (139, 69, 19): "brown", (255, 140, 0): "orange",
             (128, 0, 128): "purple", (255, 105, 180): "pink",
             (255, 182, 193): "pink", (75, 0, 130): "purple"}
    rgb = np.array(list(known), dtype=np.uint8)
    names = [D.COLOUR_NAMES[i] for i in D.colour_names_of(rgb)]
    assert names == list(known.values())
    r = world.render(4)
    it = world[4]
    expect = 100 + D.colour_names_of(r["image"][1::2, 1::2])
    assert np.array_equal(it["layers"][2].numpy(), expect)


def test_general_mask_size_matches_sliced_sampling():
    a = SyntheticWorld(seed=2, n=5, image_size=96, mask_size=48, observers=3)
    assert a._strides is not None
    b = SyntheticWorld(seed=2, n=5, image_size=96, mask_size=48, observers=3)
    b._strides = None  # the general nearest-neighbour index path
    assert torch.equal(a[1]["layers"], b[1]["layers"])
    c = SyntheticWorld(seed=2, n=5, image_size=(96, 128), mask_size=(40, 50), observers=3)
    it = c[0]
    assert it["image"].shape == (3, 96, 128) and it["layers"].shape == (3, 40, 50)
    assert float(it["fixations"][:, 0].max()) <= 127 and float(it["fixations"][:, 1].max()) <= 95


def test_parts_nest_in_wholes(items):
    for it in items:
        obj, part = it["layers"][0].numpy(), it["layers"][1].numpy()
        person_parts = np.isin(part, (STUDY_CATEGORIES["person head"],
                                      STUDY_CATEGORIES["person part"]))
        animal_parts = np.isin(part, (STUDY_CATEGORIES["animal head"],
                                      STUDY_CATEGORIES["animal part"]))
        # the parts tile their whole exactly: person = person head + person part
        assert np.array_equal(person_parts, obj == PERSON)
        assert np.array_equal(animal_parts, obj == ANIMAL)
        assert not (person_parts & animal_parts).any()


# ---------------------------------------------------------------------------------------------
# rates

def test_scene_and_category_rates(world, items):
    n = len(items)
    scenes = world.scenes
    w = np.array([scenes[s].get("weight", 1.0) for s in scenes])
    p_scene = w / w.sum()
    counts = {int(sc["id"]): 0 for sc in scenes.values()}
    for it in items:
        counts[int(it["whole"][0])] += 1
    for (name, sc), p in zip(scenes.items(), p_scene):
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(counts[int(sc["id"])] / n - p) < 4 * sd, name
    for kind, lab in KIND_LABEL.items():
        expected = sum(p * scenes[s].get("objects", {}).get(kind, [0, 0, 0])[0]
                       for s, p in zip(scenes, p_scene))
        seen = np.mean([bool((it["layers"][0] == lab).any()) for it in items])
        sd = math.sqrt(max(expected * (1 - expected), 0.01) / n)
        # objects can be hidden behind nearer ones: allow a small occlusion loss below
        assert expected - 4 * sd - 0.06 < seen < expected + 4 * sd, (kind, seen, expected)
    # a kind a scene does not list never occurs in it: vehicles only in streets and parks
    street_park = {int(scenes[s]["id"]) for s in ("street", "park")}
    for it in items:
        if (it["layers"][0] == KIND_LABEL["vehicle"]).any():
            assert int(it["whole"][0]) in street_park


# ---------------------------------------------------------------------------------------------
# fixations

def _fixation_stats(items, size=224, msize=112):
    labels = {"person head": (1, 1), "text": (0, 37), "symbol": (0, 46), "person part": (1, 10),
              "plant": (0, 63), "other": (0, 73)}
    fix_on = dict.fromkeys(labels, 0)
    area = dict.fromkeys(labels, 0.0)
    total = 0
    for it in items:
        f = it["fixations"].numpy()
        ij = np.floor((f + 0.5) * msize / size).astype(int)
        for name, (k, lab) in labels.items():
            layer = it["layers"][k].numpy()
            fix_on[name] += int((layer[ij[:, 1], ij[:, 0]] == lab).sum())
            area[name] += float((layer == lab).mean())
        total += len(f)
    return {name: (fix_on[name] / total) / (area[name] / len(items)) for name in labels}


def test_fixations_inside_and_per_observer(world, items):
    lo, hi = world.fix["per_observer"]
    for it in items[:50]:
        f, o = it["fixations"], it["observers"]
        assert f.dtype == torch.float32 and f.shape[1] == 2 and o.dtype == torch.int64
        assert float(f.min()) >= 0 and float(f.max()) <= 223
        per = torch.bincount(o, minlength=world.observers)
        assert len(per) == world.observers == 15
        assert int(per.min()) >= lo and int(per.max()) <= hi


def test_fixations_prefer_high_priority_categories(items):
    ratio = _fixation_stats(items)
    # heads and text get far more fixations than their area; bodies and plants about their share
    assert ratio["person head"] > 4 and ratio["text"] > 4
    assert ratio["person head"] > 2 * ratio["person part"]
    assert ratio["text"] > 2 * ratio["plant"]


def test_priority_parameters_are_used():
    fx = {"weights": {"person head": 0.0, "text": 0.0}, "background": 0.0}
    w = SyntheticWorld(seed=11, n=30, fixations=fx)
    hits = 0
    for i in range(30):
        it = w[i]
        f = it["fixations"].numpy()
        ij = np.floor((f + 0.5) / 2).astype(int)
        part, obj = it["layers"][1].numpy(), it["layers"][0].numpy()
        # head / text fixations can only come from a region's jittered pixel: none at all here
        hits += int((part[ij[:, 1], ij[:, 0]] == 1).sum() + (obj[ij[:, 1], ij[:, 0]] == 37).sum())
    assert hits == 0
    no_obs = SyntheticWorld(seed=11, n=3, observers=0)
    assert no_obs[0]["fixations"] is None and not no_obs.has_fixations


def test_singletons_known_answer(world):
    red, green, lime = (220, 20, 20), (20, 150, 40), (30, 160, 50)
    r = {"objects": [{"colour": red, "rot": 0.0}, {"colour": green, "rot": 0.0},
                     {"colour": lime, "rot": 45.0}], "wall": (40, 140, 60)}
    gain = world._singletons(r)
    g = world.fix["singleton_gain"]
    # red is far from every other colour; the 45-degree object is the only tilted one
    assert np.allclose(gain, [g, 1.0, g])
    r["objects"][2]["rot"] = 0.0
    r["objects"][0]["colour"] = (30, 140, 45)
    assert np.allclose(world._singletons(r), [1.0, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# concept-set file and errors

def test_open_concepts_and_overrides():
    ds = open_concepts("synthetic", limit=4, seed=3)
    assert len(ds) == 4 and ds[0]["id"] == "synthetic:3:0"
    assert ds.config()["seed"] == 3 and "world" in ds.config()
    assert len(open_concepts("synthetic")) == 2000
    with pytest.raises(ConceptSetError, match="no option root"):
        open_concepts("synthetic", root="/x")
    spec = {"source": "synthetic", "_path": "x.toml", "colour": 1}
    with pytest.raises(ConceptSetError, match="unknown key"):
        from_spec(spec)
    with pytest.raises(ConceptSetError, match="mask_size"):
        SyntheticWorld(image_size=64, mask_size=128)
    bad = {"town": {"id": 150, "objects": {"spaceship": [1.0, 1, 1]}}}
    with pytest.raises(ConceptSetError, match="spaceship"):
        SyntheticWorld(scenes=bad)
    with pytest.raises(ConceptSetError, match="unknown categories"):
        SyntheticWorld(fixations={"weights": {"faces": 3.0}})
    with pytest.raises(ConceptSetError, match="per_observer"):
        SyntheticWorld(fixations={"per_observer": [5, 2]})
    with pytest.raises(ConceptSetError, match="unknown fixation parameter"):
        SyntheticWorld(fixations={"inhibition": 0.5})


def test_contact_sheet(tmp_path, monkeypatch):
    from PIL import Image

    from neuroprobe.cli import main

    monkeypatch.setenv("NEUROPROBE_QUIET", "1")
    out = tmp_path / "sheet.png"
    assert main(["concepts", "show", "synthetic", "--out", str(out), "--n", "2"]) == 0
    with Image.open(out) as im:
        assert im.width > 500 and "Description" in im.info
    assert main(["concepts", "show", "synthetic", "--out", str(tmp_path / "x.jpg")]) == 2


def test_scene_is_learnable_from_content(items):
    """Scenes decide which objects appear: a nearest-class-mean classifier on which object kinds
    are visible names the scene far above chance (1 / number of scenes)."""
    x = np.array([[float((it["layers"][0] == lab).any()) for lab in KIND_LABEL.values()]
                  for it in items])
    y = np.array([int(it["whole"][0]) for it in items])
    train, test = slice(0, 140), slice(140, None)
    classes = np.unique(y[train])
    means = np.stack([x[train][y[train] == c].mean(axis=0) for c in classes])
    pred = classes[np.argmin(((x[test][:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    assert (pred == y[test]).mean() > 0.55  # chance is 1/6


class _OneLayerSet:
    """Two images with one labelled mask layer (objects), two observers: like COCO/EyeCrowd."""

    def __init__(self):
        from neuroprobe.concepts.base import Label, LabelTable

        self.labels = LabelTable([Label(1, "face", "part"), Label(2, "dog", "object"),
                                  Label(3, "red", "color")], ["object", "part", "color"])

    def __len__(self):
        return 2

    def config(self):
        return {"name": "one-layer"}

    def __getitem__(self, i):
        import torch

        layers = torch.zeros(2, 8, 8, dtype=torch.long)
        layers[0, 2:5, 2:5] = 1 + i          # face or dog
        layers[1] = 3                        # a colour layer: not drawn as a mask panel
        return {"id": f"img{i}", "image": torch.rand(3, 16, 16), "layers": layers,
                "whole": torch.zeros(1, dtype=torch.long),
                "fixations": torch.tensor([[3.0, 4.0], [8.0, 8.0]]),
                "observers": torch.tensor([0, 1])}


def test_contact_sheet_has_no_empty_panels_and_keys_its_colours():
    """Issue 16: only as many mask panels as there are labelled layers (no "(no labels)"
    column), one key with every label (and its category) and every observer."""
    from neuroprobe.concepts.sheet import sheet_figure

    fig, n = sheet_figure(_OneLayerSet(), n=2, columns=2)
    assert n == 2
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4                                 # image + one mask panel, twice
    assert not any("no labels" in t for t in titles)
    assert titles[0].startswith("img0") and titles[1].startswith("part masks")
    assert titles[3].startswith("object masks")
    keys = [t.get_text() for t in fig.legends[0].get_texts()]
    assert keys == ["face (part)", "dog (object)", "observer 1", "observer 2"]
    assert "one-layer" in fig._suptitle.get_text()
