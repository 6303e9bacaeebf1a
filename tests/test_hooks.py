import pytest
import torch
from torch import nn
from torchvision.models import resnet18, vgg16
from torchvision.models.feature_extraction import create_feature_extractor

from neuroprobe.errors import LayerNotFound, UserError
from neuroprobe.hooks import Recorder, ablate, clamp, record, resolve_layers, tokens_to_grid


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_matches_torchvision_feature_extractor_resnet18(r18):
    x = torch.rand(2, 3, 64, 64)
    layers = ["layer1", "layer3.1.conv2", "layer4"]
    ref = create_feature_extractor(r18, return_nodes=layers)(x)
    with torch.no_grad():
        got = record(r18, x, layers)
    for name in layers:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0)


def test_matches_torchvision_feature_extractor_vgg16():
    torch.manual_seed(1)
    model = vgg16(weights=None).features.eval()
    x = torch.rand(1, 3, 32, 32)
    # ReLU outputs and a pool: torchvision's extractor returns conv outputs *after* the in-place
    # ReLU that follows them has overwritten them, so conv nodes are no fair reference
    layers = ["1", "4", "29"]
    ref = create_feature_extractor(model, return_nodes=layers)(x)
    with torch.no_grad():
        got = record(model, x, layers)
    for name in layers:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0)


def test_inplace_relu_does_not_corrupt_clone():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(inplace=True))
    x = torch.randn(1, 1, 8, 8)
    expected = conv(x).detach()
    assert (expected < 0).any()
    with Recorder(model, "0") as rec:
        model(x)
    torch.testing.assert_close(rec["0"], expected)
    # without clone the record aliases the tensor the in-place ReLU overwrote
    with Recorder(model, "0", clone=False) as rec:
        model(x)
    assert (rec["0"] >= 0).all()


def test_hooks_removed_after_exception(r18):
    before = _hook_count(r18)
    with pytest.raises(RuntimeError):
        with Recorder(r18, ["layer1", "layer2"]):
            assert _hook_count(r18) == before + 2
            raise RuntimeError("boom")
    assert _hook_count(r18) == before
    with pytest.raises(RuntimeError):  # an error inside the forward pass
        with Recorder(r18, "layer1"):
            r18(torch.rand(1, 5, 32, 32))
    assert _hook_count(r18) == before


def test_stop_skips_later_modules(r18):
    calls = {"layer3": 0, "layer4": 0, "fc": 0}
    handles = [getattr(r18, n).register_forward_hook(
        lambda m, a, o, n=n: calls.__setitem__(n, calls[n] + 1)) for n in calls]
    try:
        with Recorder(r18, ["layer2", "layer3"], stop=True) as rec:
            out = r18(torch.rand(1, 3, 32, 32))
            pytest.fail("the forward pass should have been stopped")  # pragma: no cover
        assert calls == {"layer3": 1, "layer4": 0, "fc": 0}
        assert rec["layer3"].shape[1] == 256
        with Recorder(r18, ["layer2"]) as rec:
            out = r18(torch.rand(1, 3, 32, 32))
        assert out.shape == (1, 1000) and calls["fc"] == 1
    finally:
        for h in handles:
            h.remove()


def test_ablate_changes_downstream_as_by_hand():
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
    model = nn.Sequential(conv1, nn.ReLU(), conv2).eval()
    x = torch.rand(2, 3, 6, 6)
    h = torch.relu(conv1(x)).detach()
    h[:, [1, 3]] = 0
    expected = conv2(h)
    with Recorder(model, "1", edit=ablate([1, 3])) as rec:
        out = model(x)
    torch.testing.assert_close(out, expected)
    assert (rec["1"][:, [1, 3]] == 0).all()
    assert not torch.equal(out, model(x))
    with Recorder(model, "1", edit=clamp(2, 5.0)):
        out2 = model(x)
    h2 = torch.relu(conv1(x)).detach()
    h2[:, 2] = 5.0
    torch.testing.assert_close(out2, conv2(h2))


def test_retained_gradients_equal_autograd(r18):
    x = torch.rand(2, 3, 32, 32)
    with Recorder(r18, ["layer3", "layer4"], retain_grad=True, detach=False,
                  clone=False) as rec:
        out = r18(x)
        loss = out[:, 3].sum()
        g3, g4 = torch.autograd.grad(loss, [rec["layer3"], rec["layer4"]], retain_graph=True)
        loss.backward()
    torch.testing.assert_close(rec.grad("layer3"), g3)
    torch.testing.assert_close(rec.grad("layer4"), g4)
    r18.zero_grad()


def test_module_called_twice_keeps_all_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(self.lin(x))

    model = Twice()
    x = torch.rand(2, 3)
    with Recorder(model, "lin") as rec:
        model(x)
    first, second = rec.calls("lin")
    torch.testing.assert_close(first, model.lin(x))
    torch.testing.assert_close(second, model.lin(model.lin(x)))
    with pytest.raises(UserError, match="ran 2 times"):
        rec["lin"]


def test_patterns_modules_and_unknown_names(r18):
    found = resolve_layers(r18, "layer4.*.conv2")
    assert list(found) == ["layer4.0.conv2", "layer4.1.conv2"]
    assert list(resolve_layers(r18, [r18.layer2])) == ["layer2"]
    with pytest.raises(LayerNotFound, match="layer4"):
        resolve_layers(r18, "layr4")
    with pytest.raises(LayerNotFound):
        resolve_layers(r18, "nothing.*")


def test_inference_mode_and_autocast(r18):
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode(), Recorder(r18, "layer2") as rec:
        r18(x)
    assert rec["layer2"].shape == (1, 128, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad(), \
            Recorder(r18, "layer1.0.conv1") as rec:
        r18(x)
    assert rec["layer1.0.conv1"].dtype == torch.bfloat16


def test_tokens_to_grid():
    b, c = 2, 5
    grid = torch.arange(b * c * 3 * 3, dtype=torch.float32).reshape(b, c, 3, 3)
    tokens = grid.flatten(2).transpose(1, 2)               # (B, 9, C)
    with_cls = torch.cat([torch.full((b, 1, c), -1.0), tokens], dim=1)
    torch.testing.assert_close(tokens_to_grid(with_cls), grid)

    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Identity()

        def forward(self, x):
            return self.block(x)

    with Recorder(Blocks(), "block", tokens_to_grid=True) as rec:
        rec.model(with_cls)
    torch.testing.assert_close(rec["block"], grid)
