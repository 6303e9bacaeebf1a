"""``neuroprobe train saliency|scene|recognition``: the study's model variants from one recipe."""
from __future__ import annotations

from . import add_command, add_subcommand_group
from ._common import (add_batch_size, nonnegative_int, open_probability, output_file,
                      positive_float, positive_int, seed)

# the keys of neuroprobe.models.encoders.ENCODERS (kept here so that the parser imports no torch;
# tests/test_cifar.py checks that the two agree)
ENCODER_NAMES = ["vgg16", "resnet18", "resnet50", "small", "cifar-resnet20", "cifar-resnet32",
                 "cifar-resnet44", "cifar-resnet56"]


def _common(p, task: str) -> None:
    p.add_argument("--encoder", default="vgg16", choices=ENCODER_NAMES,
                   help="encoder (default vgg16, as in the study; cifar-resnetN: the CIFAR-10 "
                   "ResNets, with --weights FILE)")
    p.add_argument("--weights", default="imagenet" if task != "recognition" else "none",
                   help="encoder weights: imagenet | none | demo (the small encoder pretrained "
                   "on the synthetic world) | PATH (state dict or neuroprobe checkpoint)")
    p.add_argument("--variant", default="frozen" if task == "saliency" else "finetune-last"
                   if task == "scene" else "finetune-all",
                   choices=["frozen", "finetune-last", "finetune-all"],
                   help="frozen = only the decoder/classifier trains (Setup I); finetune-last = "
                   "the last block too; finetune-all = everything")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs (default 20)")
    p.add_argument("--lr", type=positive_float, default=5e-3,
                   help="Adam learning rate (default 5e-3)")
    p.add_argument("--lr-decay", type=open_probability, default=0.8,
                   help="learning-rate factor after each epoch (default 0.8)")
    add_batch_size(p, 5)
    p.add_argument("--input-size", type=positive_int, nargs="+", default=[224], metavar="N",
                   help="input size: N or H W (default 224)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="use at most this many training images (synthetic: how many to render, "
                   "default 1000)")
    p.add_argument("--val", type=nonnegative_int, default=None, help="number of validation images")
    p.add_argument("--seed", type=seed, default=0, help="random seed (initialisation, order)")
    p.add_argument("--out", default=None,
                   help=f"checkpoint path (default {task}-ENCODER-VARIANT.pt); also writes "
                   "OUT.resume.pt and OUT.curve.png")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT.resume.pt (after its last finished epoch)")


def register(subparsers) -> None:
    parser, group = add_subcommand_group(subparsers, "train",
                                         "train saliency / scene variants of an encoder")
    p = add_command(group, "saliency", "train a saliency model (encoder + the study's decoder)",
                    _run_saliency)
    _common(p, "saliency")
    p.add_argument("--data", default="synthetic",
                   help="synthetic[:SEED] | osie[:DIR] | salicon:DIR | folder:DIR "
                   "(folder: images + fixations.csv with image,x,y)")
    p.add_argument("--loss", default="nss",
                   help="nss (the study's negative NSS), kl, cc, or a weighted sum such as "
                   "nss+0.5*kl (default nss)")
    p.add_argument("--decoder", default="conv1x1", choices=["conv1x1", "deep"],
                   help="decoder (default conv1x1, the study's)")
    p = add_command(group, "scene", "fine-tune an encoder for scene classification",
                    _run_scene)
    _common(p, "scene")
    p.add_argument("--data", default="synthetic", help="synthetic[:SEED] | folder:DIR")
    p.add_argument("--labels", default=None, help="CSV image,label for --data folder:DIR")
    p = add_command(group, "recognition",
                    "pretrain an encoder on the synthetic world's multi-label object recognition "
                    "(the offline stand-in for ImageNet)", _run_recognition)
    _common(p, "recognition")
    p.add_argument("--data", default="synthetic", help="synthetic[:SEED]")


def _config(args, task: str):
    from ..train.recipe import TrainConfig

    size = args.input_size
    if len(size) not in (1, 2):
        from ..errors import UserError

        raise UserError("--input-size takes N or H W")
    return TrainConfig(task=task, encoder=args.encoder, weights=args.weights,
                       variant=args.variant, data=args.data,
                       labels=getattr(args, "labels", None), loss=getattr(args, "loss", "nss"),
                       decoder=getattr(args, "decoder", "conv1x1"), epochs=args.epochs,
                       lr=args.lr, lr_decay=args.lr_decay, batch_size=args.batch_size,
                       input_size=tuple(size * 2 if len(size) == 1 else size), seed=args.seed,
                       limit=args.limit, val=args.val)


def _run(args, task: str) -> int:
    from ..train.recipe import train

    from ..utils import resolve_device

    out = str(output_file(args.out or f"{task}-{args.encoder}-{args.variant}.pt"))
    cfg = _config(args, task)
    device = resolve_device(getattr(args, "device", "auto"))
    summary = train(cfg, out, resume=args.resume, device=device)
    last = summary["history"][-1] if summary["history"] else {}
    scores = ", ".join(f"{k[4:]}={v:.4g}" for k, v in last.items() if k.startswith("val_"))
    print(f"wrote {out} ({task}, {cfg.encoder}, {cfg.variant}, {len(summary['history'])} "
          f"epochs{'; validation ' + scores if scores else ''})")
    return 0


def _run_saliency(args) -> int:
    return _run(args, "saliency")


def _run_scene(args) -> int:
    return _run(args, "scene")


def _run_recognition(args) -> int:
    return _run(args, "recognition")
