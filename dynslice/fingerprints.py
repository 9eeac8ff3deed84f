"""What a saved loop state (slicing or recovery) must match before a run resumes from it: a cheap fingerprint of
a model's weights, enough to catch a different checkpoint, never a full hash of them."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

_SAMPLES = 256  # values read per tensor


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, shape, dtype and an evenly spaced sample of its values."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        # contiguous first: converting a strided view would allocate a tensor spanning the whole strided range
        sample = flat[:: max(1, flat.numel() // _SAMPLES)].contiguous().to("cpu", torch.float64)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode() + sample.numpy().tobytes())
    return h.hexdigest()
