"""`dynslice ls`: what an artifact store holds (runs, sliced models, evaluations)."""

from __future__ import annotations

import argparse
import time


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list the runs, models and evaluations in an artifact store")
    p.add_argument("store", nargs="?", default="./dynslice-store", help="store folder or URI")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynslice.store import ArtifactStore

    from dynslice.errors import StoreError

    store = ArtifactStore(args.store)
    try:
        exists = store.fs.exists(store.path("manifests")) or store.fs.exists(store.path("runs"))
    except Exception as exc:  # classified: an unreachable endpoint or denied access, not a bug
        raise StoreError(f"cannot list the store {store.uri}: {type(exc).__name__}: {exc}") from None
    if not exists:
        raise StoreError(f"{store.uri} holds no dynslice store (no manifests/ or runs/): check the path or bucket")
    print(f"store {store.uri}")
    runs = sorted(p.rstrip("/").split("/")[-2] for p in store.fs.glob(store.path("runs", "*", "MANIFEST.json")))
    print(f"\nruns ({len(runs)}):")
    for name in runs:
        print(f"  {store.url('runs', name)}/report.md")
    for stage, describe in (("slice", _slice_line), ("evaluate", _eval_line), ("plan", _plan_line)):
        manifests = [m for m in store.manifests(stage) if isinstance(m.get("result"), dict) and "key" in m]
        print(f"\n{stage} artifacts ({len(manifests)}):")
        for m in manifests:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.get("created", 0)))
            print(f"  {m['key'][:12]}  {when}  {describe(m['result'])}")
    return 0


def _slice_line(r: dict) -> str:
    if not {"parameters", "param_reduction", "widths"} <= set(r):
        return "(result not readable)"
    return f"{r['parameters']:,} parameters ({r['param_reduction']:.1%} removed), widths {r['widths'][:3]}..."


def _eval_line(r: dict) -> str:
    return ", ".join(f"{k} {r[k]:.4g}" for k in ("perplexity", "accuracy") if r.get(k) is not None) or "-"


def _plan_line(r: dict) -> str:
    return f"{r.get('planner')} target {r.get('target')} variation {r.get('variation')} budget {r.get('budget')}"
