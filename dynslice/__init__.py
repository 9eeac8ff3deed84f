"""dynslice: dynamic LLM slicing by layer redundancy (SliceGPT rotate-and-slice with per-layer widths).

The library is plain PyTorch + transformers; it never imports Prefect.
"""

from dynslice.architectures import ArchSpec, spec_for, supported
from dynslice.compress import slice_model
from dynslice.errors import (CalibrationError, DynsliceError, PlanError, StateError,
                             UnsupportedArchitectureError)
from dynslice.plan import SlicePlan
from dynslice.sliced.format import load_sliced, save_sliced

__version__ = "0.1.0"

__all__ = [
    "ArchSpec", "CalibrationError", "DynsliceError", "PlanError", "SlicePlan", "StateError",
    "UnsupportedArchitectureError", "load_sliced", "save_sliced", "slice_model", "spec_for", "supported",
]
