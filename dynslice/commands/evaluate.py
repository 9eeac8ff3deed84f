"""`dynslice evaluate`: perplexity, lm-eval zero-shot accuracy and inference speed of a model (and of a
baseline on the same data and prompts), printed as a table and written as JSON.

The options are the pipeline's EvaluationConfig fields; what to measure is what is asked for on the command
line (`--ppl DATA`, `--tasks [TASK ...]`, `--speed`), the rest keeps the configuration's defaults.
"""

from __future__ import annotations

import argparse
import json

from dynslice.commands import add_model, model_config, options
from dynslice.config import EvaluationConfig

EVAL_FLAGS = {"ppl": "--ppl", "ppl_split": "--ppl-split", "field": "--field", "ppl_seqlen": "--seqlen",
              "ppl_windows": "--max-windows", "limit": "--limit", "num_fewshot": "--num-fewshot",
              "speed": "--speed", "prompt_len": "--prompt-len", "decode_tokens": "--decode-tokens",
              "speed_batch": "--speed-batch", "repeats": "--repeats", "batch_size": "--batch-size"}


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="perplexity, zero-shot accuracy and speed of a (sliced) model")
    add_model(p)
    p.add_argument("--tokenizer", default=None, help="tokenizer folder/hub id when the model has none")
    p.add_argument("--baseline", default=None, help="a second model (e.g. the dense one) evaluated the same way")
    options.add(p, EvaluationConfig, EVAL_FLAGS)
    p.add_argument("--tasks", nargs="*", default=None,
                   help="lm-eval tasks, JSONL/YAML files or folders, `paper` (the paper's zero-shot suite); "
                        "alone: the offline mmlu_exemplars task")
    p.add_argument("--cache", default=None, help="cache folder; unset: $DYNSLICE_CACHE or ~/.cache/dynslice")
    p.add_argument("--out", default="evaluation.json", help="JSON report: a path or an fsspec URI")
    p.set_defaults(func=run)


def evaluation_config(args: argparse.Namespace) -> EvaluationConfig:
    """Only what the command line asks for is measured (no perplexity, tasks or speed by default)."""
    tasks = [] if args.tasks is None else list(args.tasks) or ["mmlu_exemplars"]
    measured = {"ppl": options.given(args, EVAL_FLAGS).get("ppl"), "speed": bool(getattr(args, "speed", False))}
    if args.tasks is not None and not hasattr(args, "limit"):
        measured["limit"] = None  # every item, unless --limit says otherwise
    return options.build(EvaluationConfig, args, EVAL_FLAGS, tasks=tasks, **measured)


def run(args: argparse.Namespace) -> int:
    import fsspec

    from dynslice.devices import resolve_device
    from dynslice.evaluation.suite import evaluate_models, render_table
    from dynslice.models import resolve_model

    evaluation = evaluation_config(args)  # before any model is loaded
    model = model_config(args)
    device = resolve_device(args.device)
    sources = {"model": model.source, **({"baseline": args.baseline} if args.baseline else {})}
    models = {label: resolve_model(src, revision=model.revision if label == "model" else None,
                                   tokenizer=args.tokenizer, device=device, dtype=model.dtype, cache_dir=args.cache)
              for label, src in sources.items()}
    report = evaluate_models(models, evaluation, cache_dir=args.cache)
    report["device"] = str(device)
    with fsspec.open(args.out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print(render_table(report))
    print(f"\nwrote {args.out}")
    return 0
