"""Thin Prefect tasks around `dynslice.pipeline`: small JSON in, small JSON references out.

The artifact store is the cache (content-addressed, hash-verified, shared by a team through its bucket), so
Prefect's own result cache and its serializers are not used: `cache_policy=NONE` and no persisted results.
A re-run finds every finished stage in the store and shows it as `Cached`.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from dynslice.config import CalibrationConfig, EvaluationConfig, ModelConfig, PlanConfig, RecoverConfig
from dynslice.pipeline import calibration as calibration_stage
from dynslice.pipeline import evaluate as evaluate_stage
from dynslice.pipeline import plan as plan_stage
from dynslice.pipeline import recover as recover_stage
from dynslice.pipeline import score as score_stage
from dynslice.pipeline import slice as slice_stage
from dynslice.store import ArtifactRef
from dynslice.tasks.common import RETRY, io_errors_only, open_store, reported

_OPTIONS = dict(cache_policy=NONE, persist_result=False, retry_condition_fn=io_errors_only, **RETRY)
_HEAVY = dict(_OPTIONS, tags=["gpu"])  # a concurrency limit on the tag keeps heavy stages one per GPU


@task(name="check-store", **_OPTIONS)
def check_store(store: dict) -> None:
    """Before any compute: the store exists, is reachable and may be written (else fail naming the bucket)."""
    open_store(store).check_access()


@task(name="calibration", **_OPTIONS)
def calibration(store: dict, model: ModelConfig, calibration: CalibrationConfig) -> dict:
    return reported(calibration_stage.run(open_store(store), model, calibration))


@task(name="score", **_HEAVY)
def score(store: dict, model: ModelConfig, calibration_ref: dict, batch_size: int, device: str) -> dict:
    ref = score_stage.run(open_store(store), model, ArtifactRef.from_dict(calibration_ref), batch_size, device)
    return reported(ref)


@task(name="plan", task_run_name="plan-{plan_config.planner}-{variation}", **_OPTIONS)
def plan(store: dict, score_ref: dict, plan_config: PlanConfig, variation: float | None = None) -> dict:
    return reported(plan_stage.run(open_store(store), ArtifactRef.from_dict(score_ref), plan_config, variation))


@task(name="slice", **_HEAVY)
def slice_(store: dict, model: ModelConfig, calibration_ref: dict, plan_ref: dict, batch_size: int, device: str,
           checkpoint_every: int) -> dict:
    ref = slice_stage.run(open_store(store), model, ArtifactRef.from_dict(calibration_ref),
                          ArtifactRef.from_dict(plan_ref), batch_size, device, checkpoint_every)
    return reported(ref)


@task(name="recover", **_HEAVY)
def recover(store: dict, model: ModelConfig, slice_ref: dict, settings: RecoverConfig, device: str) -> dict:
    ref = recover_stage.run(open_store(store), model, ArtifactRef.from_dict(slice_ref), settings, device)
    return reported(ref)


@task(name="evaluate", **_HEAVY)
def evaluate(store: dict, model: ModelConfig, evaluation: EvaluationConfig, device: str,
             slice_ref: dict | None = None) -> dict:
    ref = evaluate_stage.run(open_store(store), model, evaluation, device,
                             ArtifactRef.from_dict(slice_ref) if slice_ref else None)
    return reported(ref)
