"""`dynslice score`: measure each decoder layer's Block Influence on calibration text and write scores.json."""

from __future__ import annotations

import argparse
import logging

from dynslice.commands import add_model_and_calibration

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score each decoder layer's redundancy on calibration text",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_and_calibration(p)
    p.add_argument("--out", required=True, help="scores.json to write (path or fsspec URI)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "angular"])
    p.add_argument("--plot", default=None, help="also write the scores as a PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fsspec

    from dynslice import plot_scores, score_layers
    from dynslice.data import calibration_windows
    from dynslice.models import resolve_model

    loaded = resolve_model(args.model, dtype=args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    calibration = calibration_windows(args.calib, tokenizer, args.nsamples, args.seqlen, seed=args.seed).as_dict()
    data_id = f"{args.calib} (windows: n={args.nsamples}, seqlen={args.seqlen}, seed={args.seed})"
    scores = score_layers(model, calibration, metric=args.metric, batch_size=args.batch_size,
                          device=args.device, model_id=loaded.identity.key, data_id=data_id)
    with fsspec.open(args.out, "w", encoding="utf-8") as f:
        f.write(scores.to_json() + "\n")
    if args.plot:
        with fsspec.open(args.plot, "wb") as f:
            f.write(plot_scores(scores))
    print(f"wrote {args.out}: {args.metric} scores of {scores.num_layers} layers over {scores.num_tokens} tokens")
    print(" ".join(f"{v:.4g}" for v in scores.values))
    return 0
