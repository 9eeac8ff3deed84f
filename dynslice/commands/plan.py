"""`dynslice plan`: turn scores.json and a target into plan.json (input of `dynslice slice --plan`)."""

from __future__ import annotations

import argparse

from dynslice.commands import options, read_text
from dynslice.config import ModelConfig, PlanConfig, SelectionConfig

PLAN_FLAGS = {"planner": "--planner", "target": "--target", "variation": "--variation", "budget": "--budget",
              "round_to": "--round-to", "max_slice": "--max-slice", "untie_head": "--untie-head", "units": "--units"}
# the greedy planner measures the model on held-out text
GREEDY_MODEL_FLAGS = {"source": "--model", "revision": "--revision", "dtype": "--dtype"}
GREEDY_DATA_FLAGS = {"source": "--heldout", "split": "--heldout-split", "seqlen": "--heldout-seqlen",
                     "windows": "--heldout-windows"}


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="per-layer widths from layer scores and a target")
    p.add_argument("--scores", required=True, help="scores.json written by `dynslice score` (path or fsspec URI)")
    options.add(p, PlanConfig, PLAN_FLAGS)
    greedy = p.add_argument_group("greedy planner", "the model and held-out text it measures (--planner greedy)")
    options.add(greedy, ModelConfig, GREEDY_MODEL_FLAGS)
    options.add(greedy, SelectionConfig, GREEDY_DATA_FLAGS)
    p.add_argument("--device", default="auto", help="where the greedy planner runs the model (auto, cpu, cuda)")
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
    if config.planner == "greedy":
        plan = _greedy(args, config, scores)
    else:
        variation = config.effective_variation if config.planner == "dynamic" else config.variation
        plan = make_plan(scores, config.planner, config.target, variation=variation, budget=config.budget,
                         round_to=config.round_to, max_slice=config.max_slice, untie_head=config.untie_head)
    with fsspec.open(args.out, "w", encoding="utf-8") as f:
        f.write(plan.to_json() + "\n")
    if args.plot:
        with fsspec.open(args.plot, "wb") as f:
            f.write(plot_plan(plan))
    p = plan.provenance
    print(f"wrote {args.out}: mean slicing {p['achieved_mean_slicing']:.4f}, "
          f"parameters removed {p['achieved_param_reduction']:.4f} ({p['parameters']:,} of {p['dense_parameters']:,})")
    print("widths " + " ".join(str(w) for w in plan.widths))
    for name, removed in (("layers", plan.removed), ("attention of layers", plan.removed_attention),
                          ("MLP of layers", plan.removed_mlp)):
        if removed:
            print(f"{name} removed " + " ".join(str(i) for i in removed))
    return 0


def _greedy(args: argparse.Namespace, config: PlanConfig, scores):
    from dynslice.devices import resolve_device
    from dynslice.errors import ConfigError
    from dynslice.models import resolve_model
    from dynslice.planners_mixed import greedy_plan, heldout_windows

    if getattr(args, "model", None) is None:
        raise ConfigError("--planner greedy measures the model: give --model (and --heldout for the held-out text)")
    model = options.build(ModelConfig, args, GREEDY_MODEL_FLAGS)
    heldout = options.build(SelectionConfig, args, GREEDY_DATA_FLAGS)
    loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
    windows = heldout_windows(loaded.tokenizer, heldout.source, heldout.split, heldout.seqlen, heldout.windows)
    return greedy_plan(loaded.model.to(resolve_device(args.device)), windows, config.target, units=config.units,
                       scores=scores)
