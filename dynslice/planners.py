"""Planners: pure functions from layer scores and a target to a `SlicePlan`.

Notation: L decoder layers, hidden size D, BI_i the score of layer i (higher = more important),
r_i = 1 - minmax(BI)_i its redundancy. A plan's widths are d_0..d_{L-1} (d_i: the residual stream
ENTERING layer i, d_0 the embedding width), d_L = D (the head is not sliced) and mid_i = d_i (layer i's
attention-to-MLP width equals its input width).

Two budgets:
- budget="mean": the target t is the mean slicing fraction over the layer inputs,
  1 - sum(d_0..d_{L-1}) / (L * D) (the paper's t, `SlicePlan.mean_slicing`).
- budget="params": the target is the fraction of parameters removed,
  1 - sliced_parameters(plan, config) / P_dense, where P_dense is the number of unique parameters of the dense
  model (a head tied to the embedding counted once; `dynslice.counts.dense_parameters`). The sliced model
  adds shortcut matrices (and, with `untie_head` or a LayerNorm family, a second vocabulary-sized matrix for
  the untied head; a head that stays tied adds a D x D matrix), so a plan removes fewer parameters than its
  mean suggests.
  The planner solves for the smallest slicing of the same shape whose reduction is >= the target; it
  overshoots by less than one rounding step (moving every width by `round_to`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from dynslice.counts import as_config, dense_parameters, sliced_parameters
from dynslice.errors import PlanError, ScoreError
from dynslice.plan import SlicePlan, round_width
from dynslice.scores import LayerScores, check_values, redundancy

log = logging.getLogger(__name__)

BUDGETS = ("mean", "params")
_BISECTION_STEPS = 60  # halvings of [0, max_slice]: far below any width change


# -- the paper's mapping ---------------------------------------------------------------------------------
def slicing_fractions(r: Sequence[float], target: float, variation: float) -> tuple[float, ...]:
    """s_i = (t - a) + a * r_i / mean(r), so mean(s) = t; all t when a = 0 or mean(r) = 0."""
    mean_r = sum(r) / len(r)
    if variation == 0.0 or mean_r <= 0.0:
        return (float(target),) * len(r)
    return tuple((target - variation) + variation * ri / mean_r for ri in r)


def clamp_fractions(s: Sequence[float], max_slice: float) -> tuple[float, ...]:
    """Clamp each s_i to [0, max_slice] and add the excess equally to the unclamped ones, so the mean stays.

    Repeats until nothing is out of bounds (each round pins at least one more entry, so at most L rounds).
    Needs 0 <= mean(s) <= max_slice.
    """
    n, total = len(s), sum(s)
    pinned: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in pinned]
        if not free:
            return tuple(pinned[i] for i in range(n))
        shift = (total - sum(pinned.values()) - sum(s[i] for i in free)) / len(free)
        out = {i: (max_slice if s[i] + shift > max_slice else 0.0) for i in free
               if not 0.0 <= s[i] + shift <= max_slice}
        if not out:
            return tuple(pinned[i] if i in pinned else s[i] + shift for i in range(n))
        pinned.update(out)


def _allowed_widths(hidden_size: int, round_to: int, min_width: int) -> list[int]:
    return sorted({w for w in range(round_to, hidden_size, round_to) if w >= min_width} | {hidden_size})


def round_widths(widths: Sequence[float], hidden_size: int, round_to: int, min_width: int) -> tuple[int, ...]:
    """Round widths to multiples of `round_to` (or D) in [min_width, D], keeping their sum as close as possible.

    Each width goes to the nearest allowed value; then, while it brings the sum closer to the unrounded sum,
    the width rounded furthest in the wrong direction moves one allowed step back (largest residual first,
    lowest layer on ties). Equal widths (a uniform allocation) are rounded alike and left uniform: that is
    SliceGPT's constant plan, whose mean is within half a rounding step of the target.
    """
    allowed = _allowed_widths(hidden_size, round_to, min_width)
    rounded = [max(allowed[0], round_width(w, hidden_size, round_to)) for w in widths]
    if max(widths) - min(widths) <= 1e-9 * hidden_size:
        return tuple(rounded)
    gap = sum(rounded) - sum(widths)  # > 0: too wide overall
    while gap != 0:
        step = -1 if gap > 0 else 1  # one allowed value narrower (too wide) or wider (too narrow)
        moves = []  # (how far the width was rounded against the needed direction, -layer, layer, new width)
        for i, w in enumerate(rounded):
            j = bisect.bisect_left(allowed, w) + step
            if 0 <= j < len(allowed):
                moves.append(((w - widths[i]) * -step, -i, i, allowed[j]))
        if not moves:
            break
        _, _, i, new = max(moves)
        new_gap = gap + new - rounded[i]
        if abs(new_gap) >= abs(gap):
            break
        rounded[i], gap = new, new_gap
    return tuple(rounded)


# -- checks at the boundary -------------------------------------------------------------------------------
def check_fraction(name: str, value: float) -> float:
    """`value` as a float in [0, 1), or a PlanError naming it."""
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise PlanError(f"{name} must be a number, got {value!r}") from exc
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise PlanError(f"{name} must be in [0, 1), got {value}")
    return value


def _check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise PlanError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")


def _check_round_to(round_to: int, hidden_size: int) -> None:
    if not isinstance(round_to, int) or isinstance(round_to, bool) or not 1 <= round_to <= hidden_size:
        raise PlanError(f"round_to must be an integer in [1, hidden size {hidden_size}], got {round_to!r}")


def _scores_of(scores, num_layers: int) -> tuple[float, ...]:
    values = check_values(scores.values if isinstance(scores, LayerScores) else scores)
    if len(values) != num_layers:
        raise ScoreError(f"{len(values)} scores for a model with {num_layers} decoder layers")
    return values


def _config_for(scores, config):
    if config is None:
        if isinstance(scores, LayerScores) and scores.config:
            return as_config(scores.config)
        raise PlanError("a model config is needed: pass config=, or scores measured by score_layers")
    return as_config(config)


# -- plans ------------------------------------------------------------------------------------------------
def _plan(widths: Sequence[int], hidden_size: int, untie_head: bool) -> SlicePlan:
    widths = tuple(int(w) for w in widths)
    return SlicePlan(widths=widths + (hidden_size,), mid=widths, untie_head=untie_head)


def achieved(plan: SlicePlan, config) -> dict[str, float | int]:
    """Mean slicing fraction and fraction of the dense model's parameters the plan removes."""
    config = as_config(config)
    dense, sliced = dense_parameters(config), sliced_parameters(plan, config)
    return {"achieved_mean_slicing": plan.mean_slicing(config.hidden_size),
            "achieved_param_reduction": 1.0 - sliced / dense, "parameters": sliced, "dense_parameters": dense}


def _solve_params(build: Callable[[float], SlicePlan], config, target: float,
                  max_slice: float) -> tuple[SlicePlan, float]:
    """Bisection on the effective mean slicing t' in [0, max_slice]: the least t' whose plan meets `target`.

    Keeps lo (reduction < target) and hi (reduction >= target); returns hi's plan, which meets the target
    and overshoots it by one rounding event of the widths.
    """
    dense = dense_parameters(config)

    def reduction(plan: SlicePlan) -> float:
        return 1.0 - sliced_parameters(plan, config) / dense

    lo, hi = 0.0, float(max_slice)
    best = build(hi)
    if reduction(best) < target:
        raise PlanError(f"a parameter reduction of {target:.4f} is out of reach: slicing every layer by "
                        f"max_slice={max_slice} removes {reduction(best):.4f}")
    first = build(lo)
    if reduction(first) >= target:
        return first, lo
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        plan = build(mid)
        if reduction(plan) >= target:
            hi, best = mid, plan
        else:
            lo = mid
    return best, hi


def _finish(plan: SlicePlan, config, provenance: dict[str, Any], scores=None) -> SlicePlan:
    info: dict[str, Any] = {"hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers}
    info.update(provenance)
    info.update(achieved(plan, config))
    if isinstance(scores, LayerScores):
        info.update(metric=scores.metric, model=scores.provenance.get("model"), data=scores.provenance.get("data"))
    if scores is not None:
        values = scores.values if isinstance(scores, LayerScores) else scores
        info["scores_sha256"] = hashlib.sha256(json.dumps([float(v) for v in values]).encode()).hexdigest()
    log.info("%s plan (budget %s, target %s): mean slicing %.4f, parameters removed %.4f", info["planner"],
             info["budget"], info["target"], info["achieved_mean_slicing"], info["achieved_param_reduction"])
    return SlicePlan(widths=plan.widths, mid=plan.mid, provenance=info, untie_head=plan.untie_head,
                     removed=plan.removed, removed_attention=plan.removed_attention, removed_mlp=plan.removed_mlp)


def constant(sparsity: float, config, *, budget: str = "mean", round_to: int = 8,
             untie_head: bool = False) -> SlicePlan:
    """SliceGPT's constant slicing: d_i = round_width((1 - s) * D) for every layer input, d_L = D.

    budget="mean": s = sparsity. budget="params": s is the least slicing whose uniform width removes at least
    `sparsity` of the dense model's parameters (see the module docstring).
    config: the model's transformers config (or its dict, e.g. `LayerScores.config`).
    untie_head: give a tied head its own matrix (the plan's `untie_head`; it changes the parameter count).
    """
    config = as_config(config)
    target = check_fraction("sparsity", sparsity)
    layers, hidden = config.num_hidden_layers, config.hidden_size
    _check_budget(budget)
    _check_round_to(round_to, hidden)

    def build(s: float) -> SlicePlan:
        return SlicePlan.constant(layers, hidden, s, round_to, untie_head=untie_head)

    # a uniform width can slice the stream down to one rounding step
    plan, used = (build(target), target) if budget == "mean" else _solve_params(build, config, target, 1.0 - 1e-9)
    return _finish(plan, config, {"planner": "constant", "target": target, "variation": 0.0, "budget": budget,
                                  "round_to": round_to, "effective_target": used})


def dynamic(scores, target: float, variation: float, *, config=None, budget: str = "mean",
            max_slice: float = 0.9, round_to: int = 8, untie_head: bool = False) -> SlicePlan:
    """The paper's mapping from layer scores to widths.

        r = 1 - minmax(BI);  s_i = (t - a) + a * r_i / mean(r)   (mean(s) = t; a = 0 is constant slicing)
        s_i clamped to [0, max_slice], the excess spread equally over the other layers (mean stays t);
        d_i = (1 - s_i) * D rounded to multiples of round_to, keeping the mean as close to t as the
        rounding allows (`round_widths`); every d_i in [round_width((1 - max_slice) * D), D].

    budget="mean": t = target, a = variation, in [0, target].
    budget="params": the allocation shape of (target, variation) is scaled, s_i(k) = k * s_i, i.e. mean
        t' = k * target and variation k * variation; the least t' whose plan removes at least `target` of
        the dense parameters is found by bisection (see the module docstring).
    scores: `LayerScores` or one finite score per decoder layer (then `config` is required).
    config: the model's transformers config or its dict (default: the config stored in `scores`).
    untie_head: give a tied head its own matrix (the plan's `untie_head`; it changes the parameter count).
    """
    config = _config_for(scores, config)
    values = _scores_of(scores, config.num_hidden_layers)
    target = check_fraction("target", target)
    try:
        variation = float(variation)
    except (TypeError, ValueError) as exc:
        raise PlanError(f"variation must be a number, got {variation!r}") from exc
    if not (math.isfinite(variation) and 0.0 <= variation <= target + 1e-12):
        raise PlanError(f"variation must be in [0, target={target}], got {variation}")
    variation = min(variation, target)
    hidden = config.hidden_size
    _check_budget(budget)
    _check_round_to(round_to, hidden)
    if not (isinstance(max_slice, (int, float)) and 0.0 < max_slice < 1.0):
        raise PlanError(f"max_slice must be in (0, 1), got {max_slice!r}")
    if budget == "mean" and target > max_slice:
        raise PlanError(f"target {target} exceeds max_slice {max_slice}: no layer may be sliced that much")
    r = redundancy(values)
    min_width = round_width((1.0 - max_slice) * hidden, hidden, round_to)
    ratio = variation / target if target > 0 else 0.0

    def build(t: float) -> SlicePlan:
        s = clamp_fractions(slicing_fractions(r, t, ratio * t), max_slice)
        return _plan(round_widths([(1.0 - si) * hidden for si in s], hidden, round_to, min_width), hidden,
                     untie_head)

    plan, used = (build(target), target) if budget == "mean" else _solve_params(build, config, target, max_slice)
    return _finish(plan, config, {"planner": "dynamic", "target": target, "variation": variation,
                                  "budget": budget, "max_slice": max_slice, "round_to": round_to,
                                  "effective_target": used, "effective_variation": ratio * used}, scores)


def removed_layers(removed: Sequence[int], config, provenance: dict[str, Any], scores=None, *,
                   attention: Sequence[int] = (), mlp: Sequence[int] = ()) -> SlicePlan:
    """The plan dropping the decoder layers `removed` whole, and the attention of layers `attention` and the MLP
    of layers `mlp` (nothing sliced), with its achieved counts."""
    config = as_config(config)
    plan = SlicePlan.removal(config.num_hidden_layers, config.hidden_size, removed, attention=attention, mlp=mlp)
    return _finish(plan, config, {"budget": "params", **provenance}, scores)


def removal(scores, target: float, *, config=None, budget: str = "params") -> SlicePlan:
    """ShortGPT's layer removal as a planner: the fewest lowest-score layers whose removal takes away at least
    `target` of the parameters (budget "params" only: removing a layer slices nothing)."""
    from dynslice.removal import layers_to_remove

    if budget != "params":
        raise PlanError("layer removal takes away parameters, not slicing: its target is a fraction of the "
                        "parameters (budget: params)")
    config = _config_for(scores, config)
    target = check_fraction("target", target)
    return removed_layers(layers_to_remove(scores, config, target=target), config,
                          {"planner": "removal", "target": target}, scores)


PLANNERS = ("constant", "dynamic", "removal")


def default_variations(target: float) -> list[float]:
    """The paper's variation sweep for a target: 0, t/4, t/2, 3t/4, t."""
    return [target * k / 4 for k in range(5)]


def make_plan(scores: LayerScores, planner: str, target: float, *, variation: float | None = None,
              budget: str = "mean", round_to: int = 8, max_slice: float = 0.9,
              untie_head: bool = False) -> SlicePlan:
    """The one planner dispatcher (CLI, pipeline, library): a plan from measured scores and the settings.

    planner: constant (SliceGPT), dynamic (the paper's mapping; `variation` required, in [0, target]) or
    removal (ShortGPT: whole layers dropped; budget "params"). The `greedy` planner measures the model itself:
    `dynslice.planners_mixed.greedy_plan`.
    untie_head: give a tied head its own matrix instead of keeping it tied (see `SlicePlan.untie_head`).
    """
    if planner not in PLANNERS:
        raise PlanError(f"unknown planner {planner!r}; use one of {', '.join(PLANNERS)}")
    if not scores.config:
        raise PlanError("the scores hold no model config; measure them with score_layers (or `dynslice score`)")
    if planner in ("constant", "removal") and variation not in (None, 0.0):
        raise PlanError("a variation applies to the dynamic planner only")
    if planner == "removal":
        return removal(scores, target, budget=budget)
    if planner == "constant":
        return constant(target, scores.config, budget=budget, round_to=round_to, untie_head=untie_head)
    if variation is None:
        raise PlanError("the dynamic planner needs a variation (0 <= variation <= target)")
    return dynamic(scores, target, variation, budget=budget, max_slice=max_slice, round_to=round_to,
                   untie_head=untie_head)
