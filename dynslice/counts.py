"""Parameter counts: of a live model, of a dense model from its config, and of the model a plan would give.

Counts from a config are read off a meta-device copy of the model (shapes, no memory). The dense count is
the number of unique parameters (a head tied to the embedding counted once): the baseline every "fraction of
parameters removed" in dynslice is relative to. A sliced model whose head stays tied (dynslice.fusion.untie_reason)
stores the [V, D] table once, in the head, plus the final norm's scale as a D x D matrix: its count is the untied
count - V * d_0 + D * D.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
import transformers
from torch import nn

from dynslice.architectures import spec_for_config
from dynslice.errors import PlanError
from dynslice.fusion import untie_reason
from dynslice.plan import SlicePlan
from dynslice.sliced.modeling_dynslice import reads_norm_with_bias


def unique_parameters(model: nn.Module) -> int:
    """Parameters of a live model, a tensor shared by two modules (a tied head) counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def as_config(config) -> transformers.PretrainedConfig:
    """A transformers config from a config object or its `to_dict()` (as stored in scores and plans)."""
    if isinstance(config, transformers.PretrainedConfig):
        return config
    if isinstance(config, dict) and config.get("model_type"):
        return transformers.AutoConfig.for_model(**config)
    raise PlanError("a transformers config (or its dict with a `model_type`) is needed to count parameters; "
                    f"got {type(config).__name__}")


def _key(config) -> str:
    return as_config(config).to_json_string(use_diff=False)


@lru_cache(maxsize=8)
def meta_model(config_json: str) -> tuple[transformers.PreTrainedModel, object]:
    """The dense model of a config on the meta device and its ArchSpec; read-only, shared by every count."""
    config = transformers.AutoConfig.for_model(**json.loads(config_json))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model, spec_for_config(config)


@lru_cache(maxsize=16)
def _dense_table(config_json: str) -> tuple[int, tuple[int, ...]]:
    model, spec = meta_model(config_json)
    per_layer = tuple(unique_parameters(layer) for layer in model.get_submodule(spec.layers))
    return unique_parameters(model), per_layer


def dense_parameters(config) -> int:
    """Unique parameters of the dense model (tied head counted once)."""
    return _dense_table(_key(config))[0]


def layer_parameters(config) -> tuple[int, ...]:
    """Parameters of each decoder layer of the dense model."""
    return _dense_table(_key(config))[1]


ATTENTION, MLP = "attention", "mlp"
KINDS = (ATTENTION, MLP)  # the two sublayers of a decoder layer, as a unit (layer index, kind) names them


def sublayer_parameters(config) -> tuple[tuple[int, int], ...]:
    """Parameters each layer loses with its attention and with its MLP: ((attention, mlp), ...) [L].

    Sequential blocks: a sublayer owns the norm that feeds it. Parallel blocks share one norm, which goes only
    with the whole layer (`layer_parameters`), so there attention + mlp < layer.
    """
    return _sublayer_table(_key(config))


@lru_cache(maxsize=16)
def _sublayer_table(config_json: str) -> tuple[tuple[int, int], ...]:
    model, spec = meta_model(config_json)
    sequential = spec.topology == "sequential"
    out = []
    for layer in model.get_submodule(spec.layers):
        attention = unique_parameters(layer.get_submodule(spec.attn))
        attention += unique_parameters(layer.get_submodule(spec.attn_norm)) if sequential else 0
        mlp = sum(unique_parameters(layer.get_submodule(name)) for name in spec.mlp)
        mlp += unique_parameters(layer.get_submodule(spec.mlp_norm)) if spec.mlp_norm else 0
        out.append((attention, mlp))
    return tuple(out)


def removed_parameters(config, units) -> int:
    """Parameters the dense model loses without `units`, (layer, ATTENTION | MLP) pairs (a layer without both
    loses all of its own)."""
    per_kind, per_layer = sublayer_parameters(config), layer_parameters(config)
    by_layer: dict[int, set[str]] = {}
    for i, kind in units:
        by_layer.setdefault(i, set()).add(kind)
    return sum(per_layer[i] if kinds == set(KINDS) else per_kind[i][KINDS.index(next(iter(kinds)))]
               for i, kinds in by_layer.items())


def check_plan(plan: SlicePlan, config) -> None:
    """PlanError unless `plan` fits the model of `config` (layer count, hidden size, block topology)."""
    config = as_config(config)
    plan.check(config.num_hidden_layers, config.hidden_size,
               parallel=spec_for_config(config).topology == "parallel")


def sliced_parameters(plan: SlicePlan, config) -> int:
    """Exact parameter count of the model of `config` sliced with `plan` (shortcut matrices included, a head that
    stays tied counted once)."""
    config = as_config(config)
    check_plan(plan, config)
    if plan.removes:  # layers or sublayers dropped, nothing sliced
        units = [(i, k) for i in plan.removed for k in KINDS]
        units += [(i, ATTENTION) for i in plan.removed_attention] + [(i, MLP) for i in plan.removed_mlp]
        return dense_parameters(config) - removed_parameters(config, units)
    table = _sliced_table(_key(config))
    total = table["fixed"] + table["embedding_rows"] * plan.widths[0] + table["head_rows"] * plan.widths[-1]
    if untie_reason(config, spec_for_config(config), plan) is None:
        # the token table lives in the head ([V, D], counted above); the final norm's scale becomes [D, D]
        total += config.hidden_size ** 2 - table["token_rows"] * plan.widths[0]
    for i, row in enumerate(table["layers"]):
        d_in, d_mid, d_out = plan.widths[i], plan.mid[i], plan.widths[i + 1]
        attn_to = d_out if table["parallel"] else d_mid
        mlp_from = d_in if table["parallel"] else d_mid
        total += row["attn_in_rows"] * d_in + row["attn_out_cols"] * attn_to + row["attn_out_bias"] * attn_to
        total += row["mlp_in_rows"] * mlp_from + row["mlp_out_cols"] * d_out + row["mlp_out_bias"] * d_out
        total += d_in * d_out if table["parallel"] else d_in * d_mid + d_mid * d_out  # the shortcut matrices
    return total


@lru_cache(maxsize=16)
def _sliced_table(config_json: str) -> dict:
    """The parts of a sliced model's parameter count that do not depend on the widths."""
    model, spec = meta_model(config_json)
    biased = reads_norm_with_bias(spec.to_dict())
    counted: set[int] = set()

    def take(module: nn.Module) -> None:
        counted.update(id(p) for p in module.parameters())

    rows = []
    fixed_bias = 0
    for layer in model.get_submodule(spec.layers):
        for norm in (spec.attn_norm, spec.mlp_norm):
            if norm:
                take(layer.get_submodule(norm))  # folded away: sliced norms have no weights
        attn_in = [layer.get_submodule(p) for p in spec.attn_inputs]
        mlp_in = [layer.get_submodule(p) for p in spec.mlp_inputs]
        attn_out, mlp_out = layer.get_submodule(spec.attn_output), layer.get_submodule(spec.mlp_output)
        rows.append({
            # reading linears: out_features x width (+ a bias of out_features, which slicing keeps)
            "attn_in_rows": sum(m.out_features for m in attn_in),
            "mlp_in_rows": sum(m.out_features for m in mlp_in),
            "attn_out_cols": attn_out.in_features, "attn_out_bias": int(attn_out.bias is not None),
            "mlp_out_cols": mlp_out.in_features, "mlp_out_bias": int(mlp_out.bias is not None),
        })
        # a folded LayerNorm bias gives every reading linear a bias
        fixed_bias += sum(m.out_features for m in attn_in + mlp_in if biased or m.bias is not None)
        for m in attn_in + mlp_in + [attn_out, mlp_out]:
            take(m)
    take(model.get_submodule(spec.final_norm))
    emb_rows = 0
    for path in spec.embeddings:
        emb = model.get_submodule(path)
        emb_rows += emb.num_embeddings
        take(emb)
    token_rows = model.get_submodule(spec.embeddings[0]).num_embeddings  # the table a tied head shares
    head = model.get_submodule(spec.head)
    head_bias = head.out_features if (biased or head.bias is not None) else 0
    take(head)
    # what slicing leaves alone (e.g. per-head q/k norms inside attention), plus the biases counted above
    fixed = sum(p.numel() for p in model.parameters() if id(p) not in counted) + head_bias + fixed_bias
    return {"fixed": fixed, "embedding_rows": emb_rows, "token_rows": token_rows, "head_rows": head.out_features,
            "parallel": spec.topology == "parallel", "layers": rows}
