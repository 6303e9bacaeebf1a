"""The CIFAR-10 ResNets: architecture, the published files (../shared/data/cifar-resnet), GPU-saved
checkpoints on a CPU, seeded random controls and the encoder / CLI paths."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuroprobe.cli import main
from neuroprobe.errors import CheckpointError
from neuroprobe.models import dry_run, load
from neuroprobe.models.cifar import CifarResNet, PadShortcut, infer_cifar_arch
from neuroprobe.models.encoders import ENCODERS, add_legacy_bn_counters, build_encoder

SHARED = Path(__file__).parents[2] / "shared" / "data" / "cifar-resnet"
FILES = {20: (SHARED / "resnet20-12fca82f.th", 91.78), 56: (SHARED / "resnet56-4bfd9763.th", 93.62)}
needs_files = pytest.mark.skipif(not all(p.is_file() for p, _ in FILES.values()),
                                 reason="../shared/data/cifar-resnet is absent (the published "
                                 "CIFAR-10 ResNet-20/56 files)")


def _akamaster_like_file(path: Path, depth: int = 20, seed: int = 1, location: str = "cpu"):
    """A file laid out as the published ones: old-style pickle (not zip), {"best_prec1",
    "state_dict"} with ``module.`` keys and no BatchNorm counters; storages tagged ``location``
    by patching the tag in the pickle (what torch.save writes on a GPU)."""
    torch.manual_seed(seed)
    model = CifarResNet(depth)
    state = {f"module.{k}": v for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    buf = io.BytesIO()
    torch.save({"best_prec1": 12.5, "arch": "resnet", "state_dict": state}, buf,
               _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    if location != "cpu":
        old = b"X\x03\x00\x00\x00cpu"    # BINUNICODE 'cpu' (pickle protocol 2)
        new = b"X" + len(location).to_bytes(4, "little") + location.encode()
        # pickle writes the string once and refers to it (memo) for every other storage
        assert raw.count(old) == 1
        raw = raw.replace(old, new)
    path.write_bytes(raw)
    return model


def test_option_a_shortcut_known_answer():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y = PadShortcut(1)(x)
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[0, 0], torch.zeros(2, 2)) and torch.equal(y[0, 3], torch.zeros(2, 2))
    assert torch.equal(y[0, 1:3], x[0, :, ::2, ::2])
    assert torch.equal(y[0, 1], torch.tensor([[0., 2.], [8., 10.]]))


@pytest.mark.parametrize("depth,params", [(20, 269_722), (32, 464_154), (44, 658_586),
                                          (56, 853_018)])
def test_parameter_counts_are_the_papers(depth, params):
    # He et al. 2016, Table 6: 0.27 M (20), 0.46 M (32), 0.66 M (44), 0.85 M (56)
    assert sum(p.numel() for p in CifarResNet(depth).parameters()) == params


def test_depth_must_be_6n_plus_2_and_arch_names(capsys):
    with pytest.raises(CheckpointError, match="6n\\+2"):
        CifarResNet(21)
    assert main(["layers", "--model", "random:cifar-resnet21"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuroprobe: error:") and "Traceback" not in err


def test_layer_shapes_at_two_input_sizes_random_model():
    model = load("random:cifar-resnet20").module
    for size, (s1, s2, s3) in {(32, 32): (32, 16, 8), (96, 64): ((96, 64), (48, 32), (24, 16))
                               }.items():
        rows = {n: shape for n, _, shape, _ in dry_run(model, size)}
        s1, s2, s3 = [(s, s) if isinstance(s, int) else s for s in (s1, s2, s3)]
        assert rows["layer1"] == (1, 16, *s1)
        assert rows["layer2"] == (1, 32, *s2)
        assert rows["layer3"] == (1, 64, *s3)
        assert rows["layer2.0.shortcut"] == (1, 32, *s2)
        assert rows["linear"] == (1, 10)


def test_random_control_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    a = load("random:cifar-resnet20").module.state_dict()
    b = load("random:cifar-resnet20?seed=0").module.state_dict()
    c = load("random:cifar-resnet20?seed=3").module.state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    meta = load("random:cifar-resnet20?seed=3").metadata
    assert meta["variant"] == "random" and meta["seed"] == 3
    with pytest.raises(CheckpointError, match="random:ARCH"):
        load("random:cifar-resnet20?sed=3")


def test_gpu_saved_checkpoint_loads_on_the_cpu(tmp_path):
    path = tmp_path / "gpu.th"
    model = _akamaster_like_file(path, location="cuda:0")
    if not torch.cuda.is_available():   # the file really is GPU-tagged: torch alone refuses it
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded, meta = load(path, arch="cifar-resnet20")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    own = loaded.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(own[k], v), k
    assert meta["best_prec1"] == 12.5
    assert meta["arch"]["builder"] == "cifar-resnet"    # a stored extra never replaces ours
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x))


def test_state_dict_with_wrong_or_partial_keys_is_refused(tmp_path):
    _akamaster_like_file(tmp_path / "r20.th")
    with pytest.raises(CheckpointError, match="does not fit"):
        load(tmp_path / "r20.th", arch="cifar-resnet56")
    # counters are only filled for a whole pre-0.4.1 state dict, never half of one
    model = CifarResNet(20)
    state = dict(model.state_dict())
    del state["bn1.num_batches_tracked"]
    assert add_legacy_bn_counters(model, state) is state
    del state["layer1.0.bn1.running_mean"]
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert add_legacy_bn_counters(model, state) is state


def test_arch_inference_only_for_the_cifar_layout():
    state = CifarResNet(32).state_dict()
    assert infer_cifar_arch(state) == {"builder": "cifar-resnet",
                                       "kwargs": {"depth": 32, "num_classes": 10}}
    assert infer_cifar_arch({k: v for k, v in state.items() if not k.startswith("layer3.4")}) \
        is None
    assert infer_cifar_arch({"conv1.weight": torch.zeros(64, 3, 7, 7)}) is None


def test_train_cli_lists_every_encoder():
    from neuroprobe.commands.train import ENCODER_NAMES

    assert sorted(ENCODER_NAMES) == sorted(ENCODERS)


# -- the published files ------------------------------------------------------------------------

@needs_files
@pytest.mark.parametrize("depth", [20, 56])
def test_published_files_load_strictly_with_their_accuracy(depth):
    path, accuracy = FILES[depth]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    file_keys = {k[len("module."):]: tuple(v.shape) for k, v in raw["state_dict"].items()}
    for arch in (f"cifar-resnet{depth}", None):      # given, and inferred from the keys
        model, meta = load(path, arch=arch)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
        assert own == file_keys       # every key and shape, none missing, none unexpected
        assert meta["best_prec1"] == pytest.approx(accuracy, abs=1e-4)
        assert meta["arch"] == {"builder": "cifar-resnet",
                                "kwargs": {"depth": depth}} if arch else meta["arch_inferred"]
        assert meta["classes"][3] == "cat" and meta["input_size"] == [32, 32]
    for k, v in raw["state_dict"].items():
        assert torch.equal(model.state_dict()[k[len("module."):]], v)


@needs_files
@pytest.mark.parametrize("depth", [20, 56])
def test_published_layer_shapes_at_two_input_sizes(depth):
    model = load(FILES[depth][0], arch=f"cifar-resnet{depth}").module
    names = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range((depth - 2) // 6)]
    for size, side in ((32, 32), (224, 224)):
        rows = {n: shape for n, _, shape, _ in dry_run(model, (size, size))}
        assert rows["conv1"] == (1, 16, side, side)
        assert rows["layer1"] == (1, 16, side, side)
        assert rows["layer2"] == (1, 32, side // 2, side // 2)
        assert rows["layer3"] == (1, 64, side // 4, side // 4)
        assert rows["linear"] == (1, 10)
        assert all(n in rows for n in names)


@needs_files
def test_trained_weights_recognise_a_cat():
    """skimage's 'chelsea' (a photograph of a cat) at 32x32: both networks say cat, confidently;
    the seeded random control does not."""
    from skimage import data

    x = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1)[None].float()
    x = F.interpolate(x / 255, size=(32, 32), mode="area")
    for depth in (20, 56):
        model, meta = load(FILES[depth][0])
        with torch.no_grad():
            p = F.softmax(model(x), 1)[0]
        assert meta["classes"][int(p.argmax())] == "cat" and float(p.max()) > 0.9
    with torch.no_grad():
        assert int(load("random:cifar-resnet56").module(x).argmax()) != 3


@needs_files
def test_encoder_from_the_file_equals_the_classifiers_trunk():
    path = FILES[20][0]
    enc = build_encoder("cifar-resnet20", path).eval()
    model = load(path).module
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(enc(model.normalize(x)), model.features(x), atol=1e-6)
    from neuroprobe.train.recipe import TrainConfig, build_model

    sal, arch = build_model(TrainConfig(task="saliency", encoder="cifar-resnet20",
                                        weights=str(path), variant="frozen"))
    assert arch["kwargs"]["encoder"] == "cifar-resnet20"
    assert torch.equal(sal.encoder.layer3[0].conv1.weight, model.layer3[0].conv1.weight)


@needs_files
def test_layers_command_on_the_published_file(capsys):
    rc = main(["--device", "cpu", "layers", "--model", str(FILES[56][0]), "--arch",
               "cifar-resnet56", "--depth", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("layer")}
    assert "1x64x8x8" in lines["layer3"] and lines["layer3"].endswith("*")
    assert "layer3.8" in lines and "layer3.9" not in lines


@needs_files
def test_dissect_and_train_saliency_on_the_published_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    path = str(FILES[20][0])
    out = tmp_path / "d"
    assert main(["--quiet", "--device", "cpu", "dissect", "--model", path, "--arch",
                 "cifar-resnet20", "--limit", "4", "--batch-size", "4", "--out", str(out)]) == 0
    import csv

    with open(out / "units.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [sum(r["layer"] == f"layer{s}" for r in rows) for s in (1, 2, 3)] == [16, 32, 64]
    ckpt = tmp_path / "sal.pt"
    assert main(["--quiet", "--device", "cpu", "train", "saliency", "--encoder",
                 "cifar-resnet20", "--weights", path, "--data", "synthetic", "--limit", "6",
                 "--val", "2", "--epochs", "1", "--input-size", "32", "--out", str(ckpt)]) == 0
    model, meta = load(ckpt)
    assert meta["task"] == "saliency" and meta["layers"][-1] == "encoder.layer3"
    trained = load(path).module
    assert torch.equal(model.encoder.layer2[1].conv2.weight, trained.layer2[1].conv2.weight)


@pytest.mark.parametrize("name", ["concepts-in-cifar-resnet", "concepts-in-cifar-resnet-eyecrowd"])
def test_finding1_recipes_name_the_trained_file_and_its_random_control(name):
    from neuroprobe.probes import load_probe

    spec = load_probe(name)
    assert spec["kind"] == "finetune-shift" and list(spec["models"]) == ["random", "trained"]
    assert spec["models"]["random"] == "random:cifar-resnet56?seed=0"
    assert Path(spec["models"]["trained"]).name == FILES[56][0].name
    assert spec["compare"]["bootstrap"] >= 1000 and spec["compare"]["preference"] is False
