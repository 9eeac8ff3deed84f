"""Depth-and-width plans at a parameter budget, and the planner that won the search of issue 11.

A `MixedPlan` drops whole decoder layers and single sublayers (a layer's attention or its MLP) and may slice
the layers that remain with a `SlicePlan`. Measured on SmolLM2-135M (bench/quality.py, docs/BENCHMARKS.md),
the best plan at 5-15% of parameters removed slices nothing: it drops the sublayers whose removal costs the
least held-out loss per parameter, chosen greedily by measurement (`greedy_removal`; the pipeline's `greedy`
planner is `greedy_plan`, and `dynslice.removal.prune` applies its plans). Slicing loses at these budgets
because every sliced layer carries two shortcut matrices (2 d^2 parameters: 12% of a SmolLM2 layer at
d = 464), so slicing must cut ~14% of the width before a layer gets any smaller.

Notation: L decoder layers, hidden size D, vocabulary V. A unit is (layer index in the dense model, kind),
kind "attention" (the attention module and, in sequential blocks, the norm that feeds it) or "mlp" (the MLP
and its norm). Removing both units of a layer removes the whole layer.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dynslice.architectures import spec_for, spec_for_config
from dynslice.calibration import as_calibration
from dynslice.capture import capture_layer_inputs, move_to
from dynslice.counts import (ATTENTION, KINDS, MLP, as_config, check_plan, dense_parameters, layer_parameters,
                             removed_parameters, sliced_parameters, sublayer_parameters)
from dynslice.errors import PlanError, UnsupportedArchitectureError
from dynslice.plan import SlicePlan
from dynslice.planners import check_fraction
from dynslice.sliced.modeling_dynslice import BLOCKS, skip_problem

log = logging.getLogger(__name__)

LAYER = "layer"
CANDIDATE_KINDS = (ATTENTION, MLP, LAYER)  # what greedy_removal may drop in one step
MIXED_PLAN_FORMAT = 1
CRITERIA = ("nll", "kl")

Unit = tuple[int, str]  # (dense layer index, ATTENTION | MLP)


# -- parameter counts -------------------------------------------------------------------------------------
def remaining_config(config, removed: Iterable[int]):
    """The config of the model left after dropping the decoder layers `removed` (per-layer lists filtered)."""
    config = copy.deepcopy(as_config(config))
    removed = set(removed)
    layers = config.num_hidden_layers
    keep = [i for i in range(layers) if i not in removed]
    for key in ("layer_types",):  # as dynslice.removal does: per-layer config lists shrink with the layers
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == layers:
            setattr(config, key, [values[i] for i in keep])
    config.num_hidden_layers = len(keep)
    return config


# -- the plan ---------------------------------------------------------------------------------------------
def _layer_tuple(name: str, values) -> tuple[int, ...]:
    values = tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise PlanError(f"{name} must be layer indices (integers >= 0), got {list(values)}")
    if len(set(values)) != len(values):
        raise PlanError(f"{name} lists a layer twice: {list(values)}")
    return tuple(sorted(values))


@dataclass(frozen=True)
class MixedPlan:
    """Which decoder layers and sublayers to drop, and how to slice the layers that remain.

    Indices are layers of the dense model. `slicing` (or None) has one width per REMAINING layer
    (L - len(removed) entries + the head's); it cannot be combined with single-sublayer removals (the slicing
    engine needs both sublayers of a block).
    """

    removed: tuple[int, ...] = ()  # whole layers dropped
    removed_attention: tuple[int, ...] = ()  # layers that keep only their MLP
    removed_mlp: tuple[int, ...] = ()  # layers that keep only their attention
    slicing: SlicePlan | None = None
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for name in ("removed", "removed_attention", "removed_mlp"):
            object.__setattr__(self, name, _layer_tuple(name, getattr(self, name)))
        both = set(self.removed_attention) & set(self.removed_mlp)
        if both:
            raise PlanError(f"layers {sorted(both)} lose both sublayers: list them in `removed`")
        overlap = set(self.removed) & (set(self.removed_attention) | set(self.removed_mlp))
        if overlap:
            raise PlanError(f"layers {sorted(overlap)} are removed and also listed as losing one sublayer")
        if self.slicing is not None and not isinstance(self.slicing, SlicePlan):
            raise PlanError(f"slicing must be a SlicePlan or None, got {type(self.slicing).__name__}")
        if self.slicing is not None and (self.removed_attention or self.removed_mlp):
            raise PlanError("a plan that drops single sublayers cannot also slice: the engine slices whole blocks")

    @classmethod
    def from_units(cls, units: Iterable[Unit], slicing: SlicePlan | None = None,
                   provenance: dict | None = None) -> "MixedPlan":
        """From removed units; a layer that loses both goes to `removed`."""
        by_layer: dict[int, set[str]] = {}
        for i, kind in units:
            if kind not in KINDS:
                raise PlanError(f"unit kind must be one of {', '.join(KINDS)}, got {kind!r}")
            by_layer.setdefault(int(i), set()).add(kind)
        return cls(removed=tuple(i for i, k in by_layer.items() if k == set(KINDS)),
                   removed_attention=tuple(i for i, k in by_layer.items() if k == {ATTENTION}),
                   removed_mlp=tuple(i for i, k in by_layer.items() if k == {MLP}),
                   slicing=slicing, provenance=dict(provenance or {}))

    def units(self) -> frozenset[Unit]:
        return frozenset([(i, k) for i in self.removed for k in KINDS]
                         + [(i, ATTENTION) for i in self.removed_attention] + [(i, MLP) for i in self.removed_mlp])

    def check(self, config) -> None:
        """Raise PlanError unless this plan fits `config` (and leaves at least one layer)."""
        config = as_config(config)
        layers = config.num_hidden_layers
        listed = set(self.removed) | set(self.removed_attention) | set(self.removed_mlp)
        if listed and max(listed) >= layers:
            raise PlanError(f"layer {max(listed)} does not exist: the model has {layers} decoder layers")
        if len(self.removed) >= layers:
            raise PlanError(f"the plan removes all {layers} decoder layers")
        if self.slicing is not None:
            check_plan(self.slicing, remaining_config(config, self.removed))

    def num_parameters(self, config) -> int:
        """Exact parameter count of the model this plan makes (a tied head kept tied, counted once)."""
        self.check(config)
        if self.slicing is not None:
            return sliced_parameters(self.slicing, remaining_config(config, self.removed))
        return dense_parameters(config) - removed_parameters(config, self.units())

    def to_dict(self) -> dict:
        return {"format": MIXED_PLAN_FORMAT, "kind": "mixed_plan", "removed": list(self.removed),
                "removed_attention": list(self.removed_attention), "removed_mlp": list(self.removed_mlp),
                "slicing": None if self.slicing is None else self.slicing.to_dict(), "provenance": self.provenance}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "MixedPlan":
        if not isinstance(data, dict) or data.get("kind") != "mixed_plan" or data.get("format") != MIXED_PLAN_FORMAT:
            raise PlanError(f"not a dynslice mixed plan (kind `mixed_plan`, format {MIXED_PLAN_FORMAT} expected)")
        slicing = data.get("slicing")
        return cls(removed=tuple(data.get("removed", ())), removed_attention=tuple(data.get("removed_attention", ())),
                   removed_mlp=tuple(data.get("removed_mlp", ())),
                   slicing=None if slicing is None else SlicePlan.from_dict(slicing),
                   provenance=dict(data.get("provenance") or {}))

    @classmethod
    def from_json(cls, text: str) -> "MixedPlan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"mixed plan is not valid JSON: {exc}") from exc


# -- the planner ------------------------------------------------------------------------------------------
Measure = Callable[[frozenset, frozenset], float]


class MissingLoss(PlanError):
    """`removal_plan` needs the loss without `removed | extra`, which `losses` does not hold: measure it."""

    def __init__(self, removed: frozenset, extra: frozenset):
        super().__init__(f"no measured loss without {sorted(removed | extra)}")
        self.removed, self.extra = removed, extra


def _candidate_units(layer: int, kind: str) -> frozenset[Unit]:
    return frozenset([(layer, ATTENTION), (layer, MLP)] if kind == LAYER else [(layer, kind)])


def _check_target(target) -> float:
    return check_fraction("target", target)


def _check_kinds(kinds, config) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in CANDIDATE_KINDS]
    if unknown or not kinds:
        raise PlanError(f"kinds must be some of {', '.join(CANDIDATE_KINDS)}, got {list(kinds)}")
    if spec_for_config(config).topology != "sequential" and kinds != (LAYER,):
        raise UnsupportedArchitectureError("single-sublayer removal needs sequential blocks; use kinds=('layer',)")
    return kinds


def removal_plan(losses: Mapping[frozenset, float], config, target: float, *,
                 kinds: Iterable[str] = CANDIDATE_KINDS) -> MixedPlan:
    """The greedy removal plan that measured held-out losses imply (pure: losses in, plan out).

    losses: {frozenset(units): held-out loss of the dense model without those units}, e.g. mean token NLL on
        validation windows; frozenset() is the dense model. Raises `MissingLoss(removed, extra)` when the
        search needs a loss it does not hold: `greedy_removal` measures it and asks again.
    target: fraction of the dense model's parameters to remove (`dense_parameters`), in [0, 1); the plan
        removes at least target * dense parameters.
    kinds: what one step may drop: ATTENTION, MLP (single sublayers) and LAYER (both at once, which can cost
        less than the two steps apart). kinds=(LAYER,) is greedy whole-layer removal by measured loss.

    Each step drops the candidate c with the least loss increase per useful parameter, for the removed set R
    and N parameters still needed:
        priority(c) = (loss(R | c) - loss(R)) / min(params(c), N)
    so the last step prefers a candidate no larger than what is still needed. Ties go to the lower layer,
    then ATTENTION, MLP, LAYER. Lazy evaluation (Minoux): a candidate keeps its last measured increase as its
    priority until it reaches the top; only then is it measured against the current R, and it is taken if it
    stays on top. The first step measures every candidate. Exact greedy if increases only grow as more is
    removed; provenance["decreases"] counts the re-measured increases that shrank instead.
    """
    config = as_config(config)
    target = _check_target(target)
    kinds = _check_kinds(kinds, config)
    layers = config.num_hidden_layers
    dense = dense_parameters(config)
    per_kind, per_layer = sublayer_parameters(config), layer_parameters(config)
    goal = math.ceil(target * dense - 1e-9)  # parameters to remove, as an integer

    def size(units: frozenset) -> int:  # removed_parameters with the tables read once
        by_layer: dict[int, list[str]] = {}
        for i, kind in units:
            by_layer.setdefault(i, []).append(kind)
        return sum(per_layer[i] if len(k) == 2 else per_kind[i][KINDS.index(k[0])] for i, k in by_layer.items())

    def loss_of(removed: frozenset, extra: frozenset) -> float:
        key = removed | extra
        if key not in losses:
            raise MissingLoss(removed, extra - removed)
        value = float(losses[key])
        if not math.isfinite(value):
            raise PlanError(f"the measured loss without {sorted(key)} is not finite: {value}")
        return value

    order = {k: n for n, k in enumerate(CANDIDATE_KINDS)}
    candidates = [(i, k) for i in range(layers) for k in kinds]
    stale: dict[tuple[int, str], float] = {}  # last measured loss increase of each candidate
    removed: frozenset[Unit] = frozenset()
    path: list[dict[str, Any]] = []
    decreases = 0
    while (have := size(removed)) < goal:
        need = goal - have
        current = loss_of(removed, frozenset())
        live: dict[tuple[int, str], tuple[frozenset, int]] = {}
        for c in candidates:
            units = _candidate_units(*c) - removed
            if not units or (c[1] == LAYER and len(units) == 1):  # gone, or half gone (the other half is a candidate)
                continue
            if len(removed | units) == 2 * layers:
                continue  # never remove everything
            live[c] = (units, size(removed | units) - have)
        if not live:
            raise PlanError(f"a parameter reduction of {target:.4f} is out of reach by removal")
        fresh: set[tuple[int, str]] = set()
        while True:
            best = min(live, key=lambda c: (stale.get(c, 0.0) / min(live[c][1], need), c[0], order[c[1]]))
            if best in fresh:
                break
            increase = loss_of(removed, live[best][0]) - current
            decreases += best in stale and increase < stale[best]
            stale[best] = increase
            fresh.add(best)
        units, gained = live[best]
        removed = removed | units
        path.append({"layer": best[0], "kind": best[1], "increase": stale[best],
                     "loss": loss_of(removed, frozenset()), "removed_parameters": have + gained})
    plan = MixedPlan.from_units(removed)
    after = dense - size(removed)
    return MixedPlan(plan.removed, plan.removed_attention, plan.removed_mlp, None, {
        "planner": "greedy_removal", "target": target, "kinds": list(kinds), "budget": "params",
        "path": path, "decreases": decreases, "parameters": after, "dense_parameters": dense,
        "achieved_param_reduction": 1.0 - after / dense, "loss": loss_of(removed, frozenset())})


def greedy_removal(measure: Measure, config, target: float, *, kinds: Iterable[str] = CANDIDATE_KINDS,
                   losses: dict | None = None, progress: bool = True) -> MixedPlan:
    """`removal_plan`, measuring each loss it asks for: measure(removed, extra) -> float.

    measure(removed, extra): the held-out loss of the dense model without `removed | extra` (frozensets of
        units; `removed` is the set the search has accepted, so an implementation may keep the states it
        shares, like `HeldOutLoss`). Deterministic.
    losses: a dict {frozenset(units): loss} read and filled: pass the same dict to plan several targets with
        one set of measurements (the search for 15% walks through the one for 5%).
    """
    config = as_config(config)
    _check_target(target)
    _check_kinds(kinds, config)
    losses = {} if losses is None else losses
    measured = 0
    bar = tqdm(desc="greedy removal", unit="measurement", disable=not progress)
    while True:
        try:
            plan = removal_plan(losses, config, target, kinds=kinds)
        except MissingLoss as missing:
            losses[missing.removed | missing.extra] = float(measure(missing.removed, missing.extra))
            measured += 1
            bar.update(1)
            continue
        bar.close()
        log.info("greedy removal to %.4f: %d new measurements, %s", target, measured,
                 ", ".join(f"{p['kind']} {p['layer']}" for p in plan.provenance["path"]))
        return MixedPlan(plan.removed, plan.removed_attention, plan.removed_mlp, None,
                         dict(plan.provenance, measurements=measured))


# -- measuring: held-out loss without some units ------------------------------------------------------------
class HeldOutLoss:
    """measure(removed, extra) for `greedy_removal`: mean token NLL (or KL to the dense model) on fixed windows
    of a dense model with the units `removed | extra` skipped (parallel blocks: whole layers only, as
    `greedy_removal` asks there).

    The states entering every layer are kept for `removed` (the set the search has accepted), so a candidate
    reruns only the layers from its first unit on, plus the head. Memory: L * N * T * D floats of the model's
    dtype (30 * 8 * 256 * 576 * 4 B = 141 MB for SmolLM2 on 8 windows of 256). The model is not changed.
    """

    def __init__(self, model: nn.Module, windows, *, batch_size: int = 8, criterion: str = "nll"):
        """windows: LongTensor [N, T] of token ids (e.g. `perplexity.windows_of` on a validation split), or a
        dict with `input_ids` and `attention_mask`. Computed where the model is.
        criterion: "nll" (mean token NLL of the reduced model) or "kl" (mean token KL(dense || reduced)
        over the vocabulary; 0 for the dense model)."""
        if criterion not in CRITERIA:
            raise PlanError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        self.criterion = criterion
        self._reference: list[torch.Tensor] | None = None  # per batch [B, T, D]: dense last states, for "kl"
        self.spec = spec_for(model)
        self.parallel = self.spec.topology == "parallel"  # then a layer goes whole: (i, ATTENTION) and (i, MLP)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        calib = as_calibration(windows, vocab_size=model.config.vocab_size)
        with torch.no_grad():
            sig = capture_layer_inputs(model, self.spec, calib, batch_size, self.device, self.device)
        arch = self.spec.to_dict()
        # the dense layers seen through dynslice's block (norm_attn, attend, norm_mlp, feed_forward), sharing
        # their modules: nothing is copied or changed
        self.blocks = [BLOCKS[self.spec.topology](layer, arch) for layer in model.get_submodule(self.spec.layers)]
        self.inputs, self.kwargs = sig.inputs, sig.kwargs  # per batch [B, T, D], layer keyword arguments
        self.masks = [m.to(self.device) for m in sig.masks]
        self.targets = [ids.to(self.device) for ids, _ in calib.batches(batch_size)]
        self.final_norm, self.head = model.get_submodule(self.spec.final_norm), model.get_submodule(self.spec.head)
        self._base: frozenset | None = None
        self._states: list[list[torch.Tensor]] = []  # [L][batch] input of each layer under self._base
        self._base_loss = math.nan
        if criterion == "kl":
            self._rebase(frozenset())  # the dense pass that "kl" compares with

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """[T, D] last states -> [T-1, V] logits of the predicted positions."""
        logits = self.head(self.final_norm(h))[:-1]
        # float32 at least: the log-softmax of half-precision logits loses the small probabilities
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    @torch.no_grad()
    def _run(self, start: int, drop: frozenset, first: list[torch.Tensor], keep: bool) -> float:
        hs = list(first)
        for i in range(start, len(self.blocks)):
            if keep:
                self._states[i] = list(hs)
            block = self.blocks[i]
            for b, kw in enumerate(self.kwargs):
                x = hs[b]  # [B, T, D]
                if self.parallel:  # x + attn(n(x)) + mlp(n(x)); only whole layers are candidates here
                    if (i, ATTENTION) not in drop:
                        normed = block.norm_attn(x)
                        x = x + block.attend(normed, **move_to(kw, self.device)) + block.feed_forward(normed)
                else:
                    if (i, ATTENTION) not in drop:
                        x = x + block.attend(block.norm_attn(x), **move_to(kw, self.device))
                    if (i, MLP) not in drop:
                        x = x + block.feed_forward(block.norm_mlp(x))
                hs[b] = x
        if drop == frozenset() and self.criterion == "kl" and self._reference is None:
            self._reference = [h.clone() for h in hs]  # the dense model's last states: its predictions
        total, count = 0.0, 0
        for b, (h, ids, mask) in enumerate(zip(hs, self.targets, self.masks)):
            valid = (mask[:, 1:] * mask[:, :-1]).bool()  # [B, T-1]: predicted token and its context are real
            for row in range(h.shape[0]):  # one window at a time: [T-1, V] logits, not [B, T-1, V]
                logits = self._logits(h[row])
                if self.criterion == "nll":
                    per_token = F.cross_entropy(logits, ids[row, 1:], reduction="none")  # [T-1]
                else:  # KL(dense || reduced): the label noise of the NLL averaged out over the vocabulary
                    reference = F.log_softmax(self._logits(self._reference[b][row]), dim=-1)
                    per_token = (reference.exp() * (reference - F.log_softmax(logits, dim=-1))).sum(-1)
                total += float(per_token[valid[row]].double().sum())
                count += int(valid[row].sum())
        return total / count

    def _rebase(self, removed: frozenset) -> None:
        if removed == self._base:
            return
        if self._base is None:
            start, first = 0, self.inputs
            self._states = [[] for _ in self.blocks]
        else:
            start = min((i for i, _ in removed ^ self._base), default=len(self.blocks))
            first = self._states[start] if start < len(self.blocks) else []
        self._base = removed
        if start < len(self.blocks):
            self._base_loss = self._run(start, removed, first, keep=True)

    def __call__(self, removed: frozenset, extra: frozenset = frozenset()) -> float:
        self._rebase(frozenset(removed))
        extra = frozenset(extra) - self._base
        if not extra:
            return self._base_loss
        start = min(i for i, _ in extra)
        return self._run(start, self._base | extra, self._states[start], keep=False)


def heldout_windows(tokenizer, source: str, split: str | None, seqlen: int, windows: int) -> torch.Tensor:
    """The first `windows` windows of `seqlen` tokens of a held-out text (the selection data): [N, T]."""
    from dynslice.data import load_corpus, resolve_data
    from dynslice.evaluation.perplexity import token_stream, windows_of

    text = load_corpus(resolve_data(source, split)).eval_text
    return windows_of(token_stream(tokenizer, text), seqlen, windows)


UNITS = ("sublayers", "layers")  # what the `greedy` planner may drop: sublayers and layers, or whole layers only


def sublayer_kinds(model: nn.Module) -> tuple[str, ...]:
    """What the `greedy` planner with `units: sublayers` may drop from `model`: attention, MLP or whole layers,
    except that parallel blocks (one shared norm) lose whole layers only, and models mixing attention types per
    layer keep every attention (dropping one renumbers the KV cache: `modeling_dynslice.skip_problem`)."""
    spec = spec_for(model)
    if spec.topology != "sequential":
        log.info("greedy planner: parallel blocks share one norm, so only whole layers are candidates")
        return (LAYER,)
    if skip_problem(spec.to_dict(), model.config.num_hidden_layers, (0,), (),
                    getattr(model.config, "layer_types", None)):
        log.info("greedy planner: this model mixes attention types per layer, so no attention is dropped alone")
        return (MLP, LAYER)
    return CANDIDATE_KINDS


def greedy_plan(model: nn.Module, windows, target: float, *, units: str = "sublayers", scores=None,
                progress: bool = True) -> SlicePlan:
    """The `greedy` planner: one removal at a time, each the one that raises the held-out loss least per parameter
    (`greedy_removal`), until `target` of the parameters is gone.

    units: "sublayers" lets a step drop a layer's attention, its MLP or the whole layer (the winner of issue 11's
    search); models with parallel blocks drop whole layers only. "layers": whole layers only.
    """
    from dynslice.planners import removed_layers

    if units not in UNITS:
        raise PlanError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    kinds = sublayer_kinds(model) if units == "sublayers" else (LAYER,)
    mixed = greedy_removal(HeldOutLoss(model.eval(), windows), model.config, target, kinds=kinds,
                           progress=progress)
    provenance = {"planner": "greedy", "target": float(target), "units": units, "search": mixed.provenance}
    return removed_layers(mixed.removed, model.config, provenance, scores, attention=mixed.removed_attention,
                          mlp=mixed.removed_mlp)


# -- applying a plan to a model (removal only; slicing is dynslice.slice_model's) ------------------------------
def apply_removal(model: nn.Module, plan: MixedPlan) -> nn.Module:
    """Drop the plan's layers and sublayers from `model` in place (its `slicing` is not applied); returns it.

    As `dynslice.removal.prune`: whole layers go, a removed sublayer becomes a parameter-free module that adds
    zero, the model keeps its class, its parameter count is `plan.num_parameters`, and `save_sliced` saves it.
    """
    from dynslice.removal import prune

    plan.check(model.config)
    if not plan.units():
        return model
    config = model.config
    return prune(model, SlicePlan.removal(config.num_hidden_layers, config.hidden_size, plan.removed,
                                          attention=plan.removed_attention, mlp=plan.removed_mlp))


__all__ = ["ATTENTION", "CANDIDATE_KINDS", "HeldOutLoss", "KINDS", "LAYER", "MLP", "MissingLoss", "MixedPlan",
           "UNITS", "Unit", "apply_removal", "greedy_plan", "greedy_removal", "heldout_windows", "remaining_config",
           "removal_plan", "removed_parameters", "sublayer_parameters"]
