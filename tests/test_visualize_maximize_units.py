"""Batched maximization of many units (issue 16): one batch equals one unit at a time, the
threshold stop, reached-or-reported, lucid's redirected ReLU gradient, determinism."""
import pytest
import torch
from torch import nn

from neuroprobe.errors import UserError
from neuroprobe.hooks import record
from neuroprobe.visualize import maximize as am


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny():
    torch.manual_seed(3)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 6, 3, padding=1))
    model.add_module("relu1", nn.ReLU(inplace=True))
    model.add_module("conv2", nn.Conv2d(6, 8, 3, stride=2, padding=1))
    model.add_module("relu2", nn.ReLU(inplace=True))
    return model.eval()


def _peaks(model, images, units):
    with torch.no_grad():
        out = record(model, images, "relu2")["relu2"]
    return out[torch.arange(len(units)), torch.as_tensor(units)].flatten(1).amax(1)


def test_unit_values_are_the_map_statistics():
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    units = torch.tensor([1, 2])
    torch.testing.assert_close(am.unit_values(out, units, "peak"), torch.tensor([7.0, 23.0]))
    torch.testing.assert_close(am.unit_values(out, units, "mean"), torch.tensor([5.5, 21.5]))
    torch.testing.assert_close(am.unit_values(out, units, "channel"), torch.tensor([5.5, 21.5]))
    torch.testing.assert_close(am.unit_values(out, units, "neuron"), torch.tensor([7.0, 23.0]))
    with pytest.raises(UserError, match="out of range"):
        am.unit_values(out, torch.tensor([0, 3]), "peak")


@pytest.mark.parametrize("thresholds", [None, [0.05, 1e6, 0.2, -1.0]])
def test_one_batch_equals_one_unit_at_a_time(thresholds):
    """Each unit's image starts from its own seed and the transforms of a step are shared, so
    a unit's result does not depend on its batch companions (up to float summation order)."""
    model = _tiny()
    units = [0, 3, 5, 7]
    kw = {"size": 20, "steps": 12, "seed": 4, "objective": "peak", "thresholds": thresholds,
          "check_every": 4, "relu_redirect": True}
    batched = am.maximize_units(model, "relu2", units, batch_size=4, **kw)
    single = am.maximize_units(model, "relu2", units, batch_size=1, **kw)
    pair = am.maximize_units(model, "relu2", units, batch_size=3, **kw)
    for other in (single, pair):
        torch.testing.assert_close(batched.images, other.images, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(batched.peaks, other.peaks, atol=2e-5, rtol=1e-4)
        assert torch.equal(batched.steps_used, other.steps_used)


def test_threshold_stop_and_reached_or_reported():
    model = _tiny()
    units = [0, 4, 3, 6]
    thr = [-1.0, 1e6, 0.05, 0.12]       # unit 3 starts at 0.001, unit 6 at 0.07
    res = am.maximize_units(model, "relu2", units, size=20, steps=40, seed=0, objective="peak",
                            thresholds=thr, check_every=4, relu_redirect=True)
    assert res.images.shape == (4, 3, 20, 20) and res.reached.dtype == torch.bool
    # the reported peak is the statistic of the returned image
    torch.testing.assert_close(res.peaks, _peaks(model, res.images, units), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(res.activations, res.peaks)
    assert res.reached.tolist() == [p > t for p, t in zip(res.peaks.tolist(), thr)]
    assert res.reached[0] and int(res.steps_used[0]) == 0          # above it from the start
    assert not res.reached[1]                                      # unreachable: reported
    assert res.reached[2] and res.reached[3]
    for j in (2, 3):                                               # stopped at a check
        assert int(res.steps_used[j]) % 4 == 0 and 0 < int(res.steps_used[j]) < 40


def test_reached_units_leave_the_batch():
    """Once every unit is above its threshold no further forward pass runs."""
    model = _tiny()
    seen = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        am.maximize_units(model, "relu2", [0, 1, 2], size=16, steps=50, objective="peak",
                          thresholds=[-1.0, -1.0, -1.0])
        assert seen == [3]                                  # one check of the start images
        seen.clear()
        am.maximize_units(model, "relu2", [0, 1, 2], size=16, steps=8, objective="peak",
                          thresholds=[-1.0, 1e6, 1e6], check_every=4)
        # check (3) then 4 steps of the two left (2 each), check (2), 4 steps, check (2)
        assert seen == [3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    finally:
        handle.remove()


def _dead_unit_model():
    """Unit 0 = ReLU(sum of the colour channels - 2): off on grey images (the start); its
    ordinary gradient is zero everywhere, so plain gradient ascent cannot start."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight[:] = 1.0
        conv.bias[:] = torch.tensor([-2.0, -2.0])
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("relu", nn.ReLU())
    return model.eval()


def test_redirected_relu_lets_a_dead_unit_start():
    model = _dead_unit_model()
    kw = {"size": 12, "steps": 64, "seed": 0, "objective": "peak", "thresholds": [0.05],
          "lr": 0.1, "transforms": None}
    plain = am.maximize_units(model, "relu", [0], **kw)
    redirected = am.maximize_units(model, "relu", [0], relu_redirect=True, **kw)
    assert float(plain.peaks[0]) == 0.0 and not plain.reached[0]
    assert redirected.reached[0] and float(redirected.peaks[0]) > 0.05
    # the module is an ordinary ReLU again afterwards
    assert "forward" not in vars(model.relu)


def test_redirected_relu_values_and_gradients():
    """Forward values are ReLU's; an item with some gradient through the ReLU gets exactly
    ReLU's gradient, an item with none gets the redirected one (lucid's rule)."""
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, -2.0, -0.5]], requires_grad=True)
    relu = nn.ReLU()
    with am.redirected_relu(nn.Sequential(relu)):
        y = relu(x)
        assert torch.equal(y, torch.relu(x))
        grad = torch.tensor([[0.5, -1.0, 2.0], [1.0, -1.0, -3.0]])   # dLoss/dy
        y.backward(grad)
    expected = torch.tensor([[0.5, 0.0, 2.0],      # item 0: ordinary ReLU gradient
                             [0.0, -1.0, -3.0]])   # item 1: redirected, positive ones dropped
    torch.testing.assert_close(x.grad, expected)


def test_deterministic_and_model_left_as_found():
    model = _tiny().train()
    flags = [p.requires_grad for p in model.parameters()]
    kw = {"size": 16, "steps": 5, "objective": "peak", "thresholds": [0.1, 0.2],
          "relu_redirect": True}
    a = am.maximize_units(model, "relu2", [1, 2], seed=5, **kw)
    b = am.maximize_units(model, "relu2", [1, 2], seed=5, **kw)
    c = am.maximize_units(model, "relu2", [1, 2], seed=6, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.peaks, b.peaks)
    assert not torch.equal(a.images, c.images)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_user_errors():
    model = _tiny()
    with pytest.raises(UserError, match="thresholds for 2 units"):
        am.maximize_units(model, "relu2", [0, 1], thresholds=[1.0], size=8, steps=1)
    with pytest.raises(UserError, match="unknown unit objective"):
        am.maximize_units(model, "relu2", [0], objective="median", size=8, steps=1)
    with pytest.raises(UserError, match="no units"):
        am.maximize_units(model, "relu2", [], size=8, steps=1)


def test_adam_equals_torch_adam():
    from neuroprobe.visualize.maximize.units import _Adam

    torch.manual_seed(0)
    target = torch.randn(5, 4)
    a = torch.zeros(5, 4, requires_grad=True)
    b = torch.zeros(5, 4, requires_grad=True)
    ours, theirs = _Adam([a], lr=0.05), torch.optim.Adam([b], lr=0.05)
    for _ in range(30):
        for p, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            ((p - target) ** 3).abs().sum().backward()
            opt.step()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(a, torch.zeros(5, 4))
