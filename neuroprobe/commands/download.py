"""``neuroprobe download NAME --out DIR``: fetch a known data set with the shared downloader."""
from __future__ import annotations

import logging

from . import add_command
from ._common import output_folder, timeout_seconds

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "download", "download and unpack a data set (broden, COCO "
                    "annotations ...): resumable, verified, safely extracted", _download)
    p.add_argument("name", nargs="?", help="data set name (see --list)")
    p.add_argument("--out", help="folder to put it in (default: <cache>/data)")
    p.add_argument("--mirror", default=None,
                   help="mirror base URL replacing the official host (or set NEUROPROBE_MIRROR)")
    p.add_argument("--timeout", type=timeout_seconds, default=30.0,
                   help="connect/read time-out in seconds (default 30)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    p.add_argument("--list", action="store_true", help="list the known data sets")


def _download(args) -> int:
    from ..download import KNOWN, fetch, mirror_url
    from ..errors import UserError
    from ..resources import cache_dir
    if args.list or not args.name:
        for name, entry in KNOWN.items():
            print(f"{name:<24} {entry['about']:<52} {mirror_url(entry['url'], args.mirror)}")
        if not args.name and not args.list:
            raise UserError("no data set named", hint="neuroprobe download NAME --out DIR; "
                            "see --list")
        return 0
    out = str(output_folder(args.out)) if args.out else str(cache_dir() / "data")
    folder = fetch(args.name, out, mirror=args.mirror, timeout=args.timeout,
                   keep_archive=args.keep_archive)
    log.info(f"{args.name} is in {folder}")
    print(folder)
    return 0
