"""Layer scores as a value: Block Influence per decoder layer (higher = more important), checked at the
boundary, and the redundancy the planners derive from it. Measuring them is `dynslice.scoring`.

    cosine:  BI_i = mean_t (1 - cos(h_i[t], h_{i+1}[t]))          (ShortGPT's Block Influence)
    angular: BI_i = mean_t arccos(cos(h_i[t], h_{i+1}[t])) / pi
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from dynslice.errors import ScoreError

SCORES_FORMAT = 1
METRICS = ("cosine", "angular")


@dataclass(frozen=True)
class LayerScores:
    """Block Influence per decoder layer (higher = more important), with what it was measured on."""

    values: tuple[float, ...]  # [L]
    metric: str
    num_tokens: int  # valid tokens averaged over
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # model config, for planners
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # model / data identity

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ScoreError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}")
        values = check_values(self.values)
        object.__setattr__(self, "values", values)
        if self.config and self.config.get("num_hidden_layers") not in (None, len(values)):
            raise ScoreError(f"{len(values)} scores for a model with {self.config['num_hidden_layers']} layers")

    @property
    def num_layers(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict:
        return {"format": SCORES_FORMAT, "kind": "layer_scores", "metric": self.metric,
                "values": list(self.values), "num_tokens": self.num_tokens, "config": self.config,
                "provenance": self.provenance}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerScores":
        if not isinstance(data, dict) or data.get("kind") != "layer_scores" or data.get("format") != SCORES_FORMAT:
            raise ScoreError(f"not dynslice layer scores (kind `layer_scores`, format {SCORES_FORMAT} expected)")
        return cls(values=tuple(data["values"]), metric=data["metric"], num_tokens=int(data["num_tokens"]),
                   config=dict(data.get("config") or {}), provenance=dict(data.get("provenance") or {}))

    @classmethod
    def from_json(cls, text: str) -> "LayerScores":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScoreError(f"scores are not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def check_values(values) -> tuple[float, ...]:
    """Scores as a tuple of finite floats; ScoreError otherwise."""
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ScoreError(f"scores must be a sequence of numbers: {exc}") from exc
    if not values:
        raise ScoreError("scores are empty: one score per decoder layer is needed")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise ScoreError(f"scores of layers {bad} are not finite (NaN or inf): {[values[i] for i in bad]}")
    return values


def redundancy(values) -> tuple[float, ...]:
    """r_i = 1 - (BI_i - min BI) / (max BI - min BI); all ones when the scores are all equal."""
    values = check_values(values)
    lo, hi = min(values), max(values)
    if hi - lo <= 0.0:
        return (1.0,) * len(values)
    return tuple(1.0 - (v - lo) / (hi - lo) for v in values)


