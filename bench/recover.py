"""Test perplexity of a sliced SmolLM2-135M before and after a short LoRA recovery fine-tune, and its time.

The demo model and Wikipedia sample (`dynslice assets fetch`): 32 x 256 calibration windows (train split),
constant 25% slicing, then `steps` LoRA steps of batch x seqlen tokens on the train split; perplexity on the
test split (seqlen 256, first 64 windows) of the dense, the sliced and the recovered model. One thread by
default (a shared machine; pass --threads to use more). Prints JSON, then a table.

    python bench/recover.py [--steps 100] [--rank 8] [--lr 5e-4] [--threads 1] [--device cpu] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
import transformers

import dynslice
from dynslice.data import calibration_windows, load_corpus, resolve_data
from dynslice.evaluation.perplexity import perplexity, token_stream
from dynslice.models import resolve_model
from dynslice.recover import recover, training_windows
from common import emit
from dynslice.config import RecoverConfig


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="model source (default: the demo model)")
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--nsamples", type=int, default=256, help="training windows")
    defaults = {name: field.default for name, field in RecoverConfig.model_fields.items()}
    p.add_argument("--rank", type=int, default=defaults["rank"])
    p.add_argument("--alpha", type=float, default=defaults["alpha"])
    p.add_argument("--lr", type=float, default=defaults["lr"])
    p.add_argument("--shortcuts", default="frozen", choices=["frozen", "lora"])
    p.add_argument("--ppl-windows", type=int, default=64)
    p.add_argument("--skip-dense", action="store_true", help="do not measure the dense model's perplexity")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--state-dir", default=None, help="checkpoint the recovery here (a killed bench resumes)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    loaded = resolve_model(args.model, dtype=args.dtype)
    model, tokenizer = loaded.model.to(args.device).eval(), loaded.tokenizer
    eval_ids = token_stream(tokenizer, load_corpus(resolve_data("wiki", "test")).eval_text)

    def ppl():
        result, seconds = timed(perplexity, model, eval_ids, 256, max_windows=args.ppl_windows, batch_size=4,
                                progress=False)
        return result.perplexity, seconds

    dense_ppl, dense_ppl_s = (None, None) if args.skip_dense else ppl()
    calib = calibration_windows("wiki", tokenizer, 32, 256)
    plan = dynslice.planners.constant(args.sparsity, model.config)
    _, slice_s = timed(dynslice.slice_model, model, calib.as_dict(), plan, batch_size=8, device=args.device,
                       progress=False)
    sliced_ppl, sliced_ppl_s = ppl()

    settings = RecoverConfig(enabled=True, steps=args.steps, batch_size=args.batch_size, seqlen=args.seqlen,
                             nsamples=args.nsamples, rank=args.rank, alpha=args.alpha, lr=args.lr,
                             shortcuts=args.shortcuts)
    train = training_windows(settings, tokenizer)
    stats = recover(model, train, settings, state_dir=args.state_dir, device=args.device)
    recovered_ppl, recovered_ppl_s = ppl()

    result = {
        "model": args.model, "sparsity": args.sparsity, "plan": "constant",
        "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "ppl_data": f"wiki test, seqlen 256, first {args.ppl_windows} windows",
        "dense_ppl": dense_ppl, "sliced_ppl": sliced_ppl, "recovered_ppl": recovered_ppl,
        "slice_s": round(slice_s, 1), "ppl_eval_s": round(sliced_ppl_s, 1),
        "recover": {**settings.key_params(),
                    "train_loss_start": stats.loss_start, "train_loss_end": stats.loss_end,
                    "tokens": stats.tokens, "trainable_parameters": stats.trainable_parameters,
                    "resumed_from": stats.resumed_from, "wall_s": round(stats.wall_s, 1),
                    "s_per_step": round(stats.wall_s / max(1, stats.steps - stats.resumed_from), 2)},
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
    }
    rows = [("threads / device / dtype", f"{result['threads']} / {args.device} / {args.dtype}"),
            ("dense test ppl", "skipped" if dense_ppl is None else f"{dense_ppl:.2f}"),
            (f"sliced test ppl ({args.sparsity:.0%} constant)", f"{sliced_ppl:.2f}"),
            (f"recovered test ppl ({args.steps} steps)", f"{recovered_ppl:.2f}"),
            ("train loss first -> last steps", f"{stats.loss_start:.3f} -> {stats.loss_end:.3f}"),
            ("LoRA", f"rank {args.rank}, alpha {args.alpha:g}, lr {args.lr:g}, "
                     f"{stats.trainable_parameters:,} trainable parameters, shortcuts {args.shortcuts}"),
            ("tokens trained on", f"{stats.tokens:,} ({args.steps} x {args.batch_size} x {args.seqlen})"),
            ("recovery wall time", f"{stats.wall_s:.0f} s ({result['recover']['s_per_step']:.2f} s/step)"),
            ("slicing / one perplexity pass", f"{slice_s:.0f} s / {sliced_ppl_s:.0f} s")]
    emit("recover", result, [["what", "value"]] + [list(r) for r in rows], save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
