"""``torchvision:NAME?weights=...`` and ``--device``: weight resolution through torchvision's
registry, the torch cache, offline errors, every architecture of list_models(), layers without
weights, ViT tokens as grids.  No test touches the network: downloads are replaced by a function
that fails the way an offline machine does.

The sweep over list_models() builds every network with its parameters on the meta device (no
memory; ViT-H/14 and RegNetY-128GF included).  Building them for real and running them is opt-in:
``NEUROPROBE_TORCHVISION_SWEEP=1 python -m pytest tests/test_model_specs.py -k real_sweep``
(minutes, several GB of memory for the largest).
"""
from __future__ import annotations

import contextlib
import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from neuroprobe.cli import main
from neuroprobe.errors import CheckpointError, UserError
from neuroprobe.hooks import Recorder
from neuroprobe.models import ImageClassifier, load
from neuroprobe.models import torchvision_specs as tvs
from neuroprobe.utils import parse_device, resolve_device


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and no network (every download raises URLError)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


# -- weights names ------------------------------------------------------------------------------

def test_weights_resolve_through_torchvisions_registry():
    w = torchvision.models.get_model_weights("resnet50")
    assert tvs.resolve_weights("resnet50", "DEFAULT") is w.IMAGENET1K_V2   # not V1
    assert tvs.resolve_weights("resnet50", None) is w.IMAGENET1K_V2
    assert tvs.resolve_weights("resnet50", "IMAGENET1K_V1") is w.IMAGENET1K_V1
    assert tvs.resolve_weights("resnet50", "imagenet1k_v1") is w.IMAGENET1K_V1
    assert tvs.resolve_weights("resnet50", "imagenet") is w.IMAGENET1K_V1
    assert tvs.resolve_weights("resnet50", "none") is None
    # models without IMAGENET1K_V1 (the AttributeError of issue 19)
    h14 = torchvision.models.get_model_weights("vit_h_14")
    assert tvs.resolve_weights("vit_h_14", "DEFAULT") is h14.IMAGENET1K_SWAG_E2E_V1
    assert tvs.resolve_weights("vit_h_14", "imagenet") is h14.DEFAULT
    assert tvs.resolve_weights("regnet_y_128gf", "DEFAULT") is \
        torchvision.models.get_model_weights("regnet_y_128gf").DEFAULT


def test_unknown_weights_name_lists_the_valid_ones():
    with pytest.raises(CheckpointError) as err:
        load("torchvision:vit_h_14?weights=IMAGENET1K_V1")
    msg = str(err.value)
    assert "\n" not in msg and "no weights 'IMAGENET1K_V1'" in msg
    assert "IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1, DEFAULT" in msg


@pytest.mark.parametrize("spec, fragment", [
    ("torchvision:resnet9000", "torchvision has no model 'resnet9000'"),
    ("torchvision:resnet18?weights=none&seed=x", "seed 'x'"),
    ("torchvision:resnet18?colour=red", "unknown parameter 'colour'"),
    ("torchvision:resnet18?weights", "cannot read 'weights'"),
    ("torchvision:", "names no model"),
])
def test_bad_specs_are_one_line(spec, fragment):
    with pytest.raises(CheckpointError) as err:
        load(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# -- the torch cache and offline errors -----------------------------------------------------------

def _seeded_resnet18_state(seed=7):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.resnet18().state_dict()


def test_weights_come_from_the_torch_cache(offline):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = tvs.cache_file(weights)
    assert path.parent == offline and path.name == weights.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    state = _seeded_resnet18_state()
    torch.save(state, path)
    for spec in ("torchvision:resnet18?weights=IMAGENET1K_V1", "torchvision:resnet18",
                 "torchvision:resnet18?weights=imagenet"):   # DEFAULT of resnet18 is V1
        module, meta = load(spec)
        got = module.net.state_dict()
        assert all(torch.equal(got[k], state[k]) for k in state), spec
        assert meta["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
        assert meta["variant"] == "torchvision-IMAGENET1K_V1"
        assert meta["input_size"] == [224, 224] and meta["mean"] == [0.485, 0.456, 0.406]


def test_torchvision_weights_are_read_weights_only(offline):
    """A cached file holding a pickled object is refused (torch.hub would unpickle it)."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = tvs.cache_file(weights)
    path.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1), "evil": contextlib.nullcontext}, path)
    with pytest.raises(CheckpointError) as err:
        load("torchvision:resnet18")
    assert "does not load" in str(err.value) and "?weights=none" in str(err.value)


def test_offline_error_names_the_cache_and_weights_none(offline):
    # ViT-H/14 (632 M parameters) must fail before anything is built: the check comes first
    with pytest.raises(CheckpointError) as err:
        load("torchvision:vit_h_14")
    msg = str(err.value)
    assert "\n" not in msg and str(offline) in msg and "vit_h_14_swag-80465313.pth" in msg
    assert "torchvision:vit_h_14?weights=none" in msg and "URLError" in msg


def test_offline_error_on_the_command_line(offline, tmp_path, capsys):
    rc = main(["--quiet", "dissect", "--model", "torchvision:resnet50", "--limit", "2",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("neuroprobe: error: torchvision weights")
    assert "IMAGENET1K_V2" in err and "resnet50?weights=none" in err
    assert not (tmp_path / "run" / "units.csv").exists()


def test_weights_file_given_as_text(tmp_path):
    """``?weights=FILE``: the 'str' object has no attribute 'is_file' crash of issue 19."""
    state = _seeded_resnet18_state(3)
    path = tmp_path / "mine.pth"
    torch.save(state, path)
    module, meta = load(f"torchvision:resnet18?weights={path}")
    assert torch.equal(module.net.conv1.weight, state["conv1.weight"])
    assert meta["weights"] == str(path) and meta["variant"] == "torchvision-file"


def test_random_weights_are_seeded_and_leave_the_rng_alone():
    before = torch.random.get_rng_state()
    a = load("torchvision:mobilenet_v3_small?weights=none").module
    b = load("torchvision:mobilenet_v3_small?weights=none&seed=0").module
    c = load("torchvision:mobilenet_v3_small?weights=none&seed=1").module
    assert torch.equal(torch.random.get_rng_state(), before)
    pa, pb, pc = (next(m.net.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# -- every architecture of list_models(), on the meta device ---------------------------------------

@contextlib.contextmanager
def meta_parameters():
    """Every parameter created inside goes to the meta device (no memory, initialisers are
    no-ops): the trick of accelerate's ``init_empty_weights``.  torch's ``device("meta")``
    context is not enough: RegNet computes its widths with tensors."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


TASKS = {"classification", "detection", "segmentation", "video", "optical-flow"}


#: builders that run a forward pass while building (so not on meta parameters); all small
BUILT_FOR_REAL = {"ssdlite320_mobilenet_v3_large"}


@pytest.mark.parametrize("name", torchvision.models.list_models())
def test_every_torchvision_model_builds_without_weights(name, offline):
    real = name in BUILT_FOR_REAL
    with contextlib.nullcontext() if real else meta_parameters():
        net, info = tvs.build_torchvision_net(name, "none")
    params = list(net.parameters())
    assert params and all(p.device.type == ("cpu" if real else "meta") for p in params)
    assert info["weights"] == "none" and info["task"] in TASKS
    assert len(info["mean"]) == 3 and all(s > 0 for s in info["std"])
    # architecture-only (what `layers` builds): the weights' own architecture, nothing read
    if name.startswith("quantized_"):
        return   # quantizing fuses real tensors: see test_quantized_architecture_only
    with contextlib.nullcontext() if real else meta_parameters():
        net2, info2 = tvs.build_torchvision_net(name, "DEFAULT", architecture_only=True)
    assert "architecture only" in info2["weights"]
    assert sum(p.numel() for p in net2.parameters()) > 0


def test_quantized_architecture_only(offline):
    """Quantized weights come with the quantized architecture; without them too."""
    module, meta = load("torchvision:quantized_mobilenet_v2", architecture_only=True)
    assert "architecture only" in meta["weights"] and "Quantized" in meta["weights"]
    assert any("quantized" in type(m).__module__ for m in module.modules())
    assert module(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_normalisation_from_the_weights_transforms():
    _, meta = load("torchvision:squeezenet1_1?weights=none")
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["input_size"] == [224, 224]
    info = tvs._transform_info("r3d_18", None)       # Kinetics statistics, 112x112 clips
    assert info["mean"] == (0.43216, 0.394666, 0.37645) and info["input_size"] == (112, 112)
    # detection models normalise inside: no second normalisation in front
    assert tvs._transform_info("fasterrcnn_resnet50_fpn", None)["std"] == (1.0, 1.0, 1.0)
    assert tvs._transform_info("raft_small", None)["mean"] == (0.5, 0.5, 0.5)


def test_architecture_only_follows_the_weights():
    """ViT-H/14's DEFAULT weights are 518x518 SWAG ones: the architecture without them has that
    size too, and the metadata says so (from the weights' transforms)."""
    with meta_parameters():
        net, info = tvs.build_torchvision_net("vit_h_14", "DEFAULT", architecture_only=True)
    assert net.image_size == 518 and info["input_size"] == (518, 518)
    with meta_parameters():
        net, info = tvs.build_torchvision_net("vit_h_14", "IMAGENET1K_SWAG_LINEAR_V1",
                                              architecture_only=True)
    assert net.image_size == 224 and info["input_size"] == (224, 224)
    with meta_parameters():   # random weights: the builder's own 224, not DEFAULT's 518
        net, info = tvs.build_torchvision_net("vit_h_14", "none")
    assert net.image_size == 224 and info["input_size"] == (224, 224)


@pytest.mark.skipif(os.environ.get("NEUROPROBE_TORCHVISION_SWEEP") != "1",
                    reason="the real sweep builds every torchvision model (minutes, GBs); set "
                    "NEUROPROBE_TORCHVISION_SWEEP=1")
@pytest.mark.parametrize("name", torchvision.models.list_models())
def test_real_sweep_loads_and_runs_every_image_model(name, offline):
    from neuroprobe.models import dry_run

    module, meta = load(f"torchvision:{name}?weights=none")
    if meta["task"] in ("video", "optical-flow"):
        return   # they do not take (B, 3, H, W) batches (module docstring)
    rows = dry_run(module, tuple(meta["input_size"]), layers=meta["layers"] or None)
    assert rows and all(shape is not None for _, _, shape, _ in rows)


# -- layers without weights --------------------------------------------------------------------

def test_layers_needs_no_weights(offline, capsys):
    rc = main(["--device", "cpu", "layers", "--model", "torchvision:resnet50", "--depth", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "weights: not loaded" in out and "net.layer4" in out and "2048x7x7" in out
    assert "--weights" not in out + err
    assert not offline.exists() or not any(offline.iterdir())   # nothing fetched or written


def test_layers_refuses_a_video_model_in_one_line(offline, capsys):
    rc = main(["layers", "--model", "torchvision:r3d_18", "--depth", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "does not run on a 1x3x112x112 image" in err


# -- ViT tokens as grids ------------------------------------------------------------------------

def test_torchvision_vit_tokens_are_recorded_as_grids():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=32)
    model = ImageClassifier(net).eval()
    x = torch.rand(2, 3, 32, 32)
    layer = "net.encoder.layers.encoder_layer_1"
    with torch.no_grad(), Recorder(model, layer) as rec:
        model(x)
    with torch.no_grad(), Recorder(model, layer, tokens_to_grid=False) as raw:
        model(x)
    tokens = raw[layer]                      # (2, 1 + 16, 16): class token first
    assert tokens.shape == (2, 17, 16) and rec[layer].shape == (2, 16, 4, 4)
    # unit c at grid cell (i, j) is token 1 + 4 i + j, channel c
    assert torch.equal(rec[layer][1, 5, 2, 3], tokens[1, 1 + 4 * 2 + 3, 5])
    from neuroprobe.models.adapters import default_layers

    assert default_layers(model, {"builder": "torchvision"}) == [
        "net.encoder.layers.encoder_layer_0", "net.encoder.layers.encoder_layer_1"]


# -- --device ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, normal", [("auto", "auto"), ("CPU", "cpu"), ("cuda", "cuda"),
                                          ("cuda:0", "cuda:0"), ("cuda:12", "cuda:12"),
                                          (" mps ", "mps"), (None, "auto")])
def test_device_names_parse(text, normal):
    assert parse_device(text) == normal


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "mps:1", ""])
def test_bad_device_names_are_refused(text):
    if text == "":
        assert parse_device(text) == "auto"
        return
    with pytest.raises(ValueError, match="is not a device"):
        parse_device(text)


def test_device_option_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--device", "gpu", "layers", "--model", "demo"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--device" in err and "'gpu' is not a device" in err and "cuda:N" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_device_is_one_line(capsys):
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda:1")
    assert main(["--device", "cuda:1", "layers", "--model", "demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--device cuda:1 was asked for" in err


def test_missing_mps_is_one_line():
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(UserError, match="MPS backend is not available"):
        resolve_device("mps")


def test_cpu_device_resolves():
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_study_encoders_read_the_same_cache(offline):
    """``train --weights imagenet`` (the study's encoders) reads torchvision's V1 file through
    the same weights_only path, with a hint naming --weights."""
    from neuroprobe.models import build_encoder

    with pytest.raises(CheckpointError) as err:
        build_encoder("resnet18", "imagenet")
    assert "--weights none" in str(err.value) and str(offline) in str(err.value)
    state = _seeded_resnet18_state(5)
    path = tvs.cache_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True, exist_ok=True)   # the failed download made the folder
    torch.save(state, path)
    enc = build_encoder("resnet18", "imagenet")
    assert torch.equal(enc.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
