"""dynslice: dynamic LLM slicing by layer redundancy (SliceGPT rotate-and-slice with per-layer widths).

The library is plain PyTorch + transformers; it never imports Prefect.
"""

from dynslice import planners
from dynslice.architectures import ArchSpec, spec_for, supported
from dynslice.compress import slice_model
from dynslice.errors import (AssetError, CalibrationError, ConfigError, DataError, DynsliceError, EvaluationError,
                             PlanError, ScoreError, SourceError, StateError, StoreError, UnsupportedArchitectureError)
from dynslice.plan import SlicePlan
from dynslice.plots import plot_plan, plot_scores
from dynslice.removal import prune, remove_layers
from dynslice.scores import LayerScores
from dynslice.scoring import score_layers
from dynslice.sliced.format import load_sliced, save_sliced

__version__ = "0.1.0"

__all__ = [
    "ArchSpec", "AssetError", "CalibrationError", "ConfigError", "DataError", "DynsliceError", "EvaluationError",
    "LayerScores", "PlanError", "ScoreError", "SlicePlan", "SourceError", "StateError", "StoreError",
    "UnsupportedArchitectureError", "load_sliced", "planners", "plot_plan", "plot_scores", "prune", "remove_layers",
    "save_sliced", "score_layers", "slice_model", "spec_for", "supported",
]
