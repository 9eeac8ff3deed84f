"""`dynslice slice`: rotate-and-slice a model with a constant (or given) plan and save it."""

from __future__ import annotations

import argparse

from dynslice.commands import add_model_and_calibration, calibration_config, check_positions, model_config, read_text


def add_parser(sub) -> None:
    p = sub.add_parser("slice", help="slice a model and save it in the sliced-model format")
    add_model_and_calibration(p)
    width = p.add_mutually_exclusive_group(required=True)
    width.add_argument("--sparsity", type=float, help="constant slicing fraction in [0, 1)")
    width.add_argument("--plan", help="plan.json written by `dynslice plan`")
    p.add_argument("--out", required=True, help="output folder or fsspec URI")
    p.add_argument("--round-to", type=int, default=8, help="widths are multiples of this (with --sparsity)")
    p.add_argument("--state-dir", default=None, help="resumable loop state (folder or fsspec URI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynslice.compress import slice_model
    from dynslice.counts import check_plan, unique_parameters
    from dynslice.data import calibration_windows
    from dynslice.devices import resolve_device
    from dynslice.errors import PlanError
    from dynslice.models import resolve_model
    from dynslice.plan import SlicePlan
    from dynslice.sliced.format import save_sliced

    model, calib = model_config(args), calibration_config(args)
    if args.plan:
        plan = SlicePlan.from_json(read_text(args.plan, "--plan"))
    elif not 0.0 <= args.sparsity < 1.0:  # refused before anything is loaded
        raise PlanError(f"sparsity must be in [0, 1), got {args.sparsity}")
    device = resolve_device(args.device)
    check_positions(model, calib.seqlen)
    loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
    config = loaded.model.config
    if not args.plan:
        plan = SlicePlan.constant(config.num_hidden_layers, config.hidden_size, args.sparsity, args.round_to)
    check_plan(plan, config)
    dense = unique_parameters(loaded.model)
    if plan.removes:  # layers or sublayers dropped: nothing rotated, no calibration needed
        from dynslice.removal import prune
        from dynslice.sliced.format import save_model

        save_model(prune(loaded.model, plan), args.out, loaded.tokenizer)
        return _saved(args.out, unique_parameters(loaded.model), dense)
    sample = calibration_windows(calib.source, loaded.tokenizer, calib.nsamples, calib.seqlen, split=calib.split,
                                 seed=calib.seed, glue=calib.glue, pad_short=calib.pad_short)
    slice_model(loaded.model, sample.as_dict(), plan, batch_size=calib.batch_size, device=device,
                state_dir=args.state_dir)
    save_sliced(loaded.model, args.out, loaded.tokenizer)
    return _saved(args.out, unique_parameters(loaded.model), dense)


def _saved(out: str, params: int, dense: int) -> int:
    print(f"saved {out}: {params:,} parameters ({1 - params / dense:.1%} fewer than {dense:,})")
    return 0
