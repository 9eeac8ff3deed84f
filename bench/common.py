"""What the benchmarks share: the machine they ran on, model shapes, timing, peak memory, and how results are
printed (one JSON line on stdout, a readable table on stderr) and saved (bench/results/<name>.json, read by
bench/report.py to regenerate docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import transformers

RESULTS = Path(__file__).resolve().parent / "results"

# shapes of public models (random weights are enough for time and memory)
SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "smollm2-360m": dict(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, tie_word_embeddings=True),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),  # Llama 3.2 1B
}


def llama_config(shape: str, layers: int | None = None) -> transformers.LlamaConfig:
    kwargs = dict(SHAPES[shape], max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0)
    if layers is not None:
        kwargs["num_hidden_layers"] = layers
    return transformers.LlamaConfig(**kwargs)


def random_model(config, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    for name, p in model.named_parameters():  # non-trivial norm scales, as in a trained model
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    return model


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def dense_forward(model, ids: torch.Tensor, batch_size: int, device) -> float:
    """Seconds for one forward pass of the model over `ids` [N, T] in batches (what slicing is compared with)."""
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, ids.shape[0], batch_size):
            model(input_ids=ids[b:b + batch_size].to(device), use_cache=False)
    sync(device)
    return time.perf_counter() - start


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def emit(name: str, result: dict, rows: list[list[str]], save: bool = True) -> None:
    """Print the JSON (stdout) and the table (stderr); save both for bench/report.py."""
    result = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"), **result,
              "table": rows}
    print(json.dumps(result))
    print(table(rows), file=sys.stderr)
    if save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
