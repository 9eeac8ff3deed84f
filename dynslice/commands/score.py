"""`dynslice score`: measure each decoder layer's Block Influence on calibration text and write scores.json."""

from __future__ import annotations

import argparse

from dynslice.commands import add_model_and_calibration, calibration_config, check_positions, model_config
from dynslice.scores import METRICS


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score each decoder layer's redundancy on calibration text")
    add_model_and_calibration(p)
    p.add_argument("--out", required=True, help="scores.json to write (path or fsspec URI)")
    p.add_argument("--metric", default="cosine", choices=list(METRICS))
    p.add_argument("--plot", default=None, help="also write the scores as a PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fsspec

    from dynslice.data import calibration_windows
    from dynslice.devices import resolve_device
    from dynslice.models import resolve_model
    from dynslice.plots import plot_scores
    from dynslice.scoring import score_layers

    model, calib = model_config(args), calibration_config(args)
    device = resolve_device(args.device)
    check_positions(model, calib.seqlen)
    loaded = resolve_model(model.source, revision=model.revision, dtype=model.dtype)
    sample = calibration_windows(calib.source, loaded.tokenizer, calib.nsamples, calib.seqlen, split=calib.split,
                                 seed=calib.seed, glue=calib.glue, pad_short=calib.pad_short)
    data_id = f"{calib.source} (windows: n={calib.nsamples}, seqlen={calib.seqlen}, seed={calib.seed})"
    scores = score_layers(loaded.model, sample.as_dict(), metric=args.metric, batch_size=calib.batch_size,
                          device=device, model_id=loaded.identity.key, data_id=data_id)
    with fsspec.open(args.out, "w", encoding="utf-8") as f:
        f.write(scores.to_json() + "\n")
    if args.plot:
        with fsspec.open(args.plot, "wb") as f:
            f.write(plot_scores(scores))
    print(f"wrote {args.out}: {args.metric} scores of {scores.num_layers} layers over {scores.num_tokens} tokens")
    print(" ".join(f"{v:.4g}" for v in scores.values))
    return 0
