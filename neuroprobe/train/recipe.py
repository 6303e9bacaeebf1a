"""One recipe for every model variant of the study: build, freeze, train, validate, resume.

The variants follow He et al., "Understanding and Visualizing Deep Visual Saliency Models"
(CVPR 2019):

``frozen``
    Setup I of the study: the encoder is a fixed feature extractor (parameters not trained,
    batch-norm statistics not updated); only the decoder (or classifier) trains.
``finetune-last``
    The encoder's last block (``conv5_x`` of VGG-16, ``layer4`` of a ResNet, ``block4`` of the
    small encoder: :attr:`~neuroprobe.models.encoders.EncoderInfo.last_block`) trains too.
``finetune-all``
    Every parameter trains.

Tasks: ``saliency`` (encoder + the study's decoder, loss negative NSS by default, see
:mod:`.losses`), ``scene`` (encoder + classifier, cross-entropy; the study's control that
fine-tunes the same encoder on the same images for scene classification), and ``recognition``
(encoder + a 1x1 convolution per class + global max pooling, binary cross-entropy on which
object labels occur in the image: the weakly supervised recognition head of Oquab, Bottou, Laptev
& Sivic, "Is object localization for free?", CVPR 2015).  Recognition on the synthetic world
is the offline stand-in for ImageNet pretraining.

Defaults follow the study for VGG-16: Adam, learning rate 5e-3 multiplied by 0.8 after every
epoch, batch 5, 224x224 inputs, 20 epochs.

Reproducibility and resume: the order of images in epoch ``e`` is a permutation drawn from a
generator seeded with ``(seed, e)``; the model is initialised from ``seed``; deterministic
algorithms are switched on while training.  After every epoch the model is written as a
neuroprobe checkpoint (``OUT``) and the training state (model, optimizer, scheduler, RNG states,
epoch, history) as ``OUT.resume.pt``, so ``--resume`` continues from the last finished epoch and
ends with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import pickle
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, UserError
from ..io import _json_default, atomic_path, save_torch
from ..models import zoo
from ..models.adapters import DECODERS, Normalize, SaliencyModel, SceneModel, build_encoder_only
from ..models.checkpoint import save
from ..models.encoders import build_encoder, encoder_info, encoder_state_for, load_state_strict
from ..saliency.metrics import (evaluate_batch, gaussian_density, ground_truths,
                                metric_title, mit_sigma)
from ..figures import wrap_to_figure
from ..utils import model_device, progress, versions
from . import losses as L
from .data import load_task_data

log = logging.getLogger(__name__)

VARIANTS = ("frozen", "finetune-last", "finetune-all")
TASKS = ("saliency", "scene", "recognition")
RESUME_SUFFIX = ".resume.pt"


@dataclass
class TrainConfig:
    """Everything that determines a trained variant (written into its checkpoint)."""

    task: str = "saliency"
    encoder: str = "vgg16"
    weights: str | None = "imagenet"
    variant: str = "frozen"
    data: str = "synthetic"
    labels: str | None = None
    loss: str = "nss"
    decoder: str = "conv1x1"
    epochs: int = 20
    lr: float = 5e-3
    lr_decay: float = 0.8
    batch_size: int = 5
    input_size: tuple = (224, 224)
    seed: int = 0
    limit: int | None = None
    val: int | None = None
    weight_decay: float = 0.0
    nss_ddof: int = 1
    density_sigma: float | None = None   # pixels at the input size; None -> MIT sigma of the size
    val_metrics: tuple = ("nss", "cc", "kl", "auc_judd")
    val_protocol: str = "mit"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}", hint="saliency, scene or recognition")
        if self.variant not in VARIANTS:
            raise UserError(f"unknown variant {self.variant!r}",
                            hint="use frozen, finetune-last or finetune-all")
        info = encoder_info(self.encoder)
        if str(self.weights).lower() == "imagenet" and info.torchvision_name is None:
            raise CheckpointError(f"encoder {self.encoder!r} has no ImageNet weights",
                                  hint="use --weights none, demo or a path")
        self.input_size = tuple(int(v) for v in (self.input_size if isinstance(
            self.input_size, (list, tuple)) else (self.input_size, self.input_size)))
        self.val_metrics = tuple(self.val_metrics)
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            if int(value) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.task == "saliency":
            L.parse_loss(self.loss)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["val_metrics"] = list(self.val_metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- models -----------------------------------------------------------------------------------

class RecognitionModel(nn.Module):
    """Encoder + per-class 1x1 convolution + global max pooling (Oquab et al., CVPR 2015)."""

    task = "recognition"

    def __init__(self, encoder: str = "small", num_classes: int = 14, weights=None):
        super().__init__()
        info = encoder_info(encoder)
        self.normalize = Normalize(info.mean, info.std)
        self.encoder = build_encoder(encoder, weights)
        self.head = nn.Conv2d(info.channels, int(num_classes), 1)

    def forward(self, x):
        return self.head(self.encoder(self.normalize(x))).amax(dim=(2, 3))


def encoder_state(weights: str) -> dict:
    """Encoder state dict from a path: a plain state dict, or any neuroprobe checkpoint whose
    module has an ``encoder`` (its ``encoder.*`` entries)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist",
                              hint="pass --weights imagenet, none, demo or an existing file")
    try:
        with warnings.catch_warnings():   # torch's pickle-protocol notes are not for users
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds pickled Python objects (or a pickle the safe loader cannot read), "
            "which can run arbitrary code when loaded, so it was not loaded",
            hint="save the encoder as a plain state dict: "
            "torch.save(model.state_dict(), PATH)") from None
    except Exception as err:
        raise CheckpointError(f"{path} is not a loadable weights file ({type(err).__name__})",
                              hint="expected a state dict or a neuroprobe checkpoint") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict")
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def build_encoder_weights(name: str, weights):
    """An encoder from ``weights`` = none | imagenet | demo | PATH (see :func:`encoder_state`)."""
    w = None if weights is None else str(weights)
    if w is None or w.lower() in ("none", "imagenet"):
        return build_encoder(name, None if w is None or w.lower() == "none" else "imagenet")
    if w.lower() == "demo":
        if name != "small":
            raise CheckpointError(f"--weights demo is the pretrained small encoder, not {name}",
                                  hint="use --encoder small, or --weights imagenet|none|PATH")
        w = str(zoo.builtin_path("demo-pretrained"))
    enc = build_encoder(name, None)
    state = encoder_state_for(name, encoder_state(w))  # e.g. a CIFAR file's module./linear.
    load_state_strict(enc, {k: v.float() for k, v in state.items()}, source=w)
    return enc


def build_model(cfg: TrainConfig, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """The module of a task with its encoder weights, and its architecture spec."""
    info = encoder_info(cfg.encoder)
    torch.manual_seed(cfg.seed)
    enc = build_encoder_weights(cfg.encoder, cfg.weights)
    if cfg.task == "saliency":
        if cfg.decoder not in DECODERS:
            raise UserError(f"unknown decoder {cfg.decoder!r}", hint=", ".join(DECODERS))
        model = SaliencyModel(enc, DECODERS[cfg.decoder](info.channels), info.mean, info.std)
        arch = {"builder": "saliency", "kwargs": {"encoder": cfg.encoder, "decoder": cfg.decoder}}
    elif cfg.task == "scene":
        model = SceneModel(enc, info.channels, int(num_classes), info.mean, info.std)
        arch = {"builder": "scene", "kwargs": {"encoder": cfg.encoder,
                                               "num_classes": int(num_classes)}}
    else:
        model = RecognitionModel(cfg.encoder, int(num_classes))
        model.encoder.load_state_dict(enc.state_dict())
        arch = {"builder": "encoder", "kwargs": {"encoder": cfg.encoder}}  # saved: the trunk
    return model, arch


def setup_variant(model: nn.Module, variant: str, encoder: str) -> list[nn.Parameter]:
    """Set ``requires_grad`` for a variant and return the parameters to optimise."""
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}", hint=", ".join(VARIANTS))
    last = set(encoder_info(encoder).last_block)
    for name, child in model.encoder.named_children():
        train = variant == "finetune-all" or (variant == "finetune-last" and name in last)
        for p in child.parameters():
            p.requires_grad_(train)
    return [p for p in model.parameters() if p.requires_grad]


def set_modes(model: nn.Module, variant: str, encoder: str) -> None:
    """Training mode for what trains; eval mode (frozen batch-norm statistics) for the rest."""
    model.train()
    last = set(encoder_info(encoder).last_block)
    for name, child in model.encoder.named_children():
        train = variant == "finetune-all" or (variant == "finetune-last" and name in last)
        child.train(train)


# -- batches ----------------------------------------------------------------------------------

def fixation_maps(fixations: list, size: tuple[int, int]) -> torch.Tensor:
    """Count maps ``(B, 1, H, W)``: fixations rounded to pixels (outside ones dropped)."""
    out = torch.zeros((len(fixations), 1, *size))
    for i, f in enumerate(fixations):
        f = np.asarray(f, dtype=np.float64).reshape(-1, 2)
        c, r = np.round(f[:, 0]).astype(np.int64), np.round(f[:, 1]).astype(np.int64)
        ok = (r >= 0) & (r < size[0]) & (c >= 0) & (c < size[1])
        flat = torch.from_numpy(r[ok] * size[1] + c[ok])
        out[i, 0].view(-1).index_add_(0, flat, torch.ones(len(flat)))
    return out


def densities(fixations: list, size: tuple[int, int], sigma: float | None) -> torch.Tensor:
    """Fixation densities ``(B, 1, H, W)`` (Gaussian, sigma in pixels; see
    :func:`neuroprobe.saliency.metrics.gaussian_density`)."""
    s = float(sigma) if sigma else mit_sigma(size)
    out = torch.zeros((len(fixations), 1, *size))
    for i, f in enumerate(fixations):
        f = np.asarray(f, dtype=np.float64).reshape(-1, 2)
        c, r = np.round(f[:, 0]), np.round(f[:, 1])
        ok = (r >= 0) & (r < size[0]) & (c >= 0) & (c < size[1])
        if ok.any():
            out[i, 0] = torch.from_numpy(gaussian_density(r[ok], c[ok], size, s)).float()
    return out


def _batch_images(data, idx, device=None) -> torch.Tensor:
    x = data.images[idx]
    return (x if device is None else x.to(device)).float().div_(255.0)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def compute_loss(model, cfg: TrainConfig, data, idx, loss_weights=None):
    dev = model_device(model)
    x = _batch_images(data, idx, dev)
    if cfg.task == "saliency":
        pred = model(x)
        fx = [data.fixations[i] for i in idx.tolist()]
        fm = fixation_maps(fx, tuple(x.shape[-2:])).to(dev)
        dens = densities(fx, tuple(x.shape[-2:]), cfg.density_sigma).to(dev) \
            if L.needs_density(loss_weights) else None
        return L.combined_loss(pred, fm, dens, loss_weights, ddof=cfg.nss_ddof)[0]
    logits = model(x)
    if cfg.task == "scene":
        return F.cross_entropy(logits, data.labels[idx].to(dev))
    return F.binary_cross_entropy_with_logits(logits, data.targets[idx].to(dev))


# -- validation -------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 16, desc: str | None = None):
    """Model outputs for every image of ``data`` (maps ``(N, H, W)`` or logits ``(N, K)``)."""
    model.eval()
    outs = []
    starts = range(0, len(data), batch_size)
    if desc:
        starts = progress(starts, desc=desc, unit="batch", leave=False)
    for s in starts:
        idx = torch.arange(s, min(s + batch_size, len(data)))
        out = model(_batch_images(data, idx, model_device(model)))
        outs.append((out[:, 0] if out.dim() == 4 else out).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def validate(model: nn.Module, cfg: TrainConfig, data) -> dict:
    """Validation scores: saliency metrics (mean over images, at the input size, protocol
    ``cfg.val_protocol``), scene accuracy, or recognition mean average precision."""
    out = predict(model, data, max(cfg.batch_size, 8))
    if cfg.task == "saliency":
        gts = ground_truths([np.asarray(f, np.float64) for f in data.fixations],
                            shapes=[cfg.input_size] * len(data))
        rows = evaluate_batch(out.numpy().astype(np.float64), gts, (cfg.val_protocol,),
                              cfg.val_metrics, seed=cfg.seed)
        return {m: float(np.nanmean([r[m] for r in rows])) for m in cfg.val_metrics}
    if cfg.task == "scene":
        return {"accuracy": float((out.argmax(1) == data.labels).float().mean())}
    return {"mAP": mean_average_precision(out, data.targets)}


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes (with positives) of the average precision of the ranking by score."""
    aps = []
    for k in range(targets.shape[1]):
        t = targets[:, k].numpy() > 0.5
        if not t.any():
            continue
        order = np.argsort(-scores[:, k].numpy(), kind="stable")
        hits = t[order]
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((prec * hits).sum() / hits.sum()))
    return float(np.mean(aps)) if aps else float("nan")


# -- the loop ---------------------------------------------------------------------------------

@contextlib.contextmanager
def deterministic(threads: int | None = None):
    """Deterministic algorithms (and optionally a fixed thread count) inside the block."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_threads = torch.get_num_threads()
    # warn_only: on GPUs a few kernels (bilinear upsampling backward) have no deterministic
    # version; on the CPU every operation used here is deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def resume_path(out: Path) -> Path:
    return Path(str(out) + RESUME_SUFFIX)


def _same_recipe(a: dict, b: dict) -> list[str]:
    skip = {"epochs"}
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def fit(model: nn.Module, arch: dict, cfg: TrainConfig, train, val, out: Path, *,
        resume: bool = False, metadata: dict | None = None, plot: bool = True,
        save_dtype: torch.dtype | None = None, desc: str = "train", device=None) -> dict:
    """Train ``model`` per ``cfg`` on ``train``, validate on ``val`` after every epoch, and
    write the checkpoint ``out`` (plus ``out.resume.pt`` and ``out.curve.png``).

    Returns the history (a list of per-epoch dicts) inside a summary dict.
    """
    out = Path(out)
    if device is not None:
        model.to(device)
    params = setup_variant(model, cfg.variant, cfg.encoder)
    if not params:
        raise UserError("nothing to train: every parameter is frozen")
    loss_weights = L.parse_loss(cfg.loss) if cfg.task == "saliency" else None
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    history: list[dict] = []
    start = 0
    rpath = resume_path(out)
    if resume:
        if not rpath.is_file():
            raise UserError(f"nothing to resume: {rpath} does not exist",
                            hint="start without --resume, or pass the --out of the earlier run")
        state = torch.load(rpath, map_location="cpu", weights_only=True)
        diff = _same_recipe(state["config"], cfg.to_dict())
        if diff:
            raise UserError(f"{rpath} was written with a different recipe ({', '.join(diff)})",
                            hint="resume with the same options (only --epochs may grow)")
        model.load_state_dict(state["model"])  # keeps the model's device
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        start = int(state["epoch"])
        log.info(f"resuming {out} after epoch {start}")
    n = len(train)
    bs = int(cfg.batch_size)
    with deterministic():
        for epoch in range(start, int(cfg.epochs)):
            set_modes(model, cfg.variant, cfg.encoder)
            order = epoch_order(n, cfg.seed, epoch)
            batches = [order[i:i + bs] for i in range(0, n, bs)]
            total, count = 0.0, 0
            bar = progress(batches, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                           leave=False)
            lr = opt.param_groups[0]["lr"]
            for idx in bar:
                loss = compute_loss(model, cfg, train, idx, loss_weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            sched.step()
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": total / max(count, 1)}
            if val is not None and len(val):
                row.update({f"val_{k}": v for k, v in validate(model, cfg, val).items()})
            history.append(row)
            log.info(f"{desc} epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            meta = dict(metadata or {})
            meta.update(task=meta.get("task", cfg.task), variant=meta.get("variant", cfg.variant),
                        train_config=cfg.to_dict(), history=history,
                        input_size=list(cfg.input_size), versions=versions())
            to_save = model
            if cfg.task == "recognition":
                to_save = build_encoder_only(cfg.encoder, None)
                to_save.encoder.load_state_dict(model.encoder.state_dict())
            if save_dtype is not None:
                to_save = copy.deepcopy(to_save).to(save_dtype)
            save(out, to_save, arch, plain(meta))
            save_torch({"config": cfg.to_dict(), "epoch": epoch + 1, "history": history,
                        "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "torch_rng": torch.get_rng_state()}, rpath)
    if plot and history:
        plot_curve(history, out.with_suffix(".curve.png"), title=f"{cfg.task} {cfg.variant} "
                   f"({cfg.encoder}, {cfg.data})")
    return {"checkpoint": str(out), "history": history}


def plain(obj):
    """A JSON round trip: plain dicts, lists, str, numbers (``torch.load(weights_only=True)``
    refuses str subclasses such as ``torch.__version__``)."""
    def default(o):
        try:
            return _json_default(o)
        except TypeError:
            return str(o)

    return json.loads(json.dumps(obj, default=default))


def plot_curve(history: list[dict], path: Path, title: str = "") -> Path:
    """Training loss and each validation score per epoch, one panel each (every panel says
    whether higher or lower is better), as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [h["epoch"] for h in history]
    vals = sorted(k for k in history[0] if k.startswith("val_"))
    panels = [("train_loss", "training loss (lower is better)")] + [
        (k, "validation " + metric_title(k[4:])) for k in vals]
    cols = min(3, len(panels))
    nrow = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(3.8 * cols, 2.9 * nrow + 0.5),
                             squeeze=False)
    for k, (key, name) in enumerate(panels):
        ax = axes[k // cols][k % cols]
        ax.plot(ep, [h.get(key, math.nan) for h in history], "o-", color=f"C{k}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for k in range(len(panels), nrow * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(wrap_to_figure(fig, title, 10), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def train(cfg: TrainConfig, out, *, resume: bool = False, data=None, metadata=None,
          plot: bool = True, save_dtype=None, device=None) -> dict:
    """Load the data named by ``cfg.data``, build the model and :func:`fit` it.

    ``data`` = ``(train, val, description)`` skips loading (used by the demo builder).
    """
    early = None
    if cfg.task == "saliency":  # weights problems surface before minutes of data loading
        early = build_model(cfg)
    if data is None:
        task = cfg.task
        data = load_task_data(cfg.data, task, cfg.input_size, limit=cfg.limit, val=cfg.val,
                              labels=cfg.labels)
    tr, va, desc = data
    if cfg.task == "saliency" and tr.fixations is None:
        raise UserError(f"--data {cfg.data} has no fixations for saliency training")
    ncls = None
    if cfg.task == "scene":
        ncls = len(tr.classes) or int(tr.labels.max()) + 1
    elif cfg.task == "recognition":
        ncls = tr.targets.shape[1]
    model, arch = early or build_model(cfg, ncls)
    meta = {"data": desc, "classes": list(tr.classes) if cfg.task == "scene" else None,
            "weights_source": cfg.weights}
    if cfg.task == "recognition":
        meta["variant"] = "pretrained"
    meta.update(metadata or {})
    return fit(model, arch, cfg, tr, va, Path(out), resume=resume, metadata=meta, plot=plot,
               save_dtype=save_dtype, desc=f"{cfg.task}/{cfg.variant}", device=device)
