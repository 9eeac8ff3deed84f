"""How slicing time and peak host memory grow with model size: models shaped like SmolLM2-135M, SmolLM2-360M and
a 1B-class Llama (Llama 3.2 1B's shape; random weights), each measured in a fresh process so its peak resident
memory is its own. Memory is compared with what it should stay near: the model's own bytes, plus one layer in
float64 (the largest transient: a weight rotated in float64), plus the calibration signals ([N, T, D] twice:
inputs and outputs of a pass).

    python bench/scaling.py [--shapes smollm2-135m smollm2-360m llama-1b] [--nsamples 8] [--seqlen 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def measure(shape: str, nsamples: int, seqlen: int, batch_size: int, sparsity: float) -> dict:
    """One shape, in this process: dense forward, slice, peak RSS."""
    import dynslice
    from common import dense_forward, llama_config, peak_rss_bytes, random_model
    from dynslice.counts import dense_parameters, layer_parameters

    config = llama_config(shape)
    model = random_model(config)
    model_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    ids = torch.randint(0, config.vocab_size, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    dense_forward(model, ids[:1], 1, "cpu")
    dense_s = dense_forward(model, ids, batch_size, "cpu")
    loaded_rss = peak_rss_bytes()
    start = time.perf_counter()
    dynslice.slice_model(model, ids, dynslice.planners.constant(sparsity, config), batch_size=batch_size,
                         progress=False)
    slice_s = time.perf_counter() - start
    layer_f64 = max(layer_parameters(config)) * 8
    signals = 2 * nsamples * seqlen * config.hidden_size * 4
    return {"shape": shape, "parameters": dense_parameters(config), "model_bytes": model_bytes,
            "layer_float64_bytes": layer_f64, "signals_bytes": signals, "dense_forward_s": round(dense_s, 2),
            "slice_s": round(slice_s, 2), "ratio": round(slice_s / dense_s, 3), "rss_after_load_bytes": loaded_rss,
            "peak_rss_bytes": peak_rss_bytes(),
            "expected_bound_bytes": loaded_rss + layer_f64 + signals}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="*", default=["smollm2-135m", "smollm2-360m", "llama-1b"])
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one shape in this process
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.nsamples, args.seqlen, args.batch_size, args.sparsity)))
        return 0
    results = []
    for shape in args.shapes:
        out = subprocess.run([sys.executable, str(HERE / "scaling.py"), "--one", shape, "--nsamples",
                              str(args.nsamples), "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size),
                              "--sparsity", str(args.sparsity)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{shape}: done", file=sys.stderr)
    gib = 2 ** 30
    rows = [["shape", "parameters", "model GiB", "dense forward s", "slice s", "slice / forward",
             "peak RSS GiB", "model + layer f64 + signals GiB", "peak / that"]]
    for r in results:
        rows.append([r["shape"], f"{r['parameters'] / 1e6:.0f}M", f"{r['model_bytes'] / gib:.2f}",
                     f"{r['dense_forward_s']:.1f}", f"{r['slice_s']:.1f}", f"{r['ratio']:.2f}x",
                     f"{r['peak_rss_bytes'] / gib:.2f}", f"{r['expected_bound_bytes'] / gib:.2f}",
                     f"{r['peak_rss_bytes'] / r['expected_bound_bytes']:.2f}"])
    from common import emit

    emit("scaling", {"calibration": f"{args.nsamples}x{args.seqlen}", "sparsity": args.sparsity,
                     "results": results}, rows, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
