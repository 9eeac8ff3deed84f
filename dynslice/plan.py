"""SlicePlan: per-layer widths as a frozen, JSON-serialisable value.

widths[i] is the width of the residual stream entering layer i (widths[0] is the embedding width) and
widths[L] the width the last layer writes (the head reads it). mid[i] is the width between layer i's
attention and its MLP (sequential blocks only; parallel blocks have none and keep mid == widths[:-1]).
untie_head: give a head tied to the embedding its own copy (SliceGPT's way) instead of keeping it tied
(dynslice.fusion.untie_reason); it changes the parameter count, so it belongs to the plan.
removed: decoder layers dropped whole (ShortGPT-style depth pruning, the `removal` and `greedy` planners).
removed_attention / removed_mlp: layers that lose only their attention / only their MLP (the `greedy` planner's
sublayer removal; sequential blocks). Indices are layers of the dense model. A plan that removes anything
slices nothing: every width is the hidden size (depth and width together lost to either alone at every budget
measured, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dynslice.errors import PlanError

PLAN_FORMAT = 1


def round_width(width: float, hidden_size: int, round_to: int) -> int:
    """Nearest multiple of `round_to` within [round_to, hidden_size] (hidden_size itself is always allowed)."""
    if round_to < 1:
        raise PlanError(f"round_to must be >= 1, got {round_to}")
    rounded = int(round(width / round_to)) * round_to
    return hidden_size if rounded >= hidden_size else max(round_to, rounded)


def _indices(name: str, values) -> tuple[int, ...]:
    """A plan file's list of layer indices (integral numbers; not strings or booleans), or a PlanError naming it."""
    if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or
                                           not float(v).is_integer() for v in values):
        raise PlanError(f"{name} must be a list of layer indices (integers >= 0), got {values!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class SlicePlan:
    widths: tuple[int, ...]
    mid: tuple[int, ...]
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    untie_head: bool = False
    removed: tuple[int, ...] = ()
    removed_attention: tuple[int, ...] = ()
    removed_mlp: tuple[int, ...] = ()

    def __post_init__(self):
        if not isinstance(self.untie_head, bool):
            raise PlanError(f"untie_head must be true or false, got {self.untie_head!r}")
        for name in ("removed", "removed_attention", "removed_mlp"):
            values = getattr(self, name)
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in values) or \
                    list(values) != sorted(set(values)):
                raise PlanError(f"{name} must be distinct layer indices in ascending order, got {list(values)}")
        for a, b in (("removed", "removed_attention"), ("removed", "removed_mlp"),
                     ("removed_attention", "removed_mlp")):
            both = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if both:
                raise PlanError(f"layers {both} are in both {a} and {b} (a layer that loses both sublayers is "
                                "removed)")
        for name, values in (("widths", self.widths), ("mid", self.mid)):
            if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in values):
                raise PlanError(f"{name} must be positive integers, got {list(values)}")
        if len(self.widths) < 2:
            raise PlanError("widths needs num_layers + 1 >= 2 entries")
        if len(self.mid) != len(self.widths) - 1:
            raise PlanError(f"mid has {len(self.mid)} entries, expected num_layers = {len(self.widths) - 1}")

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def constant(cls, num_layers: int, hidden_size: int, sparsity: float, round_to: int = 8,
                 untie_head: bool = False) -> "SlicePlan":
        """SliceGPT's constant slicing: every layer keeps round((1 - sparsity) * D); the head reads full D."""
        if not 0.0 <= float(sparsity) < 1.0:
            raise PlanError(f"sparsity must be in [0, 1), got {sparsity}")
        if num_layers < 1 or hidden_size < 1:
            raise PlanError(f"num_layers and hidden_size must be >= 1, got {num_layers}, {hidden_size}")
        width = round_width((1.0 - sparsity) * hidden_size, hidden_size, round_to)
        return cls(widths=(width,) * num_layers + (hidden_size,), mid=(width,) * num_layers,
                   provenance={"planner": "constant", "sparsity": float(sparsity), "round_to": round_to},
                   untie_head=untie_head)

    @classmethod
    def from_widths(cls, widths, mid=None, provenance: dict | None = None, untie_head: bool = False,
                    removed=()) -> "SlicePlan":
        widths = tuple(int(w) if float(w).is_integer() else w for w in widths)
        mid = widths[:-1] if mid is None else tuple(int(w) if float(w).is_integer() else w for w in mid)
        removed = tuple(int(i) if float(i).is_integer() else i for i in removed)
        return cls(widths=widths, mid=mid, provenance=dict(provenance or {}), untie_head=untie_head,
                   removed=removed)

    @classmethod
    def removal(cls, num_layers: int, hidden_size: int, removed, provenance: dict | None = None, *,
                attention=(), mlp=()) -> "SlicePlan":
        """Drop the decoder layers `removed` whole and the attention of layers `attention` and the MLP of layers
        `mlp`; slice nothing."""
        full = (hidden_size,) * num_layers
        return cls(widths=full + (hidden_size,), mid=full, provenance=dict(provenance or {}),
                   removed=tuple(sorted(removed)), removed_attention=tuple(sorted(attention)),
                   removed_mlp=tuple(sorted(mlp)))

    # -- properties -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.mid)

    @property
    def removes(self) -> bool:
        """Whether this plan removes layers or sublayers (and so slices nothing)."""
        return bool(self.removed or self.removed_attention or self.removed_mlp)

    def mean_slicing(self, hidden_size: int) -> float:
        """Mean slicing fraction over the layer inputs (the paper's target t)."""
        return 1.0 - sum(self.widths[:-1]) / (self.num_layers * hidden_size)

    def check(self, num_layers: int, hidden_size: int, parallel: bool = False) -> None:
        """Raise PlanError unless this plan fits a model of `num_layers` layers of width `hidden_size`
        (`parallel`: attention and MLP read the same input, so there is no attention-to-MLP width)."""
        if self.num_layers != num_layers:
            raise PlanError(f"plan has {self.num_layers} layers (widths needs {self.num_layers + 1} entries), "
                            f"the model has {num_layers} (widths needs {num_layers + 1})")
        too_wide = [w for w in self.widths + self.mid if w > hidden_size]
        if too_wide:
            raise PlanError(f"widths {too_wide} exceed the hidden size {hidden_size}")
        if parallel and self.mid != self.widths[:-1]:
            raise PlanError("parallel-block models have no attention-to-MLP width: mid must equal widths[:-1]")
        if self.removes:
            listed = self.removed + self.removed_attention + self.removed_mlp
            if max(listed) >= num_layers:
                raise PlanError(f"the plan removes (parts of) layer {max(listed)}: the model has {num_layers} layers")
            if len(self.removed) >= num_layers:
                raise PlanError(f"removed layers {list(self.removed)} do not leave a layer of the {num_layers}")
            if any(w != hidden_size for w in self.widths + self.mid):
                raise PlanError("a plan that removes layers slices nothing: every width must be the hidden size")
            if parallel and (self.removed_attention or self.removed_mlp):
                raise PlanError("parallel blocks cannot lose one sublayer (their attention and MLP read one norm)")

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"format": PLAN_FORMAT, "widths": list(self.widths), "mid": list(self.mid),
               "untie_head": self.untie_head, "provenance": self.provenance}
        for name in ("removed", "removed_attention", "removed_mlp"):  # older plans' bytes unchanged
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "SlicePlan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "widths" not in data:
            raise PlanError(f"not a dynslice plan (format {PLAN_FORMAT} with `widths` expected)")
        removals = {name: _indices(name, data.get(name, [])) for name in ("removed", "removed_attention",
                                                                           "removed_mlp")}
        try:  # plans written before `untie_head` existed keep a tied head tied
            plan = cls.from_widths(data["widths"], data.get("mid"), data.get("provenance"),
                                   data.get("untie_head", False))
        except (TypeError, ValueError) as exc:
            raise PlanError(f"plan widths must be lists of positive integers: {exc}") from None
        return cls(plan.widths, plan.mid, plan.provenance, plan.untie_head, **removals)

    @classmethod
    def from_json(cls, text: str) -> "SlicePlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

