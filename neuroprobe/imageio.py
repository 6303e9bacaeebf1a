"""The one guarded image reader of neuroprobe.

Every image or mask any command reads goes through :func:`read_image` (photographs: RGB
``uint8``) or :func:`read_label_image` (masks: raw values, no colour conversion), and image sizes
through :func:`image_size`.  Whatever goes wrong while opening or decoding a file (missing,
empty, truncated, not an image, a decompression bomb) becomes one
:class:`~neuroprobe.errors.DataFormatError` naming the file, so the CLI prints one line and
``dissect --on-bad-image skip`` can leave the item out.

Photographs are read the way a viewer shows them:

- EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`), so a portrait photo taken
  with a rotated camera is upright;
- 16-bit images (``I;16*`` and ``I`` modes with values up to 65535) are scaled to 8 bits by
  ``round(v / 257)`` instead of being clipped at 255 (which makes them nearly white);
  floating-point images (``F``) in [0, 1] are scaled by 255, others clipped to [0, 255];
- palette, grey, grey+alpha, CMYK and RGBA images are converted to RGB by Pillow (alpha is
  dropped).

Pixel limit.  An image with more than :func:`max_pixels` pixels (default: Pillow's own limit,
89,478,485 pixels, about 9459 x 9459) is refused before it is decoded: a small file can unpack
into gigabytes (a "decompression bomb").  Set the environment variable
``NEUROPROBE_MAX_PIXELS`` to a larger number of pixels to read bigger images.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

import numpy as np

from .errors import DataFormatError

__all__ = ["read_image", "read_label_image", "image_size", "max_pixels", "parse_size",
           "MAX_PIXELS_ENV", "DEFAULT_MAX_PIXELS"]

#: environment variable that raises (or lowers) the pixel limit
MAX_PIXELS_ENV = "NEUROPROBE_MAX_PIXELS"
#: Pillow's default limit (``PIL.Image.MAX_IMAGE_PIXELS``), 1024 * 1024 * 1024 // 4 // 3
DEFAULT_MAX_PIXELS = 89_478_485


def max_pixels() -> int:
    """The pixel limit: ``$NEUROPROBE_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise DataFormatError(f"{MAX_PIXELS_ENV}={text!r} is not a positive number of pixels",
                              hint=f"e.g. {MAX_PIXELS_ENV}=400000000, or unset it")
    return value


def parse_size(value, what: str = "size", error=None) -> tuple[int, int]:
    """``N`` or ``[H, W]`` (whole numbers >= 1) -> ``(H, W)``; anything else, or a size above the
    pixel limit (:func:`max_pixels`), raises ``error`` (default DataFormatError) in one line."""
    error = error or DataFormatError
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]

    def whole(v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return None
        return int(v) if float(v).is_integer() else None

    dims = [whole(v) for v in items]
    if len(dims) != 2 or any(d is None or d < 1 for d in dims):
        raise error(f"{what} must be N or [height, width] with whole numbers >= 1, got {value!r}")
    h, w = dims
    limit = max_pixels()
    if h * w > limit:
        raise error(f"{what} {value!r} is {h * w} pixels, more than the limit of {limit}",
                    hint=f"use a smaller {what}, or raise the limit with {MAX_PIXELS_ENV}")
    return h, w


def _bomb(path, what: str, pixels: int, limit: int, dims: str = "") -> DataFormatError:
    return DataFormatError(
        f"{what} {path} is {dims}{pixels} pixels, more than the limit of {limit} (a possible "
        "decompression bomb), so it was not decoded",
        hint=f"if you trust the file, raise the limit: set {MAX_PIXELS_ENV}={pixels}")


def _open(path, what: str):
    """Open ``path`` lazily (header only) after checking it exists; returns the PIL image."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{what} {path} does not exist")
    if not path.is_file():
        raise DataFormatError(f"{what} {path} is not a file")
    limit = max_pixels()
    # Pillow warns above its limit and refuses twice that with DecompressionBombError (not an
    # OSError); it gets neuroprobe's limit, and the exact check below makes it a refusal
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as err:
        numbers = [int(n) for n in re.findall(r"\d+", str(err))]
        return_pixels = numbers[0] if numbers else limit + 1
        raise _bomb(path, what, return_pixels, limit) from None
    except Exception as err:   # noqa: BLE001 - every decoder failure is the file's fault
        if isinstance(err, MemoryError):
            raise
        raise _undecodable(path, what, err) from None
    width, height = im.size
    if width * height > limit:
        im.close()
        raise _bomb(path, what, width * height, limit, f"{width}x{height} = ")
    return im


def _undecodable(path, what: str, err: Exception) -> DataFormatError:
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return DataFormatError(f"{what} {path} cannot be decoded ({type(err).__name__}"
                           + (f": {text}" if text else "") + ")",
                           hint="replace the file or leave it out of the data set")


def _to_rgb(im) -> np.ndarray:
    from PIL import ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # odd EXIF blocks: orientation is all we need
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if mode == "I" and a.size and a.max() <= 255 and a.min() >= 0:
            scale = 1.0   # an 8-bit image stored as 32-bit integers
        else:
            scale = 257.0
        g = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"))


@contextlib.contextmanager
def _decoding(path, what: str):
    """The opened image of ``path`` for the body to decode; any decoding error of the body
    (except a DataFormatError it raises itself, or running out of memory) becomes one
    DataFormatError line naming ``what`` and the file."""
    im = _open(path, what)
    try:
        with im:
            yield im
    except DataFormatError:
        raise
    except Exception as err:   # noqa: BLE001
        if isinstance(err, MemoryError):
            raise
        raise _undecodable(path, what, err) from None


def read_image(path, what: str = "image") -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, 3)`` RGB, upright and 8-bit (module docstring).

    Raises
    ------
    DataFormatError
        One line naming ``what`` and the file: missing, not a file, undecodable or truncated,
        or above the pixel limit (with the environment variable that raises it).
    """
    with _decoding(path, what) as im:
        return _to_rgb(im)


def read_label_image(path, what: str = "mask", modes: tuple[str, ...] | None = None,
                     hint: str | None = None) -> np.ndarray:
    """The raw pixel values of a mask image (no colour conversion, no EXIF rotation).

    ``modes``: the PIL modes accepted (others raise :class:`DataFormatError` with ``hint``).
    """
    with _decoding(path, what) as im:
        if modes is not None and im.mode not in modes:
            raise DataFormatError(f"{what} {path} has mode {im.mode}; expected "
                                  f"{' or '.join(modes)}", hint=hint)
        return np.asarray(im).copy()


def image_size(path, what: str = "image") -> tuple[int, int]:
    """``(height, width)`` of an image file as shown (EXIF orientation applied), read from its
    header without decoding the pixels."""
    im = _open(path, what)
    with im:
        width, height = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:   # noqa: BLE001 - an unreadable EXIF block: no rotation
            orientation = 1
    if orientation in (5, 6, 7, 8):   # transposed or rotated by 90 degrees
        width, height = height, width
    return height, width
