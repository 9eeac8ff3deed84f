"""Perplexity the way papers report it: the split tokenized once, cut into non-overlapping windows of T
tokens (all, or the first n), mean token NLL over every predicted token, exp."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dynslice.errors import EvaluationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens: windows * (seqlen - 1)
    windows: int
    seqlen: int

    def to_dict(self) -> dict:
        return asdict(self)


def token_stream(tokenizer, text: str) -> torch.Tensor:
    """The whole text tokenized once, with the tokenizer's own special tokens (as GPTQ/SliceGPT do): [L]."""
    ids = tokenizer(text, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows_of(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [W, seqlen] from the start of the stream; the tail shorter than one is dropped."""
    if seqlen < 2:
        raise EvaluationError(f"seqlen must be >= 2, got {seqlen}")
    count = ids.numel() // seqlen
    if max_windows is not None:
        if max_windows < 1:
            raise EvaluationError(f"max_windows must be >= 1, got {max_windows}")
        count = min(count, max_windows)
    if count == 0:
        raise EvaluationError(f"the text has {ids.numel()} tokens, fewer than one window of {seqlen}: use a "
                              f"smaller --seqlen or more text")
    return ids[:count * seqlen].view(count, seqlen)


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, seqlen: int, *, max_windows: int | None = None,
               batch_size: int = 1, device: str | torch.device | None = None,
               progress: bool = True) -> PerplexityResult:
    """ids: the tokenized split [L]. The model stays where it is unless `device` is given."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and seqlen > limit:
        raise EvaluationError(f"perplexity windows of {seqlen} tokens exceed the model's {limit} positions: use a "
                              f"seqlen of {limit} or less")
    windows = windows_of(ids.flatten(), seqlen, max_windows)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    starts = range(0, windows.shape[0], batch_size)
    for start in tqdm(starts, desc="perplexity", unit="batch", disable=not progress):
        batch = windows[start:start + batch_size].to(device)  # [B, T]
        logits = model(input_ids=batch, use_cache=False).logits  # [B, T, V]
        # log-softmax in float32 at least: half-precision logits lose the small probabilities
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total += nll.double().cpu()
    tokens = windows.shape[0] * (seqlen - 1)
    mean = float(total) / tokens
    log.info("perplexity %.4f over %d windows of %d tokens", math.exp(mean), windows.shape[0], seqlen)
    return PerplexityResult(math.exp(mean), mean, tokens, windows.shape[0], seqlen)
