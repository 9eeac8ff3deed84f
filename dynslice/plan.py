"""SlicePlan: per-layer widths as a frozen, JSON-serialisable value.

widths[i] is the width of the residual stream entering layer i (widths[0] is the embedding width) and
widths[L] the width the last layer writes (the head reads it). mid[i] is the width between layer i's
attention and its MLP (sequential blocks only; parallel blocks have none and keep mid == widths[:-1]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from dynslice.errors import PlanError

PLAN_FORMAT = 1


def round_width(width: float, hidden_size: int, round_to: int) -> int:
    """Nearest multiple of `round_to` within [round_to, hidden_size] (hidden_size itself is always allowed)."""
    if round_to < 1:
        raise PlanError(f"round_to must be >= 1, got {round_to}")
    rounded = int(round(width / round_to)) * round_to
    return hidden_size if rounded >= hidden_size else max(round_to, rounded)


@dataclass(frozen=True)
class SlicePlan:
    widths: tuple[int, ...]
    mid: tuple[int, ...]
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for name, values in (("widths", self.widths), ("mid", self.mid)):
            if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in values):
                raise PlanError(f"{name} must be positive integers, got {list(values)}")
        if len(self.widths) < 2:
            raise PlanError("widths needs num_layers + 1 >= 2 entries")
        if len(self.mid) != len(self.widths) - 1:
            raise PlanError(f"mid has {len(self.mid)} entries, expected num_layers = {len(self.widths) - 1}")

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def constant(cls, num_layers: int, hidden_size: int, sparsity: float, round_to: int = 8) -> "SlicePlan":
        """SliceGPT's constant slicing: every layer keeps round((1 - sparsity) * D); the head reads full D."""
        if not 0.0 <= float(sparsity) < 1.0:
            raise PlanError(f"sparsity must be in [0, 1), got {sparsity}")
        if num_layers < 1 or hidden_size < 1:
            raise PlanError(f"num_layers and hidden_size must be >= 1, got {num_layers}, {hidden_size}")
        width = round_width((1.0 - sparsity) * hidden_size, hidden_size, round_to)
        return cls(widths=(width,) * num_layers + (hidden_size,), mid=(width,) * num_layers,
                   provenance={"planner": "constant", "sparsity": float(sparsity), "round_to": round_to})

    @classmethod
    def from_widths(cls, widths, mid=None, provenance: dict | None = None) -> "SlicePlan":
        widths = tuple(int(w) if float(w).is_integer() else w for w in widths)
        mid = widths[:-1] if mid is None else tuple(int(w) if float(w).is_integer() else w for w in mid)
        return cls(widths=widths, mid=mid, provenance=dict(provenance or {}))

    # -- properties -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.mid)

    def mean_slicing(self, hidden_size: int) -> float:
        """Mean slicing fraction over the layer inputs (the paper's target t)."""
        return 1.0 - sum(self.widths[:-1]) / (self.num_layers * hidden_size)

    def check(self, config) -> None:
        """Raise PlanError unless this plan fits `config` (a transformers config)."""
        layers, hidden = config.num_hidden_layers, config.hidden_size
        if self.num_layers != layers:
            raise PlanError(f"plan has {self.num_layers} layers (widths needs {self.num_layers + 1} entries), "
                            f"the model has {layers} (widths needs {layers + 1})")
        too_wide = [w for w in self.widths + self.mid if w > hidden]
        if too_wide:
            raise PlanError(f"widths {too_wide} exceed the hidden size {hidden}")
        if _topology(config) == "parallel" and self.mid != self.widths[:-1]:
            raise PlanError("parallel-block models have no attention-to-MLP width: mid must equal widths[:-1]")

    def num_parameters(self, config) -> int:
        """Exact parameter count of the model sliced with this plan (shortcut matrices included)."""
        self.check(config)
        table = _shape_table(config.to_json_string(use_diff=False))
        total = table["fixed"] + table["embedding_rows"] * self.widths[0]
        total += table["head_rows"] * self.widths[-1]
        for i, row in enumerate(table["layers"]):
            d_in, d_mid, d_out = self.widths[i], self.mid[i], self.widths[i + 1]
            attn_to = d_out if table["parallel"] else d_mid
            mlp_from = d_in if table["parallel"] else d_mid
            total += row["attn_in_rows"] * d_in + row["attn_out_cols"] * attn_to + row["attn_out_bias"] * attn_to
            total += row["mlp_in_rows"] * mlp_from + row["mlp_out_cols"] * d_out + row["mlp_out_bias"] * d_out
            total += d_in * d_out if table["parallel"] else d_in * d_mid + d_mid * d_out
        return total

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "widths": list(self.widths), "mid": list(self.mid),
                "provenance": self.provenance}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "SlicePlan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "widths" not in data:
            raise PlanError(f"not a dynslice plan (format {PLAN_FORMAT} with `widths` expected)")
        return cls.from_widths(data["widths"], data.get("mid"), data.get("provenance"))

    @classmethod
    def from_json(cls, text: str) -> "SlicePlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _topology(config) -> str:
    from dynslice.architectures import spec_for_config
    return spec_for_config(config).topology


@lru_cache(maxsize=16)
def _shape_table(config_json: str) -> dict:
    """Parameter counts of a model family that do not depend on the widths, read off a meta-device model."""
    from dynslice.architectures import get_path
    from dynslice.counts import meta_model
    from dynslice.sliced.modeling_dynslice import reads_norm_with_bias

    model, spec = meta_model(config_json)
    biased = reads_norm_with_bias(spec.to_dict())

    counted: set[int] = set()

    def take(module) -> int:
        n = 0
        for p in module.parameters():
            if id(p) not in counted:
                counted.add(id(p))
                n += p.numel()
        return n

    layers = get_path(model, spec.layers)
    rows = []
    for layer in layers:
        for norm in (spec.attn_norm, spec.mlp_norm):
            if norm:
                take(get_path(layer, norm))
        attn_in = [get_path(layer, p) for p in spec.attn_inputs]
        mlp_in = [get_path(layer, p) for p in spec.mlp_inputs]
        attn_out, mlp_out = get_path(layer, spec.attn_output), get_path(layer, spec.mlp_output)
        rows.append({
            # reading linears: out_features x width (+ a bias of out_features, which slicing keeps)
            "attn_in_rows": sum(m.out_features for m in attn_in),
            "mlp_in_rows": sum(m.out_features for m in mlp_in),
            "attn_out_cols": attn_out.in_features, "attn_out_bias": int(attn_out.bias is not None),
            "mlp_out_cols": mlp_out.in_features, "mlp_out_bias": int(mlp_out.bias is not None),
        })
        fixed_bias = sum(m.out_features for m in attn_in + mlp_in if biased or m.bias is not None)
        rows[-1]["fixed_bias"] = fixed_bias
        for m in attn_in + mlp_in + [attn_out, mlp_out]:
            take(m)
    take(get_path(model, spec.final_norm))
    emb_rows = 0
    for path in spec.embeddings:
        emb = get_path(model, path)
        emb_rows += emb.num_embeddings
        take(emb)
    head = get_path(model, spec.head)
    head_bias = head.out_features if (biased or head.bias is not None) else 0
    take(head)
    fixed = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    fixed += head_bias + sum(r.pop("fixed_bias") for r in rows)
    return {"fixed": fixed, "embedding_rows": emb_rows, "head_rows": head.out_features,
            "parallel": spec.topology == "parallel", "layers": rows}
