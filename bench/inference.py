"""Dense against sliced inference on the same prompts and device: prefill tokens/s and decode ms/token, and how
close each speed-up comes to the limit the plan's FLOP count sets (dense FLOPs / sliced FLOPs per token).

The demo model (SmolLM2-135M-Instruct, `dynslice assets fetch`) sliced with the default demo plan and with
parameter budgets; calibration from the Wikipedia sample's train split.

    python bench/inference.py [--targets 0.05 0.10 0.15] [--prompt-len 128] [--decode 32] [--batch 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from torch import nn

import dynslice
from common import emit
from dynslice.data import calibration_windows
from dynslice.evaluation.speed import measure_speed, speed_prompts
from dynslice.models import resolve_model


def flops_per_token(model: nn.Module, context: int) -> float:
    """Multiply-adds x 2 of one token's forward pass at a context of `context` tokens: every linear (the head
    included), the shortcut matrices, a tied head's D x D scale, and attention over the context."""
    total = 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
        for name in ("attn_shortcut", "mlp_shortcut", "shortcut", "norm_scale"):
            p = getattr(module, name, None)
            if isinstance(p, torch.Tensor) and p.dim() == 2 and name in module._parameters:
                total += 2 * p.shape[0] * p.shape[1]
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    total += c.num_hidden_layers * 2 * 2 * c.num_attention_heads * head_dim * context  # q k^T and attn v
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--targets", type=float, nargs="*", default=[0.05, 0.10, 0.15],
                   help="fractions of parameters removed (constant slicing, budget params)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    dense = resolve_model(args.model, dtype="float32")
    calib = calibration_windows("wiki", dense.tokenizer, args.nsamples, 256, split="train").as_dict()
    prompts = speed_prompts(dense.model.config.vocab_size, args.batch, args.prompt_len,
                            ids=calib["input_ids"].flatten())
    context = args.prompt_len
    models = {"dense": dense.model}
    for target in args.targets:
        sliced = copy.deepcopy(dense.model)
        plan = dynslice.planners.constant(target, sliced.config, budget="params")
        dynslice.slice_model(sliced, calib, plan, progress=False)
        models[f"constant, {target:.0%} params removed"] = sliced
    results = {}
    for label, model in models.items():
        model.to(args.device)
        speed = measure_speed(model, prompts, decode_tokens=args.decode, repeats=args.repeats, progress=False)
        results[label] = {**speed.to_dict(), "flops_per_token": flops_per_token(model, context)}
        model.to("cpu")
    base = results["dense"]
    rows = [["model", "parameters", "prefill tok/s", "decode ms/token", "prefill speed-up", "decode speed-up",
             "FLOP limit", "prefill / limit"]]
    for label, r in results.items():
        limit = base["flops_per_token"] / r["flops_per_token"]
        prefill_up = r["prefill_tokens_per_s"] / base["prefill_tokens_per_s"]
        decode_up = base["decode_ms_per_token"] / r["decode_ms_per_token"]
        r.update(flop_limit=limit, prefill_speedup=prefill_up, decode_speedup=decode_up)
        rows.append([label, f"{r['parameters']:,}", f"{r['prefill_tokens_per_s']:.0f}",
                     f"{r['decode_ms_per_token']:.2f}", f"{prefill_up:.2f}x", f"{decode_up:.2f}x", f"{limit:.2f}x",
                     f"{prefill_up / limit:.0%}"])
    emit("inference", {"model": args.model, "device": args.device, "batch": args.batch,
                       "prompt_len": args.prompt_len, "decode_tokens": args.decode, "results": results},
         rows, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
