"""A/B check of the saliency metrics: this tree against a git ref, on OSIE images, per metric.

``PYTHONPATH=$PWD python benchmarks/ab_saliency.py [--ref main] [--n 120]`` evaluates every
metric in both protocols (``evaluate_batch``, seed 0) for the first ``n`` OSIE fixation sets
(synthetic ones without the data) with several maps per image: three classical maps of OSIE
stimuli, one with negative values, one with heavy ties (64 levels), a constant one, one with a
maximum of 1e-305 and one with signed zeros.  The ref's ``neuroprobe`` package is taken from
git (``git archive``) and run in a child process, as is this tree's; the table gives the largest
absolute difference per metric (AUCs must be 0, the rest below 1e-12).  Also times both
(process CPU seconds, same machine, one after the other).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
from neuroprobe.saliency import metrics as M
import benchmarks.bench_saliency as B
n = int(sys.argv[3])
fixes, source, maps = B._data(n)
m = maps[0]
lo = m - 0.3 * m.max()
ties = np.round(maps[1] / maps[1].max() * 63)
const = np.full_like(m, 0.25)
tiny = m / m.max() * 1e-305
signed = np.where(np.arange(m.size).reshape(m.shape) % 3 == 0, -0.0, m)
signed[m < np.quantile(m, 0.4)] = 0.0
all_maps = [maps[0], maps[1], maps[2], lo, ties, const, tiny, signed]
out = {}
cpu = 0.0
for j, mm in enumerate(all_maps):
    t = time.process_time()
    rows = M.evaluate_batch(lambda i: mm, fixes[:n], M.PROTOCOLS, M.METRICS)
    cpu += time.process_time() - t
    for r in rows:
        for k in M.METRICS:
            out.setdefault(f"{r['protocol']}/{k}", []).append(r[k])
json.dump({"cpu": cpu, "values": out}, open(sys.argv[4], "w"))
"""


def _run(pkg_root: Path, n: int, out: Path) -> dict:
    import warnings  # noqa: F401 - the children warn about negative maps; that is expected

    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", CHILD, str(pkg_root), str(REPO), str(n), str(out)],
                   check=True, env=env)
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="main")
    ap.add_argument("--n", type=int, default=120)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref_root = tmp / "ref"
        ref_root.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.ref, "neuroprobe"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(ref_root)], input=archive, check=True)
        ref = _run(ref_root, args.n, tmp / "ref.json")
        new = _run(REPO, args.n, tmp / "new.json")
    print(f"{args.n} images x 8 maps; CPU s: ref {ref['cpu']:.2f}, this tree {new['cpu']:.2f}")
    print(f"{'metric':<18} {'max |diff|':>12} {'NaN agree':>10}")
    bad = False
    for key in sorted(ref["values"]):
        a = np.array(ref["values"][key], dtype=np.float64)
        b = np.array(new["values"][key], dtype=np.float64)
        same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
        ok = ~np.isnan(a) & ~np.isnan(b)
        with np.errstate(invalid="ignore"):  # inf - inf where both are infinite
            diff = np.where(a[ok] == b[ok], 0.0, np.abs(a[ok] - b[ok]))
        d = float(diff.max()) if ok.any() else 0.0
        limit = 0.0 if "auc" in key else 1e-12
        bad |= not d <= limit or not same_nan
        print(f"{key:<18} {d:>12.3g} {str(same_nan):>10}")
    print("FAIL" if bad else "OK: AUCs bit-identical, the rest within 1e-12")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
