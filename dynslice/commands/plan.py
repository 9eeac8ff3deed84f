"""`dynslice plan`: turn scores.json and a target into plan.json (input of `dynslice slice --plan`)."""

from __future__ import annotations

import argparse

from dynslice.commands import options, read_text
from dynslice.config import PlanConfig

PLAN_FLAGS = {"planner": "--planner", "target": "--target", "variation": "--variation", "budget": "--budget",
              "round_to": "--round-to", "max_slice": "--max-slice"}


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="per-layer widths from layer scores and a target")
    p.add_argument("--scores", required=True, help="scores.json written by `dynslice score` (path or fsspec URI)")
    options.add(p, PlanConfig, PLAN_FLAGS)
    p.add_argument("--out", required=True, help="plan.json to write (path or fsspec URI)")
    p.add_argument("--plot", default=None, help="also write the widths as a PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fsspec

    from dynslice.errors import ConfigError
    from dynslice.planners import make_plan
    from dynslice.plots import plot_plan
    from dynslice.scores import LayerScores

    config = options.build(PlanConfig, args, PLAN_FLAGS)
    if config.planner == "auto":
        raise ConfigError("--planner auto chooses on held-out perplexity: use `dynslice run compress`")
    scores = LayerScores.from_json(read_text(args.scores, "--scores"))
    variation = config.effective_variation if config.planner == "dynamic" else config.variation
    plan = make_plan(scores, config.planner, config.target, variation=variation, budget=config.budget,
                     round_to=config.round_to, max_slice=config.max_slice)
    with fsspec.open(args.out, "w", encoding="utf-8") as f:
        f.write(plan.to_json() + "\n")
    if args.plot:
        with fsspec.open(args.plot, "wb") as f:
            f.write(plot_plan(plan))
    p = plan.provenance
    print(f"wrote {args.out}: mean slicing {p['achieved_mean_slicing']:.4f}, "
          f"parameters removed {p['achieved_param_reduction']:.4f} ({p['parameters']:,} of {p['dense_parameters']:,})")
    print("widths " + " ".join(str(w) for w in plan.widths))
    return 0
