"""Slicing time against one dense forward pass over the same calibration set, measured side by side in one
process, broken down into attention passes, MLP passes, PCA, weight updates and the rest; peak memory.

Model shaped like SmolLM2-135M (30 layers, hidden 576, vocab 49152; random weights), 32 x 256 calibration
tokens, batch 8, 25% constant slicing.

    python bench/slice_speed.py [--shape smollm2-135m] [--layers N] [--nsamples 32] [--seqlen 256]
                                [--device cpu] [--dtype float32] [--no-save]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import dynslice
from common import dense_forward, emit, llama_config, peak_rss_bytes, random_model, sync
from dynslice.phases import recording


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    config = llama_config(args.shape, args.layers)
    ids = torch.randint(0, config.vocab_size, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))

    model = random_model(config, dtype, args.device)
    dense_forward(model, ids[: args.batch_size], args.batch_size, args.device)  # warm-up
    dense = [dense_forward(model, ids, args.batch_size, args.device) for _ in range(2)]
    if torch.device(args.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_rss_bytes()

    plan = dynslice.planners.constant(args.sparsity, config)
    with recording() as phases:
        start = time.perf_counter()
        dynslice.slice_model(model, ids, plan, batch_size=args.batch_size, device=args.device, progress=False)
        sync(args.device)
        sliced_s = time.perf_counter() - start
    sliced_forward = dense_forward(model, ids, args.batch_size, args.device)
    other = sliced_s - sum(phases.values())
    breakdown = {k: round(v, 3) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])}
    breakdown["other"] = round(other, 3)
    result = {
        "model": f"{args.shape}-shaped (random weights)", "layers": config.num_hidden_layers,
        "calibration": f"{args.nsamples}x{args.seqlen}", "batch_size": args.batch_size, "sparsity": args.sparsity,
        "device": args.device, "dtype": args.dtype,
        "dense_forward_s": round(min(dense), 3), "dense_forward_runs_s": [round(d, 3) for d in dense],
        "slice_model_s": round(sliced_s, 3), "ratio_slice_to_forward": round(sliced_s / min(dense), 3),
        "phases_s": breakdown, "sliced_forward_s": round(sliced_forward, 3),
        "peak_rss_bytes": peak_rss_bytes(), "peak_rss_before_slicing_bytes": rss_before,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if torch.device(args.device).type == "cuda" else None,
    }
    rows = [["what", "seconds", "share of slicing"],
            ["dense forward (best of 2)", f"{min(dense):.2f}", ""],
            ["slice_model", f"{sliced_s:.2f}", "100%"]]
    rows += [[f"  {name}", f"{sec:.2f}", f"{sec / sliced_s:.0%}"] for name, sec in breakdown.items()]
    rows += [["ratio slice / forward", f"{sliced_s / min(dense):.2f}x", ""],
             ["peak RSS (GiB)", f"{result['peak_rss_bytes'] / 2**30:.2f}", ""]]
    emit("slice_speed", result, rows, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
