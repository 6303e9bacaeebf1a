"""The concept-set cache: decoded labels stored once per concept set, read back instead of PNGs.

Researchers dissect many models on the same concept set; without a cache every run decodes
every mask file again.  The cache keeps, for every item of a set, what the reader would return
besides the image: the label layers **already resized to the set's mask size**, the whole-image
labels, the category flags, the fixations and their observers, and the instance planes where a
source has them (COCO annotations, EyeCrowd boxes: one region-NSS region each).  The image itself
is not cached (it is what the model sees; decoding it is part of a forward loop anyway).

Sources with a cache implement ``cache_spec``, ``label_files`` and ``decode_labels`` of
:class:`~neuroprobe.concepts.base.ConceptDataset`: Broden (mask PNGs), COCO (``coco-parts``:
polygons and RLE decoded with pycocotools, person heads from keypoints), box sets (EyeCrowd,
box CSVs, with their fixations) and mask folders (VOC / OSIE-SR PNGs, labelme).  Generated sets
(``synthetic``) have none.

Where and how it is stored
--------------------------
``<cache>/concepts/<name>-<key>/`` (``<cache>`` = :func:`neuroprobe.resources.cache_dir`):

``manifest.json``
    the key, what it was made of (:meth:`ConceptDataset.cache_spec`), the number of items, the
    chunk size, the mask size and the label dtype.
``chunk-NNNNNN.layers.npy``
    the label planes of the chunk's :data:`CHUNK` items, ``(P, h, w)``, a plain ``.npy`` file
    (``numpy.load(path, mmap_mode="r")`` maps it): ``uint8`` where every label id of the set
    fits; otherwise, where every plane of the chunk holds at most 256 distinct ids (Broden's
    do), ``uint8`` codes into a per-plane palette kept in the meta file
    (``palette[p][codes[p]]``, half the bytes of ``uint16``), else ``uint16`` / ``int32``.
    The reader here reads each item's planes with one ``pread`` instead of mapping the file,
    so that the pages read do not count in the process's resident memory (a mapped file's
    pages do, and would grow with the data set).
``chunk-NNNNNN.meta.npz``
    per item: offsets into the planes, whole-image labels, category flags, fixations and
    observers, offsets into the instance planes and which items have them (``has_inst``;
    absent in chunks of sources without instances), whether the item could not be read
    (``bad``: such items are decoded again on every read, which raises the reader's own
    error), and the signature of its source files.
    The meta file is written last: a chunk is complete when it exists.
``chunk-NNNNNN.inst.npy``
    the instance planes of the chunk, stored like the label planes (smallest dtype for the
    chunk's largest instance id, palette-coded where that halves the bytes, palette
    ``inst_palette`` in the meta file); only where some item of the chunk has instances.

Keys and invalidation
---------------------
The folder's key is a SHA-256 over :data:`FORMAT`, the source's ``cache_spec()`` (for Broden:
the SHA-256 of ``index.csv``, ``category.csv``, ``label.csv`` and every ``c_*.csv``, plus the
split, the row limit and the mask size) and nothing else: not the folder's path, not file
times.  A changed index or label table therefore gives a new cache; a copy of the same set
elsewhere finds the old one.  The mask files themselves are not hashed when a set is opened
(for Broden that would read 63,305 x 2-4 PNGs before every run).  Instead each item carries
two signatures of the files it was decoded from (:meth:`ConceptDataset.label_files`):

* a cheap one, a hash of every file's size and modification time (nanoseconds), checked by
  one ``stat`` per file on **every** read;
* a content one, BLAKE2b-128 over the files' bytes, checked only when the cheap one differs.

So an item whose files are untouched costs a ``stat`` per file; a file that was touched or
copied but holds the same bytes is recognised by its content and still read from the cache; a
file whose bytes changed makes the reader decode that item from its files again (the result is
always what the files say) and print one note suggesting ``neuroprobe concepts cache NAME``,
which re-checks every item and rebuilds the chunks holding changed ones.  A file that merely
exists never validates anything: an item is served from the cache only when its files' bytes
are the ones it was built from.

Building
--------
:func:`prepare` builds the chunks a run needs on first use (with a progress bar), or
``neuroprobe concepts cache NAME --root DIR`` builds all of them ahead.  Each chunk is written
atomically (temporary file, rename), so an interrupted build leaves only whole chunks and the
next build continues with the missing ones.  Builders hold an exclusive ``flock`` on
``<folder>/.lock``: a second process that wants the same cache waits for the first and then
uses what it built (the kernel drops the lock of a killed process).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConceptSetError, DataFormatError

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "CHUNK", "LabelCache", "prepare", "build", "cache_folder", "cache_key",
           "hash_files", "hash_fixations", "label_dtype"]

#: version of the on-disk layout and of the cached content's definition (bump on any change)
FORMAT = 1
#: items per chunk (the unit of building, resuming and invalidation)
CHUNK = 256
#: chunks whose per-item arrays a reader keeps in memory (least recently used go first)
_KEEP_META = 8
#: errors of an item that cannot be decoded: stored as ``bad``, decoded (and raised) on read
_DATA_ERRORS = (DataFormatError, ConceptSetError)


# -- keys and signatures -------------------------------------------------------------------------

def hash_files(paths: Iterable[Path], algorithm: str = "sha256") -> str:
    """Hex digest over the names and bytes of ``paths`` (missing files hash as absent)."""
    h = hashlib.new(algorithm)
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except FileNotFoundError:
            h.update(b"<absent>")
        h.update(b"\0")
    return h.hexdigest()


def hash_fixations(h, fix) -> None:
    """Feed one image's :class:`~neuroprobe.saliency.fixations.Fixations` (or ``None``) into
    the hash ``h``: the positions and observers, which are all an item's fixations are made
    of (dtype and shape included, so that equal bytes of other arrays never collide)."""
    if fix is None:
        h.update(b"<no fixations>")
        return
    for arr in (fix.x, fix.y, fix.observer):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape};".encode())
        h.update(arr.tobytes())


def cache_key(spec: dict) -> str:
    """The cache key of a source's ``cache_spec()`` (hex SHA-256)."""
    text = json.dumps({"format": FORMAT, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_folder(dataset, spec: dict | None = None) -> Path:
    """``<cache>/concepts/<name>-<key[:20]>`` of ``dataset``."""
    from ..resources import cache_dir

    spec = dataset.cache_spec() if spec is None else spec
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(dataset.name))[:40]
    return cache_dir() / "concepts" / f"{name or 'set'}-{cache_key(spec)[:20]}"


def label_dtype(max_id: int) -> np.dtype:
    """The smallest dtype holding label ids ``0..max_id``."""
    for dt in (np.uint8, np.uint16):
        if max_id <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int32)


def _stat_sig(paths: Sequence[Path]) -> int:
    """64-bit hash of every file's size and mtime (ns); -1 in it for a missing file."""
    h = hashlib.blake2b(digest_size=8)
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(b"-1;")
    return int.from_bytes(h.digest(), "little", signed=True)


def _content_sig(paths: Sequence[Path]) -> bytes:
    """BLAKE2b-128 over the files' bytes (each prefixed by its length; missing: ``-1``)."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError:
            h.update(b"-1;")
            continue
        h.update(f"{len(data)};".encode())
        h.update(data)
    return h.digest()


# -- building -----------------------------------------------------------------------------------

def _chunk_name(c: int) -> str:
    return f"chunk-{c:06d}"


def _encode_item(dataset, index: int, dtype: np.dtype) -> tuple[dict, int]:
    """Decode item ``index`` for the cache: ``(record, bytes of its source files)``."""
    files, nbytes = [], 0
    rec = {"stat": 0, "content": bytes(16), "bad": False}
    try:
        # (a labelme item finds its image in its file: naming the files can fail like decoding)
        files = [Path(p) for p in dataset.label_files(index)]
        for p in dataset.replaced_files(index):
            with contextlib.suppress(OSError):
                nbytes += os.stat(p).st_size
        rec.update(stat=_stat_sig(files), content=_content_sig(files))
        lab = dataset.decode_labels(index)
    except _DATA_ERRORS:
        rec.update(bad=True, layers=np.zeros((0,) + tuple(dataset.mask_size), dtype),
                   whole=np.zeros(0, np.int64),
                   categories=np.zeros(len(dataset.categories), bool),
                   fixations=None, observers=None, instances=None)
        return rec, nbytes
    layers = np.asarray(lab["layers"])
    if layers.shape[1:] != tuple(dataset.mask_size):
        raise ValueError(f"decode_labels({index}) gave masks of {layers.shape[1:]}, not the "
                         f"set's mask size {tuple(dataset.mask_size)}")
    inst = lab.get("instances")
    if inst is not None:
        inst = np.asarray(inst)
        if inst.shape != layers.shape:
            raise ValueError(f"decode_labels({index}) gave instances of {inst.shape}, not the "
                             f"shape of its layers {layers.shape}")
        if len(inst) and (inst.min() < 0 or inst.max() > np.iinfo(np.int32).max):
            raise ValueError(f"decode_labels({index}) gave instance ids outside 0..2**31-1")
    rec.update(layers=layers.astype(dtype, copy=False), instances=inst,
               whole=np.asarray(lab["whole"], np.int64).reshape(-1),
               categories=np.asarray(lab["categories"], bool).reshape(-1),
               fixations=None if lab.get("fixations") is None
               else np.asarray(lab["fixations"], np.float32).reshape(-1, 2),
               observers=None if lab.get("observers") is None
               else np.asarray(lab["observers"], np.int64).reshape(-1))
    return rec, nbytes


def _write_chunk(folder: Path, c: int, recs: list[dict], start: int, png_bytes: int,
                 dtype: np.dtype, mask_size) -> None:
    """Write one chunk: the planes first, then the meta file (its existence = complete)."""
    from ..io import atomic_path

    planes = [r["layers"] for r in recs]
    layers = (np.concatenate(planes) if any(len(p) for p in planes)
              else np.zeros((0,) + tuple(mask_size), dtype))
    n = len(recs)
    layers, palette = _palette_encode(layers)
    insts = [r["instances"] for r in recs]
    has_inst = np.array([x is not None for x in insts], bool)
    inst_planes = [x for x in insts if x is not None and len(x)]
    top = max((int(x.max()) for x in inst_planes), default=0)
    inst = (np.concatenate(inst_planes).astype(label_dtype(top)) if inst_planes
            else np.zeros((0,) + tuple(mask_size), np.uint8))
    inst, inst_palette = _palette_encode(inst)

    def offsets(sizes):
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    fix = [r["fixations"] for r in recs]
    obs = [r["observers"] for r in recs]
    meta = {
        "start": np.int64(start), "png_bytes": np.int64(png_bytes),
        "lay_off": offsets([len(p) for p in planes]),
        "whole_off": offsets([len(r["whole"]) for r in recs]),
        "whole": np.concatenate([r["whole"] for r in recs]).astype(np.int64),
        "categories": np.stack([r["categories"] for r in recs]).astype(bool),
        "has_fix": np.array([f is not None for f in fix], bool),
        "has_obs": np.array([o is not None for o in obs], bool),
        "fix_off": offsets([0 if f is None else len(f) for f in fix]),
        "fixations": np.concatenate([np.zeros((0, 2), np.float32)]
                                    + [f for f in fix if f is not None]).astype(np.float32),
        "obs_off": offsets([0 if o is None else len(o) for o in obs]),
        "observers": np.concatenate([np.zeros(0, np.int64)]
                                    + [o for o in obs if o is not None]).astype(np.int64),
        "bad": np.array([r["bad"] for r in recs], bool),
        "has_inst": has_inst,
        "inst_off": offsets([0 if x is None else len(x) for x in insts]),
        "inst_palette": (inst_palette if inst_palette is not None
                         else np.zeros((0, 256), inst.dtype)),
        "palette": palette if palette is not None else np.zeros((0, 256), dtype),
        "stat": np.array([r["stat"] for r in recs], np.int64),
        "content": np.frombuffer(b"".join(r["content"] for r in recs),
                                 np.uint8).reshape(n, 16),
    }
    name = _chunk_name(c)
    with atomic_path(folder / f"{name}.layers.npy") as tmp:
        np.save(tmp, np.ascontiguousarray(layers))
    if has_inst.any():
        with atomic_path(folder / f"{name}.inst.npy") as tmp:
            np.save(tmp, np.ascontiguousarray(inst))
    with atomic_path(folder / f"{name}.meta.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **meta)


def _palette_encode(layers: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(P, h, w)`` planes in a wide dtype -> ``uint8`` codes and a ``(P, 256)`` palette per
    plane (half the bytes of ``uint16`` planes), when every plane holds at most 256 distinct
    ids; otherwise the planes unchanged and ``None``.  ``palette[p][codes[p]]`` gives them back
    exactly."""
    if layers.dtype.itemsize == 1 or not len(layers):
        return layers, None
    codes = np.empty(layers.shape, np.uint8)
    palette = np.zeros((len(layers), 256), layers.dtype)
    for p, plane in enumerate(layers):
        ids, inverse = np.unique(plane, return_inverse=True)
        if len(ids) > 256:
            return layers, None
        palette[p, :len(ids)] = ids
        codes[p] = inverse.reshape(plane.shape)
    return codes, palette


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Hold ``<folder>/.lock`` (exclusive ``flock``), waiting for another builder if needed."""
    try:
        import fcntl
    except ImportError:   # pragma: no cover - no advisory locks (Windows): no guard
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            log.warning(f"waiting for process {fh.read().strip() or '?'}, which is "
                        f"building the concept cache {folder}")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()   # closing drops the lock


def _chunks_of(indices: Iterable[int], n: int) -> list[int]:
    return sorted({int(i) // CHUNK for i in indices if 0 <= int(i) < n})


def _manifest(dataset, spec: dict, dtype: np.dtype) -> dict:
    return {"format": FORMAT, "key": cache_key(spec), "name": dataset.name, "spec": spec,
            "n": len(dataset), "chunk": CHUNK, "mask_size": list(dataset.mask_size),
            "dtype": dtype.name}


def build(dataset, indices: Iterable[int] | None = None, *, progress: bool = True,
          verify: bool = False) -> "LabelCache":
    """Build (or finish) the cache of ``dataset`` for the chunks holding ``indices`` (default:
    every item) and return it opened.

    ``verify=True`` also re-checks the items of chunks that exist (their files' contents) and
    rebuilds the chunks holding items whose files changed.  Safe to run in several processes at
    once (an exclusive file lock); an interrupted build resumes with the missing chunks.
    """
    from ..io import write_json
    from ..utils import progress as bar

    spec = dataset.cache_spec()
    if spec is None:
        raise ConceptSetError(f"concept set {dataset.name!r} ({type(dataset).__name__}) has no "
                              "cache", hint="Broden, coco-parts, box sets (EyeCrowd) and mask "
                              "folders are cached; generated sets (synthetic) are not")
    folder = cache_folder(dataset, spec)
    n = len(dataset)
    dtype = label_dtype(dataset.labels.max_id)
    chunks = _chunks_of(range(n) if indices is None else indices, n)
    with _build_lock(folder):
        for p in folder.glob(".chunk-*"):   # left by a killed builder (we hold the lock)
            with contextlib.suppress(OSError):
                p.unlink()
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            write_json(manifest, _manifest(dataset, spec, dtype))
        cache = LabelCache(folder)
        todo = [c for c in chunks if not cache.has_chunk(c)]
        if verify:
            # a chunk with touched or changed files is rebuilt (new signatures: no hashing of
            # touched files on every later read)
            stale = [c for c in chunks if cache.has_chunk(c)
                     and cache.stale_items(dataset, c, content=False)]
            todo = sorted(set(todo) | set(stale))
        if todo:
            pbar = bar(total=sum(min(n, (c + 1) * CHUNK) - c * CHUNK for c in todo),
                       desc="concept cache", unit="img",
                       **({} if progress else {"disable": True}))
            for c in todo:
                recs, nbytes = [], 0
                for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
                    rec, b = _encode_item(dataset, i, dtype)
                    recs.append(rec)
                    nbytes += b
                    pbar.update(1)
                _write_chunk(folder, c, recs, c * CHUNK, nbytes, dtype, dataset.mask_size)
                cache.forget(c)
            pbar.close()
    return cache


def prepare(dataset, indices: Iterable[int] | None = None, *, progress: bool = True):
    """Attach the cache to ``dataset`` (building the chunks ``indices`` need first); returns
    the :class:`LabelCache`, or ``None`` where the source has no cache or ``use_cache`` is off.
    """
    if not getattr(dataset, "use_cache", False) or dataset.cache_spec() is None:
        dataset.label_cache = None
        return None
    try:
        cache = build(dataset, indices, progress=progress)
    except OSError as err:   # an unwritable or full cache folder: read the files instead
        log.warning(f"no concept cache ({err}); decoding the label files")
        cache = None
    dataset.label_cache = cache
    return cache


# -- reading ------------------------------------------------------------------------------------

class LabelCache:
    """A built (or partly built) cache folder, read item by item.

    Picklable and fork-safe (it holds paths and the small per-chunk meta arrays only; the
    planes are read with ``os.pread`` from a file opened per read).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        info = json.loads((self.folder / "manifest.json").read_text())
        self.n, self.chunk = int(info["n"]), int(info["chunk"])
        self.mask_size = tuple(info["mask_size"])
        self.dtype = np.dtype(info["dtype"])
        self.key = info["key"]
        # the meta arrays of the chunks read last (a bounded LRU: memory stays flat in the size
        # of the set, in every loader process)
        self._meta: OrderedDict[int, dict] = OrderedDict()
        self._offset: dict[tuple[int, str], tuple] = {}
        self._noted = False

    def __getstate__(self):
        return {**self.__dict__, "_meta": OrderedDict(), "_offset": {}}

    def _paths(self, c: int) -> tuple[Path, Path]:
        name = _chunk_name(c)
        return self.folder / f"{name}.layers.npy", self.folder / f"{name}.meta.npz"

    def _planes_file(self, c: int, kind: str) -> Path:
        """The ``.npy`` file of chunk ``c``'s label planes (``kind="layers"``) or instance
        planes (``"inst"``)."""
        return self.folder / f"{_chunk_name(c)}.{kind}.npy"

    def has_chunk(self, c: int) -> bool:
        return c in self._meta or self._paths(c)[1].is_file()

    def complete(self) -> bool:
        return all(self.has_chunk(c) for c in range((self.n + self.chunk - 1) // self.chunk))

    def forget(self, c: int) -> None:
        self._meta.pop(c, None)
        self._drop_offsets(c)

    def _drop_offsets(self, c: int) -> None:
        for kind in ("layers", "inst"):
            self._offset.pop((c, kind), None)

    def meta(self, c: int) -> dict | None:
        """The per-item arrays of chunk ``c`` (``None`` where it is not built)."""
        if c in self._meta:
            self._meta.move_to_end(c)
            return self._meta[c]
        layers, path = self._paths(c)
        if not path.is_file():
            return None
        with np.load(path) as z:
            meta = {k: z[k] for k in z.files}
        # chunks of sources without instances (and those written before instances were
        # cached) have no instance planes
        meta.setdefault("has_inst", np.zeros(len(meta["bad"]), bool))
        kinds = ["layers"] + (["inst"] if meta["has_inst"].any() else [])
        for kind in kinds:
            mm = np.lib.format.open_memmap(self._planes_file(c, kind), mode="r")
            self._offset[(c, kind)] = (int(mm.offset), mm.dtype)
            del mm
        self._meta[c] = meta
        while len(self._meta) > _KEEP_META:
            old, _ = self._meta.popitem(last=False)
            self._drop_offsets(old)
        return meta

    def _planes(self, c: int, m: dict, a: int, b: int, kind: str = "layers") -> np.ndarray:
        """Planes ``a:b`` of chunk ``c``'s ``kind`` file (``"layers"`` or ``"inst"``; one
        ``pread``; palette-decoded where stored so)."""
        h, w = self.mask_size
        if b <= a:
            return np.zeros((0, h, w), self.dtype)
        offset, dtype = self._offset[(c, kind)]
        size = h * w * dtype.itemsize
        path = self._planes_file(c, kind)
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, (b - a) * size, offset + a * size)
        finally:
            os.close(fd)
        if len(data) != (b - a) * size:
            raise DataFormatError(f"concept cache file {path} is truncated",
                                  hint=f"delete {self.folder} (it is rebuilt on next use)")
        planes = np.frombuffer(data, dtype).reshape(b - a, h * w)
        palette = m["palette" if kind == "layers" else "inst_palette"]
        if len(palette):
            planes = np.take_along_axis(palette[a:b], planes.astype(np.intp), axis=1)
        return planes.reshape(b - a, h, w)

    def get(self, index: int, files: Sequence[Path]) -> dict | None:
        """Item ``index``'s labels, or ``None`` where the cache has no valid entry for it
        (chunk not built, item unreadable when built, or its files' bytes changed since)."""
        c = index // self.chunk
        m = self.meta(c)
        if m is None:
            return None
        k = index - int(m["start"])
        if m["bad"][k]:
            return None
        if _stat_sig(files) != int(m["stat"][k]) and \
                _content_sig(files) != m["content"][k].tobytes():
            self._note_stale(files)
            return None
        lay = self._planes(c, m, int(m["lay_off"][k]), int(m["lay_off"][k + 1]))
        out = {"layers": lay.astype(np.int64),
               "whole": m["whole"][m["whole_off"][k]:m["whole_off"][k + 1]].copy(),
               "categories": m["categories"][k].copy(), "fixations": None, "observers": None}
        if m["has_fix"][k]:
            out["fixations"] = m["fixations"][m["fix_off"][k]:m["fix_off"][k + 1]].copy()
        if m["has_obs"][k]:
            out["observers"] = m["observers"][m["obs_off"][k]:m["obs_off"][k + 1]].copy()
        if m["has_inst"][k]:
            out["instances"] = self._planes(c, m, int(m["inst_off"][k]),
                                            int(m["inst_off"][k + 1]), "inst").astype(np.int64)
        return out

    def _note_stale(self, files) -> None:
        if self._noted:
            return
        self._noted = True
        log.warning(f"{files[0] if files else 'an item'} changed since the concept "
                    f"cache {self.folder} was built; decoding changed items from their files (run "
                    "`neuroprobe concepts cache NAME --root DIR` to refresh the cache)")

    def stale_items(self, dataset, c: int, content: bool = True) -> list[int]:
        """Items of chunk ``c`` whose files' bytes differ from those the cache was built from
        (``content=False``: whose files' sizes or times differ, changed or only touched)."""
        m = self.meta(c)
        out = []
        for k in range(len(m["bad"])):
            files = [Path(p) for p in dataset.label_files(int(m["start"]) + k)]
            if _stat_sig(files) != int(m["stat"][k]) and (
                    not content or _content_sig(files) != m["content"][k].tobytes()):
                out.append(int(m["start"]) + k)
        return out

    def disk_bytes(self) -> int:
        """Bytes the cache folder takes on disk."""
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def source_bytes(self) -> int:
        """Bytes of the label files the built chunks replace (sizes when built; 0 for sources
        whose labels come from set-wide annotation files, COCO and box sets)."""
        total = 0
        for c in range((self.n + self.chunk - 1) // self.chunk):
            m = self.meta(c)
            if m is not None:
                total += int(m["png_bytes"])
        return total

    def decoded_bytes(self) -> int:
        """Bytes of the built items' label and instance planes as a reader decodes them
        (``int64``), what the cache's compact planes stand for."""
        h, w = self.mask_size
        planes = 0
        for c in range((self.n + self.chunk - 1) // self.chunk):
            m = self.meta(c)
            if m is not None:
                planes += int(m["lay_off"][-1]) + int(m.get("inst_off", [0])[-1])
        return planes * h * w * 8

    def built_items(self) -> int:
        return sum(len(self.meta(c)["bad"]) for c in range((self.n + self.chunk - 1)
                                                          // self.chunk) if self.has_chunk(c))
