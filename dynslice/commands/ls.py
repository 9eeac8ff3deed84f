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

    store = ArtifactStore(args.store)
    print(f"store {store.uri}")
    runs = sorted(p.rstrip("/").split("/")[-2] for p in store.fs.glob(store.path("runs", "*", "MANIFEST.json")))
    print(f"\nruns ({len(runs)}):")
    for name in runs:
        print(f"  {store.url('runs', name)}/report.md")
    for stage, describe in (("slice", _slice_line), ("evaluate", _eval_line), ("plan", _plan_line)):
        manifests = store.manifests(stage)
        print(f"\n{stage} artifacts ({len(manifests)}):")
        for m in manifests:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.get("created", 0)))
            print(f"  {m['key'][:12]}  {when}  {describe(m['result'])}")
    return 0


def _slice_line(r: dict) -> str:
    return f"{r['parameters']:,} parameters ({r['param_reduction']:.1%} removed), widths {r['widths'][:3]}..."


def _eval_line(r: dict) -> str:
    return ", ".join(f"{k} {r[k]:.4g}" for k in ("perplexity", "accuracy") if r.get(k) is not None) or "-"


def _plan_line(r: dict) -> str:
    return f"{r['planner']} target {r['target']} variation {r.get('variation')} budget {r['budget']}"
