"""Subcommands of the `dynslice` CLI (one module each) and the argument types they share."""

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_and_calibration(p: argparse.ArgumentParser) -> None:
    """The model and calibration options shared by commands that run the model over calibration text."""
    p.add_argument("--model", required=True,
                   help="transformers folder, .gguf file, fsspec URI, hub id or demo name (smollm2-135m)")
    p.add_argument("--calib", required=True,
                   help="calibration data: a .txt/.jsonl/.parquet file or folder, a hub dataset name, an fsspec "
                        "URI, or the demo `wiki`")
    p.add_argument("--nsamples", type=positive_int, default=32, help="calibration windows")
    p.add_argument("--seqlen", type=positive_int, default=256, help="tokens per window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default=None, help="compute device, e.g. cuda (default: where the model is)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
