"""Attributions through Captum: shapes, completeness, and hand-built models with known answers."""
import numpy as np
import pytest
import torch
from torch import nn

from neuroprobe.errors import UserError
from neuroprobe.visualize import attribute as at

H = W = 12


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_unit_model():
    """conv1x1 3->2 without bias: unit 0 = sum_c w_c x_c per pixel."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]]).view(2, 3, 1, 1)
    model = nn.Sequential()
    model.add_module("conv", conv)
    return model.eval(), torch.tensor([0.5, -1.0, 2.0])


class RedSaliency(nn.Module):
    """A 'saliency model' whose prediction is the red channel: (B, 1, H, W)."""

    def forward(self, x):
        return x[:, :1] * 1.0


class MeanClassifier(nn.Module):
    """logits = A @ (per-channel image mean)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc.weight[:] = torch.tensor([[1.0, 0.0, -2.0], [0.0, 3.0, 0.0]])

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))


def test_unit_known_answer_linear(images):
    model, w = _linear_unit_model()
    ig = at.attribute_unit(model, "conv", 0, images, n_steps=8)
    grad = at.attribute_unit(model, "conv", 0, images, method="gradient")
    expected_grad = (w / (H * W)).view(1, 3, 1, 1).expand_as(images)
    torch.testing.assert_close(grad, expected_grad)
    torch.testing.assert_close(ig, images * expected_grad)        # linear: IG = x * gradient
    batched = at.attribute_units(model, "conv", [0, 0], images, n_steps=8)
    torch.testing.assert_close(batched, ig)


def test_neuron_attribution_stays_in_receptive_field(images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    g = at.attribute_unit(model, "2", 1, images, method="gradient", position=(5, 6))
    support = g.abs().sum((0, 1)) > 0
    ys, xs = torch.nonzero(support, as_tuple=True)
    assert support.any()
    assert ys.min() >= 3 and ys.max() <= 7 and xs.min() >= 4 and xs.max() <= 8   # 5x5 field


def test_integrated_gradients_completeness(images):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2,
                                                                              padding=1),
                          nn.ReLU()).eval()
    f = at.unit_function(model, "3")
    ig = at.attribute_unit(model, "3", 2, images, n_steps=64, internal_batch_size=16)
    assert ig.shape == images.shape
    delta = at.completeness_delta(f, ig, images, None, 2)
    scale = f(images, 2).detach().abs().max().clamp_min(1e-3)
    assert (delta.abs() / scale).max() < 0.02
    # the batched route reports Captum's own convergence delta
    ig2, d2 = at.attribute_units(model, "3", [2, 5], images, n_steps=64, return_delta=True)
    assert ig2.shape == images.shape
    assert (d2.abs() / scale).max() < 0.02
    torch.testing.assert_close(ig2[0], ig[0], atol=1e-5, rtol=1e-3)


def test_saliency_region_known_answer(images):
    model = RedSaliency()
    mask = torch.zeros(H, W)
    mask[2:6, 3:9] = 1
    ig = at.attribute_output(model, images, region=mask, n_steps=4)
    expected = torch.zeros_like(images)
    expected[:, 0] = images[:, 0] * mask
    torch.testing.assert_close(ig, expected)
    grad = at.attribute_output(model, images, region=mask, method="gradient")
    torch.testing.assert_close(grad[:, 0], mask.expand(2, H, W))
    assert grad[:, 1:].abs().max() == 0
    # per-image masks, at a lower resolution (resized to the output)
    small = torch.zeros(2, H // 2, W // 2)
    small[0, 0, 0] = 1
    g2 = at.attribute_output(model, images, region=small, method="gradient")
    assert g2[0, 0, :2, :2].eq(1).all() and g2[0, 0].sum() == 4 and g2[1].abs().sum() == 0


def test_class_target_known_answer_and_completeness(images):
    model = MeanClassifier()
    ig, delta = at.attribute_output(model, images, target=0, n_steps=4, return_delta=True)
    expected = images * torch.tensor([1.0, 0.0, -2.0]).view(1, 3, 1, 1) / (H * W)
    torch.testing.assert_close(ig, expected)
    assert delta.abs().max() < 1e-5
    ig1 = at.attribute_output(model, images, target=[1, 1], n_steps=4)
    assert ig1[:, [0, 2]].abs().max() == 0 and (ig1[:, 1] > 0).all()


def test_saliency_model_completeness_on_logits():
    from neuroprobe.models import build_saliency

    torch.manual_seed(0)
    model = build_saliency("small").eval()
    with torch.no_grad():     # an untrained decoder's outputs are ~1e-4: scale them to O(1)
        model.decoder.conv.weight.mul_(1000)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(32, 32)
    mask[4:12, 8:20] = 1
    ig, delta = at.attribute_output(model, x, region=mask, raw=True, n_steps=32,
                                    return_delta=True, internal_batch_size=8)
    assert ig.shape == x.shape
    # positive and negative pixel contributions cancel heavily in this random network, so the
    # discretisation error is judged against the total attribution mass
    assert delta.abs().item() < 0.01 * ig.abs().sum().item()
    f = at.output_function(model, raw=True)
    total = (f(x, mask) - f(torch.zeros_like(x), mask)).item()
    assert ig.sum().item() - total == pytest.approx(delta.item(), abs=1e-4)


def test_gradcam_at_own_layer_is_rectified_activation(images):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, stride=2, padding=1))
    cam = at.gradcam(model, "1", images, unit=3, upsample=False)
    with torch.no_grad():
        a = model(images)[:, 3:4]
    torch.testing.assert_close(cam, torch.relu(a) / a[0, 0].numel())
    up = at.gradcam(model, "0", images, unit=[1, 2], unit_layer="1")
    assert up.shape == (2, 1, H, W) and (up >= 0).all()


def test_gradcam_for_scene_and_saliency_models():
    from neuroprobe.models import build_saliency, build_scene

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    scene = build_scene("small", 4).eval()
    cam = at.gradcam(scene, "encoder.block3", x)
    assert cam.shape == (2, 1, 32, 32) and torch.isfinite(cam).all()
    sal = build_saliency("small").eval()
    cam = at.gradcam(sal, "encoder.block3", x, region=torch.ones(32, 32), raw=True)
    assert cam.shape == (2, 1, 32, 32)


def test_overlay_and_map(images):
    heat = torch.zeros(H, W)
    heat[0, 0] = 5.0
    o = at.overlay(images[0], heat, alpha=0.5, percentile=100)
    assert o.shape == (H, W, 3) and o.dtype == np.uint8
    # zero heat leaves the greyed image (changed with issue 16: the photo is greyed so that the
    # colour map reads); the hot pixel is coloured
    base = (at.greyed(images[0]) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(o[1:, 1:], base[1:, 1:])
    assert (o[1:, 1:, 0] == o[1:, 1:, 1]).all() and (o[1:, 1:, 1] == o[1:, 1:, 2]).all()
    assert not np.array_equal(o[0, 0], base[0, 0])
    m = at.attribution_map(torch.tensor([[[[1.0]], [[-3.0]], [[0.5]]]]))
    assert m.item() == pytest.approx(1.5)
    assert at.attribution_map(torch.tensor([[[[1.0]], [[-3.0]]]]), signed=True).item() == -2.0


def test_bad_input_is_one_clear_line(images):
    model, _ = _linear_unit_model()
    with pytest.raises(UserError, match="out of range"):
        at.attribute_unit(model, "conv", 7, images)
    with pytest.raises(UserError, match="unknown attribution method"):
        at.attribute_unit(model, "conv", 0, images, method="lime")
    with pytest.raises(UserError, match="one unit per image"):
        at.attribute_units(model, "conv", [0], images)
    with pytest.raises(UserError, match="region"):
        at.attribute_output(MeanClassifier(), images, region=torch.ones(H, W))
    with pytest.raises(UserError, match="out of range"):
        at.attribute_output(MeanClassifier(), images, target=5)
    with pytest.raises(UserError, match="unknown layer"):
        at.attribute_unit(model, "conv9", 0, images)


# -- the methods added with issue 16: SmoothGrad, occlusion, gradient SHAP, guided Grad-CAM ------

def test_new_methods_known_answers_on_a_linear_unit(images):
    """Unit 0 of a bias-free 1x1 conv, averaged over positions: f(x) = sum_c w_c mean(x_c)."""
    model, w = _linear_unit_model()
    grad = (w / (H * W)).view(1, 3, 1, 1).expand_as(images)
    # SmoothGrad averages gradients of noisy copies: a linear unit's gradient is constant
    sg = at.attribute_unit(model, "conv", 0, images, method="smoothgrad",
                           options={"samples": 4, "noise": 0.3})
    torch.testing.assert_close(sg, grad)
    # gradient SHAP from a black baseline alone: gradient x (x - 0), as integrated gradients
    shap = at.attribute_units(model, "conv", [0, 0], images, method="gradient_shap",
                              baselines=torch.zeros(1, 3, H, W))
    torch.testing.assert_close(shap, images * grad)
    # occluding one pixel (all colour channels) with 0 removes sum_c w_c x_c / (H W) from f;
    # Captum gives that drop to every element of the window
    occ = at.attribute_unit(model, "conv", 0, images, method="occlusion",
                            options={"window": 1, "stride": 1})
    drop = (images * w.view(1, 3, 1, 1)).sum(1, keepdim=True) / (H * W)
    torch.testing.assert_close(occ, drop.expand_as(images))
    # guided backprop of a model without ReLUs is the gradient; Grad-CAM at the unit's own
    # layer is its rectified map / (H W): guided Grad-CAM is their product
    ggc = at.attribute_unit(model, "conv", 0, images, method="guided_gradcam")
    cam = drop.clamp(min=0) * 1.0
    torch.testing.assert_close(ggc, grad * cam)


def test_input_x_gradient_is_the_input_times_its_gradient(images):
    """Brute force on a ReLU network: x * d f_u(x) / dx with f_u the spatial mean of unit u,
    which is also integrated gradients from 0 with one right-Riemann step."""
    model = _relu_cnn().eval()
    units = [1, 4]
    ixg = at.attribute_units(model, model[2], units, images, method="input_x_gradient")
    x = images.clone().requires_grad_(True)
    out = model[:3](x)                      # the unit's layer, before its in-place ReLU
    f = torch.stack([out[i, u].mean() for i, u in enumerate(units)])
    (g,) = torch.autograd.grad(f.sum(), x)
    torch.testing.assert_close(ixg, images * g)
    ig1 = at.attribute_units(model, model[2], units, images, method="ig", n_steps=1)
    assert not torch.allclose(ig1, ixg)     # Captum's default IG rule is Gauss-Legendre
    assert at.is_signed("ixg") and at.method_label("ixg", short=True) == "in x grad"


def _relu_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


@pytest.mark.parametrize("method", at.METHODS)
def test_every_method_gives_finite_maps_of_the_image_shape(images, method):
    model = _relu_cnn().eval()
    opts = {"samples": 3, "window": 4, "stride": 4}
    a = at.attribute_units(model, model[2], [1, 4], images, method=method, n_steps=4,
                           options=opts)
    assert a.shape == images.shape and torch.isfinite(a).all() and a.abs().sum() > 0
    o = at.attribute_output(model, images, target=2, method=method, n_steps=4, options=opts)
    assert o.shape == images.shape and torch.isfinite(o).all()
    if method not in ("guided_gradcam", "occlusion"):   # RedSaliency has no conv layer;
        # occlusion hides all colour channels of a patch together
        r = at.attribute_output(RedSaliency(), images, region=torch.ones(H, W), method=method,
                                n_steps=4, options=opts)
        # the red channel alone carries the prediction
        assert torch.isfinite(r).all() and r[:, 1:].abs().max() < 1e-6 < r[:, 0].abs().max()
    # in-place ReLUs are put back after guided backpropagation
    assert model[1].inplace and model[3].inplace


def test_layers_may_be_module_objects(images):
    model, _ = _linear_unit_model()
    by_name = at.attribute_unit(model, "conv", 0, images, method="gradient")
    torch.testing.assert_close(at.attribute_unit(model, model.conv, 0, images,
                                                 method="gradient"), by_name)
    torch.testing.assert_close(at.attribute_units(model, model.conv, [0, 0], images,
                                                  method="gradient"), by_name)
    torch.testing.assert_close(at.gradcam(model, model.conv, images, unit=1),
                               at.gradcam(model, "conv", images, unit=1))
    f = at.unit_function(model, model.conv)
    assert f(images, 0).shape == (2,)
    with pytest.raises(UserError, match="not a sub-module"):
        at.attribute_unit(model, nn.Conv2d(3, 2, 1), 0, images)


def test_model_mode_is_restored(images):
    """Attribution runs in eval mode and leaves each sub-module's own mode as it found it."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    model.train()
    model[3].eval()                         # a mixed state must survive too
    before = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    seen = []
    model[3].register_forward_hook(lambda m, i, o: seen.append(model[1].training))
    at.attribute_units(model, "1", [0, 1], images, method="integrated_gradients", n_steps=2)
    at.attribute_unit(model, model[1], 0, images, method="smoothgrad", options={"samples": 2})
    at.attribute_output(model, images, method="gradient")
    at.gradcam(model, "0", images, unit=0)
    assert [m.training for m in model.modules()] == before
    assert seen and not any(seen)           # BatchNorm ran in eval mode
    torch.testing.assert_close(model[1].running_mean, stats)   # and did not update its stats
    with pytest.raises(UserError):          # an error inside still restores the modes
        at.attribute_unit(model, "1", 99, images)
    assert [m.training for m in model.modules()] == before


def test_overlay_colours_signed_and_magnitude(images):
    """A signed map is red where positive, blue where negative, grey where 0; a magnitude map
    uses the sequential map (bright where large); tiles carry visible colour."""
    import matplotlib.colors as mc

    heat = torch.zeros(H, W)
    heat[:, :4] = 1.0
    heat[:, -4:] = -1.0
    o = at.overlay(images[0], heat).astype(float) / 255
    hsv = mc.rgb_to_hsv(o)
    assert (o[:, :4, 0] > o[:, :4, 2] + 0.15).all()          # red
    assert (o[:, -4:, 2] > o[:, -4:, 0] + 0.15).all()        # blue
    assert (hsv[:, :4, 1] > 0.5).all() and (hsv[:, -4:, 1] > 0.5).all()
    assert hsv[:, 5:7, 1].max() < 1e-6                       # zero: grey, no colour
    m = at.overlay(images[0], heat, signed=False).astype(float) / 255
    # |heat| = 1 on both sides: the same colour from the sequential map (up to the 15 % of the
    # grey image that still shows through)
    torch.testing.assert_close(torch.tensor(m[:, :4]), torch.tensor(m[:, -4:]), atol=0.08,
                               rtol=0)
    assert (mc.rgb_to_hsv(m)[:, :4, 1] > 0.5).all()
    assert at.is_signed("ig") and at.is_signed("occlusion") and not at.is_signed("gradcam")
    bar = at.colorbar_strip(20, 3, signed=True)
    assert bar.shape == (3, 20, 3) and bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]


def test_methods_run_without_captum_warnings(images):
    """Nothing for a user to act on reaches the terminal: the inputs carry requires_grad
    before Captum sees them, and guided Grad-CAM's notice about its ReLU hooks is dropped."""
    import warnings

    model = _relu_cnn().eval()
    opts = {"samples": 2, "window": 4, "stride": 4}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for method in at.METHODS:
            at.attribute_units(model, model[2], [1, 4], images, method=method, n_steps=2,
                               options=opts)
            at.attribute_output(model, images, target=2, method=method, n_steps=2,
                                options=opts)
        for method in ("gradient", "integrated_gradients"):   # Captum's Neuron* classes
            at.attribute_unit(model, model[2], 1, images, method=method, n_steps=2)
            at.attribute_unit(model, model[2], 1, images, method=method, n_steps=2,
                              position=(3, 3))
    assert [str(w.message) for w in caught] == []
