"""ShortGPT's baseline: drop whole decoder layers with the lowest Block Influence (depth pruning).

The result is a standard transformers model of the same class with fewer layers: `config.num_hidden_layers`
and per-layer config lists shrink, and every module's `layer_idx` is renumbered so the KV cache of
`generate()` indexes the remaining layers. It saves and loads with plain save_pretrained/from_pretrained.

`prune` applies a plan's removals, whole layers and single sublayers (the `greedy` planner's). A model missing a
sublayer keeps its class; it saves in the dynslice format (`save_sliced`, format 3) and loads with `load_sliced`
or `from_pretrained(trust_remote_code=True)`.
"""

from __future__ import annotations

import logging
import math

from torch import nn

from dynslice.architectures import spec_for
from dynslice.counts import as_config, check_plan, dense_parameters, layer_parameters
from dynslice.errors import PlanError, ScoreError, UnsupportedArchitectureError
from dynslice.plan import SlicePlan
from dynslice.scores import LayerScores, check_values
from dynslice.sliced.modeling_dynslice import mark_pruned, skip_problem, skip_sublayers, sliced_meta

log = logging.getLogger(__name__)

# config entries holding one value per decoder layer, filtered along with the layers
_PER_LAYER_CONFIG = ("layer_types",)


def layers_to_remove(scores, config, *, n: int | None = None, target: float | None = None) -> tuple[int, ...]:
    """The layers ShortGPT drops, ascending: the n lowest scores (ties: the later layer first).

    Give exactly one of n (a layer count, 0 <= n < L) or target (a fraction of the dense model's unique
    parameters to remove, in [0, 1)); with a target, the fewest lowest-score layers whose removal meets it.
    """
    config = as_config(config)
    values = check_values(scores.values if isinstance(scores, LayerScores) else scores)
    layers = config.num_hidden_layers
    if len(values) != layers:
        raise ScoreError(f"{len(values)} scores for a model with {layers} decoder layers")
    if (n is None) == (target is None):
        raise PlanError("give exactly one of n (layers to remove) or target (fraction of parameters)")
    # lowest score first; on ties the later layer, whose removal disturbs fewer downstream layers
    order = sorted(range(layers), key=lambda i: (values[i], -i))
    if target is not None:
        if not (isinstance(target, (int, float)) and math.isfinite(target) and 0.0 <= target < 1.0):
            raise PlanError(f"target must be in [0, 1), got {target!r}")
        dense, per_layer = dense_parameters(config), layer_parameters(config)
        removed, n = 0, 0
        while removed < target * dense:
            if n == layers - 1:
                raise PlanError(f"removing {layers - 1} of {layers} layers removes only {removed / dense:.4f} "
                                f"of the parameters, short of the target {target}")
            removed += per_layer[order[n]]
            n += 1
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < layers:
        raise PlanError(f"n must be an integer in [0, {layers - 1}] (at least one layer stays), got {n!r}")
    return tuple(sorted(order[:n]))


def parameters_after_removal(config, removed) -> int:
    """Unique parameters left after dropping the decoder layers `removed` (tied head counted once)."""
    per_layer = layer_parameters(config)
    return dense_parameters(config) - sum(per_layer[i] for i in set(removed))


def remove_layers(model: nn.Module, scores, n: int | None = None, *, target: float | None = None) -> nn.Module:
    """Drop the n layers with the lowest score from `model` in place (or as many as `target` needs); returns it.

    scores: `LayerScores` or one score per decoder layer (higher = more important).
    target: fraction of the dense model's unique parameters to remove instead of a layer count.
    """
    return drop_layers(model, layers_to_remove(scores, model.config, n=n, target=target))


def drop_layers(model: nn.Module, removed) -> nn.Module:
    """Drop the decoder layers `removed` (indices) from `model` in place; returns it (a plan's `removed`)."""
    spec = spec_for(model)
    config = model.config
    if getattr(config, "is_heterogeneous", False):
        raise UnsupportedArchitectureError("layer removal does not support per-layer (heterogeneous) configs")
    layers = model.get_submodule(spec.layers)
    removed = tuple(sorted(set(removed)))
    if any(not 0 <= i < len(layers) for i in removed) or len(removed) >= len(layers):
        raise PlanError(f"cannot remove layers {list(removed)} of a model with {len(layers)} (one must stay)")
    keep = [i for i in range(len(layers)) if i not in set(removed)]
    model.set_submodule(spec.layers, nn.ModuleList([layers[i] for i in keep]))
    for new_index, layer in enumerate(model.get_submodule(spec.layers)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index  # the KV cache slot this layer reads and writes
    for key in _PER_LAYER_CONFIG:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == len(layers):
            setattr(config, key, [values[i] for i in keep])
    config.num_hidden_layers = len(keep)
    log.info("removed layers %s of %d (%d left)", list(removed), len(layers), len(keep))
    return model


def prune(model: nn.Module, plan: SlicePlan) -> nn.Module:
    """Apply `plan`'s removals to `model` in place and return it: its layers `removed` go, then its layers
    `removed_attention` / `removed_mlp` (dense indices) lose that sublayer. With sublayers gone, the config
    records them (the dynslice format), so `save_sliced` writes the model and `load_sliced` rebuilds it."""
    if sliced_meta(model.config) is not None:
        raise PlanError("this model is already sliced or pruned: prune the dense model (with a plan that lists "
                        "every removal)")
    spec = spec_for(model)
    if not plan.removes:
        raise PlanError("the plan removes nothing: slice it with slice_model")
    check_plan(plan, model.config)
    kept = [j for j in range(plan.num_layers) if j not in set(plan.removed)]
    position = {dense: i for i, dense in enumerate(kept)}
    attention = [position[i] for i in plan.removed_attention]
    mlp = [position[i] for i in plan.removed_mlp]
    layer_types = getattr(model.config, "layer_types", None)
    problem = skip_problem(spec.to_dict(), len(kept), attention, mlp,
                           [layer_types[j] for j in kept] if layer_types else None)
    if problem:  # refused before the model is touched
        raise UnsupportedArchitectureError(problem)
    if plan.removed:
        drop_layers(model, plan.removed)
    if attention or mlp:
        skip_sublayers(model, spec.to_dict(), attention, mlp)
        mark_pruned(model, spec.to_dict(), plan.to_dict(), attention, mlp)
        log.info("removed the attention of layers %s and the MLP of layers %s", list(plan.removed_attention),
                 list(plan.removed_mlp))
    return model
