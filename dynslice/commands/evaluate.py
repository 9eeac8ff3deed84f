"""`dynslice evaluate`: perplexity, lm-eval zero-shot accuracy and inference speed of a model (and of a
baseline on the same data and prompts), printed as a table and written as JSON."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="perplexity, zero-shot accuracy and speed of a (sliced) model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="folder, .gguf file, fsspec URI, hub id, or a demo name (smollm2-135m)")
    p.add_argument("--revision", default=None, help="hub revision of --model")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder/hub id when the model has none")
    p.add_argument("--baseline", default=None, help="a second model (e.g. the dense one) evaluated the same way")
    p.add_argument("--ppl", default=None, help="perplexity data: wikitext2, ptb, c4, pg19, alpaca, wiki (demo), "
                                               "a .txt/.jsonl/.parquet file or folder, or an fsspec URI")
    p.add_argument("--ppl-split", default=None, help="split to measure; unset: the source's test split")
    p.add_argument("--field", default="text", help="jsonl/parquet text field")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length in tokens")
    p.add_argument("--max-windows", type=int, default=None, help="only the first N windows; unset: all")
    p.add_argument("--tasks", nargs="*", default=None,
                   help="lm-eval tasks, JSONL/YAML files or folders; alone: the offline mmlu_exemplars task")
    p.add_argument("--limit", type=int, default=None, help="at most N items per task")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--speed", action="store_true", help="measure prefill tokens/s and decode latency")
    p.add_argument("--prompt-len", type=int, default=128, help="speed: prompt tokens")
    p.add_argument("--decode-tokens", type=int, default=32, help="speed: generated tokens")
    p.add_argument("--speed-batch", type=int, default=1, help="speed: prompts per batch")
    p.add_argument("--repeats", type=int, default=3, help="speed: timed runs (median)")
    p.add_argument("--batch-size", type=int, default=4, help="perplexity and zero-shot batch size")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1; unset: cuda when available")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--cache", default=None, help="cache folder; unset: $DYNSLICE_CACHE or ~/.cache/dynslice")
    p.add_argument("--out", default="evaluation.json", help="JSON report: a path or an fsspec URI")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import fsspec
    import torch

    from dynslice.evaluation.report import EvalSettings, evaluate_models, render_table
    from dynslice.evaluation.zeroshot import DEFAULT_TASK
    from dynslice.models import resolve_model

    tasks = () if args.tasks is None else tuple(args.tasks) or (DEFAULT_TASK,)
    settings = EvalSettings(ppl=args.ppl, ppl_split=args.ppl_split, seqlen=args.seqlen,
                            max_windows=args.max_windows, field=args.field, tasks=tasks, limit=args.limit,
                            num_fewshot=args.num_fewshot, speed=args.speed, prompt_len=args.prompt_len,
                            decode_tokens=args.decode_tokens, speed_batch=args.speed_batch, repeats=args.repeats,
                            batch_size=args.batch_size, cache_dir=args.cache)
    settings.check()  # before any model is loaded
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sources = {"model": args.model, **({"baseline": args.baseline} if args.baseline else {})}
    models = {label: resolve_model(src, revision=args.revision if label == "model" else None,
                                   tokenizer=args.tokenizer, device=device, dtype=args.dtype, cache_dir=args.cache)
              for label, src in sources.items()}
    report = evaluate_models(models, settings)
    report["device"] = device
    with fsspec.open(args.out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print(render_table(report))
    print(f"\nwrote {args.out}")
    return 0
