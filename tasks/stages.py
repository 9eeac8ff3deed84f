"""Thin Prefect tasks around `dynslice.pipeline`: small JSON in, small JSON references out.

The artifact store is the cache (content-addressed, hash-verified, shared by a team through its bucket), so
Prefect's own result cache and its serializers are not used: `cache_policy=NONE` and no persisted results.
A re-run finds every finished stage in the store and shows it as `Cached`. Task runs are named for what they
do (`slice-dynamic-t0.25`, `evaluate-dense`); `timed` gives each stage its time limit from the configuration.
"""

from __future__ import annotations

from types import SimpleNamespace

from prefect import task
from prefect.cache_policies import NONE

from dynslice.config import (CalibrationConfig, EvaluationConfig, ModelConfig, PlanConfig, RecoverConfig,
                             SelectionConfig, TimeoutConfig)
from dynslice.pipeline import calibration as calibration_stage
from dynslice.pipeline import evaluate as evaluate_stage
from dynslice.pipeline import plan as plan_stage
from dynslice.pipeline import recover as recover_stage
from dynslice.pipeline import score as score_stage
from dynslice.pipeline import slice as slice_stage
from dynslice.store import ArtifactRef
from dynslice.tasks.common import RETRY, io_errors_only, open_store, reported
from dynslice.tasks.publish import publish, push_to_hub

_OPTIONS = dict(cache_policy=NONE, persist_result=False, retry_condition_fn=io_errors_only, **RETRY)
_HEAVY = dict(_OPTIONS, tags=["gpu"])  # a concurrency limit on the tag keeps heavy stages one per GPU


def point_name(planner: str, target: float, variation: float | None = None, budget: str = "mean") -> str:
    """A plan's short name in task run names: dynamic-t0.25, dynamic-t0.25-a0.1, constant-t0.3-params."""
    parts = [planner, f"t{target:g}"]
    if variation is not None and planner != "constant":
        parts.append(f"a{variation:g}")
    return "-".join(parts + (["params"] if budget == "params" else []))


def plan_name(plan_ref: dict) -> str:
    """The label of a published plan (its planner, target, variation and budget)."""
    r = plan_ref["result"]
    return point_name(r["planner"], r["target"], r.get("variation"), r.get("budget", "mean"))


@task(name="assets", task_run_name="assets", **_OPTIONS)
def assets(names: list[str]) -> dict:
    """The demo model and data a run names, fetched once into the worker's cache (verified, else rebuilt)."""
    from dynslice.assets import fetch_assets

    return {name: entry["status"] for name, entry in fetch_assets(names).items()}


@task(name="check-store", task_run_name="check-store", **_OPTIONS)
def check_store(store: dict) -> None:
    """Before any compute: the store exists, is reachable and may be written (else fail naming the bucket)."""
    open_store(store).check_access()


@task(name="calibration", task_run_name="calibration", **_OPTIONS)
def calibration(store: dict, model: ModelConfig, calibration: CalibrationConfig) -> dict:
    return reported(calibration_stage.run(open_store(store), model, calibration))


@task(name="score", task_run_name="score", **_HEAVY)
def score(store: dict, model: ModelConfig, calibration_ref: dict, batch_size: int, device: str) -> dict:
    ref = score_stage.run(open_store(store), model, ArtifactRef.from_dict(calibration_ref), batch_size, device)
    return reported(ref)


@task(name="plan", task_run_name="plan-{name}", **_OPTIONS)
def plan(store: dict, score_ref: dict, plan_config: PlanConfig, variation: float | None = None,
         name: str = "plan", planner: str | None = None) -> dict:
    return reported(plan_stage.run(open_store(store), ArtifactRef.from_dict(score_ref), plan_config, variation,
                                   planner=planner))


@task(name="search", task_run_name="plan-{name}", **_HEAVY)
def search(store: dict, score_ref: dict, plan_config: PlanConfig, model: ModelConfig, selection: SelectionConfig,
           device: str, name: str = "greedy") -> dict:
    """The greedy planner: layers or sublayers removed one by one by measured held-out loss (runs the model)."""
    return reported(plan_stage.run(open_store(store), ArtifactRef.from_dict(score_ref), plan_config,
                                   planner="greedy", model=model, selection=selection, device=device))


def submit_plan(stage: SimpleNamespace, store: dict, score_ref, plan_config: PlanConfig, config, planner: str,
                variation: float | None = None):
    """One plan of `planner` (a future): the greedy search on the model as a heavy task, the others from the
    scores. `config` is the run's configuration (its model, held-out selection data and device)."""
    name = point_name(planner, plan_config.target, variation, plan_config.budget)
    if planner == "greedy":
        return stage.search.submit(store, score_ref, plan_config, config.model, config.selection, config.device,
                                   name)
    return stage.plan.submit(store, score_ref, plan_config, variation, name, planner)


@task(name="slice", task_run_name="slice-{name}", **_HEAVY)
def slice_(store: dict, model: ModelConfig, calibration_ref: dict, plan_ref: dict, batch_size: int, device: str,
           checkpoint_every: int, name: str = "plan") -> dict:
    ref = slice_stage.run(open_store(store), model, ArtifactRef.from_dict(calibration_ref),
                          ArtifactRef.from_dict(plan_ref), batch_size, device, checkpoint_every)
    return reported(ref)


@task(name="recover", task_run_name="recover", **_HEAVY)
def recover(store: dict, model: ModelConfig, slice_ref: dict, settings: RecoverConfig, device: str) -> dict:
    ref = recover_stage.run(open_store(store), model, ArtifactRef.from_dict(slice_ref), settings, device)
    return reported(ref)


@task(name="evaluate", task_run_name="evaluate-{name}", **_HEAVY)
def evaluate(store: dict, model: ModelConfig, evaluation: EvaluationConfig, device: str,
             slice_ref: dict | None = None, name: str = "sliced") -> dict:
    ref = evaluate_stage.run(open_store(store), model, evaluation, device,
                             ArtifactRef.from_dict(slice_ref) if slice_ref else None)
    return reported(ref)


def timed(timeouts: TimeoutConfig) -> SimpleNamespace:
    """The stage tasks, each limited to its stage's time (config.timeouts; null: no limit)."""
    return SimpleNamespace(assets=assets.with_options(timeout_seconds=timeouts.assets), check_store=check_store,
                           calibration=calibration.with_options(timeout_seconds=timeouts.calibration),
                           score=score.with_options(timeout_seconds=timeouts.score),
                           plan=plan.with_options(timeout_seconds=timeouts.plan),
                           search=search.with_options(timeout_seconds=timeouts.search),
                           slice=slice_.with_options(timeout_seconds=timeouts.slice),
                           recover=recover.with_options(timeout_seconds=timeouts.recover),
                           evaluate=evaluate.with_options(timeout_seconds=timeouts.evaluate),
                           publish=publish.with_options(timeout_seconds=timeouts.publish),
                           push_to_hub=push_to_hub.with_options(timeout_seconds=timeouts.publish))
