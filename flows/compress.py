"""compress: one configuration, end to end."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from dynslice.config import CompressConfig, EvaluationConfig
from dynslice.planners import default_variations
from dynslice.report import run_name
from dynslice.tasks.common import store_spec
from dynslice.tasks.publish import publish, push_to_hub
from dynslice.tasks.stages import calibration, check_store, evaluate, plan, recover, score, slice_


def _value(ref):
    """A task's JSON result, from its future (or the value itself)."""
    return ref.result() if isinstance(ref, PrefectFuture) else ref


def selection_eval(config: CompressConfig) -> EvaluationConfig:
    """Held-out perplexity used to choose between plans (never the evaluation's test split)."""
    s = config.selection
    return EvaluationConfig(ppl=s.source, ppl_split=s.split, ppl_seqlen=s.seqlen, ppl_windows=s.windows, tasks=[],
                            limit=None, speed=False, batch_size=config.evaluation.batch_size)


def slice_and_select(config: CompressConfig, calibration_ref: dict, plan_refs: list) -> tuple[dict, dict, list]:
    """Slice every plan (fanned out), score each on held-out perplexity, return the best (plan, slice)."""
    c = config
    store = store_spec(c.store, c.store_block)
    plans = [_value(p) for p in plan_refs]
    # plans with the same widths give the same sliced model (one slice key): slice each once
    unique = list({(tuple(p["result"]["widths"]), tuple(p["result"]["mid"])): p for p in plans}.values())
    slices = slice_.map(unmapped(store), unmapped(c.model), unmapped(calibration_ref), unique,
                        unmapped(c.calibration.batch_size), unmapped(c.device), unmapped(c.checkpoint_every))
    checks = evaluate.map(unmapped(store), unmapped(c.model), unmapped(selection_eval(c)), unmapped(c.device),
                          slices)
    by_widths = {(tuple(p["result"]["widths"]), tuple(p["result"]["mid"])): (s.result(), e.result())
                 for p, s, e in zip(unique, slices, checks)}
    scored = [(p, *by_widths[(tuple(p["result"]["widths"]), tuple(p["result"]["mid"]))]) for p in plans]
    best = min(scored, key=lambda item: item[2]["result"]["perplexity"])
    return best[0], best[1], scored


# One stage at a time: the heavy stages share one accelerator (or the CPU) and must not compete for it.
@flow(name="compress", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def compress(config: CompressConfig = CompressConfig()) -> dict:
    c = config
    store = store_spec(c.store, c.store_block)
    check_store(store)  # a missing bucket or denied access fails here, before any compute
    calibration_ref = calibration.submit(store, c.model, c.calibration)
    score_ref = score.submit(store, c.model, calibration_ref, c.calibration.batch_size, c.device)
    if c.plan.planner == "auto":
        variations = c.plan.variations or default_variations(c.plan.target)
        plan_refs = [plan.submit(store, score_ref, c.plan, a) for a in variations]
        plan_ref, slice_ref, _ = slice_and_select(c, calibration_ref, plan_refs)
    else:
        plan_ref = plan.submit(store, score_ref, c.plan)
        slice_ref = slice_.submit(store, c.model, calibration_ref, plan_ref, c.calibration.batch_size, c.device,
                                  c.checkpoint_every)
    # after the slice: when an earlier stage fails, no heavy evaluation starts (the flow fails with that stage)
    futures = {"calibration": calibration_ref, "score": score_ref, "plan": plan_ref, "slice": slice_ref}
    final = slice_ref  # the model the run delivers: the slice, or its recovered version
    if c.recover.enabled:
        final = futures["recover"] = recover.submit(store, c.model, slice_ref, c.recover, c.device)
    # after the model: when an earlier stage fails, no heavy evaluation starts (the flow fails with that stage)
    after = [final] if isinstance(final, PrefectFuture) else []
    futures["dense_eval"] = evaluate.submit(store, c.model, c.evaluation, c.device, wait_for=after)
    futures["sliced_eval"] = evaluate.submit(store, c.model, c.evaluation, c.device, final)
    refs = {name: _value(f) for name, f in futures.items()}
    run = c.run_name or run_name(c.model.source, refs["plan"]["result"]["planner"], c.plan.target,
                                 refs["slice"]["key"])
    published = publish.submit(store, run, c.model_dump(), refs).result()
    if c.hub.repo_id:
        published["hub"] = push_to_hub.submit(published["run"], c.hub).result()
    print(f"run {run}: report {published['report']}\n\n{published['table']}")
    return {"run": run, **published, "refs": refs}
