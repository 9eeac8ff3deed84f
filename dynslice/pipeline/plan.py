"""Stage `plan`: per-layer widths (or the layers to drop) from the scores and the planner's settings.

Key: the score artifact, the metric and the planner's parameters. The `greedy` planner measures the model on
held-out text, so its key adds the model identity, its dtype and the held-out data and windows.
"""

from __future__ import annotations

from dynslice.config import ModelConfig, PlanConfig, SelectionConfig
from dynslice.errors import ConfigError
from dynslice.pipeline import score as score_stage
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.plan import SlicePlan
from dynslice.plots import plot_plan
from dynslice.store import ArtifactRef, ArtifactStore

STAGE = Stage("plan", code=(__name__,), outputs=("plan.json", "plan.png"))


def run(store: ArtifactStore, score_ref: ArtifactRef, plan: PlanConfig, variation: float | None = None, *,
        planner: str | None = None, model: ModelConfig | None = None, selection: SelectionConfig | None = None,
        device: str = "auto") -> ArtifactRef:
    """The plan of `plan`'s planner. `auto` is resolved by the flow, which passes each candidate it tries as
    `planner` (and `variation` for the dynamic ones); `greedy` needs the model and the held-out `selection`."""
    planner = planner or plan.planner
    if planner == "auto":
        raise ConfigError("the auto planner tries several candidates: pass the planner (and variation) to plan")
    params = {"planner": planner, "target": plan.target, "budget": plan.budget, "round_to": plan.round_to,
              "max_slice": plan.max_slice,
              "untie_head": plan.untie_head if planner in ("constant", "dynamic") else None,  # removal slices nothing
              **({"units": plan.units} if planner == "greedy" else {}),
              "variation": (plan.effective_variation if variation is None else variation)
              if planner == "dynamic" else None}
    inputs = {"score": score_ref.key, "metric": plan.metric, "params": params}
    if planner in ("removal", "greedy") and plan.budget != "params":
        raise ConfigError(f"the {planner} planner needs budget: params (its target is a fraction of parameters)")
    if planner == "greedy":
        if model is None or selection is None:
            raise ConfigError("the greedy planner measures the model on held-out text: pass model and selection")
        inputs["measured"] = _greedy_inputs(model, selection)

    def compute(key: str) -> Output:
        scores = score_stage.scores(store, score_ref, plan.metric)
        if planner == "greedy":
            made = _greedy(scores, plan, model, selection, device)
        else:
            from dynslice.planners import make_plan

            made = make_plan(scores, planner, plan.target, variation=params["variation"], budget=plan.budget,
                             round_to=plan.round_to, max_slice=plan.max_slice, untie_head=plan.untie_head)
        result = {**params, "metric": plan.metric, "widths": list(made.widths), "mid": list(made.mid),
                  "removed": list(made.removed), "removed_attention": list(made.removed_attention),
                  "removed_mlp": list(made.removed_mlp),
                  **{k: made.provenance.get(k) for k in ("achieved_mean_slicing", "achieved_param_reduction")}}
        files = {"plan.json": made.to_json().encode(), "plan.png": plot_plan(made, scores.config["hidden_size"])}
        return Output(result, files)

    return run_stage(store, STAGE, inputs, compute)


def _greedy_inputs(model: ModelConfig, selection: SelectionConfig) -> dict:
    from dynslice.data import data_key, resolve_data
    from dynslice.identity import identify_model

    source = resolve_data(selection.source, selection.split)
    return {"model": identify_model(model.source, model.revision).key, "dtype": model.dtype,
            "data": data_key(source), "split": source.split, "seqlen": selection.seqlen, "windows": selection.windows}


def _greedy(scores, plan: PlanConfig, model: ModelConfig, selection: SelectionConfig, device: str) -> SlicePlan:
    from dynslice.devices import resolve_device
    from dynslice.models import resolve_model
    from dynslice.planners_mixed import greedy_plan, heldout_windows

    loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
    windows = heldout_windows(loaded.tokenizer, selection.source, selection.split, selection.seqlen,
                              selection.windows)
    return greedy_plan(loaded.model.to(resolve_device(device)), windows, plan.target, units=plan.units,
                       scores=scores)


def plan_of(store: ArtifactStore, ref: ArtifactRef) -> SlicePlan:
    return SlicePlan.from_json(store.read_bytes(ref, "plan.json").decode())
