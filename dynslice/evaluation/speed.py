"""Inference speed on given prompts: prefill tokens/s, per-token decode latency (greedy, KV cache), and the
model's memory footprint. Measure the dense and the sliced model with the same prompts on the same device."""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from dynslice.counts import unique_parameters
from dynslice.errors import EvaluationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedResult:
    device: str
    dtype: str
    batch_size: int
    prompt_tokens: int  # per sequence
    decode_tokens: int  # per sequence
    prefill_tokens_per_s: float  # batch_size * prompt_tokens / median prefill time
    prefill_ms: float  # median
    decode_ms_per_token: float  # median over repeats of (decode time / decode_tokens), one step = one token each
    decode_tokens_per_s: float  # batch_size / decode step time
    parameters: int
    memory_bytes: int  # parameters + buffers
    peak_memory_bytes: int | None  # CUDA peak during the run; None on other devices
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def memory_footprint(model: torch.nn.Module) -> tuple[int, int]:
    """(unique parameters, bytes of parameters + buffers); a tied head counts once."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()] if t.numel()}
    return unique_parameters(model), sum(t.numel() * t.element_size() for t in tensors.values())


def speed_prompts(vocab_size: int, batch_size: int, length: int, *, ids: torch.Tensor | None = None,
                  seed: int = 0) -> torch.Tensor:
    """[B, P] prompts: consecutive slices of real token ids when given (needs B * P of them), else seeded
    random ids (speed does not depend on which tokens)."""
    if batch_size < 1 or length < 1:
        raise EvaluationError(f"speed prompts need batch_size >= 1 and length >= 1, got {batch_size}, {length}")
    if ids is not None and ids.numel() >= batch_size * length:
        return ids.flatten()[:batch_size * length].view(batch_size, length).clone()
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, length), generator=g)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call_style(model) -> tuple[str, dict]:
    """The KV-cache keyword of this transformers (`cache` from 5.2x, `past_key_values` before), and
    logits_to_keep=1 where supported: generation computes the head on the last position only."""
    params = inspect.signature(model.forward).parameters
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), keep


def _kv(out) -> object:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def _one_run(model, prompts: torch.Tensor, decode_tokens: int, device: torch.device) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation."""
    cache_kw, keep = _call_style(model)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=prompts, use_cache=True, **keep)
    _sync(device)
    t1 = time.perf_counter()
    token = out.logits[:, -1:].argmax(-1)  # [B, 1]
    for _ in range(decode_tokens):
        out = model(input_ids=token, use_cache=True, **{cache_kw: _kv(out)}, **keep)
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def measure_speed(model: torch.nn.Module, prompts: torch.Tensor, *, decode_tokens: int = 32, repeats: int = 3,
                  warmup: int = 1, progress: bool = True) -> SpeedResult:
    """prompts: [B, P] token ids, moved to the model's device. Medians over `repeats` after `warmup` runs."""
    if prompts.dim() != 2 or decode_tokens < 1 or repeats < 1:
        raise EvaluationError(f"need prompts [B, P], decode_tokens >= 1 and repeats >= 1, got shape "
                              f"{tuple(prompts.shape)}, {decode_tokens}, {repeats}")
    first = next(model.parameters())
    device = first.device
    prompts = prompts.to(device)
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefill, decode = [], []
    for i in tqdm(range(warmup + repeats), desc="speed", unit="run", disable=not progress):
        p, d = _one_run(model, prompts, decode_tokens, device)
        if i >= warmup:
            prefill.append(p)
            decode.append(d)
    params, nbytes = memory_footprint(model)
    batch, length = prompts.shape
    prefill_s, step_s = statistics.median(prefill), statistics.median(decode) / decode_tokens
    result = SpeedResult(
        device=str(device), dtype=str(first.dtype).removeprefix("torch."), batch_size=batch,
        prompt_tokens=length, decode_tokens=decode_tokens, prefill_tokens_per_s=batch * length / prefill_s,
        prefill_ms=prefill_s * 1e3, decode_ms_per_token=step_s * 1e3, decode_tokens_per_s=batch / step_s,
        parameters=params, memory_bytes=nbytes,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        repeats=repeats)
    log.info("prefill %.0f tok/s, decode %.2f ms/token on %s", result.prefill_tokens_per_s,
             result.decode_ms_per_token, device)
    return result
