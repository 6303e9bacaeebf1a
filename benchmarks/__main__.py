"""Run every ``benchmarks/bench_*.py`` and print one table.

Usage::

    python -m benchmarks                 # everything, full size
    python -m benchmarks --quick         # small sizes (a smoke test of the runner)
    python -m benchmarks dissect saliency --json out.json

Each module exposes ``run(quick: bool = False) -> list[dict]``; a row has ``benchmark``,
``config``, ``value``, ``unit`` and optionally ``baseline``/``ratio`` (measured in the same run,
because machines are noisy) and ``target``.  Results with the machine description are printed
and, with ``--json``, saved; copy them into ``benchmarks/README.md`` with the command and date.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()} | {os.cpu_count()} cores {cpu} | torch {torch.__version__} "
            f"threads {torch.get_num_threads()} | {gpu}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("only", nargs="*", help="benchmark modules to run (e.g. dissect)")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; have {names}")
        names = [n for n in names if n in args.only]
    rows = []
    print(f"# neuroprobe benchmarks, {datetime.date.today()} | {machine()}")
    print(f"# command: python -m benchmarks {' '.join(sys.argv[1:])}".rstrip())
    for name in names:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        t0 = time.perf_counter()
        try:
            got = mod.run(quick=args.quick)
        except Exception as err:  # one broken benchmark must not hide the others
            got = [{"benchmark": name, "config": "FAILED", "value": float("nan"), "unit": "",
                    "target": f"{type(err).__name__}: {err}"}]
        for r in got:
            r.setdefault("module", name)
        rows.extend(got)
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    header = ["benchmark", "config", "value", "unit", "baseline", "ratio", "target"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = []
        for h in header:
            v = r.get(h, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(str(v))
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
