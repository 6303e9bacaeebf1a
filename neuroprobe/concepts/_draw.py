"""Drawing primitives of the synthetic concept world (private to :mod:`.synthetic`).

Every shape is drawn twice from the same geometry: once in colour into the RGB image and once,
as a *region code*, into an 8-bit code image.  Region codes index a per-image table of
``(object label, part label)`` pairs, so the object and part masks come from exactly the pixels
the shapes cover (the last shape drawn over a pixel owns it, as in the image).  Details that lie
inside an already coded silhouette (eyes in a face, windows in a car) are drawn into the image only.

Shapes are defined in local, object-centred units and placed by a similarity transform
(position, scale, rotation, mirror).
"""
from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# --------------------------------------------------------------------------------------------
# colour helpers
# --------------------------------------------------------------------------------------------


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (int(r * 255), int(g * 255), int(b * 255))


def shade(c, f: float) -> tuple[int, int, int]:
    """Scale a colour's brightness by ``f`` (clipped to 0..255)."""
    return tuple(int(min(255, max(0, x * f))) for x in c)


def rand_colour(rng, sat=(0.5, 1.0), val=(0.5, 1.0)) -> tuple[int, int, int]:
    return hsv(rng.random(), rng.uniform(*sat), rng.uniform(*val))


def colour_distance(a, b) -> float:
    """Euclidean RGB distance scaled to 0..1 (0..1 per channel, divided by sqrt 3)."""
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))) / (255.0 * math.sqrt(3.0))


SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 128), (198, 134, 90), (161, 102, 62),
        (120, 75, 45), (90, 56, 37), (232, 190, 172)]
HAIR = [(20, 16, 14), (60, 40, 25), (110, 70, 40), (200, 160, 90), (150, 150, 150),
        (160, 60, 30), (40, 30, 30)]
FUR = [(120, 80, 40), (30, 25, 22), (235, 230, 220), (140, 140, 140), (210, 120, 40),
       (190, 160, 110), (90, 60, 40)]

#: colour names of the colour layer (Broden-like), in label-id order
COLOUR_NAMES = ["black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple",
                "pink", "brown"]


@lru_cache(maxsize=1)
def colour_lut() -> np.ndarray:
    """Colour-name index (into :data:`COLOUR_NAMES`) for every RGB colour quantised to 5 bits
    per channel, as a ``uint8`` array of length 32768 indexed by ``(r>>3)<<10 | (g>>3)<<5 | b>>3``.

    Rules on HSV (hue in degrees): value < 0.22 is black; saturation < 0.2 is white (value >
    0.8) or grey; otherwise by hue (red < 15 or >= 345, orange < 40, yellow < 70, green < 165,
    blue < 255, purple < 315, pink), with dark reds/oranges/yellows named brown, dark pinks
    purple and pale bright reds pink.
    """
    q = (np.arange(32) * 8 + 4) / 255.0
    r, g, b = np.meshgrid(q, q, q, indexing="ij")
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    v = mx
    s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    d = np.maximum(mx - mn, 1e-9)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    h = h * 60.0
    name = np.full(r.shape, COLOUR_NAMES.index("grey"), dtype=np.uint8)
    idx = COLOUR_NAMES.index
    chroma = s >= 0.2
    hue_name = np.select(
        [(h < 15) | (h >= 345), h < 40, h < 70, h < 165, h < 255, h < 315],
        [idx("red"), idx("orange"), idx("yellow"), idx("green"), idx("blue"), idx("purple")],
        idx("pink"))
    brownish = (((h < 15) | (h >= 345)) & (v < 0.5)) | ((h >= 15) & (h < 40) & (v < 0.7)) | \
        ((h >= 40) & (h < 70) & (v < 0.5))
    hue_name = np.where(brownish, idx("brown"), hue_name)
    hue_name = np.where((hue_name == idx("pink")) & (v < 0.5), idx("purple"), hue_name)
    hue_name = np.where((hue_name == idx("red")) & (s < 0.5) & (v > 0.8), idx("pink"), hue_name)
    name = np.where(chroma, hue_name, np.where(v > 0.8, idx("white"), idx("grey")))
    name = np.where(v < 0.22, idx("black"), name)
    return name.astype(np.uint8).reshape(-1)


def colour_names_of(rgb: np.ndarray) -> np.ndarray:
    """Colour-name index of each pixel of a ``uint8`` ``(..., 3)`` array."""
    q = (rgb >> 3).astype(np.int32)
    return colour_lut()[(q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]]


# --------------------------------------------------------------------------------------------
# fonts
# --------------------------------------------------------------------------------------------

FONT_FILES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf",
              "DejaVuSans-BoldOblique.ttf"]


@lru_cache(maxsize=1)
def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def font_files() -> tuple[str, ...]:
    found = tuple(str(font_dir() / f) for f in FONT_FILES if (font_dir() / f).is_file())
    if not found:  # pragma: no cover - matplotlib always ships DejaVu
        raise FileNotFoundError(f"no DejaVu fonts found in {font_dir()}")
    return found


@lru_cache(maxsize=512)
def font(path: str, size: int):
    return ImageFont.truetype(path, size)


#: glyph pixels with at least this coverage (of 255) are drawn and labelled; fainter
#: anti-aliasing fringes are dropped so that every changed pixel is labelled text
GLYPH_ALPHA = 64


@lru_cache(maxsize=1)
def threshold_table() -> list[int]:
    return [255 if v >= GLYPH_ALPHA else 0 for v in range(256)]


@lru_cache(maxsize=1)
def fringe_table() -> list[int]:
    return [v if v >= GLYPH_ALPHA else 0 for v in range(256)]


# --------------------------------------------------------------------------------------------
# textures
# --------------------------------------------------------------------------------------------


def make_texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey-level ``uint8`` pattern tile ``(size, size)`` of a background texture kind."""
    from scipy.ndimage import gaussian_filter

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "plain":
        t = gaussian_filter(rng.normal(0, 1, (size, size)), 6)
        t = 0.9 + 0.1 * t / (np.abs(t).max() + 1e-9)
    elif kind == "striped":
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(7, 22)
        u = x * math.cos(theta) + y * math.sin(theta)
        t = (np.sin(2 * math.pi * u / period) > rng.uniform(-0.4, 0.4)).astype(np.float32)
    elif kind == "checkered":
        p = int(rng.integers(8, 24))
        t = (((x // p) + (y // p)) % 2).astype(np.float32)
    elif kind == "dotted":
        p = rng.uniform(9, 20)
        r = rng.uniform(0.18, 0.32) * p
        off = (y // p) % 2 * (p / 2) * rng.integers(0, 2)
        dx = (x + off) % p - p / 2
        dy = y % p - p / 2
        t = 1.0 - (dx * dx + dy * dy < r * r).astype(np.float32)
    elif kind == "grainy":
        t = gaussian_filter(rng.normal(0, 1, (size, size)), rng.uniform(0.7, 1.6))
        t = np.clip(0.5 + 0.25 * t / (t.std() + 1e-9), 0, 1)
    elif kind == "brick":
        bh = int(rng.integers(9, 16))
        bw = int(bh * rng.uniform(1.8, 2.6))
        row = y // bh
        xs = (x + (row % 2) * (bw // 2)) % bw
        mortar = (y % bh < 2) | (xs < 2)
        t = np.where(mortar, 1.0, 0.25 + 0.15 * rng.random((size // bh + 2,))[row.astype(int)])
    elif kind == "wavy":
        p = rng.uniform(10, 24)
        a = rng.uniform(3, 9)
        q = rng.uniform(20, 50)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (y + a * np.sin(2 * math.pi * x / q)) / p)
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    t = np.asarray(t, dtype=np.float32)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (t * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# the painter
# --------------------------------------------------------------------------------------------

_CIRCLE16 = [(math.cos(2 * math.pi * k / 16), math.sin(2 * math.pi * k / 16)) for k in range(16)]


class Painter:
    """Draws shapes in local units into the RGB image and the region-code image.

    ``regions`` lists ``(object label, part label, object index)`` per code (code ``k`` is
    ``regions[k - 1]``); :meth:`region` opens a new one.
    """

    def __init__(self, img: Image.Image, code: Image.Image):
        self.img = img
        self.code = code
        self.di = ImageDraw.Draw(img)
        self.dc = ImageDraw.Draw(code)
        self.regions: list[tuple[int, int, int]] = []
        self.set(0.0, 0.0, 1.0)

    # -- regions and transforms ---------------------------------------------------------
    def region(self, obj_label: int, part_label: int, obj_index: int) -> int:
        if len(self.regions) >= 255:
            raise RuntimeError("too many regions in one image")
        self.regions.append((obj_label, part_label, obj_index))
        return len(self.regions)

    def set(self, cx: float, cy: float, s: float, rot_deg: float = 0.0, flip: int = 1) -> None:
        """Place local ``(x, y)`` at ``(cx + s*R(flip*x, y))``."""
        self.cx, self.cy, self.s, self.flip = cx, cy, s, flip
        self.rot = rot_deg
        a = math.radians(rot_deg)
        self.c, self.sn = math.cos(a), math.sin(a)

    def tp(self, pts):
        cx, cy, s, f, c, sn = self.cx, self.cy, self.s, self.flip, self.c, self.sn
        return [(cx + s * (c * f * x - sn * y), cy + s * (sn * f * x + c * y)) for x, y in pts]

    def w(self, width: float) -> int:
        return max(1, int(round(width * self.s)))

    # -- primitives -----------------------------------------------------------------------
    def poly(self, pts, fill, code: int | None = None) -> None:
        p = self.tp(pts)
        self.di.polygon(p, fill=fill)
        if code is not None:
            self.dc.polygon(p, fill=code)

    def rect(self, x0, y0, x1, y1, fill, code=None) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill, code)

    def ellipse(self, x, y, rx, ry, fill, code=None, outline=None, width: float = 0) -> None:
        if rx == ry or self.rot == 0.0:
            (px, py), = self.tp([(x, y)])
            box = [px - rx * self.s, py - ry * self.s, px + rx * self.s, py + ry * self.s]
            if outline is not None:
                wd = self.w(width)
                self.di.ellipse(box, fill=fill, outline=outline, width=wd)
                if code is not None:
                    self.dc.ellipse(box, fill=code if fill is not None else None, outline=code,
                                    width=wd)
            else:
                self.di.ellipse(box, fill=fill)
                if code is not None:
                    self.dc.ellipse(box, fill=code)
        else:
            self.poly([(x + rx * u, y + ry * v) for u, v in _CIRCLE16], fill, code)

    def line(self, pts, fill, width: float, code=None) -> None:
        p = self.tp(pts)
        wd = self.w(width)
        self.di.line(p, fill=fill, width=wd, joint="curve")
        if code is not None:
            self.dc.line(p, fill=code, width=wd, joint="curve")

    def text(self, word: str, x: float, y: float, size_px: int, font_path: str, fill,
             code: int | None, rot_deg: float = 0.0, plate=None, pad: float = 0.25) -> tuple:
        """Write ``word`` centred at image position ``(x, y)``; glyph pixels (coverage >= 25%,
        fainter fringes are not drawn) and the optional plate get ``code``.  Returns the box."""
        f = font(font_path, int(size_px))
        l, t, r, b = f.getbbox(word)
        pw = int(round(pad * size_px)) if plate is not None else 1
        wd, ht = r - l + 2 * pw, b - t + 2 * pw
        alpha = Image.new("L", (wd, ht), 0)
        ImageDraw.Draw(alpha).text((pw - l, pw - t), word, font=f, fill=255)
        box = None
        if plate is not None:
            pl = Image.new("L", (wd, ht), 255)
            if rot_deg:
                pl = pl.rotate(rot_deg, resample=Image.NEAREST, expand=True)
            box = (int(round(x - pl.width / 2)), int(round(y - pl.height / 2)))
            self.img.paste(plate, box + (box[0] + pl.width, box[1] + pl.height), pl)
            self.code.paste(code, box + (box[0] + pl.width, box[1] + pl.height), pl)
        if rot_deg:
            alpha = alpha.rotate(rot_deg, resample=Image.BILINEAR, expand=True)
        alpha = alpha.point(fringe_table())
        if box is None:
            box = (int(round(x - alpha.width / 2)), int(round(y - alpha.height / 2)))
        full = box + (box[0] + alpha.width, box[1] + alpha.height)
        self.img.paste(fill, full, alpha)
        if plate is None and code is not None:
            self.code.paste(code, full, alpha.point(threshold_table()))
        return full


# --------------------------------------------------------------------------------------------
# shapes.  Each takes the painter, the generator, the region-opening callback and the object
# index, draws in the painter's current transform and returns the object's main colour.
# --------------------------------------------------------------------------------------------


def person(p: Painter, rng, code_head: int, code_body: int, side: bool, portrait: bool = False):
    """A standing person: feet at local (0, 0), top of the head at about (0, -1)."""
    skin = SKIN[int(rng.integers(len(SKIN)))]
    hair = HAIR[int(rng.integers(len(HAIR)))]
    shirt = rand_colour(rng, (0.3, 1.0), (0.3, 1.0))
    trousers = rand_colour(rng, (0.0, 0.6), (0.15, 0.6))
    # body (person part = person minus head)
    if not portrait:
        p.line([(-0.055, -0.47), (-0.07, -0.01)], trousers, 0.075, code_body)
        p.line([(0.055, -0.47), (0.07, -0.01)], trousers, 0.075, code_body)
        p.ellipse(-0.08, -0.01, 0.045, 0.02, (30, 30, 30), code_body)
        p.ellipse(0.08, -0.01, 0.045, 0.02, (30, 30, 30), code_body)
    p.poly([(-0.13, -0.79), (0.13, -0.79), (0.115, -0.44), (-0.115, -0.44)], shirt, code_body)
    arm = 0.17 + 0.06 * rng.random()
    p.line([(-0.12, -0.77), (-arm, -0.6), (-0.16, -0.47)], shirt, 0.05, code_body)
    p.line([(0.12, -0.77), (arm, -0.6), (0.16, -0.47)], shirt, 0.05, code_body)
    p.ellipse(-0.16, -0.46, 0.025, 0.025, skin, code_body)
    p.ellipse(0.16, -0.46, 0.025, 0.025, skin, code_body)
    p.rect(-0.03, -0.835, 0.03, -0.78, skin, code_body)
    # head
    hx, hy = 0.0, -0.9
    if not side:
        p.ellipse(hx, hy - 0.025, 0.082, 0.085, hair, code_head)          # hair behind
        p.ellipse(hx, hy + 0.005, 0.068, 0.085, skin, code_head)          # face
        p.ellipse(hx - 0.072, hy + 0.005, 0.012, 0.022, skin, code_head)  # ears
        p.ellipse(hx + 0.072, hy + 0.005, 0.012, 0.022, skin, code_head)
        p.poly([(-0.07, hy - 0.03), (-0.06, hy - 0.075), (0.0, hy - 0.09), (0.06, hy - 0.075),
                (0.07, hy - 0.03), (0.03, hy - 0.055), (-0.03, hy - 0.055)], hair, code_head)
        for ex in (-0.028, 0.028):
            p.ellipse(hx + ex, hy - 0.005, 0.016, 0.011, (250, 250, 250))
            p.ellipse(hx + ex, hy - 0.005, 0.008, 0.008, (40, 30, 25))
        p.line([(hx - 0.042, hy - 0.027), (hx - 0.014, hy - 0.03)], hair, 0.007)
        p.line([(hx + 0.014, hy - 0.03), (hx + 0.042, hy - 0.027)], hair, 0.007)
        p.line([(hx, hy), (hx - 0.008, hy + 0.03), (hx + 0.006, hy + 0.032)],
               shade(skin, 0.7), 0.006)
        p.poly([(hx - 0.028, hy + 0.05), (hx + 0.028, hy + 0.05), (hx + 0.014, hy + 0.062),
                (hx - 0.014, hy + 0.062)], (170, 50, 60))
    else:  # profile facing +x
        p.ellipse(hx - 0.008, hy - 0.015, 0.078, 0.088, hair, code_head)
        p.ellipse(hx + 0.01, hy + 0.008, 0.064, 0.082, skin, code_head)
        p.poly([(hx + 0.06, hy - 0.015), (hx + 0.095, hy + 0.025), (hx + 0.062, hy + 0.03)],
               skin, code_head)                                             # nose
        p.poly([(hx - 0.07, hy - 0.04), (hx - 0.03, hy - 0.095), (hx + 0.05, hy - 0.08),
                (hx + 0.07, hy - 0.05), (hx - 0.02, hy - 0.055), (hx - 0.03, hy + 0.04),
                (hx - 0.075, hy + 0.02)], hair, code_head)
        p.ellipse(hx - 0.012, hy + 0.005, 0.014, 0.022, shade(skin, 0.85))  # ear
        p.ellipse(hx + 0.042, hy - 0.005, 0.013, 0.01, (250, 250, 250))
        p.ellipse(hx + 0.048, hy - 0.005, 0.007, 0.007, (40, 30, 25))
        p.line([(hx + 0.03, hy + 0.055), (hx + 0.058, hy + 0.05)], (170, 50, 60), 0.008)
    return shirt


def animal(p: Painter, rng, code_head: int, code_body: int, species: str):
    """A dog, cat or bird in side view facing +x; feet at local y = 0, body length 1."""
    fur = FUR[int(rng.integers(len(FUR)))]
    dark = shade(fur, 0.55)
    eye = (20, 20, 20)
    if species == "bird":
        fur = rand_colour(rng, (0.5, 1.0), (0.5, 1.0))
        p.line([(-0.05, -0.2), (-0.08, 0.0)], (200, 140, 40), 0.025, code_body)
        p.line([(0.08, -0.2), (0.05, 0.0)], (200, 140, 40), 0.025, code_body)
        p.poly([(-0.3, -0.4), (-0.55, -0.5), (-0.52, -0.36)], shade(fur, 0.7), code_body)
        p.ellipse(0.0, -0.38, 0.32, 0.2, fur, code_body)
        p.poly([(-0.18, -0.45), (0.12, -0.42), (-0.05, -0.3)], shade(fur, 0.75))
        p.ellipse(0.3, -0.6, 0.15, 0.15, fur, code_head)
        p.poly([(0.42, -0.64), (0.58, -0.58), (0.42, -0.54)], (240, 170, 30), code_head)
        p.ellipse(0.34, -0.63, 0.035, 0.035, (250, 250, 250))
        p.ellipse(0.35, -0.63, 0.02, 0.02, eye)
        return fur
    # four-legged
    for lx in (-0.24, -0.13, 0.15, 0.25):
        p.line([(lx, -0.32), (lx + 0.01, 0.0)], dark if lx in (-0.13, 0.15) else fur, 0.07,
               code_body)
    if species == "cat":
        p.line([(-0.32, -0.36), (-0.46, -0.55), (-0.42, -0.72)], fur, 0.05, code_body)
    else:
        p.line([(-0.32, -0.38), (-0.45, -0.5)], fur, 0.05, code_body)
    p.ellipse(0.0, -0.38, 0.34, 0.14, fur, code_body)
    p.ellipse(0.3, -0.46, 0.1, 0.1, fur, code_body)  # neck/chest
    hx, hy = 0.38, -0.6
    if species == "cat":
        p.poly([(hx - 0.1, hy - 0.06), (hx - 0.08, hy - 0.2), (hx - 0.01, hy - 0.1)], fur,
               code_head)
        p.poly([(hx + 0.02, hy - 0.1), (hx + 0.08, hy - 0.2), (hx + 0.1, hy - 0.06)], fur,
               code_head)
        p.ellipse(hx, hy, 0.12, 0.11, fur, code_head)
        p.ellipse(hx + 0.06, hy + 0.04, 0.05, 0.035, shade(fur, 1.15), code_head)
        p.ellipse(hx + 0.1, hy + 0.02, 0.015, 0.012, (230, 120, 130))
        for ex in (-0.02, 0.05):
            p.ellipse(hx + ex, hy - 0.02, 0.022, 0.018, (120, 200, 60))
            p.ellipse(hx + ex, hy - 0.02, 0.008, 0.016, eye)
        for wy in (0.03, 0.05):
            p.line([(hx + 0.09, hy + wy), (hx + 0.2, hy + wy + 0.01)], (220, 220, 220), 0.005)
    else:  # dog
        p.ellipse(hx, hy, 0.12, 0.11, fur, code_head)
        p.ellipse(hx + 0.12, hy + 0.04, 0.09, 0.055, shade(fur, 1.1), code_head)  # snout
        p.ellipse(hx + 0.2, hy + 0.02, 0.028, 0.022, (20, 20, 20), code_head)       # nose
        p.poly([(hx - 0.09, hy - 0.07), (hx - 0.02, hy - 0.1), (hx - 0.05, hy + 0.1),
                (hx - 0.11, hy + 0.06)], dark, code_head)                          # ear
        p.ellipse(hx + 0.03, hy - 0.03, 0.02, 0.02, eye)
        p.line([(hx + 0.08, hy + 0.08), (hx + 0.17, hy + 0.075)], (120, 30, 30), 0.012)
    return fur


def car(p: Painter, rng, code: int):
    body = rand_colour(rng, (0.4, 1.0), (0.3, 1.0)) if rng.random() < 0.8 else \
        hsv(0, 0, rng.uniform(0.1, 0.95))
    glass = (150, 200, 230)
    p.poly([(-0.3, -0.3), (-0.18, -0.5), (0.2, -0.5), (0.33, -0.3)], body, code)
    p.poly([(-0.5, -0.3), (0.47, -0.3), (0.5, -0.2), (0.5, -0.1), (-0.5, -0.1), (-0.5, -0.25)],
           body, code)
    p.poly([(-0.25, -0.31), (-0.16, -0.46), (-0.02, -0.46), (-0.02, -0.31)], glass)
    p.poly([(0.02, -0.31), (0.02, -0.46), (0.18, -0.46), (0.27, -0.31)], glass)
    p.line([(-0.05, -0.24), (0.02, -0.24)], shade(body, 0.6), 0.015)
    p.rect(0.45, -0.27, 0.5, -0.22, (255, 240, 150))
    p.rect(-0.5, -0.27, -0.47, -0.22, (200, 30, 30))
    for wx in (-0.3, 0.3):
        p.ellipse(wx, -0.1, 0.1, 0.1, (25, 25, 25), code)
        p.ellipse(wx, -0.1, 0.05, 0.05, (170, 170, 175))
    return body


def bus(p: Painter, rng, code: int):
    body = rand_colour(rng, (0.5, 1.0), (0.6, 1.0))
    p.rect(-0.5, -0.62, 0.5, -0.1, body, code)
    for k in range(6):
        x0 = -0.45 + k * 0.145
        p.rect(x0, -0.55, x0 + 0.11, -0.38, (150, 200, 230))
    p.rect(0.39, -0.34, 0.47, -0.12, (120, 160, 190))  # door
    p.line([(-0.5, -0.3), (0.38, -0.3)], shade(body, 0.6), 0.02)
    for wx in (-0.32, 0.28):
        p.ellipse(wx, -0.1, 0.08, 0.08, (25, 25, 25), code)
        p.ellipse(wx, -0.1, 0.035, 0.035, (170, 170, 175))
    return body


def bicycle(p: Painter, rng, code: int):
    frame = rand_colour(rng, (0.5, 1.0), (0.3, 0.95))
    for wx in (-0.3, 0.3):
        p.ellipse(wx, -0.18, 0.18, 0.18, None, code, outline=(25, 25, 25), width=0.03)
    p.line([(-0.3, -0.18), (-0.06, -0.45), (0.0, -0.18), (-0.3, -0.18)], frame, 0.03, code)
    p.line([(-0.06, -0.45), (0.22, -0.45), (0.0, -0.18)], frame, 0.03, code)
    p.line([(0.22, -0.45), (0.3, -0.18)], frame, 0.03, code)
    p.line([(0.22, -0.45), (0.2, -0.55), (0.28, -0.57)], (40, 40, 40), 0.025, code)
    p.line([(-0.06, -0.45), (-0.08, -0.5)], (40, 40, 40), 0.025, code)
    p.poly([(-0.16, -0.53), (-0.0, -0.53), (-0.03, -0.5), (-0.15, -0.49)], (30, 30, 30), code)
    return frame


# -- symbols (local units: radius ~ 0.5) --------------------------------------------------------

_OCT = [(0.5 * math.cos(math.pi / 8 + k * math.pi / 4), 0.5 * math.sin(math.pi / 8 + k * math.pi / 4))
        for k in range(8)]
_ARROW = [(-0.5, -0.14), (0.1, -0.14), (0.1, -0.35), (0.5, 0.0), (0.1, 0.35), (0.1, 0.14),
          (-0.5, 0.14)]
_STAR = [(0.5 * (1 if k % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + k * math.pi / 5),
          0.5 * (1 if k % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + k * math.pi / 5))
         for k in range(10)]
_HEART = [(0.5 * (16 * math.sin(t) ** 3) / 17,
           -0.5 * (13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
          for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]

SYMBOL_KINDS = ["stop", "warning", "no-entry", "mandatory", "arrow", "star", "heart", "check",
                "plus", "logo"]


def symbol(p: Painter, rng, code: int, kind: str):
    white = (250, 250, 250)
    if kind == "stop":
        red = (200, 20, 30)
        p.poly(_OCT, white, code)
        p.poly([(0.9 * x, 0.9 * y) for x, y in _OCT], red)
        (cx, cy), = p.tp([(0.0, 0.0)])
        p.text("STOP", cx, cy, max(6, int(0.27 * p.s)), font_files()[1], white, None, -p.rot)
        return red
    if kind == "warning":
        border = (200, 20, 30) if rng.random() < 0.6 else (20, 20, 20)
        fill = (250, 250, 250) if border[0] > 100 else (250, 210, 0)
        tri = [(0.0, -0.5), (0.5, 0.38), (-0.5, 0.38)]
        p.poly(tri, border, code)
        p.poly([(0.0, -0.3), (0.33, 0.28), (-0.33, 0.28)], fill)
        p.poly([(-0.035, -0.13), (0.035, -0.13), (0.02, 0.1), (-0.02, 0.1)], (20, 20, 20))
        p.ellipse(0.0, 0.18, 0.035, 0.035, (20, 20, 20))
        return fill
    if kind == "no-entry":
        red = (210, 20, 30)
        p.ellipse(0, 0, 0.5, 0.5, red, code)
        p.rect(-0.34, -0.09, 0.34, 0.09, white)
        return red
    if kind == "mandatory":
        blue = (20, 80, 190)
        p.ellipse(0, 0, 0.5, 0.5, blue, code)
        p.poly([(0.6 * x, 0.6 * y) for x, y in _ARROW], white)
        return blue
    col = rand_colour(rng, (0.6, 1.0), (0.55, 1.0))
    if kind == "arrow":
        p.poly(_ARROW, col, code)
    elif kind == "star":
        p.poly(_STAR, col, code)
    elif kind == "heart":
        p.poly(_HEART, col, code)
    elif kind == "check":
        p.line([(-0.4, 0.0), (-0.12, 0.3), (0.42, -0.35)], col, 0.16, code)
    elif kind == "plus":
        p.rect(-0.14, -0.45, 0.14, 0.45, col, code)
        p.rect(-0.45, -0.14, 0.45, 0.14, col, code)
    else:  # logo: ring with an inner dot and a swoosh
        p.ellipse(0, 0, 0.5, 0.5, col, code)
        p.ellipse(0, 0, 0.36, 0.36, white)
        inner = rand_colour(rng, (0.6, 1.0), (0.4, 0.9))
        p.poly([(-0.3, 0.1), (0.0, -0.05), (0.32, -0.25), (0.05, 0.12), (-0.25, 0.2)], inner)
    return col


# -- food, plants, drinks, objects, other (local units: size ~ 1, centred) ------------------

FOOD_KINDS = ["apple", "orange", "banana", "pizza", "burger", "bread"]


def food(p: Painter, rng, code: int, kind: str):
    if kind == "apple":
        col = (200, 25, 30) if rng.random() < 0.7 else (120, 190, 40)
        p.line([(0.0, -0.3), (0.05, -0.48)], (90, 60, 30), 0.05, code)
        p.ellipse(0.12, -0.4, 0.12, 0.05, (60, 150, 40), code)
        p.ellipse(0.0, 0.02, 0.4, 0.36, col, code)
        p.ellipse(-0.14, -0.1, 0.07, 0.1, shade(col, 1.4))
        return col
    if kind == "orange":
        col = (245, 140, 20)
        p.ellipse(0.0, 0.0, 0.42, 0.42, col, code)
        p.ellipse(0.0, -0.36, 0.05, 0.04, (70, 120, 30))
        return col
    if kind == "banana":
        col = (245, 215, 50)
        ts = np.linspace(math.radians(30), math.radians(150), 12)
        thick = 0.05 + 0.2 * np.sin(np.pi * (ts - ts[0]) / (ts[-1] - ts[0]))
        outer = [(0.7 * math.cos(t), -0.55 + 0.7 * math.sin(t)) for t in ts]
        inner = [((0.7 - d) * math.cos(t), -0.55 + (0.7 - d) * math.sin(t))
                 for t, d in zip(ts[::-1], thick[::-1])]
        p.poly(outer + inner, col, code)
        p.line([(0.7 * math.cos(ts[0]) - 0.05, -0.55 + 0.7 * math.sin(ts[0]) - 0.03),
                (0.7 * math.cos(ts[0]) + 0.04, -0.55 + 0.7 * math.sin(ts[0]) - 0.12)],
               (90, 70, 20), 0.05, code)
        return col
    if kind == "pizza":
        crust, cheese = (200, 140, 60), (250, 200, 80)
        p.poly([(-0.5, -0.35), (0.5, -0.35), (0.0, 0.5)], crust, code)
        p.poly([(-0.4, -0.25), (0.4, -0.25), (0.0, 0.42)], cheese)
        for x, y in ((-0.15, -0.1), (0.15, -0.08), (0.0, 0.15)):
            p.ellipse(x, y, 0.08, 0.08, (180, 30, 30))
        return cheese
    if kind == "burger":
        bun = (210, 150, 70)
        p.ellipse(0.0, -0.12, 0.45, 0.28, bun, code)
        p.rect(-0.47, -0.05, 0.47, 0.05, (70, 170, 40), code)
        p.rect(-0.44, 0.03, 0.44, 0.16, (100, 55, 30), code)
        p.rect(-0.42, 0.14, 0.42, 0.3, bun, code)
        for x in (-0.2, 0.0, 0.2):
            p.ellipse(x, -0.25, 0.03, 0.015, (250, 240, 200))
        return bun
    col = (200, 145, 75)  # bread
    p.ellipse(0.0, 0.0, 0.5, 0.27, col, code)
    for x in (-0.25, 0.0, 0.25):
        p.line([(x - 0.06, -0.12), (x + 0.06, 0.08)], shade(col, 0.75), 0.035)
    return col


PLANT_KINDS = ["tree", "bush", "potted", "flower", "cactus"]


def plant(p: Painter, rng, code: int, kind: str):
    """Plants stand on local y = 0 with height ~1."""
    green = hsv(rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.75))
    if kind == "tree":
        p.rect(-0.06, -0.45, 0.06, 0.0, (100, 65, 35), code)
        for x, y, r in ((0.0, -0.72, 0.26), (-0.17, -0.55, 0.2), (0.17, -0.56, 0.2)):
            p.ellipse(x, y, r, r, green, code)
        p.ellipse(0.05, -0.78, 0.1, 0.1, shade(green, 1.25))
    elif kind == "bush":
        for x, y, r in ((-0.25, -0.2, 0.22), (0.22, -0.2, 0.22), (0.0, -0.32, 0.28)):
            p.ellipse(x, y, r, r, green, code)
        p.rect(-0.45, -0.2, 0.45, 0.0, green, code)
    elif kind == "potted":
        for a in (-40, -15, 10, 35):
            t = math.radians(a)
            x, y = 0.45 * math.sin(t), -0.4 - 0.45 * math.cos(t)
            p.poly([(0, -0.4), (x - 0.08, y + 0.1), (x, y), (x + 0.08, y + 0.1)], green, code)
        p.poly([(-0.2, -0.42), (0.2, -0.42), (0.15, 0.0), (-0.15, 0.0)], (190, 95, 55), code)
    elif kind == "flower":
        petal = rand_colour(rng, (0.6, 1.0), (0.7, 1.0))
        p.line([(0.0, 0.0), (0.0, -0.6)], (50, 140, 40), 0.04, code)
        p.ellipse(0.1, -0.3, 0.1, 0.04, (50, 140, 40), code)
        for k in range(6):
            t = k * math.pi / 3
            p.ellipse(0.13 * math.cos(t), -0.72 + 0.13 * math.sin(t), 0.09, 0.09, petal, code)
        p.ellipse(0.0, -0.72, 0.08, 0.08, (250, 200, 30), code)
        return petal
    else:  # cactus
        p.rect(-0.1, -0.8, 0.1, 0.0, green, code)
        p.ellipse(0.0, -0.8, 0.1, 0.08, green, code)
        p.line([(-0.1, -0.4), (-0.25, -0.4), (-0.25, -0.6)], green, 0.09, code)
        p.line([(0.1, -0.5), (0.24, -0.5), (0.24, -0.66)], green, 0.09, code)
    return green


DRINK_KINDS = ["bottle", "mug", "wine", "can", "soda"]


def drink(p: Painter, rng, code: int, kind: str):
    if kind == "bottle":
        glass = [(40, 120, 50), (110, 60, 20), (140, 190, 220)][int(rng.integers(3))]
        p.rect(-0.17, -0.2, 0.17, 0.5, glass, code)
        p.poly([(-0.17, -0.2), (-0.06, -0.38), (0.06, -0.38), (0.17, -0.2)], glass, code)
        p.rect(-0.06, -0.5, 0.06, -0.38, glass, code)
        p.rect(-0.07, -0.55, 0.07, -0.48, (200, 170, 40), code)
        p.rect(-0.17, 0.0, 0.17, 0.25, rand_colour(rng, (0.0, 0.5), (0.8, 1.0)))
        return glass
    if kind == "mug":
        col = rand_colour(rng, (0.3, 1.0), (0.5, 1.0))
        p.ellipse(0.3, 0.0, 0.16, 0.2, None, code, outline=col, width=0.06)
        p.rect(-0.3, -0.3, 0.3, 0.35, col, code)
        p.ellipse(0.0, -0.3, 0.3, 0.06, (90, 55, 30), code)
        return col
    if kind == "wine":
        wine = (130, 20, 40) if rng.random() < 0.7 else (235, 220, 140)
        p.line([(0.0, 0.0), (0.0, 0.42)], (200, 210, 220), 0.035, code)
        p.ellipse(0.0, 0.45, 0.18, 0.04, (200, 210, 220), code)
        p.poly([(-0.22, -0.5), (0.22, -0.5), (0.16, -0.1), (0.0, 0.02), (-0.16, -0.1)],
               (215, 225, 235), code)
        p.poly([(-0.17, -0.32), (0.17, -0.32), (0.13, -0.11), (0.0, -0.02), (-0.13, -0.11)], wine)
        return wine
    if kind == "can":
        col = rand_colour(rng, (0.6, 1.0), (0.5, 1.0))
        p.rect(-0.2, -0.35, 0.2, 0.35, col, code)
        p.ellipse(0.0, -0.35, 0.2, 0.05, (190, 190, 195), code)
        p.rect(-0.2, -0.05, 0.2, 0.05, (250, 250, 250))
        return col
    col = rand_colour(rng, (0.6, 1.0), (0.6, 1.0))  # soda cup with straw
    p.line([(0.05, -0.4), (0.15, -0.62)], (240, 60, 60), 0.04, code)
    p.poly([(-0.25, -0.4), (0.25, -0.4), (0.18, 0.4), (-0.18, 0.4)], col, code)
    p.rect(-0.27, -0.45, 0.27, -0.38, (250, 250, 250), code)
    return col


OBJECT_KINDS = ["chair", "table", "monitor", "lamp", "box", "clock", "book"]


def thing(p: Painter, rng, code: int, kind: str):
    """Generic objects; chairs, tables and lamps stand on local y = 0 with height ~1."""
    col = rand_colour(rng, (0.2, 0.9), (0.3, 0.9))
    if kind == "chair":
        p.rect(-0.25, -0.9, -0.17, 0.0, col, code)
        p.rect(-0.25, -0.48, 0.25, -0.4, col, code)
        p.rect(0.17, -0.48, 0.25, 0.0, col, code)
    elif kind == "table":
        p.rect(-0.5, -0.62, 0.5, -0.54, col, code)
        p.rect(-0.45, -0.56, -0.39, 0.0, shade(col, 0.8), code)
        p.rect(0.39, -0.56, 0.45, 0.0, shade(col, 0.8), code)
    elif kind == "monitor":
        col = (35, 35, 40)
        p.rect(-0.05, -0.3, 0.05, -0.05, col, code)
        p.rect(-0.2, -0.06, 0.2, 0.0, col, code)
        p.rect(-0.5, -0.9, 0.5, -0.28, col, code)
        p.rect(-0.45, -0.85, 0.45, -0.33, hsv(rng.uniform(0.5, 0.65), 0.4, 0.95))
    elif kind == "lamp":
        p.rect(-0.02, -0.7, 0.02, 0.0, (60, 60, 60), code)
        p.ellipse(0.0, -0.02, 0.15, 0.03, (60, 60, 60), code)
        p.poly([(-0.12, -0.95), (0.12, -0.95), (0.2, -0.68), (-0.2, -0.68)], col, code)
    elif kind == "box":
        col = (190, 140, 80)
        p.rect(-0.45, -0.7, 0.45, 0.0, col, code)
        p.rect(-0.05, -0.7, 0.05, 0.0, (210, 190, 140))
        p.line([(-0.45, -0.5), (0.45, -0.5)], shade(col, 0.7), 0.02)
    elif kind == "clock":
        p.ellipse(0.0, -0.5, 0.45, 0.45, (245, 245, 240), code, outline=col, width=0.07)
        for k in range(12):
            t = k * math.pi / 6
            p.ellipse(0.34 * math.cos(t), -0.5 + 0.34 * math.sin(t), 0.02, 0.02, (40, 40, 40))
        a, b = rng.uniform(0, 2 * math.pi, 2)
        p.line([(0, -0.5), (0.2 * math.cos(a), -0.5 + 0.2 * math.sin(a))], (20, 20, 20), 0.04)
        p.line([(0, -0.5), (0.3 * math.cos(b), -0.5 + 0.3 * math.sin(b))], (20, 20, 20), 0.025)
    else:  # book
        p.rect(-0.3, -0.9, 0.3, 0.0, col, code)
        p.rect(-0.3, -0.9, -0.22, 0.0, shade(col, 0.6))
        p.rect(-0.12, -0.7, 0.2, -0.6, (240, 240, 230))
    return col


OTHER_KINDS = ["ball", "pole", "umbrella", "kite", "bin", "hydrant"]


def other(p: Painter, rng, code: int, kind: str):
    col = rand_colour(rng, (0.5, 1.0), (0.5, 1.0))
    if kind == "ball":
        p.ellipse(0.0, -0.25, 0.25, 0.25, col, code)
        p.line([(-0.2, -0.35), (0.0, -0.25), (0.2, -0.35)], (250, 250, 250), 0.04)
    elif kind == "pole":
        col = (110, 110, 115)
        p.rect(-0.03, -1.0, 0.03, 0.0, col, code)
        p.rect(-0.06, -0.05, 0.06, 0.0, col, code)
    elif kind == "umbrella":
        p.line([(0.0, -0.55), (0.0, 0.0), (0.08, 0.02)], (40, 40, 40), 0.035, code)
        pts = [(0.5 * math.cos(t), -0.55 - 0.35 * math.sin(t))
               for t in np.linspace(0, math.pi, 12)]
        p.poly(pts, col, code)
    elif kind == "kite":
        p.line([(0.0, -0.2), (0.1, 0.1), (-0.05, 0.3), (0.05, 0.5)], (60, 60, 60), 0.02, code)
        p.poly([(0.0, -0.9), (0.25, -0.55), (0.0, -0.2), (-0.25, -0.55)], col, code)
        p.line([(0.0, -0.9), (0.0, -0.2)], shade(col, 0.6), 0.02)
    elif kind == "bin":
        col = (70, 90, 80) if rng.random() < 0.5 else col
        p.poly([(-0.25, -0.7), (0.25, -0.7), (0.2, 0.0), (-0.2, 0.0)], col, code)
        p.rect(-0.28, -0.76, 0.28, -0.68, shade(col, 0.7), code)
    else:  # hydrant
        col = (200, 30, 30)
        p.rect(-0.12, -0.5, 0.12, 0.0, col, code)
        p.ellipse(0.0, -0.5, 0.13, 0.1, col, code)
        p.rect(-0.22, -0.35, 0.22, -0.27, col, code)
        p.rect(-0.17, -0.04, 0.17, 0.0, shade(col, 0.7), code)
    return col
