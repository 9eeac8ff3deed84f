"""Minimal text -> calibration windows (the data resolver builds on this)."""

from __future__ import annotations

import torch

from dynslice.errors import CalibrationError


def sample_windows(tokenizer, documents: list[str], n: int, seqlen: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n random windows of `seqlen` tokens from the concatenated documents (seeded, reproducible)."""
    ids = tokenizer("\n\n".join(documents), return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() < seqlen + 1:
        raise CalibrationError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (n,), generator=g)
    windows = torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
    return {"input_ids": windows, "attention_mask": torch.ones_like(windows)}
