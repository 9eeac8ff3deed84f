"""sweep: a grid over targets, variations, planners and budgets, sharing one calibration and one score.

The grid's slicing runs where the configuration says (`runner`): threads in this process, a Dask cluster (a local
one of `workers` processes, or a running scheduler), or one run of the compress deployment per grid point on the
team's GPU workers, whose artifacts the sweep then reads from the store.
"""

from __future__ import annotations

import itertools

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from dynslice import report
from dynslice.config import CompressConfig, SweepConfig
from dynslice.plots import plot_sweep
from dynslice.flows.compress import (RUN_OPTIONS, demo_assets, model_stem, refuse_endless_restarts, run_config,
                                     slice_and_select)
from dynslice.tasks.common import team_store
from dynslice.tasks.fanout import start_point, wait_for_points
from dynslice.tasks.stages import point_name, submit_plan, timed


def grid_points(config: SweepConfig) -> list[dict]:
    """Distinct (planner, target, variation, budget) points; constant slicing has no variation."""
    g, points = config.grid, []
    for planner, target, variation, budget in itertools.product(g.planners, g.targets, g.variations, g.budgets):
        if planner in ("removal", "greedy") and budget != "params":
            continue  # whole layers removed: the target is a fraction of the parameters
        point = {"planner": planner, "target": target, "budget": budget,
                 "variation": min(variation, target) if planner == "dynamic" else None}
        if point not in points:
            points.append(point)
    return points


def point_config(config: SweepConfig, store: dict, point: dict) -> CompressConfig:
    """One grid point as a compress configuration: the sweep's settings, the point's plan, the sweep's store."""
    common = {k: v for k, v in config.model_dump().items() if k in CompressConfig.model_fields}
    plan = dict(common["plan"], **point, variations=None)
    return CompressConfig.model_validate(dict(common, plan=plan, store=store["uri"], store_block=store["block"],
                                              run_name=None))


def points_runner(config: SweepConfig):
    """Where the grid's slices are computed: threads here, or a Dask cluster (local, or a scheduler's address)."""
    if config.runner != "dask":
        return ThreadPoolTaskRunner(max_workers=1)  # one model at a time in this process (see SweepConfig.workers)
    from prefect_dask import DaskTaskRunner

    if config.scheduler:
        return DaskTaskRunner(address=config.scheduler)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1, "processes": True})


def sweep_run_name() -> str:
    """sweep-smollm2-135m-8-points."""
    c = run_config(SweepConfig)
    return f"sweep-{model_stem(c.model.source)}-{len(grid_points(c))}-points"


@flow(name="sweep-points", flow_run_name="sweep-points", **RUN_OPTIONS)
def slice_points(config: SweepConfig, store: dict, calibration_ref: dict, plan_refs: list[dict]) -> dict:
    """Each grid point sliced and measured on the held-out data, on the sweep's runner; the best point."""
    best_plan, best_slice, scored = slice_and_select(config, store, calibration_ref, plan_refs)
    return {"best_plan": best_plan, "best_slice": best_slice, "scored": scored}


@flow(name="sweep", flow_run_name=sweep_run_name, task_runner=ThreadPoolTaskRunner(max_workers=1), **RUN_OPTIONS)
def sweep(config: SweepConfig = SweepConfig()) -> dict:
    """Slice a grid of plans, pick the best on held-out data, evaluate it against the dense model and publish it.

    Args:
        config: the grid and the settings every point shares; runner says where the points are sliced
    """
    c, stage = config, timed(config.timeouts)
    refuse_endless_restarts()
    store = team_store(c.store, c.store_block)
    stage.check_store(store)  # a missing bucket or denied access fails here, before any compute
    if names := demo_assets(c, selection=True):
        stage.assets(names)
    calibration_ref = stage.calibration.submit(store, c.model, c.calibration)
    score_ref = stage.score.submit(store, c.model, calibration_ref, c.calibration.batch_size, c.device)
    points = grid_points(c)
    plans = [c.plan.model_copy(update={k: v for k, v in p.items() if k != "variation"}) for p in points]
    plan_refs = [submit_plan(stage, store, score_ref, plan, c, p["planner"], p["variation"]).result()
                 for plan, p in zip(plans, points)]
    if c.runner == "deployments":  # one compress run per point on the team's workers; their slices land in the store
        runs = [start_point.submit(c.deployment, point_config(c, store, p).model_dump(mode="json"),
                                   point_name(**p)) for p in points]
        wait_for_points([r.result() for r in runs])
    chosen = slice_points.with_options(task_runner=points_runner(c))(c, store, calibration_ref.result(), plan_refs)
    best_plan, best_slice, scored = chosen["best_plan"], chosen["best_slice"], chosen["scored"]
    table = [dict(p, param_reduction=s["result"]["param_reduction"], perplexity=e["result"]["perplexity"],
                  slice=s["key"]) for p, (_, s, e) in zip(points, scored)]
    best = next(t for t in table if t["slice"] == best_slice["key"])
    dense_eval = stage.evaluate.submit(store, c.model, c.evaluation, c.device, name="dense").result()
    best_eval = stage.evaluate.submit(store, c.model, c.evaluation, c.device, best_slice, "sliced").result()
    final = report.markdown_table(report.comparison_rows(dense_eval["result"], best_eval["result"]),
                                  ("best plan (test split)", "dense", "sliced"))
    run = c.run_name or f"sweep-{best_slice['key'][:10]}"
    refs = {"calibration": calibration_ref.result(), "score": score_ref.result(), "plan": best_plan,
            "slice": best_slice, "dense_eval": dense_eval, "sliced_eval": best_eval}
    published = stage.publish.submit(store, run, c.model_dump(), refs).result()  # the best model, report and links
    png = plot_sweep(table)
    text = report.sweep_report(run, table, best, final)
    create_markdown_artifact(text + f"\n\n![perplexity against size]({report.data_uri(png)})\n",
                             key="dynslice-sweep")
    print(text)
    return {"run": run, **published, "points": table, "best": best, "best_plan": best_plan,
            "best_slice": best_slice}
