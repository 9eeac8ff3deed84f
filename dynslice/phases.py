"""Where the layer loop spends its time, for benchmarks: `with phase("attention pass"):` around each piece of
work; `with recording() as totals:` around a run collects seconds per phase. Outside a recording a phase costs
one context-variable lookup. While recording on CUDA each phase synchronises the device, so the totals are
wall-clock GPU time (recording is for measuring, not for production runs).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_TOTALS: ContextVar[dict[str, float] | None] = ContextVar("dynslice_phase_totals", default=None)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def phase(name: str) -> Iterator[None]:
    totals = _TOTALS.get()
    if totals is None:
        yield
        return
    _sync()
    start = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        totals[name] += time.perf_counter() - start


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Seconds per phase of everything run inside (phases do not nest: each piece of work is in one)."""
    totals: dict[str, float] = defaultdict(float)
    token = _TOTALS.set(totals)
    try:
        yield totals
    finally:
        _TOTALS.reset(token)
