"""Tests of the training recipe, its losses and the built-in demo models (fast: tiny images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neuroprobe.errors import UserError
from neuroprobe.saliency import metrics as M
from neuroprobe.train import losses as L
from neuroprobe.train.data import ImageSet
from neuroprobe.train.recipe import (TrainConfig, build_model, fit, mean_average_precision,
                                     resume_path, train)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
S = 32  # image side used by the training tests


# -- losses against the saliency toolkit ------------------------------------------------------

def _case(seed=0, h=20, w=24, n=15):
    rng = np.random.default_rng(seed)
    smap = rng.random((h, w))
    xy = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1).astype(np.float64)
    xy[1] = xy[0]  # one pixel fixated twice: the protocols differ
    return smap, xy


def test_nss_loss_matches_both_protocols():
    smap, xy = _case()
    gt = M.GroundTruth.from_fixations(xy, smap.shape)
    pred = torch.from_numpy(smap)[None, None]
    binary = torch.from_numpy(gt.binary_map().astype(np.float64))[None, None]
    counts = torch.from_numpy(M.fixation_map(xy[:, 0], xy[:, 1], smap.shape, counts=True)
                              .astype(np.float64))[None, None]
    assert float(L.nss_per_image(pred, binary, ddof=1)[0]) == pytest.approx(
        M.nss(smap, xy, "mit", shape=smap.shape), rel=1e-10)
    assert float(L.nss_per_image(pred, counts, ddof=0)[0]) == pytest.approx(
        M.nss(smap, xy, "exact", shape=smap.shape), rel=1e-10)
    assert float(L.nss_loss(pred, binary)) == pytest.approx(-M.nss(smap, xy, "mit",
                                                                   shape=smap.shape), rel=1e-10)


def test_kl_and_cc_losses_match_toolkit():
    smap, xy = _case(1)
    gt = M.GroundTruth.from_fixations(xy, smap.shape)
    pred = torch.from_numpy(smap)[None, None]
    for protocol in ("mit", "exact"):
        dens = torch.from_numpy(gt.density(protocol))[None, None]
        assert float(L.cc_per_image(pred, dens)[0]) == pytest.approx(
            M.cc(smap, gt, protocol), rel=1e-9)
    dens = torch.from_numpy(gt.density("mit"))[None, None]
    assert float(L.kl_loss(pred, dens)) == pytest.approx(M.kl(smap, gt, "mit"), rel=1e-9)


def test_loss_invariants_and_constant_map():
    smap, xy = _case(2)
    gt = M.GroundTruth.from_fixations(xy, smap.shape)
    dens = torch.from_numpy(gt.density("exact"))[None, None]
    # a map equal to the density: CC = 1, KL = 0
    assert float(L.cc_per_image(dens, dens)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(L.kl_loss(dens, dens)) == pytest.approx(0.0, abs=1e-9)
    # NSS is invariant to a positive affine change of the map
    pred = torch.from_numpy(smap)[None, None]
    fm = torch.from_numpy(gt.binary_map().astype(np.float64))[None, None]
    assert float(L.nss_loss(3 * pred + 7, fm)) == pytest.approx(float(L.nss_loss(pred, fm)))
    const = torch.ones_like(pred)
    assert float(L.nss_loss(const, fm)) == 0.0 and float(L.cc_per_image(const, dens)[0]) == 0.0
    # an image without fixations is left out of the batch mean
    both = torch.cat([pred, pred])
    fms = torch.cat([fm, torch.zeros_like(fm)])
    assert float(L.nss_loss(both, fms)) == pytest.approx(float(L.nss_loss(pred, fm)))


def test_loss_gradients_are_finite():
    smap, xy = _case(3)
    gt = M.GroundTruth.from_fixations(xy, smap.shape)
    pred = torch.from_numpy(smap)[None, None].clone().requires_grad_(True)
    fm = torch.from_numpy(gt.binary_map().astype(np.float64))[None, None]
    dens = torch.from_numpy(gt.density("exact"))[None, None]
    total, terms = L.combined_loss(pred, fm, dens, L.parse_loss("nss+0.5*kl+2*cc"))
    total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert float(total.detach()) == pytest.approx(terms["nss"] + 0.5 * terms["kl"] + 2 * terms["cc"])


def test_parse_loss():
    assert L.parse_loss("nss") == {"nss": 1.0}
    assert L.parse_loss("nss+0.5*kl") == {"nss": 1.0, "kl": 0.5}
    assert L.parse_loss("2*cc, kl") == {"cc": 2.0, "kl": 1.0}
    for bad in ("foo", "nss+", "0.5*"):
        with pytest.raises(UserError, match="loss"):
            L.parse_loss(bad)


def test_mean_average_precision_known_values():
    t = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert mean_average_precision(torch.tensor([[4.0], [3.0], [2.0], [1.0]]), t) == \
        pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision(torch.tensor([[4.0], [1.0], [3.0], [2.0]]), t) == 1.0


# -- a tiny, learnable saliency task ----------------------------------------------------------

def _toy(n=8, seed=0) -> ImageSet:
    """Grey noise with one bright square per image; every fixation lies inside the square."""
    rng = np.random.default_rng(seed)
    imgs = (rng.random((n, 3, S, S)) * 80).astype(np.uint8)
    fixes, labels = [], []
    for i in range(n):
        y, x = rng.integers(2, S - 10, 2)
        imgs[i, :, y:y + 8, x:x + 8] = 230
        fixes.append(np.stack([x + rng.uniform(0, 7, 6), y + rng.uniform(0, 7, 6)], 1)
                     .astype(np.float32))
        labels.append(int(y > S / 2 - 5))
    return ImageSet(torch.from_numpy(imgs), [str(i) for i in range(n)], fixes, None,
                    torch.tensor(labels), (torch.rand(n, 3, generator=torch.Generator()
                                                      .manual_seed(seed)) > 0.5).float(),
                    ["top", "bottom"])


def _cfg(**kw):
    base = dict(task="saliency", encoder="small", weights="none", variant="frozen",
                data="synthetic", epochs=1, lr=1e-2, batch_size=4, input_size=(S, S),
                val_metrics=("nss",))
    base.update(kw)
    return TrainConfig(**base)


def _fit(cfg, tmp_path, name="m.pt", data=None, resume=False):
    tr = data or _toy()
    model, arch = build_model(cfg, 2 if cfg.task == "scene" else 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    summary = fit(model, arch, cfg, tr, _toy(2, seed=1), tmp_path / name, resume=resume,
                  plot=False)
    return model, start, summary


@pytest.mark.parametrize("task,variant", [("saliency", "frozen"), ("saliency", "finetune-all"),
                                          ("scene", "finetune-last")])
def test_a_few_steps_reduce_the_loss(task, variant):
    from neuroprobe.train.recipe import compute_loss, set_modes, setup_variant

    cfg = _cfg(task=task, variant=variant)
    model, _ = build_model(cfg, 2)
    data = _toy()
    idx = torch.arange(len(data))
    opt = torch.optim.Adam(setup_variant(model, variant, "small"), lr=1e-2)
    weights = L.parse_loss("nss")

    def loss():
        set_modes(model, variant, "small")
        return compute_loss(model, cfg, data, idx, weights)

    with torch.no_grad():
        before = float(loss())
    for _ in range(6):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < before - 0.05, (before, after)


def test_frozen_leaves_every_encoder_tensor_unchanged(tmp_path):
    model, start, _ = _fit(_cfg(epochs=2), tmp_path)
    after = model.state_dict()
    enc = [k for k in after if k.startswith("encoder.")]
    assert enc and all(torch.equal(after[k], start[k]) for k in enc)  # incl. BN statistics
    assert not torch.equal(after["decoder.conv.weight"], start["decoder.conv.weight"])


def test_finetune_last_changes_only_the_last_block(tmp_path):
    model, start, _ = _fit(_cfg(variant="finetune-last"), tmp_path)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], start[k])}
    assert changed, "nothing trained"
    assert all(k.startswith("encoder.block4.") or k.startswith("decoder.") for k in changed)
    assert any(k.startswith("encoder.block4.") for k in changed)
    assert "decoder.conv.weight" in changed


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a, _, _ = _fit(_cfg(variant="finetune-all"), tmp_path, "a.pt")
    b, _, _ = _fit(_cfg(variant="finetune-all"), tmp_path, "b.pt")
    c, _, _ = _fit(_cfg(variant="finetune-all", seed=1), tmp_path, "c.pt")
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_continues_exactly(tmp_path):
    full, _, hist_full = _fit(_cfg(variant="finetune-all", epochs=2), tmp_path, "full.pt")
    _fit(_cfg(variant="finetune-all", epochs=1), tmp_path, "part.pt")
    assert resume_path(tmp_path / "part.pt").is_file()
    part, _, hist = _fit(_cfg(variant="finetune-all", epochs=2), tmp_path, "part.pt",
                         resume=True)
    sf, sp = full.state_dict(), part.state_dict()
    assert all(torch.equal(sf[k], sp[k]) for k in sf)
    assert [h["train_loss"] for h in hist["history"]] == \
        [h["train_loss"] for h in hist_full["history"]]
    with pytest.raises(UserError, match="different recipe"):
        _fit(_cfg(variant="finetune-all", epochs=4, lr=0.5), tmp_path, "part.pt", resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        _fit(_cfg(epochs=2), tmp_path, "never.pt", resume=True)


def test_checkpoint_carries_variant_and_config(tmp_path):
    from neuroprobe.models import load

    cfg = _cfg(task="scene", variant="finetune-last", epochs=1)
    tr = _toy()
    summary = train(cfg, tmp_path / "scene.pt", data=(tr, _toy(4, 1), {"data": "toy"}))
    assert (tmp_path / "scene.curve.png").read_bytes()[:4] == b"\x89PNG"
    module, meta = load(str(tmp_path / "scene.pt"))
    assert type(module).__name__ == "SceneModel"
    assert meta["task"] == "scene" and meta["variant"] == "finetune-last"
    assert meta["train_config"]["lr"] == cfg.lr and meta["train_config"]["encoder"] == "small"
    assert meta["input_size"] == [S, S] and "val_accuracy" in summary["history"][0]
    assert meta["classes"] == ["top", "bottom"]


def test_recognition_pretraining_saves_the_trunk(tmp_path):
    from neuroprobe.models import load

    cfg = _cfg(task="recognition", variant="finetune-all", epochs=1)
    train(cfg, tmp_path / "pre.pt", data=(_toy(), _toy(4, 1), {}), plot=False)
    module, meta = load(str(tmp_path / "pre.pt"))
    assert meta["variant"] == "pretrained" and meta["layers"][-1] == "encoder.block4"
    # its encoder seeds a saliency variant through --weights PATH
    sal, _ = build_model(_cfg(weights=str(tmp_path / "pre.pt")))
    assert all(torch.equal(v, module.encoder.state_dict()[k])
               for k, v in sal.encoder.state_dict().items())


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="variant"):
        _cfg(variant="half")
    with pytest.raises(UserError, match="ImageNet"):
        _cfg(weights="imagenet")
    with pytest.raises(UserError, match="epochs"):
        _cfg(epochs=0)


# -- CLI ----------------------------------------------------------------------------------------

def _write_folder(root: Path, n=6):
    from PIL import Image

    data = _toy(n)
    root.mkdir()
    rows = ["image,x,y"]
    for i in range(n):
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).resize((2 * S, 2 * S)).save(
            root / f"im{i}.png")
        for x, y in data.fixations[i]:
            rows.append(f"im{i}.png,{2 * x + 0.5:.3f},{2 * y + 0.5:.3f}")
    (root / "fixations.csv").write_text("\n".join(rows) + "\n")


def test_cli_trains_from_a_folder_and_resumes(tmp_path, monkeypatch, capsys):
    from neuroprobe.cli import main

    monkeypatch.setenv("NEUROPROBE_QUIET", "1")
    folder = tmp_path / "imgs"
    _write_folder(folder)
    out = tmp_path / "sal.pt"
    cmd = ["--quiet", "train", "saliency", "--encoder", "small", "--weights", "none", "--data",
           f"folder:{folder}", "--input-size", str(S), "--epochs", "1", "--batch-size", "2",
           "--val", "2", "--out", str(out)]
    assert main(cmd) == 0
    assert out.is_file() and "1 epochs" in capsys.readouterr().out
    cmd[cmd.index("--epochs") + 1] = "2"
    assert main(cmd + ["--resume"]) == 0
    assert "2 epochs" in capsys.readouterr().out
    assert main(cmd[:-2] + ["--out", str(tmp_path / "x.pt"), "--loss", "mse"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "mse" in err
    assert main(["train", "scene", "--encoder", "small", "--weights", "none", "--data",
                 f"folder:{folder}"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_salicon_2017_layout(tmp_path):
    import scipy.io as sio
    from PIL import Image

    from neuroprobe.train.data import load_task_data

    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "fixations" / split).mkdir(parents=True)
        for k in range(2):
            name = f"COCO_{split}_{k}"
            Image.new("RGB", (64, 48), (k * 50, 0, 0)).save(tmp_path / "images" / split /
                                                           f"{name}.jpg")
            gaze = np.empty(2, dtype=object)
            gaze[0] = {"fixations": np.array([[1.0, 1.0], [64.0, 48.0]])}
            gaze[1] = {"fixations": np.array([[33.0, 25.0]])}
            sio.savemat(tmp_path / "fixations" / split / f"{name}.mat",
                        {"image": name, "resolution": np.array([48, 64]), "gaze": gaze})
    tr, va, desc = load_task_data(f"salicon:{tmp_path}", "saliency", (24, 32))
    assert len(tr) == 2 and len(va) == 2 and desc["kind"] == "salicon"
    o = tr.original[0]
    assert o.size == (48, 64) and sorted(o.x.tolist()) == [0.0, 32.0, 63.0]
    # 64x48 -> 32x24: 1-based (1, 1) -> 0-based (0, 0) -> (0 + 0.5) / 2 - 0.5 = -0.25
    assert min(tr.fixations[0][:, 0]) == pytest.approx(-0.25)


# -- the demo models ----------------------------------------------------------------------------

def test_demo_models_are_shipped_and_consistent():
    from neuroprobe.models import load
    from neuroprobe.train.demo import SHIPPED, VARIANTS, build_demo

    if not (SHIPPED / "MANIFEST.json").is_file():
        pytest.skip("demo models not shipped in this checkout")
    from neuroprobe.io import sha256_file
    import json

    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    states = {}
    for v in VARIANTS:
        path = build_demo(v)
        assert path.parent == SHIPPED
        assert sha256_file(path) == manifest["files"][path.name]
        module, meta = load(str(path))
        assert meta["variant"] == v and meta.get("demo") is True
        states[v] = {k: t for k, t in module.state_dict().items() if k.startswith("encoder.")}
    pre = states["pretrained"]
    # the frozen variant kept the pretrained encoder bit for bit; finetune-last changed block4 only
    assert all(torch.equal(pre[k], states["frozen"][k]) for k in pre)
    changed = {k for k in pre if not torch.equal(pre[k], states["finetune-last"][k])}
    assert changed and all(k.startswith("encoder.block4.") for k in changed)
    assert any(not torch.equal(pre[k], states["finetune-all"][k])
               for k in pre if k.startswith("encoder.stem."))


# -- real data ----------------------------------------------------------------------------------

@pytest.mark.skipif(not (DATA / "osie" / "fixations.mat").is_file(),
                    reason="OSIE not found at ../shared/data/osie")
def test_osie_split_and_fixations_in_input_frame():
    from neuroprobe.train.data import load_osie

    tr, te = load_osie(str(DATA / "osie"), (60, 80), limit=3, split="train")
    assert te is None and len(tr) == 3 and tr.ids == ["1001", "1002", "1003"]
    assert tr.images.shape == (3, 3, 60, 80) and tr.images.dtype == torch.uint8
    o, f = tr.original[0], tr.fixations[0]
    assert o.size == (600, 800) and len(o) == len(f) > 0
    # 800x600 -> 80x60: a factor of 10 with pixel centres aligned
    np.testing.assert_allclose(f[:, 0], (o.x + 0.5) / 10 - 0.5, rtol=1e-5, atol=1e-4)
