"""sweep: a grid over targets, variations, planners and budgets, sharing one calibration and one score."""

from __future__ import annotations

import itertools

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from dynslice import report
from dynslice.config import SweepConfig
from dynslice.plots import plot_sweep
from dynslice.flows.compress import slice_and_select
from dynslice.tasks.common import store_spec
from dynslice.tasks.publish import publish
from dynslice.tasks.stages import calibration, check_store, evaluate, plan, score


def grid_points(config: SweepConfig) -> list[dict]:
    """Distinct (planner, target, variation, budget) points; constant slicing has no variation."""
    g, points = config.grid, []
    for planner, target, variation, budget in itertools.product(g.planners, g.targets, g.variations, g.budgets):
        point = {"planner": planner, "target": target, "budget": budget,
                 "variation": None if planner == "constant" else min(variation, target)}
        if point not in points:
            points.append(point)
    return points


# one slicing run at a time by default (one accelerator); `dynslice run sweep --workers N` fans out wider
@flow(name="sweep", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def sweep(config: SweepConfig = SweepConfig()) -> dict:
    c = config
    store = store_spec(c.store, c.store_block)
    check_store(store)  # a missing bucket or denied access fails here, before any compute
    calibration_ref = calibration.submit(store, c.model, c.calibration)
    score_ref = score.submit(store, c.model, calibration_ref, c.calibration.batch_size, c.device)
    points = grid_points(c)
    plans = [c.plan.model_copy(update={k: v for k, v in p.items() if k != "variation"}) for p in points]
    plan_refs = [plan.submit(store, score_ref, config, p["variation"]) for config, p in zip(plans, points)]
    best_plan, best_slice, scored = slice_and_select(c, calibration_ref, plan_refs)  # fanned out with .map
    table = [dict(p, param_reduction=s["result"]["param_reduction"], perplexity=e["result"]["perplexity"],
                  slice=s["key"]) for p, (_, s, e) in zip(points, scored)]
    best = next(t for t in table if t["slice"] == best_slice["key"])
    dense_eval = evaluate.submit(store, c.model, c.evaluation, c.device).result()
    best_eval = evaluate.submit(store, c.model, c.evaluation, c.device, best_slice).result()
    final = report.markdown_table(report.comparison_rows(dense_eval["result"], best_eval["result"]),
                                  ("best plan (test split)", "dense", "sliced"))
    run = c.run_name or f"sweep-{best_slice['key'][:10]}"
    refs = {"calibration": calibration_ref.result(), "score": score_ref.result(), "plan": best_plan,
            "slice": best_slice, "dense_eval": dense_eval, "sliced_eval": best_eval}
    published = publish.submit(store, run, c.model_dump(), refs).result()  # the best model, report and links
    png = plot_sweep(table)
    text = report.sweep_report(run, table, best, final)
    create_markdown_artifact(text + f"\n\n![perplexity against size]({report.data_uri(png)})\n",
                             key="dynslice-sweep")
    print(text)
    return {"run": run, **published, "points": table, "best": best, "best_plan": best_plan,
            "best_slice": best_slice}
