"""The wrapper of torchvision and timm networks: :class:`ImageClassifier` (normalisation in front
of the network, and the patch grid of vision transformers for recording tokens as maps)."""
from __future__ import annotations

from torch import nn

from .normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize


class ImageClassifier(nn.Module):
    """A torchvision or timm network with its normalisation in front.

    For vision transformers (a network with a patch size: torchvision's ``patch_size``, timm's
    ``patch_embed.patch_size``) :meth:`token_grid` tells :class:`neuroprobe.hooks.Recorder` the
    patch grid of the current input, so that token outputs ``(B, prefix + H*W, C)`` are recorded
    as ``(B, C, H, W)`` maps (class and register tokens dropped).
    """

    task = "classification"

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self._input_hw: tuple[int, int] | None = None

    def forward(self, x):
        self._input_hw = tuple(x.shape[-2:])
        return self.net(self.normalize(x))

    def token_grid(self) -> tuple[int, int] | None:
        """The patch grid ``(H / patch, W / patch)`` of the input of the forward pass under way;
        ``None`` for networks without patches (convolutional ones) or before any forward."""
        patch = patch_size(self.net)
        if patch is None or self._input_hw is None:
            return None
        return self._input_hw[0] // patch[0], self._input_hw[1] // patch[1]


def patch_size(net: nn.Module) -> tuple[int, int] | None:
    """The patch size of a vision transformer (torchvision ``VisionTransformer.patch_size``,
    timm ``patch_embed.patch_size``), ``None`` for other networks."""
    embed = getattr(net, "patch_embed", None)
    size = getattr(embed, "patch_size", None) if embed is not None else None
    if size is None and type(net).__name__ == "VisionTransformer":
        size = getattr(net, "patch_size", None)
    if size is None:
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(size[0]), int(size[-1])) if all(isinstance(v, int) for v in size) else None
