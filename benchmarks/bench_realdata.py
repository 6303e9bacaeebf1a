"""Real concept sources and the downloader: items per second and transfer speed.

* Broden reader on a Broden folder exported from the synthetic world (224 images, 112 masks);
  baseline: drawing the same synthetic images directly (what the export was made from).
* coco-parts masks + items on the real COCO sample (``../shared/data/coco-sample``).
* EyeCrowd items (1024x768 JPEG decode + resize + boxes + fixations).
* The downloader against a local HTTP server (no network): MB/s for a 64 MB file.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rate(ds, n):
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[dict]:
    from neuroprobe.concepts.broden import BrodenDataset
    from neuroprobe.concepts.export import export_broden
    from neuroprobe.concepts.synthetic import SyntheticWorld

    rows = []
    n = 16 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        world = SyntheticWorld(seed=0, n=n, image_size=224, mask_size=112, observers=0)
        out = export_broden(world, Path(tmp) / "b")
        ds = BrodenDataset(out)
        base = _rate(world, n)
        rate = _rate(ds, n)
        rows.append({"benchmark": "broden_read", "config": f"{n} images 224/112", "value": rate,
                     "unit": "img/s", "baseline": base, "ratio": rate / base,
                     "target": ">= 200 img/s on one core (not the bottleneck of dissection); "
                     "baseline = drawing the synthetic images"})

    if (SHARED / "coco-sample" / "test_coco.json").is_file():
        from neuroprobe.concepts import load_spec
        from neuroprobe.concepts.coco import CocoParts

        spec = load_spec("coco-parts")
        coco = CocoParts([SHARED / "coco-sample" / "test_coco.json"], spec["map"],
                         images=SHARED / "coco-sample", head=spec["head"])
        reps = 8 if quick else 40
        t0 = time.perf_counter()
        for k in range(reps):
            coco.masks(coco.ids[k % len(coco)])
        masks = reps / (time.perf_counter() - t0)
        rows.append({"benchmark": "coco_parts_masks", "config": "real sample, ~3.5 people/img",
                     "value": masks, "unit": "img/s", "target": "informative"})
        rows.append({"benchmark": "coco_parts_items", "config": "real sample 224",
                     "value": _rate(coco, reps), "unit": "img/s", "target": "informative"})
    if (SHARED / "eyecrowd" / "labels.mat").is_file():
        from neuroprobe.concepts import open_concepts

        t0 = time.perf_counter()
        ec = open_concepts("eyecrowd", root=str(SHARED / "eyecrowd"))
        rows.append({"benchmark": "eyecrowd_open", "config": "200 images, labels+fixations",
                     "value": time.perf_counter() - t0, "unit": "s", "target": "< 2 s"})
        rows.append({"benchmark": "eyecrowd_items", "config": "1024x768 -> 224",
                     "value": _rate(ec, 10 if quick else 50), "unit": "img/s",
                     "target": "informative"})

    rows.append(_download_speed(8 if quick else 64))
    return rows


def _download_speed(mb: int) -> dict:
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    import functools
    import os

    from neuroprobe.download import download

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "f.bin").write_bytes(os.urandom(mb << 20))
        class _QuietHandler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(_QuietHandler, directory=str(src))
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            t0 = time.perf_counter()
            download(f"http://127.0.0.1:{srv.server_address[1]}/f.bin", Path(tmp) / "f.bin")
            dt = time.perf_counter() - t0
        finally:
            srv.shutdown()
            srv.server_close()
    return {"benchmark": "download_local", "config": f"{mb} MB over 127.0.0.1",
            "value": mb / dt, "unit": "MB/s",
            "target": "far above any real link (the downloader is not the bottleneck)"}


if __name__ == "__main__":  # pragma: no cover
    for row in run():
        print(row)
