"""The synthetic concept world: a built-in, offline stand-in for a labelled concept data set.

Each image is a procedurally drawn scene (street, office, portrait, park, kitchen, shop, or
whatever ``concepts/synthetic.toml`` defines) on a textured background, holding people with faces
(frontal and profile views), animals with heads, vehicles, real words rendered with the DejaVu
fonts that matplotlib ships, symbols (traffic signs, arrows, icons, logos), food, plants, drinks
and other objects, at random scale, position, rotation, colour and depth order (occlusion).
Masks are pixel exact: every shape is drawn into the image and, from the same geometry, into a
region-code image (see :mod:`._draw`).  Any image is a pure function of ``(seed, index)``.

Labels (global ids)
    The 12 salient-region categories of He et al., "Understanding and Visualizing Deep Visual
    Saliency Models", CVPR 2019, keep their OSIE-SR mask values as ids (1 person head, 10 person
    part, 16 animal head, 22 animal part, 27 object, 37 text, 46 symbol, 51 vehicle, 57 food,
    63 plant, 68 drink, 73 other); the wholes ``person`` (80) and ``animal`` (81) hold their
    parts; colour names are 100-110, textures and scenes take the ids given in the TOML file.

Item layout
    ``layers[0]`` object layer (person, animal, vehicle, text, symbol, object, food, plant, drink,
    other), ``layers[1]`` part layer (person head / person part = person minus head, animal head /
    animal part), ``layers[2]`` colour names of the pixels; ``whole = [scene, texture]``;
    ``instances``: each drawn object's number + 1 on its object- and part-layer pixels (two
    people are two person-head regions for region-NSS), 0 on the colour layer.

Synthetic observers (the priority model)
    Fixations of ``observers`` observers are sampled per image from a region-based priority
    model in the spirit of object-based saliency and of the category preferences measured in
    eye-tracking studies (faces and text attract fixations beyond their size: Cerf, Frady & Koch
    2009; Judd et al. 2009; Xu et al. 2014, OSIE).  Each visible region r (a head, a person's
    body, a word, a car ...) has the priority::

        w[cat(r)] * (area_r / image area) ** area_exponent * exp(-d_r**2 / (2 centre_sigma**2))
                  * singleton_gain [if its object is a colour or orientation singleton]

    with ``d_r`` the distance of the region's centroid from the image centre in units of the
    larger image side (centre bias).  An object is a *colour singleton* when its main colour lies
    at least ``colour_singleton_distance`` from the main colour of every other object and of the
    background (and it is the most distinct one), and an *orientation singleton* when it is the
    only object rotated by more than ``orientation_singleton_degrees`` from the median rotation.
    A free-viewing component of priority ``background`` lands at a Gaussian, centre-biased
    position.  Each observer makes ``per_observer`` fixations; each fixation picks a component
    with probability proportional to the current priorities and a uniformly random pixel inside
    the chosen region; afterwards the region's priority is multiplied by ``ior`` (inhibition of
    return).  All parameters live in the concept-set file.
"""
from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from ..errors import ConceptSetError
from ..io import config_hash
from . import _draw as D
from . import load_spec
from .base import STUDY_CATEGORIES, ConceptDataset, Label, LabelTable

CATEGORIES = ["object", "part", "color", "texture", "scene"]

PERSON, ANIMAL = 80, 81
HEAD, BODY = STUDY_CATEGORIES["person head"], STUDY_CATEGORIES["person part"]
AHEAD, ABODY = STUDY_CATEGORIES["animal head"], STUDY_CATEGORIES["animal part"]
COLOUR_BASE = 100

#: object kinds and their object-layer label ids
KIND_LABEL = {"person": PERSON, "animal": ANIMAL, "vehicle": STUDY_CATEGORIES["vehicle"],
              "text": STUDY_CATEGORIES["text"], "symbol": STUDY_CATEGORIES["symbol"],
              "object": STUDY_CATEGORIES["object"], "food": STUDY_CATEGORIES["food"],
              "plant": STUDY_CATEGORIES["plant"], "drink": STUDY_CATEGORIES["drink"],
              "other": STUDY_CATEGORIES["other"]}
#: study category of each object kind whose regions are not split into parts
KIND_STUDY = {k: k for k in KIND_LABEL if k not in ("person", "animal")}

SUBKINDS = {
    "person": ["standing"],
    "animal": ["dog", "cat", "bird"],
    "vehicle": ["car", "car", "car", "bus", "bicycle"],
    "symbol": D.SYMBOL_KINDS,
    "food": D.FOOD_KINDS,
    "plant": D.PLANT_KINDS,
    "drink": D.DRINK_KINDS,
    "object": D.OBJECT_KINDS,
    "other": D.OTHER_KINDS,
    "text": ["word"],
}
#: sub-kinds that stand on the ground (placed on the floor band, scaled by perspective)
GROUNDED = {"standing", "dog", "cat", "car", "bus", "bicycle", "tree", "bush", "potted",
            "cactus", "flower", "chair", "table", "lamp", "box", "pole", "bin", "hydrant"}

#: grounded sub-kinds that never lean
UPRIGHT = {"standing", "pole", "tree", "lamp", "table", "chair", "cactus", "hydrant", "bin",
           "bus"}

FIXATION_DEFAULTS = {
    "per_observer": [3, 7], "background": 0.08, "area_exponent": 0.5, "centre_sigma": 0.3,
    "ior": 0.3, "singleton_gain": 3.0, "colour_singleton_distance": 0.45,
    "orientation_singleton_degrees": 30.0,
}
OPTIONS = ("seed", "n", "image_size", "mask_size", "observers", "limit", "fixations", "scenes",
           "textures", "name")


# ----------------------------------------------------------------------------------------------
# spec handling
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _shipped_spec() -> dict:
    return load_spec("synthetic")


def _size(value, what: str) -> tuple[int, int]:
    from ..imageio import parse_size

    return parse_size(value, f"synthetic {what}", ConceptSetError)


def from_spec(spec: dict, **overrides) -> "SyntheticWorld":
    """Build the world from a parsed concept-set file (``source = "synthetic"``) and overrides.

    Options (file or override): ``seed``, ``n``, ``image_size``, ``mask_size``, ``observers``,
    ``limit`` (use only the first ``limit`` images), ``fixations`` (priority-model table),
    ``scenes``, ``textures``.
    """
    opts = {k: v for k, v in spec.items() if not k.startswith("_")
            and k not in ("source", "description")}
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise ConceptSetError(f"synthetic concept sets take no option {', '.join(unknown)}",
                              hint=f"valid options: {', '.join(OPTIONS)}")
    opts.update(overrides)
    bad = sorted(set(opts) - set(OPTIONS))
    if bad:
        raise ConceptSetError(f"concept set {spec.get('_path', '?')}: unknown key(s) "
                              f"{', '.join(bad)} for source synthetic",
                              hint=f"valid keys: source, description, {', '.join(OPTIONS)}")
    return SyntheticWorld(**opts)


# ----------------------------------------------------------------------------------------------
# the world
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _texture_tiles(seed: int, size: int, kinds: tuple[str, ...], variants: int = 3):
    rng = np.random.default_rng([seed, 7_000_001])
    return {k: [D.make_texture(k, size, rng) for _ in range(variants)] for k in kinds}


class SyntheticWorld(ConceptDataset):
    """The procedural concept world (see the module docstring).

    Parameters
    ----------
    seed : int
        World seed; image ``i`` is a function of ``(seed, i)`` only.
    n : int
        Number of images.
    image_size, mask_size : int or (int, int)
        Image and mask size (masks are nearest-neighbour samples of the full-resolution label
        images, so they stay aligned with the drawn pixels; Broden uses half the image size).
    observers : int
        Synthetic observers per image (0 = no fixations).
    limit : int, optional
        Use only the first ``limit`` images.
    fixations, scenes, textures : dict, optional
        Priority-model parameters, scene table and texture ids (default: the shipped
        ``concepts/synthetic.toml``).  A ``fixations`` table given here replaces the shipped
        one key by key (missing keys take :data:`FIXATION_DEFAULTS`; ``weights`` missing
        categories take weight 1).
    """

    name = "synthetic"
    has_fixations = True

    def __init__(self, seed: int = 0, n: int = 2000, image_size=224, mask_size=112,
                 observers: int = 15, limit: int | None = None, fixations: dict | None = None,
                 scenes: dict | None = None, textures: dict | None = None,
                 name: str = "synthetic"):
        shipped = None
        if fixations is None or scenes is None or textures is None:
            shipped = _shipped_spec()
        self.seed = int(seed)
        self.n = int(n)
        if self.n < 1:
            raise ConceptSetError(f"synthetic world needs n >= 1 images, got {n}")
        self.limit = None if limit is None else int(limit)
        if self.limit is not None and self.limit < 1:
            raise ConceptSetError(f"limit must be >= 1, got {limit}")
        self.image_size = _size(image_size, "image_size")
        self.mask_size = _size(mask_size, "mask_size")
        if min(self.image_size) < 32:
            raise ConceptSetError(f"synthetic image_size must be at least 32, got {image_size}")
        if not (1 <= self.mask_size[0] <= self.image_size[0]
                and 1 <= self.mask_size[1] <= self.image_size[1]):
            raise ConceptSetError(f"mask_size {mask_size} must lie between 1 and image_size "
                                  f"{image_size}")
        self.observers = int(observers)
        if self.observers < 0:
            raise ConceptSetError(f"observers must be >= 0, got {observers}")
        self.has_fixations = self.observers > 0
        self.name = name
        fx = dict(FIXATION_DEFAULTS)
        fx.update((shipped or {}).get("fixations", {}) if fixations is None else fixations)
        weights = fx.pop("weights", None) or (shipped or _shipped_spec())["fixations"]["weights"]
        unknown = sorted(set(weights) - set(STUDY_CATEGORIES))
        if unknown:
            raise ConceptSetError(f"fixation weights name unknown categories {unknown}",
                                  hint=f"use the study categories {list(STUDY_CATEGORIES)}")
        self.fix = fx
        # categories the weights table leaves out get weight 1
        full = {c: weights.get(c, 1.0) for c in STUDY_CATEGORIES}
        self._check_fixations(full)
        self.weights = {c: float(v) for c, v in full.items()}
        self.textures = dict((shipped or {}).get("textures", {}) if textures is None
                             else textures)
        self.scenes = dict((shipped or {}).get("scenes", {}) if scenes is None else scenes)
        self._check_tables()
        self._scene_names = list(self.scenes)
        w = np.array([float(self.scenes[s].get("weight", 1.0)) for s in self._scene_names])
        self._scene_p = w / w.sum()
        self.labels = self._label_table()
        self._obj_of = np.zeros(self.labels.max_id + 1, dtype=bool)
        self._colour_ids = np.arange(COLOUR_BASE, COLOUR_BASE + len(D.COLOUR_NAMES),
                                     dtype=np.int64)
        h, w_ = self.image_size
        mh, mw = self.mask_size
        self._iy = np.minimum(((np.arange(mh) + 0.5) * h / mh).astype(np.int64), h - 1)
        self._ix = np.minimum(((np.arange(mw) + 0.5) * w_ / mw).astype(np.int64), w_ - 1)
        self._strides = None
        if h % mh == 0 and w_ % mw == 0:  # the same pixels as _iy/_ix, by slicing
            self._strides = ((h // mh // 2, h // mh), (w_ // mw // 2, w_ // mw))
        self._tile = 2 * max(h, w_)
        self._fonts = D.font_files()

    def _check_fixations(self, weights: dict) -> None:
        fx = self.fix
        unknown = sorted(set(fx) - set(FIXATION_DEFAULTS))
        if unknown:
            raise ConceptSetError(f"unknown fixation parameter(s) {', '.join(unknown)} in the "
                                  "synthetic concept set",
                                  hint=f"valid: {', '.join(FIXATION_DEFAULTS)}, weights")
        try:
            lo, hi = (int(v) for v in fx["per_observer"])
            values = {k: float(fx[k]) for k in FIXATION_DEFAULTS if k != "per_observer"}
            wts = [float(v) for v in weights.values()]
        except (TypeError, ValueError):
            raise ConceptSetError("synthetic fixation parameters must be numbers "
                                  "(per_observer a pair of integers)") from None
        if not 1 <= lo <= hi:
            raise ConceptSetError(f"fixations.per_observer must be [min, max] with "
                                  f"1 <= min <= max, got {fx['per_observer']!r}")
        if not 0.0 < values["ior"] <= 1.0 or values["centre_sigma"] <= 0:
            raise ConceptSetError("fixations.ior must lie in (0, 1] and centre_sigma be > 0")
        if min(wts + [values["background"], values["area_exponent"],
                      values["singleton_gain"]]) < 0:
            raise ConceptSetError("fixation weights, background, area_exponent and "
                                  "singleton_gain must be >= 0")
        if sum(wts) + values["background"] <= 0:
            raise ConceptSetError("fixation weights and background are all zero: observers "
                                  "would have nothing to look at")

    # -- tables -------------------------------------------------------------------------
    def _check_tables(self) -> None:
        if not self.scenes:
            raise ConceptSetError("synthetic concept set defines no scenes")
        for kind in self.textures:
            try:
                D.make_texture(kind, 8, np.random.default_rng(0))
            except ValueError:
                raise ConceptSetError(
                    f"unknown texture {kind!r} in the synthetic concept set",
                    hint="textures: plain, striped, checkered, dotted, grainy, brick, wavy"
                ) from None
        ids = [int(v) for v in self.textures.values()]
        for name, sc in self.scenes.items():
            if "id" not in sc:
                raise ConceptSetError(f"scene {name!r} has no id in the synthetic concept set")
            ids.append(int(sc["id"]))
            for kind, row in sc.get("objects", {}).items():
                if kind not in KIND_LABEL:
                    raise ConceptSetError(f"scene {name!r} names unknown object kind {kind!r}",
                                          hint=f"kinds: {', '.join(KIND_LABEL)}")
                if len(row) != 3 or not 0 <= float(row[0]) <= 1 or int(row[1]) > int(row[2]):
                    raise ConceptSetError(f"scene {name!r}, kind {kind!r}: expected [probability,"
                                          f" min count, max count], got {row!r}")
            for kind, subs in sc.get("kinds", {}).items():
                bad = [s for s in subs if s not in SUBKINDS.get(kind, ())]
                if bad:
                    raise ConceptSetError(f"scene {name!r}: unknown {kind} kinds {bad}",
                                          hint=f"choose from {SUBKINDS.get(kind)}")
            for tex in sc.get("textures", {}):
                if tex not in self.textures:
                    raise ConceptSetError(f"scene {name!r} uses undefined texture {tex!r}")
        if len(set(ids)) != len(ids) or min(ids) < 120:
            raise ConceptSetError("texture and scene ids must be unique and >= 120")

    def _label_table(self) -> LabelTable:
        labs = [Label(PERSON, "person", "object"), Label(ANIMAL, "animal", "object")]
        for name in ("person head", "person part", "animal head", "animal part"):
            labs.append(Label(STUDY_CATEGORIES[name], name, "part"))
        for name in ("vehicle", "text", "symbol", "object", "food", "plant", "drink", "other"):
            labs.append(Label(STUDY_CATEGORIES[name], name, "object"))
        labs += [Label(COLOUR_BASE + i, c, "color") for i, c in enumerate(D.COLOUR_NAMES)]
        labs += [Label(int(i), t, "texture") for t, i in self.textures.items()]
        labs += [Label(int(sc["id"]), s, "scene") for s, sc in self.scenes.items()]
        return LabelTable(labs, CATEGORIES)

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(seed=self.seed, observers=self.observers,
                   world=config_hash({"fixations": self.fix, "weights": self.weights,
                                      "scenes": self.scenes, "textures": self.textures}))
        return cfg

    def with_size(self, n: int) -> "SyntheticWorld":
        """The same world with ``n`` images (images are functions of ``(seed, index)``, so the
        first ones are unchanged)."""
        other = copy.copy(self)
        other.n, other.limit = int(n), None
        return other

    def __len__(self) -> int:
        return self.n if self.limit is None else min(self.n, self.limit)

    # -- drawing ------------------------------------------------------------------------
    def scene_of(self, index: int) -> str:
        rng = np.random.default_rng([self.seed, int(index), 0])
        return self._scene_names[int(rng.choice(len(self._scene_names), p=self._scene_p))]

    def render(self, index: int, objects: bool = True) -> dict:
        """Draw image ``index`` at full resolution.

        Returns a dict with ``image`` (``uint8`` ``(H, W, 3)``), ``code`` (``uint8`` ``(H, W)``
        region codes), ``regions`` (per code: object label, part label, object number),
        ``objects`` (per placed object: kind, sub-kind, main colour, rotation), ``scene`` and
        ``texture`` names.  ``objects=False`` draws the same background without any object.
        """
        h, w = self.image_size
        rng = np.random.default_rng([self.seed, int(index), 0])
        scene = self._scene_names[int(rng.choice(len(self._scene_names), p=self._scene_p))]
        sc = self.scenes[scene]
        tex_w = sc.get("textures") or {t: 1 for t in self.textures}
        tnames = list(tex_w)
        tp = np.array([float(tex_w[t]) for t in tnames])
        texture = tnames[int(rng.choice(len(tnames), p=tp / tp.sum()))]
        tiles = _texture_tiles(self.seed, self._tile, tuple(sorted(self.textures)))[texture]
        wall = _hsv_range(rng, sc.get("wall"))
        floor = _hsv_range(rng, sc.get("floor"))
        g0, g1 = sc.get("ground", [0.0, 0.0])
        gfrac = float(rng.uniform(g0, g1)) if g1 > 0 else 0.0
        contrast = float(rng.uniform(0.2, 0.5)) * (0.5 if texture == "plain" else 1.0)
        img = self._background(rng, tiles, wall, contrast, (h, w))
        horizon = int(round(h * (1 - gfrac)))
        if gfrac > 0:
            band = self._background(rng, tiles, floor, contrast, (h - horizon, w))
            img.paste(band, (0, horizon))
        code = Image.new("L", (w, h), 0)
        painter = D.Painter(img, code)
        placed = []
        if objects:
            orng = np.random.default_rng([self.seed, int(index), 1])
            plan = self._plan(orng, scene, sc, horizon if gfrac > 0 else None)
            for k, obj in enumerate(plan):
                col = self._draw(painter, orng, obj, k, sc)
                placed.append({"kind": obj["kind"], "sub": obj["sub"], "colour": col,
                               "rot": obj["rot"]})
        return {"image": np.array(img), "code": np.array(code), "regions": painter.regions,
                "objects": placed, "scene": scene, "texture": texture, "wall": wall}

    def _background(self, rng, tiles, colour, contrast, shape) -> Image.Image:
        h, w = shape
        t = tiles[int(rng.integers(len(tiles)))]
        oy = int(rng.integers(0, t.shape[0] - h + 1))
        ox = int(rng.integers(0, t.shape[1] - w + 1))
        crop = Image.fromarray(np.ascontiguousarray(t[oy:oy + h, ox:ox + w]), "L")
        # grey level g -> dark + g/255 * (colour - dark), through a palette (one C pass)
        dark = np.asarray(D.shade(colour, 1 - contrast), dtype=np.float64)
        ramp = np.linspace(0.0, 1.0, 256)[:, None]
        pal = np.round(dark + ramp * (np.asarray(colour, np.float64) - dark)).astype(np.uint8)
        crop = crop.convert("P")
        crop.putpalette(pal.tobytes())
        return crop.convert("RGB")

    def _plan(self, rng, scene: str, sc: dict, horizon: int | None) -> list[dict]:
        h, w = self.image_size
        s = min(h, w)
        kinds = sc.get("kinds", {})
        plan = []
        portrait_done = False
        for kind, (prob, lo, hi) in sc.get("objects", {}).items():
            if rng.random() >= float(prob):
                continue
            for _ in range(int(rng.integers(int(lo), int(hi) + 1))):
                subs = kinds.get(kind) or SUBKINDS[kind]
                sub = subs[int(rng.integers(len(subs)))]
                obj = {"kind": kind, "sub": sub, "flip": 1 if rng.random() < 0.5 else -1,
                       "rot": 0.0}
                if kind == "person" and horizon is None and not portrait_done:
                    # the sitter of a portrait: a large head and shoulders
                    portrait_done = True
                    size = s * rng.uniform(1.6, 2.5)
                    hx, hy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.28, 0.42)
                    obj.update(x=hx, y=hy + 0.9 * size, size=size, depth=h * 10,
                               portrait=True, side=rng.random() < 0.3)
                elif sub in GROUNDED:
                    if horizon is None:
                        foot = h * rng.uniform(0.75, 1.0)
                        persp = 1.0
                    else:
                        foot = rng.uniform(horizon + 0.05 * (h - horizon), h * 1.02)
                        persp = 0.55 + 0.75 * (foot - horizon) / max(h - horizon, 1)
                    size = s * persp * _SIZE[sub](rng)
                    obj.update(x=w * rng.uniform(0.08, 0.92), y=foot, size=size, depth=foot,
                               side=rng.random() < 0.35)
                    if sub not in UPRIGHT and rng.random() < 0.3:
                        obj["rot"] = float(np.clip(rng.normal(0, 4), -8, 8))
                else:
                    size = s * _SIZE[sub](rng)
                    obj.update(x=w * rng.uniform(0.12, 0.88), y=h * rng.uniform(0.1, 0.88),
                               size=size, depth=h * rng.uniform(0.0, 1.0))
                    if kind == "text":
                        obj["word"] = _pick(rng, sc.get("words") or ["TEXT"])
                        obj["font"] = self._fonts[int(rng.integers(len(self._fonts)))]
                        obj["plate"] = rng.random() < 0.5
                        if rng.random() < 0.55:
                            obj["rot"] = float(np.clip(rng.normal(0, 20), -60, 60))
                    elif sub == "arrow" or sub == "check":
                        obj["rot"] = float(rng.uniform(-180, 180)) if sub == "arrow" else \
                            float(rng.uniform(-20, 20))
                    elif rng.random() < 0.4:
                        obj["rot"] = float(np.clip(rng.normal(0, 15), -40, 40))
                plan.append(obj)
        plan.sort(key=lambda o: o["depth"])
        return plan

    def _draw(self, p: D.Painter, rng, obj: dict, k: int, sc: dict):
        kind, sub = obj["kind"], obj["sub"]
        label = KIND_LABEL[kind]
        p.set(obj["x"], obj["y"], obj["size"], obj["rot"], obj["flip"])
        if kind == "person":
            body = p.region(PERSON, BODY, k)
            head = p.region(PERSON, HEAD, k)
            return D.person(p, rng, head, body, obj["side"], obj.get("portrait", False))
        if kind == "animal":
            body = p.region(ANIMAL, ABODY, k)
            head = p.region(ANIMAL, AHEAD, k)
            return D.animal(p, rng, head, body, sub)
        code = p.region(label, 0, k)
        if kind == "text":
            return self._text(p, rng, obj, code)
        if kind == "vehicle":
            return {"car": D.car, "bus": D.bus, "bicycle": D.bicycle}[sub](p, rng, code)
        fn = {"symbol": D.symbol, "food": D.food, "plant": D.plant, "drink": D.drink,
              "object": D.thing, "other": D.other}[kind]
        return fn(p, rng, code, sub)

    def _text(self, p: D.Painter, rng, obj: dict, code: int):
        x, y = obj["x"], obj["y"]
        local = p.img.getpixel((int(min(max(x, 0), p.img.width - 1)),
                                int(min(max(y, 0), p.img.height - 1))))
        plate = None
        if obj["plate"]:
            plate = D.rand_colour(rng, (0.0, 1.0), (0.2, 1.0))
            ref = plate
        else:
            ref = local
        # a text colour that contrasts with what lies behind it
        for _ in range(6):
            fill = D.rand_colour(rng, (0.0, 1.0), (0.0, 1.0))
            if D.colour_distance(fill, ref) > 0.45:
                break
        else:
            fill = (0, 0, 0) if sum(ref) > 380 else (255, 255, 255)
        size = max(8, int(obj["size"]))
        box = p.text(obj["word"], x, y, size, obj["font"], fill, code, obj["rot"], plate)
        return plate if plate is not None else fill

    # -- items --------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        r = self.render(index)
        layers, cs = self._layers(r)
        sc = self.scenes[r["scene"]]
        whole = torch.tensor([int(sc["id"]), int(self.textures[r["texture"]])], dtype=torch.int64)
        layers_t = torch.from_numpy(layers)
        cats = torch.zeros(len(CATEGORIES), dtype=torch.bool)
        cats[2:] = True
        cats[0] = bool(layers[0].any())
        cats[1] = bool(layers[1].any())
        image = torch.from_numpy(r["image"]).permute(2, 0, 1).float().div_(255.0)
        if self.observers:
            fix, obs = self.fixations(index, r, cs)
            fixations, observers = torch.from_numpy(fix), torch.from_numpy(obs)
        else:
            fixations = observers = None
        return {"image": image, "layers": layers_t, "whole": whole, "categories": cats,
                "instances": torch.from_numpy(self._instances(r, cs, layers)),
                "fixations": fixations, "observers": observers,
                "id": f"synthetic:{self.seed}:{index}"}

    @staticmethod
    def _instances(r: dict, cs: np.ndarray, layers: np.ndarray) -> np.ndarray:
        """Instance ids of the object and part layers: the object's number + 1 (a person's
        head and body carry the person's id); the colour layer has none."""
        lut = np.zeros(256, dtype=np.int64)
        if r["regions"]:
            lut[1:len(r["regions"]) + 1] = np.asarray(r["regions"], dtype=np.int64)[:, 2] + 1
        inst = np.zeros_like(layers)
        inst[0] = np.where(layers[0] > 0, lut[cs], 0)
        inst[1] = np.where(layers[1] > 0, lut[cs], 0)
        return inst

    def _layers(self, r: dict) -> tuple[np.ndarray, np.ndarray]:
        regions = r["regions"]
        obj_lut = np.zeros(256, dtype=np.int64)
        part_lut = np.zeros(256, dtype=np.int64)
        if regions:
            reg = np.asarray(regions, dtype=np.int64)
            obj_lut[1:len(regions) + 1] = reg[:, 0]
            part_lut[1:len(regions) + 1] = reg[:, 1]
        cs = self._sample(r["code"])
        rgb = self._sample(r["image"])
        colour = self._colour_ids[D.colour_names_of(rgb)]
        return np.stack([obj_lut[cs], part_lut[cs], colour]), cs

    def _sample(self, a: np.ndarray) -> np.ndarray:
        """Nearest-neighbour sample of a full-resolution array at the mask pixels: mask pixel
        ``(i, j)`` takes image pixel ``(floor((i + 0.5) H / h), floor((j + 0.5) W / w))``."""
        if self._strides is not None:
            (oy, sy), (ox, sx) = self._strides
            return np.ascontiguousarray(a[oy::sy, ox::sx])
        return a[self._iy[:, None], self._ix[None, :]]

    # -- synthetic observers --------------------------------------------------------------
    def _priorities(self, r: dict, cs: np.ndarray):
        """Per-region priorities (without inhibition) and their region codes."""
        h, w = self.image_size
        mh, mw = self.mask_size
        regions = r["regions"]
        nreg = len(regions)
        flat = cs.reshape(-1)
        area = np.bincount(flat, minlength=nreg + 1)[1:].astype(np.float64)
        if getattr(self, "_grid", None) is None or self._grid[0].size != flat.size:
            yy, xx = np.divmod(np.arange(flat.size), mw)
            self._grid = (xx.astype(np.float64), yy.astype(np.float64))
        xx, yy = self._grid
        sx = np.bincount(flat, weights=xx, minlength=nreg + 1)[1:]
        sy = np.bincount(flat, weights=yy, minlength=nreg + 1)[1:]
        codes = np.flatnonzero(area > 0)
        if codes.size == 0:
            return np.zeros(0), codes
        a = area[codes]
        cx = ((sx[codes] / a) + 0.5) * w / mw - 0.5
        cy = ((sy[codes] / a) + 0.5) * h / mh - 0.5
        side = max(h, w)
        d2 = ((cx - (w - 1) / 2) ** 2 + (cy - (h - 1) / 2) ** 2) / side ** 2
        sig = float(self.fix["centre_sigma"])
        gain = self._singletons(r)
        prio = np.empty(codes.size)
        for j, c in enumerate(codes):
            obj_label, part_label, obj_k = regions[c]
            cat = _study_name(obj_label, part_label)
            prio[j] = self.weights[cat] * gain[obj_k]
        prio *= (a / flat.size) ** float(self.fix["area_exponent"])
        prio *= np.exp(-d2 / (2 * sig * sig))
        return prio, codes + 1

    def _singletons(self, r: dict) -> np.ndarray:
        objs = r["objects"]
        gain = np.ones(max(len(objs), 1))
        if len(objs) < 2:
            return gain
        g = float(self.fix["singleton_gain"])
        cols = [tuple(o["colour"]) for o in objs]
        dist = []
        for i, c in enumerate(cols):
            others = [cols[j] for j in range(len(cols)) if j != i] + [tuple(r["wall"])]
            dist.append(min(D.colour_distance(c, o) for o in others))
        best = int(np.argmax(dist))
        if dist[best] >= float(self.fix["colour_singleton_distance"]):
            gain[best] *= g
        rot = np.array([o["rot"] for o in objs])
        off = np.abs(rot - np.median(rot))
        off = np.minimum(off, 360 - off)
        odd = np.flatnonzero(off > float(self.fix["orientation_singleton_degrees"]))
        if odd.size == 1:
            gain[odd[0]] *= g
        return gain

    def fixations(self, index: int, r: dict | None = None, cs: np.ndarray | None = None):
        """Sample the synthetic observers' fixations of image ``index``.

        Returns ``(fixations, observers)``: ``float32`` ``(N, 2)`` ``(x, y)`` positions in
        0-based image pixels and ``int64`` ``(N,)`` observer numbers.
        """
        if r is None:
            r = self.render(index)
        if cs is None:
            cs = self._sample(r["code"])
        h, w = self.image_size
        mh, mw = self.mask_size
        rng = np.random.default_rng([self.seed, int(index), 2])
        prio, codes = self._priorities(r, cs)
        base = np.append(prio, float(self.fix["background"]))
        bg = len(base) - 1
        lo, hi = (int(v) for v in self.fix["per_observer"])
        ior = float(self.fix["ior"])
        sig = float(self.fix["centre_sigma"]) * max(h, w)
        flat = cs.reshape(-1).astype(np.int64)
        n_obs = self.observers
        counts = rng.integers(lo, hi + 1, size=n_obs)
        steps = int(counts.max()) if n_obs else 0
        # region pixels, grouped by code: pixels of code c are order[start[c]:start[c]+area[c]]
        order = np.argsort(flat, kind="stable")
        area = np.bincount(flat, minlength=256)
        start = np.concatenate([[0], np.cumsum(area)[:-1]])
        p = np.tile(base, (n_obs, 1))
        rows = np.arange(n_obs)
        codes_ext = np.append(codes, 0)
        xs = np.empty((n_obs, steps))
        ys = np.empty((n_obs, steps))
        for t in range(steps):
            u = rng.random((n_obs, 4))
            cum = np.cumsum(p, axis=1)
            j = np.minimum((cum < (u[:, :1] * cum[:, -1:])).sum(axis=1), bg)
            on_bg = j == bg
            c = np.where(on_bg, 0, codes_ext[j])
            pix = order[start[c] + np.minimum((u[:, 1] * area[c]).astype(np.int64),
                                              np.maximum(area[c] - 1, 0))]
            my, mx = np.divmod(pix, mw)
            x = (mx + u[:, 2]) * w / mw - 0.5
            y = (my + u[:, 3]) * h / mh - 0.5
            g = rng.normal(size=(n_obs, 2)) * sig
            xs[:, t] = np.where(on_bg, (w - 1) / 2 + g[:, 0], x)
            ys[:, t] = np.where(on_bg, (h - 1) / 2 + g[:, 1], y)
            visited = ~on_bg
            p[rows[visited], j[visited]] *= ior
        keep = np.arange(steps)[None, :] < counts[:, None]
        fix = np.stack([np.clip(xs[keep], 0, w - 1), np.clip(ys[keep], 0, h - 1)], axis=1)
        obs = np.broadcast_to(rows[:, None], keep.shape)[keep]
        return fix.astype(np.float32), obs.astype(np.int64)

    def __repr__(self) -> str:
        return (f"SyntheticWorld(seed={self.seed}, n={len(self)}, image_size={self.image_size}, "
                f"mask_size={self.mask_size}, observers={self.observers})")


def _study_name(obj_label: int, part_label: int) -> str:
    lab = part_label or obj_label
    for name, v in STUDY_CATEGORIES.items():
        if v == lab:
            return name
    raise KeyError(lab)  # pragma: no cover - every drawn region has a study category


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _hsv_range(rng, spec) -> tuple[int, int, int]:
    spec = spec or {}
    h = rng.uniform(*spec.get("hue", [0.0, 1.0]))
    s = rng.uniform(*spec.get("sat", [0.0, 0.5]))
    v = rng.uniform(*spec.get("val", [0.4, 0.95]))
    return D.hsv(h, s, v)


def _u(a, b):
    return lambda rng: rng.uniform(a, b)


#: size of each sub-kind in units of the smaller image side (before perspective)
_SIZE = {
    "standing": _u(0.32, 0.58), "dog": _u(0.16, 0.3), "cat": _u(0.13, 0.22),
    "bird": _u(0.1, 0.2), "car": _u(0.45, 0.7), "bus": _u(0.7, 1.0), "bicycle": _u(0.3, 0.42),
    "word": _u(0.05, 0.15),
    **{k: _u(0.1, 0.24) for k in D.SYMBOL_KINDS},
    **{k: _u(0.09, 0.18) for k in D.FOOD_KINDS},
    "tree": _u(0.45, 0.8), "bush": _u(0.2, 0.35), "potted": _u(0.18, 0.32),
    "flower": _u(0.15, 0.28), "cactus": _u(0.15, 0.3),
    **{k: _u(0.1, 0.2) for k in D.DRINK_KINDS},
    "chair": _u(0.22, 0.35), "table": _u(0.3, 0.5), "monitor": _u(0.2, 0.32),
    "lamp": _u(0.25, 0.4), "box": _u(0.12, 0.25), "clock": _u(0.12, 0.2), "book": _u(0.1, 0.18),
    "ball": _u(0.08, 0.16), "pole": _u(0.4, 0.7), "umbrella": _u(0.2, 0.32),
    "kite": _u(0.15, 0.25), "bin": _u(0.15, 0.25), "hydrant": _u(0.12, 0.2),
}
