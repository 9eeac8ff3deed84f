"""Calibration input at the boundary: token ids [N, T] (+ attention mask), checked once, then batched."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dynslice.errors import CalibrationError


@dataclass(frozen=True)
class Calibration:
    input_ids: torch.Tensor  # [N, T] int64
    attention_mask: torch.Tensor  # [N, T] int64, 1 = real token

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.input_ids.shape[0], batch_size):
            yield (self.input_ids[start:start + batch_size], self.attention_mask[start:start + batch_size])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.input_ids, self.attention_mask):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def as_calibration(calibration, vocab_size: int | None = None, max_positions: int | None = None) -> Calibration:
    """Accept a LongTensor [N, T] or a dict with `input_ids` and `attention_mask`; raise CalibrationError.

    max_positions: the model's position limit (config.max_position_embeddings); longer windows are refused here
    rather than failing deep in a forward pass (or, for rotary models, silently extrapolating)."""
    if isinstance(calibration, Calibration):
        check_length(calibration.input_ids.shape[1], max_positions)
        return calibration
    if isinstance(calibration, torch.Tensor):
        ids, mask = calibration, None
    elif isinstance(calibration, dict) or hasattr(calibration, "keys"):
        if "input_ids" not in calibration:
            raise CalibrationError("calibration dict needs an `input_ids` entry")
        ids, mask = calibration["input_ids"], calibration.get("attention_mask")
    else:
        raise CalibrationError(f"calibration must be a LongTensor [N, T] or a dict with input_ids and "
                               f"attention_mask, got {type(calibration).__name__}")
    ids = torch.as_tensor(ids)
    if ids.dim() != 2 or ids.numel() == 0:
        raise CalibrationError(f"input_ids must be a non-empty [N, T] tensor, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise CalibrationError(f"input_ids must hold integer token ids, got {ids.dtype}")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    if mask.shape != ids.shape:
        raise CalibrationError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids "
                               f"{tuple(ids.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise CalibrationError("attention_mask must hold only 0 and 1")
    check_length(ids.shape[1], max_positions)
    ids, mask = ids.long().cpu(), mask.long().cpu()
    if int(mask.sum()) == 0:
        raise CalibrationError("calibration has no valid token: every attention_mask entry is 0")
    if vocab_size is not None:
        valid = ids[mask.bool()]
        if int(valid.min()) < 0 or int(valid.max()) >= vocab_size:
            raise CalibrationError(f"token ids must be in [0, {vocab_size}), got "
                                   f"[{int(valid.min())}, {int(valid.max())}]")
    return Calibration(ids, mask)


def check_batch_size(batch_size) -> int:
    """Calibration windows per batch: a positive integer; CalibrationError otherwise."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise CalibrationError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_length(seqlen: int, max_positions: int | None) -> None:
    if max_positions is not None and seqlen > max_positions:
        raise CalibrationError(f"calibration windows of {seqlen} tokens exceed the model's {max_positions} positions "
                               f"(max_position_embeddings): use --seqlen {max_positions} or less")
