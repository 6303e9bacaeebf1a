"""Image parameterizations for activation maximization: learnable modules that produce a batch of
images in ``[0, 1]`` (Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017).

:class:`PixelImage` learns (pre-sigmoid) pixels; :class:`FourierImage` learns the 2-D spectrum,
scaled by ``1 / f ** decay_power`` so that optimisation works on a roughly whitened image.  Both can
*decorrelate colour*: the three learned channels are mapped to RGB through the square root of the
colour-correlation matrix of natural images given by Olah et al. (2017).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError

__all__ = ["PixelImage", "FourierImage", "make_param", "COLOR_CORRELATION_SVD_SQRT"]

#: Square root (via SVD) of the colour-correlation matrix of ImageNet images, as published with
#: Olah et al. (2017) "Feature Visualization" (Distill).  Columns map decorrelated channels to RGB.
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02),
                              (0.27, 0.00, -0.05),
                              (0.27, -0.09, 0.03))


def _color_matrix(device, dtype) -> torch.Tensor:
    m = torch.tensor(COLOR_CORRELATION_SVD_SQRT, device=device, dtype=dtype)
    return m / m.norm(dim=0).max()


def _to_rgb(x: torch.Tensor, decorrelate: bool) -> torch.Tensor:
    """Map unconstrained channels to an image in [0, 1] (decorrelated colour, then sigmoid)."""
    if decorrelate:
        x = torch.einsum("rc,bchw->brhw", _color_matrix(x.device, x.dtype), x)
    return torch.sigmoid(x)



class PixelImage(nn.Module):
    """A batch of images parameterized directly by (pre-sigmoid) pixel values.

    Parameters
    ----------
    batch, height, width : int
    sd : float
        Standard deviation of the random initialisation.
    decorrelate : bool
        Map the three channels to RGB through the decorrelating colour matrix.
    generator : torch.Generator, optional
        Source of the initial values (CPU); the parameter then moves to ``device``.
    """

    def __init__(self, batch: int, height: int, width: int | None = None, *, sd: float = 0.01,
                 decorrelate: bool = True, generator: torch.Generator | None = None,
                 device=None):
        super().__init__()
        width = width or height
        init = torch.randn(batch, 3, height, width, generator=generator) * sd
        self.pixels = nn.Parameter(init.to(device or "cpu"))
        self.decorrelate = decorrelate

    def forward(self) -> torch.Tensor:
        return _to_rgb(self.pixels, self.decorrelate)


class FourierImage(nn.Module):
    """A batch of images parameterized by their 2-D Fourier spectrum (Olah et al. 2017).

    The image is ``irfft2(scale * spectrum)`` with ``scale = 1 / max(f, 1/max(H, W)) **
    decay_power`` (``f`` = frequency in cycles per pixel), which equalises the energy of natural
    images across frequencies; colour is then decorrelated and squashed with a sigmoid.
    """

    def __init__(self, batch: int, height: int, width: int | None = None, *, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True,
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        width = width or height
        self.size = (int(height), int(width))
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(height, width)) ** decay_power
        # with the orthonormal inverse FFT below the transform is unitary, so learning rates
        # are comparable with the pixel parameterization (lucid multiplies by sqrt(H*W)
        # instead because its inverse FFT is unnormalised)
        self.register_buffer("scale", scale.to(device or "cpu"), persistent=False)
        init = torch.randn(batch, 3, *freqs.shape, 2, generator=generator) * sd
        self.spectrum = nn.Parameter(init.to(device or "cpu"))
        self.decorrelate = decorrelate

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        img = torch.fft.irfft2(spec, s=self.size, norm="ortho") / 4.0
        return _to_rgb(img, self.decorrelate)


def make_param(kind: str, batch: int, height: int, width: int | None = None, **kwargs) -> nn.Module:
    """``"fourier"`` or ``"pixel"`` -> a parameterization module (see the two classes)."""
    kinds = {"fourier": FourierImage, "fft": FourierImage, "pixel": PixelImage}
    if kind not in kinds:
        raise UserError(f"unknown image parameterization {kind!r}", hint="use fourier or pixel")
    return kinds[kind](batch, height, width, **kwargs)
