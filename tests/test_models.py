import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from neuroprobe import models
from neuroprobe.errors import CheckpointError
from neuroprobe.models import encoders


def test_saliency_model_matches_study_decoder():
    torch.manual_seed(0)
    m = models.build_saliency("vgg16").eval()
    assert m.decoder.conv.bias is None and m.decoder.conv.weight.shape == (1, 512, 1, 1)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        s = m(x)
        feats = m.encoder(m.normalize(x))
    assert feats.shape == (2, 512, 14, 14)  # pool5 removed
    ref = torch.nn.functional.interpolate(m.decoder.conv(feats), size=(224, 224),
                                          mode="bilinear", align_corners=False)
    lo = ref.amin(dim=(1, 2, 3), keepdim=True)
    hi = ref.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(s, (ref - lo) / (hi - lo + 1e-8))
    assert s.amin() == 0 and abs(float(s.amax()) - 1) < 1e-5


def test_vgg16_named_encoder_takes_torchvision_weights():
    from torchvision.models import vgg16

    torch.manual_seed(0)
    tv = vgg16(weights=None).eval()
    state = encoders._vgg16_from_torchvision(tv.state_dict())
    enc = encoders._vgg16()
    encoders.load_state_strict(enc, state)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), tv.features[:30](x))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = models.build_scene("small", num_classes=4)
    arch = {"builder": "scene", "kwargs": {"encoder": "small", "num_classes": 4}}
    path = models.save(tmp_path / "m.pt", m, arch, {"variant": "scene-tuned",
                                                     "train_config": {"lr": 0.1}})
    loaded, meta = models.load(str(path))
    assert meta["variant"] == "scene-tuned" and meta["task"] == "scene"
    assert meta["train_config"] == {"lr": 0.1} and meta["neuroprobe_version"]
    assert meta["layers"] == ["encoder.block2", "encoder.block3", "encoder.block4"]
    x = torch.rand(2, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x))


def test_state_dict_needs_arch_and_mismatch_names_keys(tmp_path):
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    p = tmp_path / "sd.pt"
    torch.save(net.state_dict(), p)
    with pytest.raises(CheckpointError, match="--arch"):
        models.load(str(p))
    m, meta = models.load(str(p), arch="resnet18")
    assert meta["layers"] == ["net.layer3", "net.layer4"]
    with pytest.raises(CheckpointError, match=r"unexpected keys|shape mismatch|missing keys"):
        models.load(str(p), arch="resnet50")


def test_pickled_module_needs_trust_and_malicious_pickle_never_runs(tmp_path):
    p = tmp_path / "module.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 2, 1)), p)
    with pytest.raises(CheckpointError, match="trust"):
        models.load(str(p))
    m, _ = models.load(str(p), trust=True)
    assert isinstance(m, nn.Sequential)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(CheckpointError):
        models.load(str(evil))
    assert not marker.exists()


def test_not_a_checkpoint_and_missing(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        models.load(str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        models.load(str(tmp_path / "missing.pt"))


def test_torchscript(tmp_path):
    m = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    p = tmp_path / "ts.pt"
    torch.jit.script(m).save(str(p))
    # TorchScript is code (loading runs its __setstate__): refused unless trusted (issue 17)
    with pytest.raises(CheckpointError, match="TorchScript"):
        models.load(str(p))
    loaded, meta = models.load(str(p), trust=True)
    assert meta["format"] == "torchscript"
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(loaded(x), m(x))


def test_imagenet_weights_from_cache_or_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*a, **k):
        raise OSError("network unreachable")

    # the weights are fetched by torch.hub.download_url_to_file, read with weights_only=True
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: no_network())
    with pytest.raises(CheckpointError, match="not in the torch cache"):
        models.build_saliency("resnet18", weights="imagenet")
    # a file in the cache is used
    from torchvision.models import resnet18

    torch.manual_seed(3)
    ref = resnet18(weights=None)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), ckpt)
    m = models.build_saliency("resnet18", weights="imagenet")
    torch.testing.assert_close(m.encoder.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_entry_point_builder(monkeypatch, tmp_path):
    from importlib import metadata

    from neuroprobe.models import checkpoint

    class EP:
        name = "tiny"

        def load(self):
            return lambda width=2: nn.Sequential(nn.Conv2d(3, width, 1))

    monkeypatch.setattr(metadata, "entry_points",
                        lambda group=None: [EP()] if group == "neuroprobe.models" else [])
    arch = {"builder": "tiny", "kwargs": {"width": 5}}
    m = checkpoint.build(arch)
    p = models.save(tmp_path / "t.pt", m, arch)
    loaded, _ = models.load(str(p))
    assert loaded[0].out_channels == 5


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "neuroprobe", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    (b"not a checkpoint", "not a PyTorch checkpoint"),
    ("pickle", "trust"),
    ("mismatch", "does not fit"),
])
def test_cli_bad_models_one_line_exit_2(tmp_path, content, needle):
    p = tmp_path / "model.pt"
    extra = []
    if content == "pickle":
        torch.save(nn.Sequential(nn.Conv2d(3, 2, 1)), p)
    elif content == "mismatch":
        torch.save(nn.Conv2d(3, 2, 1).state_dict(), p)
        extra = ["--arch", "resnet18"]
    elif content is not None:
        p.write_bytes(content)
    r = _cli("layers", "--model", str(p), *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuroprobe: error:"), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    r = _cli("--debug", "layers", "--model", str(p), *extra)
    assert "Traceback" in r.stderr


def test_cli_layers_lists_shapes():
    r = _cli("layers", "--model", "torchvision:resnet18?weights=none", "--depth", "1")
    assert r.returncode == 0, r.stderr
    assert "net.layer4" in r.stdout and "1x512x7x7" in r.stdout
    r = _cli("--version")
    assert r.returncode == 0 and "neuroprobe" in r.stdout


def test_import_is_light():
    code = ("import sys, neuroprobe, neuroprobe.cli; "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr


def test_zoo_finds_files_and_never_trains(tmp_path, monkeypatch):
    """Without the shipped files (and none rebuilt into the cache) a built-in name is one clear
    error naming the rebuild command, not a training run."""
    from neuroprobe.errors import CheckpointError
    from neuroprobe.models import zoo

    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    assert zoo.builtin_path("demo") == zoo.SHIPPED / "demo-frozen.pt"
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="python -m neuroprobe.train.demo --rebuild"):
        models.load("demo")
    rebuilt = zoo.cache_folder() / "demo-frozen.pt"
    rebuilt.parent.mkdir(parents=True)
    rebuilt.write_bytes(b"")
    assert zoo.builtin_path("demo") == rebuilt        # a set rebuilt into the cache is used
    with pytest.raises(CheckpointError, match="unknown built-in model"):
        zoo.builtin_path("demo-nope")


def test_random_control_is_written_once_and_seeded(tmp_path, monkeypatch):
    from neuroprobe.models import checkpoint, zoo

    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path))
    assert not zoo.builtin_path("demo-random").exists()
    path = checkpoint.builtin_file("demo-random")
    assert path == zoo.random_control_path() and path.is_file()
    a, meta = models.load("demo-random")
    b, _ = models.load("demo-random")
    assert meta["variant"] == "random"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


def test_stand_in_is_deterministic_and_keeps_the_rng():
    from neuroprobe.models.standin import SPEC, stand_in

    state = torch.random.get_rng_state()
    m1, meta, info = stand_in()
    assert torch.equal(torch.random.get_rng_state(), state)
    m2 = stand_in()[0]
    assert info["spec"] == SPEC and meta["variant"] == "stand-in" and meta["layers"]
    assert all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(),
                                                 m2.state_dict().values()))
