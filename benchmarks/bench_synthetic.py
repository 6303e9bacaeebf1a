"""Speed of the synthetic concept world: items per second on one core, and Broden export."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path


def _rate(fn, count: int, repeat: int) -> float:
    """Best items/s over ``repeat`` runs of ``count`` items (CPU time of this process, so that
    other processes on a shared machine disturb the figure less; wall time is close on an idle
    machine)."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        dt = time.process_time() - t0
        best = max(best, count / max(dt, 1e-9))
    return best


def run(quick: bool = False) -> list[dict]:
    import torch

    from neuroprobe.concepts.export import export_broden
    from neuroprobe.concepts.synthetic import SyntheticWorld

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        count = 60 if quick else 600
        repeat = 1 if quick else 3
        world = SyntheticWorld(seed=0, n=count)
        world[0]  # texture tiles and fonts
        from neuroprobe.utils import versions

        versions()  # one-time imports of the export's metadata

        def items():
            for i in range(count):
                world[i]

        rows = [{"benchmark": "synthetic: items (image + 3 mask layers + fixations)",
                 "config": f"224px, masks 112px, 15 observers, {count} images, 1 core",
                 "value": _rate(items, count, repeat), "unit": "img/s",
                 "target": ">= 300 img/s on one core"}]

        no_fix = SyntheticWorld(seed=0, n=count, observers=0)

        def items_nofix():
            for i in range(count):
                no_fix[i]

        rows.append({"benchmark": "synthetic: items without fixations",
                     "config": f"224px, masks 112px, {count} images, 1 core",
                     "value": _rate(items_nofix, count, repeat), "unit": "img/s",
                     "target": "(for reference)"})

        n_exp = 40 if quick else 400
        with tempfile.TemporaryDirectory() as tmp:
            k = [0]

            def export():
                k[0] += 1
                export_broden(world, Path(tmp) / f"out{k[0]}", n=n_exp)

            rows.append({"benchmark": "synthetic: Broden export",
                         "config": f"{n_exp} images, JPEG + 3 label PNGs each, 1 process",
                         "value": _rate(export, n_exp, 1), "unit": "img/s",
                         "target": "thousands of images in minutes"})
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover
    for row in run():
        print(row)
