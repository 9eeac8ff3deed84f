"""`dynslice slice`: rotate-and-slice a local model with a constant (or given) plan and save it."""

from __future__ import annotations

import argparse
import logging

from dynslice.commands import add_model_and_calibration

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("slice", help="slice a model and save it in the sliced-model format",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_and_calibration(p)
    width = p.add_mutually_exclusive_group(required=True)
    width.add_argument("--sparsity", type=float, help="constant slicing fraction in [0, 1)")
    width.add_argument("--plan", help="plan.json written by `dynslice plan`")
    p.add_argument("--out", required=True, help="output folder or fsspec URI")
    p.add_argument("--round-to", type=int, default=8, help="widths are multiples of this")
    p.add_argument("--state-dir", default=None, help="resumable loop state (folder or fsspec URI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fsspec

    from dynslice import SlicePlan, save_sliced, slice_model
    from dynslice.data import calibration_windows
    from dynslice.errors import PlanError
    from dynslice.models import resolve_model

    if args.plan:
        with fsspec.open(args.plan, "r", encoding="utf-8") as f:
            plan = SlicePlan.from_json(f.read())
    elif not 0.0 <= args.sparsity < 1.0:  # refused before anything is loaded
        raise PlanError(f"sparsity must be in [0, 1), got {args.sparsity}")
    loaded = resolve_model(args.model, dtype=args.dtype)
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.model.config
    if not args.plan:
        plan = SlicePlan.constant(config.num_hidden_layers, config.hidden_size, args.sparsity, args.round_to)
    plan.check(config)
    calibration = calibration_windows(args.calib, tokenizer, args.nsamples, args.seqlen, seed=args.seed).as_dict()
    dense = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    slice_model(model, calibration, plan, batch_size=args.batch_size, device=args.device,
                state_dir=args.state_dir)
    save_sliced(model, args.out, tokenizer)
    sliced = sum(p.numel() for p in model.parameters())
    print(f"saved {args.out}: {sliced:,} parameters ({1 - sliced / dense:.1%} fewer than {dense:,})")
    return 0
