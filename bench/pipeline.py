"""The demo flow (SmolLM2-135M, Wikipedia sample, default configuration) three ways: cold (empty store), fully
cached (the same store again), and resumed after a failure in evaluation (a second store: the evaluation data
is missing the first time, then present, so only evaluation runs again). Prefect's overhead is the flow's wall
time minus the sum of its stages' own times (and, separately, starting the temporary API server).

    python bench/pipeline.py [--store-root /tmp/dynslice-bench] [--quick]   # needs `dynslice assets fetch`
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import emit

STAGES = ("calibration", "score", "plan", "slice", "dense_eval", "sliced_eval")


def run(config) -> tuple[float, dict]:
    from dynslice.flows.compress import compress

    start = time.perf_counter()
    result = compress(config)
    return time.perf_counter() - start, result["refs"]


def stage_seconds(refs: dict) -> tuple[float, list[str]]:
    """The computed stages' own seconds (cached ones cost their lookup only) and which stages computed."""
    computed = [name for name in STAGES if not refs[name].get("cached")]
    return sum(refs[name]["result"].get("wall_s", 0.0) for name in computed), computed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store-root", default=None, help="where the two stores go (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="a smaller evaluation (for trying the benchmark out)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from dynslice.config import load_config

    root = Path(args.store_root or tempfile.mkdtemp(prefix="dynslice-bench-"))
    shutil.rmtree(root, ignore_errors=True)
    overrides = {"evaluation": {"ppl_windows": 8, "limit": 20, "repeats": 1}} if args.quick else {}
    cold_config = load_config({"store": str(root / "a"), **overrides})

    @flow
    def empty() -> None:
        return None

    t0 = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=180):
        server_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        empty()
        empty_flow_s = time.perf_counter() - t1
        cold_s, cold_refs = run(cold_config)
        cached_s, cached_refs = run(cold_config)
        missing = root / "missing-eval.txt"
        failing = load_config({"store": str(root / "b"), **overrides,
                               "evaluation": {**overrides.get("evaluation", {}), "ppl": str(missing)}})
        t2 = time.perf_counter()
        try:
            run(failing)
        except Exception as exc:  # the point: evaluation fails after the slice
            print(f"failed as planned: {type(exc).__name__}", file=sys.stderr)
        failed_s = time.perf_counter() - t2
        from dynslice.data import load_corpus, resolve_data

        missing.write_text(load_corpus(resolve_data("wiki", "test")).eval_text)  # the data appears
        resumed_s, resumed_refs = run(failing)
    cold_stage_s, cold_ran = stage_seconds(cold_refs)
    resumed_stage_s, resumed_ran = stage_seconds(resumed_refs)
    result = {"server_start_s": round(server_s, 2), "empty_flow_s": round(empty_flow_s, 2),
              "cold_s": round(cold_s, 2), "cold_stage_s": round(cold_stage_s, 2),
              "cold_overhead_s": round(cold_s - cold_stage_s, 2), "cold_ran": cold_ran,
              "cached_s": round(cached_s, 2), "cached_ran": stage_seconds(cached_refs)[1],
              "failed_s": round(failed_s, 2), "resumed_s": round(resumed_s, 2), "resumed_ran": resumed_ran,
              "resumed_stage_s": round(resumed_stage_s, 2), "quick": args.quick,
              "stage_wall_s": {name: cold_refs[name]["result"].get("wall_s") for name in STAGES}}
    rows = [["run", "wall s", "stages computed", "their own s", "flow overhead s"],
            ["temporary Prefect server start", f"{server_s:.1f}", "-", "-", "-"],
            ["an empty flow", f"{empty_flow_s:.1f}", "-", "-", f"{empty_flow_s:.1f}"],
            ["cold (empty store)", f"{cold_s:.1f}", ", ".join(cold_ran), f"{cold_stage_s:.1f}",
             f"{cold_s - cold_stage_s:.1f}"],
            ["fully cached", f"{cached_s:.1f}", ", ".join(result["cached_ran"]) or "none", "0", f"{cached_s:.1f}"],
            ["failing in evaluation", f"{failed_s:.1f}", "(calibration..slice, then evaluate fails)", "-", "-"],
            ["resumed after that failure", f"{resumed_s:.1f}", ", ".join(resumed_ran), f"{resumed_stage_s:.1f}",
             f"{resumed_s - resumed_stage_s:.1f}"]]
    emit("pipeline", result, rows, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
