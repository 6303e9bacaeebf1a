"""``timm:NAME`` models (the optional extra ``neuroprobe[timm]``): random-weight ResNet, ViT and
ConvNeXt built offline, normalisation from the pretrained config, ViT tokens dissected as grids,
hub ids passed through, one-line errors.  No test touches the network."""
from __future__ import annotations

import sys

import pytest
import torch

from neuroprobe.cli import main
from neuroprobe.concepts.synthetic import SyntheticWorld
from neuroprobe.dissect import dissect
from neuroprobe.errors import CheckpointError
from neuroprobe.hooks import Recorder
from neuroprobe.models import load, save

timm = pytest.importorskip("timm", reason="timm is the optional extra neuroprobe[timm]")

VIT = "timm:vit_tiny_patch16_224?weights=none&img_size=64"


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(seed=3, n=4, image_size=64, mask_size=32, observers=0)


def test_resnet_normalisation_and_layers_from_timm(one_thread):
    module, meta = load("timm:resnet18?weights=none")
    cfg = timm.data.resolve_data_config({}, model=module.net)
    assert meta["mean"] == [round(v, 6) for v in cfg["mean"]] == [0.485, 0.456, 0.406]
    assert meta["input_size"] == [224, 224] and meta["task"] == "classification"
    assert meta["layers"] == ["net.layer3", "net.layer4"]
    assert meta["variant"] == "timm-none-seed0" and meta["weights"] == "none"
    assert meta["arch"] == {"builder": "timm", "kwargs": {"name": "resnet18"}}


def test_random_weights_are_seeded(one_thread):
    before = torch.random.get_rng_state()
    a = load("timm:resnet18?weights=none").module.net.conv1.weight
    b = load("timm:resnet18?weights=none&seed=0").module.net.conv1.weight
    c = load("timm:resnet18?weights=none&seed=2").module.net.conv1.weight
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_vit_config_and_tokens_as_grids(one_thread):
    module, meta = load(VIT)
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["input_size"] == [64, 64]
    assert meta["layers"] == ["net.blocks.10", "net.blocks.11"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), Recorder(module, ["blocks.11", "patch_embed"]) as rec:
        module(x)
    with torch.no_grad(), Recorder(module, "blocks.11", tokens_to_grid=False) as raw:
        module(x)
    tokens = raw["blocks.11"]                     # (2, 1 class + 16 patches, 192)
    assert tokens.shape == (2, 17, 192) and module.net.num_prefix_tokens == 1
    grid = rec["blocks.11"]
    assert grid.shape == (2, 192, 4, 4) and rec["patch_embed"].shape == (2, 192, 4, 4)
    # unit c at cell (i, j) is patch token 1 + 4 i + j: the class token is dropped
    assert torch.equal(grid[0, 7, 1, 2], tokens[0, 1 + 4 * 1 + 2, 7])
    assert torch.equal(grid.flatten(2).transpose(1, 2), tokens[:, 1:])


def test_register_tokens_are_dropped(one_thread):
    module, _ = load("timm:vit_small_patch16_224?weights=none&img_size=32&reg_tokens=4"
                     "&depth=2&embed_dim=48&num_heads=2")
    assert module.net.num_prefix_tokens == 5
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), Recorder(module, "blocks.1") as rec:
        module(x)
    with torch.no_grad(), Recorder(module, "blocks.1", tokens_to_grid=False) as raw:
        module(x)
    assert rec["blocks.1"].shape == (1, 48, 2, 2)
    assert torch.equal(rec["blocks.1"].flatten(2).transpose(1, 2), raw["blocks.1"][:, 5:])


@pytest.mark.parametrize("spec, channels", [
    ("timm:resnet18?weights=none", {"layer3": 256, "layer4": 512}),
    (VIT, {"blocks.10": 192, "blocks.11": 192}),
    ("timm:convnext_atto?weights=none", {"stages.2": 160, "stages.3": 320}),
])
def test_dissect_timm_models_end_to_end(spec, channels, world, one_thread):
    module, meta = load(spec)
    layers = list(channels)
    res = dissect(module, world, layers, batch_size=2, progress=False, model_info=meta)
    counts = {n: sum(1 for u in res.units if u["layer"] == n) for n in layers}
    assert counts == channels
    assert all(0.0 <= float(u["score"]) <= 1.0 for u in res.units)
    assert {n: t.shape[0] for n, t in res.thresholds.items()} == channels


def test_dissect_a_vit_from_the_command_line(tmp_path, one_thread):
    concepts = tmp_path / "small.toml"
    concepts.write_text('source = "synthetic"\nn = 4\nimage_size = 64\nmask_size = 32\n'
                        'observers = 0\n')
    out = tmp_path / "run"
    rc = main(["--quiet", "--device", "cpu", "dissect", "--model", VIT, "--concepts",
               str(concepts), "--batch-size", "2", "--out", str(out)])
    assert rc == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["layers"] == ["net.blocks.10", "net.blocks.11"]
    assert (out / "units.csv").read_text().count("\n") == 1 + 2 * 192


def test_checkpoint_round_trip(tmp_path, one_thread):
    module, meta = load("timm:convnext_atto?weights=none&seed=4")
    path = save(tmp_path / "cn.pt", module, meta["arch"], {"variant": "mine"})
    again, meta2 = load(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(module(x), again(x))
    assert meta2["mean"] == meta["mean"] and meta2["variant"] == "mine"
    # a bare timm state dict with --arch timm:NAME, and as ?weights=FILE
    torch.save(module.net.state_dict(), tmp_path / "sd.pth")
    plain, _ = load(tmp_path / "sd.pth", arch="timm:convnext_atto")
    byfile, meta3 = load(f"timm:convnext_atto?weights={tmp_path / 'sd.pth'}")
    with torch.no_grad():
        assert torch.equal(plain(x), module(x)) and torch.equal(byfile(x), module(x))
    assert meta3["weights"] == str(tmp_path / "sd.pth") and meta3["variant"] == "timm-file"


def test_layers_without_weights(capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("layers must not fetch weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    assert main(["layers", "--model", "timm:convnext_atto", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "weights: not loaded" in out and "net.stages.3" in out and "1x320x7x7" in out


# -- errors ----------------------------------------------------------------------------------

def test_offline_pretrained_is_one_line(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'. Check your connection.")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(CheckpointError) as err:
        load("timm:resnet18")
    msg = str(err.value)
    assert "\n" not in msg and "pretrained weights of 'resnet18'" in msg
    assert "timm:resnet18?weights=none" in msg and "Hugging Face cache" in msg
    assert main(["dissect", "--model", "timm:resnet18", "--limit", "2",
                 "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().startswith("neuroprobe: error: timm could not load")


def test_unknown_name_suggests_and_points_at_list_models():
    with pytest.raises(CheckpointError) as err:
        load("timm:resnet1888?weights=none")
    msg = str(err.value)
    assert "timm has no model 'resnet1888'" in msg and "resnet18" in msg
    assert "timm.list_models('*resnet18*')" in msg and "\n" not in msg


def test_bad_keyword_is_one_line():
    with pytest.raises(CheckpointError, match="does not take"):
        load("timm:resnet18?weights=none&colour=red")
    with pytest.raises(CheckpointError, match="parameter 'pretrained'"):
        load("timm:resnet18?pretrained=false")


def test_hub_ids_are_passed_through(monkeypatch):
    seen = []

    def create(name, pretrained=False, **kwargs):
        seen.append((name, pretrained, kwargs))
        return timm.models.resnet.resnet18(pretrained=False)

    monkeypatch.setattr(timm, "create_model", create)
    load("timm:hf_hub:someone/my-resnet?weights=none")
    load("timm:hf-hub:someone/my-resnet")
    assert seen == [("hf-hub:someone/my-resnet", False, {}),
                    ("hf-hub:someone/my-resnet", True, {})]


def test_timm_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(CheckpointError) as err:
        load("timm:resnet18?weights=none")
    assert "pip install 'neuroprobe[timm]'" in str(err.value) and "\n" not in str(err.value)
