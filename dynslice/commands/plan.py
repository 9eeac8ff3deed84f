"""`dynslice plan`: turn scores.json and a target into plan.json (input of `dynslice slice --plan`)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="per-layer widths from layer scores and a target",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scores", required=True, help="scores.json written by `dynslice score` (path or fsspec URI)")
    p.add_argument("--target", type=float, required=True,
                   help="mean slicing fraction (--budget mean) or fraction of parameters removed (--budget params)")
    p.add_argument("--variation", type=float, default=None,
                   help="the paper's variation a in [0, target] (dynamic planner; 0 = constant widths)")
    p.add_argument("--planner", default="dynamic", choices=["dynamic", "constant"])
    p.add_argument("--budget", default="mean", choices=["mean", "params"])
    p.add_argument("--max-slice", type=float, default=0.9, help="no layer is sliced more than this")
    p.add_argument("--round-to", type=int, default=8, help="widths are multiples of this")
    p.add_argument("--out", required=True, help="plan.json to write (path or fsspec URI)")
    p.add_argument("--plot", default=None, help="also write the widths as a PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fsspec

    from dynslice import LayerScores, plot_plan, planners
    from dynslice.errors import PlanError

    with fsspec.open(args.scores, "r", encoding="utf-8") as f:
        scores = LayerScores.from_json(f.read())
    if not scores.config:
        raise PlanError(f"{args.scores} holds no model config; re-run `dynslice score`")
    if args.planner == "constant":
        if args.variation not in (None, 0.0):
            raise PlanError("--variation applies to the dynamic planner only")
        plan = planners.constant(args.target, scores.config, budget=args.budget, round_to=args.round_to)
    else:
        if args.variation is None:
            raise PlanError("--variation is required for the dynamic planner (0 <= variation <= target)")
        plan = planners.dynamic(scores, args.target, args.variation, budget=args.budget,
                                max_slice=args.max_slice, round_to=args.round_to)
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
