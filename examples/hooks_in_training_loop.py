"""Using neuroprobe's hooks inside your own training loop.

Three things people do with hooks while training, shown on a tiny CNN and random data:

1. monitor a layer: log the mean activation and the fraction of dead units of ``features.3`` every
   few steps, without changing the model's code;
2. regularise a layer: an L1 penalty on recorded activations that keeps the autograd graph
   (``detach=False``);
3. probe causally: evaluate with units of a layer ablated (``edit=ablate([...])``).

Run: ``python examples/hooks_in_training_loop.py``
"""
import torch
from torch import nn

from neuroprobe.hooks import Recorder, ablate

torch.manual_seed(0)
model = nn.Sequential()
model.add_module("features", nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)))
model.add_module("flatten", nn.Flatten())
model.add_module("head", nn.Linear(32, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)

# a learnable toy task: the class is the colour channel with the brightest square
x_all = torch.rand(256, 3, 16, 16) * 0.3
y_all = torch.randint(0, 3, (256,))
x_all[torch.arange(256), y_all, 4:12, 4:12] += 0.7

for step in range(60):
    idx = torch.randint(0, 256, (32,))
    x, y = x_all[idx], y_all[idx]
    # record the conv output *with* its graph so that it can be regularised
    with Recorder(model, "features.3", detach=False, clone=False) as rec:
        logits = model(x)
    act = rec["features.3"]
    loss = nn.functional.cross_entropy(logits, y) + 1e-4 * act.abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 20 == 0:
        dead = (act.detach().amax(dim=(0, 2, 3)) <= 0).float().mean()
        print(f"step {step:3d}  loss {loss.item():.3f}  mean act {act.detach().mean():.3f}  "
              f"dead units {dead:.0%}")

model.eval()
with torch.no_grad():
    acc = (model(x_all).argmax(1) == y_all).float().mean()
    with Recorder(model, "features.4") as rec:  # the ReLU after the second conv
        model(x_all)
    strongest = rec["features.4"].mean(dim=(0, 2, 3)).topk(24).indices.tolist()
    with Recorder(model, "features.4", edit=ablate(strongest)):
        acc_ablated = (model(x_all).argmax(1) == y_all).float().mean()
print(f"accuracy {acc:.2f}; with the 24 most active units of features.4 ablated {acc_ablated:.2f}")
