# %% [markdown]
# # neuroprobe in a notebook: hooks -> dissect -> gallery -> compare
#
# A walk through the library on the built-in data: the shipped demo models (a small CNN trained
# on the synthetic concept world, then tuned for saliency or for scene classification) and the
# procedural synthetic world itself (scenes with pixel-exact concept masks and synthetic
# fixations).  Nothing is downloaded.  It is kept small (a few images, one layer, a handful of
# units, a tiny maximization budget) so that it runs in seconds; the same calls take any
# model, layers and concept set.
#
# This file is a percent-format script: open it in Jupyter (jupytext), VS Code or Spyder as a
# notebook, or run it as ``python examples/walkthrough.py [--out FOLDER]``
# (``tests/test_examples.py`` runs it, without network).

# %%
import argparse
import tempfile
import warnings
from pathlib import Path

import torch

import neuroprobe
from neuroprobe.compare import changed_units, count_table
from neuroprobe.concepts import open_concepts
from neuroprobe.dissect import dissect
from neuroprobe.hooks import Recorder
from neuroprobe.models import load
from neuroprobe.visualize.gallery import make_gallery

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
args, _ = parser.parse_known_args()   # a notebook kernel passes its own arguments
out = Path(args.out or tempfile.mkdtemp(prefix="neuroprobe-walkthrough-"))
torch.manual_seed(0)
warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
LAYER = "encoder.block4"

# %% [markdown]
# ## 1. Hooks: record a layer of any model
# `Recorder` names layers by their dotted module names, clones the outputs (in-place ReLUs
# downstream cannot change them) and stops the forward pass after the last one it needs.

# %%
model, meta = load("demo")                       # the demo model, tuned for saliency
world = open_concepts("synthetic", image_size=128, mask_size=64)
images = torch.stack([world[i]["image"] for i in range(4)])
with Recorder(model, LAYER, stop=True) as rec:
    model(images)
acts = rec[LAYER]
print(f"{LAYER}: {tuple(acts.shape)} (images, units, height, width); "
      f"the most active unit on image 0 is {int(acts[0].amax((1, 2)).argmax())}")

# %% [markdown]
# ## 2. Dissect: label every unit with a concept
# Network-Dissection IoU and, because the synthetic world has fixations, the study's
# region-NSS.  `dissect` returns a result whose `repr` is one line; in a notebook it shows as
# a table (`_repr_html_`).  With `out_dir` the run is also written to a folder.

# %%
common = dict(layers=[LAYER], score="both", limit=12, batch_size=6, progress=False,
              concepts_info={"spec": "synthetic"})
tuned = dissect(model, world, out_dir=out / "saliency", model_info={"spec": "demo"}, **common)
print(tuned)

# %% [markdown]
# A run folder loads back as the same kind of object: the units table, the summary, the
# region-NSS table, every unit's IoU with every label, and each unit's top images.

# %%
run = neuroprobe.load_run(out / "saliency")
print(run)
best = max(run.units, key=lambda r: r["score"])
iou = run.iou[LAYER]                             # (units, labels): the labels were chosen from it
print(f"best unit {best['layer']}:{best['unit']} = {best['label']!r} (IoU {best['score']:.3f}); "
      f"its row maximum is {iou[best['unit']].max():.3f} "
      f"at {run.label_names[int(iou[best['unit']].argmax())]!r}")
values, index = run.top_images[LAYER]            # data-set indices of each unit's top images
print(f"unit {best['unit']}'s top images: {index[best['unit']][:5].tolist()}")
try:
    frame = run.to_dataframe()                   # needs pandas
    print(frame[["layer", "unit", "label", "score", "detector"]].head())
except ImportError:
    print("(pandas is not installed: run.units is the same table as a list of dicts)")

# %% [markdown]
# ## 3. Gallery: see what the units respond to
# One card per unit: its top images with the active region outlined, an activation-
# maximization image (a tiny step budget here) and an attribution map.  In a notebook the
# gallery shows as a table with thumbnails.

# %%
gallery = make_gallery(out / "saliency", model=model, dataset=world, detectors_only=True,
                       max_units=3, top_k=4, maximize_steps=8, maximize_size=64,
                       attribution="gradient", tile=48, show_progress=False)
print(gallery)
print("open", gallery.report, "in a browser")

# %% [markdown]
# ## 4. Compare: the same encoder tuned for scene classification
# Dissect the scene-tuned variant with the same options and compare the two runs: detector
# counts per concept side by side, and the units whose label changed.

# %%
scene_model, _ = load("demo-scene")
dissect(scene_model, world, out_dir=out / "scene", model_info={"spec": "demo-scene"}, **common)
runs = [neuroprobe.load_run(out / "saliency"), neuroprobe.load_run(out / "scene")]
table = count_table(runs)
for row in sorted(table, key=lambda r: -abs(r["difference"]))[:5]:
    print(f"{row['label']:>14}: saliency {row['saliency']:2d}, scene {row['scene']:2d}")
changed = changed_units(*runs)
print(f"{len(changed)} of {len(runs[0].units)} units changed label between the two variants")
# the same on the command line:
#   neuroprobe compare OUT/saliency OUT/scene --out OUT/compare
#   neuroprobe dissect --from OUT/saliency --model demo-scene --out OUT/scene2
