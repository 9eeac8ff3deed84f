"""Thin Prefect tasks around `dynslice.stages`: small JSON in, small JSON references out.

The artifact store is the cache (content-addressed, hash-verified, shared by a team through its bucket),
so Prefect's own result cache and its pickle serializer are not used: `cache_policy=NONE` and no
persisted results. A re-run finds every finished stage in the store and shows it as `Cached`.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from dynslice import stages
from dynslice.config import CalibrationConfig, EvaluationConfig, ModelConfig, PlanConfig
from dynslice.store import ArtifactRef
from tasks.common import RETRY, io_errors_only, open_store, reported

_OPTIONS = dict(cache_policy=NONE, persist_result=False, retry_condition_fn=io_errors_only, **RETRY)


@task(name="capture", **_OPTIONS)
def capture(store: dict, model: ModelConfig, calibration: CalibrationConfig, device: str) -> dict:
    return reported(stages.capture(open_store(store), model, calibration, device))


@task(name="score", **_OPTIONS)
def score(store: dict, capture_ref: dict, metric: str) -> dict:
    return reported(stages.score(open_store(store), ArtifactRef.from_dict(capture_ref), metric))


@task(name="plan", **_OPTIONS)
def plan(store: dict, score_ref: dict, plan_config: PlanConfig, variation: float | None = None) -> dict:
    ref = stages.plan(open_store(store), ArtifactRef.from_dict(score_ref), plan_config, variation)
    return reported(ref)


@task(name="slice", **_OPTIONS)
def slice_(store: dict, model: ModelConfig, capture_ref: dict, plan_ref: dict, batch_size: int, device: str,
           checkpoint_every: int) -> dict:
    ref = stages.slice_stage(open_store(store), model, ArtifactRef.from_dict(capture_ref),
                             ArtifactRef.from_dict(plan_ref), batch_size, device, checkpoint_every)
    return reported(ref)


@task(name="evaluate", **_OPTIONS)
def evaluate(store: dict, model: ModelConfig, evaluation: EvaluationConfig, device: str,
             slice_ref: dict | None = None) -> dict:
    ref = stages.evaluate(open_store(store), model, evaluation, device,
                          ArtifactRef.from_dict(slice_ref) if slice_ref else None)
    return reported(ref)
