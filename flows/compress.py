"""compress: one configuration, end to end."""

from __future__ import annotations

import os
import re

from prefect import flow, unmapped
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from dynslice.config import CompressConfig, EvaluationConfig, PlanConfig
from dynslice.errors import DynsliceError
from dynslice.planners import default_variations
from dynslice.report import run_name
from dynslice.tasks.common import team_store
from dynslice.tasks.stages import plan_name, point_name, submit_plan, timed

MAX_ATTEMPTS = "DYNSLICE_MAX_ATTEMPTS"  # starts of one flow run before it stops for good (default 3)

# What a flow run leaves in Prefect: nothing through Prefect's result serializers but, for a failed run, its
# exception, which Prefect writes whatever persist_result says; as JSON (type and message), never a pickle.
RUN_OPTIONS = dict(log_prints=True, persist_result=False, result_serializer="json")


def _value(ref):
    """A task's JSON result, from its future (or the value itself)."""
    return ref.result() if isinstance(ref, PrefectFuture) else ref


def model_stem(source: str) -> str:
    """A model source's last path component, fit for a name: smollm2-135m, Llama-3.1-8B, dense."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", source.rstrip("/").split("/")[-1]).strip("-.") or "model"


def run_config(cls: type[CompressConfig]) -> CompressConfig:
    """The configuration of the flow run being named (validated by Prefect before the name is asked for)."""
    from prefect.runtime import flow_run

    value = flow_run.parameters.get("config")
    return value if isinstance(value, cls) else cls.model_validate(value or {})


def compress_run_name() -> str:
    """smollm2-135m-dynamic-t0.25: what the run does, in Prefect's list of runs."""
    c = run_config(CompressConfig)
    return f"{model_stem(c.model.source)}-{point_name(c.plan.planner, c.plan.target, c.plan.variation, c.plan.budget)}"


def refuse_endless_restarts() -> None:
    """A run rescheduled after a crash (deploy/automations.yaml) resumes from the store; one that keeps crashing
    (a model too big for the machine, say) stops at its DYNSLICE_MAX_ATTEMPTS-th start with a failure, which the
    automation leaves alone."""
    from prefect.runtime import flow_run

    limit = int(os.environ.get(MAX_ATTEMPTS, "3"))
    if flow_run.run_count > limit:
        raise DynsliceError(f"this flow run has started {flow_run.run_count} times (limit {limit}, "
                            f"{MAX_ATTEMPTS}): it crashed every time; look at the earlier attempts' logs")


def demo_assets(config: CompressConfig, selection: bool) -> list[str]:
    """The demo assets (model and data names) a configuration reads, to fetch on the worker first; the held-out
    `selection` data only when plans are chosen on it."""
    from dynslice.assets import BUILDERS

    named = {config.model.source, config.calibration.source, config.evaluation.ppl}
    named |= {config.selection.source} if selection else set()
    named |= {config.recover.source} if config.recover.enabled else set()
    return sorted(n for n in named if n in BUILDERS)


def selection_eval(config: CompressConfig) -> EvaluationConfig:
    """Held-out perplexity used to choose between plans (never the evaluation's test split)."""
    s = config.selection
    return EvaluationConfig(ppl=s.source, ppl_split=s.split, ppl_seqlen=s.seqlen, ppl_windows=s.windows, tasks=[],
                            limit=None, speed=False, batch_size=config.evaluation.batch_size)


def candidates(plan: PlanConfig) -> list[tuple[str, float | None]]:
    """What the auto planner tries: the paper's mapping at each variation and, when the target counts
    parameters, layer removal by score and by measured loss (at equal size, removal can win: docs/BENCHMARKS.md)."""
    tried: list[tuple[str, float | None]] = [("dynamic", a) for a in plan.variations or
                                             default_variations(plan.target)]
    return tried + ([("removal", None), ("greedy", None)] if plan.budget == "params" else [])


def _shape(plan_ref: dict) -> tuple:
    r = plan_ref["result"]
    return (tuple(r["widths"]), tuple(r["mid"]),
            *(tuple(r.get(name, ())) for name in ("removed", "removed_attention", "removed_mlp")))


def slice_and_select(config: CompressConfig, store: dict, calibration_ref: dict,
                     plan_refs: list) -> tuple[dict, dict, list]:
    """Slice every plan (fanned out), score each on held-out perplexity, return the best (plan, slice)."""
    c, stage = config, timed(config.timeouts)
    plans = [_value(p) for p in plan_refs]
    # plans with the same widths (and removals) give the same model (one slice key): slice each once
    unique = list({_shape(p): p for p in plans}.values())
    names = [plan_name(p) for p in unique]
    slices = stage.slice.map(unmapped(store), unmapped(c.model), unmapped(calibration_ref), unique,
                             unmapped(c.calibration.batch_size), unmapped(c.device), unmapped(c.checkpoint_every),
                             names)
    checks = stage.evaluate.map(unmapped(store), unmapped(c.model), unmapped(selection_eval(c)), unmapped(c.device),
                                slices, [f"heldout-{n}" for n in names])
    by_shape = {_shape(p): (s.result(), e.result()) for p, s, e in zip(unique, slices, checks)}
    scored = [(p, *by_shape[_shape(p)]) for p in plans]
    best = min(scored, key=lambda item: item[2]["result"]["perplexity"])
    return best[0], best[1], scored


# One stage at a time: the heavy stages share one accelerator (or the CPU) and must not compete for it.
@flow(name="compress", flow_run_name=compress_run_name, task_runner=ThreadPoolTaskRunner(max_workers=1),
      **RUN_OPTIONS)
def compress(config: CompressConfig = CompressConfig()) -> dict:
    """Slice one model to one plan, evaluate it against the dense model and publish the run to the store.

    Args:
        config: the whole run; every field has a default, and a store left at ./dynslice-store becomes the team's
    """
    c, stage = config, timed(config.timeouts)
    refuse_endless_restarts()
    store = team_store(c.store, c.store_block)
    stage.check_store(store)  # a missing bucket or denied access fails here, before any compute
    if names := demo_assets(c, selection=c.plan.planner in ("auto", "greedy")):
        stage.assets(names)  # a fresh worker fetches the demo model and data once into its cache
    calibration_ref = stage.calibration.submit(store, c.model, c.calibration)
    score_ref = stage.score.submit(store, c.model, calibration_ref, c.calibration.batch_size, c.device)
    if c.plan.planner == "auto":
        plan_refs = [submit_plan(stage, store, score_ref, c.plan, c, planner, a) for planner, a in candidates(c.plan)]
        plan_ref, slice_ref, _ = slice_and_select(c, store, calibration_ref, plan_refs)
    else:
        label = point_name(c.plan.planner, c.plan.target, c.plan.variation, c.plan.budget)
        plan_ref = submit_plan(stage, store, score_ref, c.plan, c, c.plan.planner, c.plan.variation)
        slice_ref = stage.slice.submit(store, c.model, calibration_ref, plan_ref, c.calibration.batch_size, c.device,
                                       c.checkpoint_every, label)
    futures = {"calibration": calibration_ref, "score": score_ref, "plan": plan_ref, "slice": slice_ref}
    final = slice_ref  # the model the run delivers: the slice, or its recovered version
    if c.recover.enabled:
        final = futures["recover"] = stage.recover.submit(store, c.model, slice_ref, c.recover, c.device)
    # after the model: when an earlier stage fails, no heavy evaluation starts (the flow fails with that stage)
    after = [final] if isinstance(final, PrefectFuture) else []
    futures["dense_eval"] = stage.evaluate.submit(store, c.model, c.evaluation, c.device, name="dense",
                                                  wait_for=after)
    futures["sliced_eval"] = stage.evaluate.submit(store, c.model, c.evaluation, c.device, final, "sliced")
    refs = {name: _value(f) for name, f in futures.items()}
    run = c.run_name or run_name(c.model.source, refs["plan"]["result"]["planner"], c.plan.target,
                                 refs["slice"]["key"])
    published = stage.publish.submit(store, run, c.model_dump(), refs).result()
    chosen = refs["plan"]["result"]
    if c.hub.repo_id and any(chosen.get(k) for k in ("removed", "removed_attention", "removed_mlp")):
        raise DynsliceError(f"the chosen plan removes layers or sublayers: pushing such a model to the Hub is not "
                            f"supported "
                            f"yet (its model card reads the sliced-model entry); the run is in the store as {run}")
    if c.hub.repo_id:
        published["hub"] = stage.push_to_hub.submit(published["run"], c.hub).result()
    print(f"run {run}: report {published['report']}\n\n{published['table']}")
    return {"run": run, **published, "refs": refs}
