"""Slicing time against one dense forward pass over the same calibration set, in one process.

Model shaped like SmolLM2-135M (30 layers, hidden 576, vocab 49152; random weights), 32 x 256 calibration
tokens, batch 8, 25% constant slicing. Prints JSON, then a table. Target: ratio <= 1.5.

    python bench/slice_speed.py [--layers 30] [--nsamples 32] [--seqlen 256] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import transformers

import dynslice


def smollm2_shaped(layers: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                    num_hidden_layers=layers, num_attention_heads=9, num_key_value_heads=3,
                                    max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
                                    tie_word_embeddings=True)


def build(config, dtype, device):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    for name, p in model.named_parameters():  # non-trivial norm scales, as in a trained model
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    return model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def dense_forward(model, ids, batch_size, device) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, ids.shape[0], batch_size):
            model(input_ids=ids[b:b + batch_size].to(device), use_cache=False)
    _sync(device)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    config = smollm2_shaped(args.layers)
    ids = torch.randint(0, config.vocab_size, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))

    model = build(config, dtype, args.device)
    dense_forward(model, ids[: args.batch_size], args.batch_size, args.device)  # warm-up
    dense = [dense_forward(model, ids, args.batch_size, args.device) for _ in range(2)]

    plan = dynslice.SlicePlan.constant(config.num_hidden_layers, config.hidden_size, args.sparsity)
    start = time.perf_counter()
    dynslice.slice_model(model, ids, plan, batch_size=args.batch_size, device=args.device, progress=False)
    _sync(args.device)
    sliced_s = time.perf_counter() - start
    sliced_dense = dense_forward(model, ids, args.batch_size, args.device)

    result = {
        "benchmark": "slice_speed", "model": "SmolLM2-135M-shaped (random weights)", "layers": args.layers,
        "calibration": f"{args.nsamples}x{args.seqlen}", "batch_size": args.batch_size, "sparsity": args.sparsity,
        "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "dense_forward_s": round(min(dense), 3), "dense_forward_runs_s": [round(d, 3) for d in dense],
        "slice_model_s": round(sliced_s, 3), "ratio_slice_to_forward": round(sliced_s / min(dense), 3),
        "sliced_forward_s": round(sliced_dense, 3), "target_ratio": 1.5,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
    }
    print(json.dumps(result))
    rows = [("dense forward (best of 2)", f"{result['dense_forward_s']:.2f} s"),
            ("slice_model at 25%", f"{sliced_s:.2f} s"),
            ("ratio slice / forward", f"{result['ratio_slice_to_forward']:.2f} x (target <= 1.5)"),
            ("sliced model forward", f"{sliced_dense:.2f} s")]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
