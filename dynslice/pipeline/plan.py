"""Stage `plan`: per-layer widths from the chosen metric's scores and the planner's settings.

Key: the score artifact, the metric and the planner's parameters.
"""

from __future__ import annotations

from dynslice.config import PlanConfig
from dynslice.errors import ConfigError
from dynslice.pipeline import score as score_stage
from dynslice.pipeline.stage import Output, Stage, run_stage
from dynslice.planners import make_plan
from dynslice.plan import SlicePlan
from dynslice.plots import plot_plan
from dynslice.store import ArtifactRef, ArtifactStore

STAGE = Stage("plan", code=(__name__,), outputs=("plan.json", "plan.png"))


def run(store: ArtifactStore, score_ref: ArtifactRef, plan: PlanConfig,
        variation: float | None = None) -> ArtifactRef:
    """The plan of `plan`'s planner; `auto` is resolved by the flow, which passes each variation it tries."""
    if plan.planner == "auto" and variation is None:
        raise ConfigError("the auto planner tries several variations: pass the variation to plan")
    planner = "constant" if plan.planner == "constant" else "dynamic"
    params = {"planner": planner, "target": plan.target, "budget": plan.budget, "round_to": plan.round_to,
              "max_slice": plan.max_slice, "untie_head": plan.untie_head,
              "variation": None if planner == "constant" else (plan.effective_variation if variation is None
                                                               else variation)}
    inputs = {"score": score_ref.key, "metric": plan.metric, "params": params}

    def compute(key: str) -> Output:
        scores = score_stage.scores(store, score_ref, plan.metric)
        made = make_plan(scores, planner, plan.target, variation=params["variation"], budget=plan.budget,
                         round_to=plan.round_to, max_slice=plan.max_slice, untie_head=plan.untie_head)
        result = {**params, "metric": plan.metric, "widths": list(made.widths), "mid": list(made.mid),
                  **{k: made.provenance.get(k) for k in ("achieved_mean_slicing", "achieved_param_reduction")}}
        files = {"plan.json": made.to_json().encode(), "plan.png": plot_plan(made, scores.config["hidden_size"])}
        return Output(result, files)

    return run_stage(store, STAGE, inputs, compute)


def plan_of(store: ArtifactStore, ref: ArtifactRef) -> SlicePlan:
    return SlicePlan.from_json(store.read_bytes(ref, "plan.json").decode())
