"""Parameter counts of a dense (unsliced) model, read off a meta-device copy built from its config.

The dense count is the number of unique parameters: a head tied to the embedding is counted once. This is
the baseline every "fraction of parameters removed" in dynslice is relative to.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
import transformers

from dynslice.architectures import get_path, spec_for_config
from dynslice.errors import PlanError


def as_config(config) -> transformers.PretrainedConfig:
    """A transformers config from a config object or its `to_dict()` (as stored in scores and plans)."""
    if isinstance(config, transformers.PretrainedConfig):
        return config
    if isinstance(config, dict) and config.get("model_type"):
        return transformers.AutoConfig.for_model(**config)
    raise PlanError("a transformers config (or its dict with a `model_type`) is needed to count parameters; "
                    f"got {type(config).__name__}")


@lru_cache(maxsize=8)
def meta_model(config_json: str) -> tuple[transformers.PreTrainedModel, object]:
    """The dense model of a config on the meta device (shapes, no memory) and its ArchSpec; read-only: shared
    by every parameter count (dense here, sliced in `SlicePlan.num_parameters`)."""
    config = transformers.AutoConfig.for_model(**json.loads(config_json))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model, spec_for_config(config)


@lru_cache(maxsize=16)
def _table(config_json: str) -> tuple[int, tuple[int, ...]]:
    model, spec = meta_model(config_json)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    per_layer = tuple(sum(p.numel() for p in layer.parameters()) for layer in get_path(model, spec.layers))
    return total, per_layer


def _key(config) -> str:
    return as_config(config).to_json_string(use_diff=False)


def dense_parameters(config) -> int:
    """Unique parameters of the dense model (tied head counted once)."""
    return _table(_key(config))[0]


def layer_parameters(config) -> tuple[int, ...]:
    """Parameters of each decoder layer of the dense model."""
    return _table(_key(config))[1]
