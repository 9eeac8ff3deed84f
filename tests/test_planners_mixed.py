"""Depth-and-width plans: exact parameter counts, removal that matches its measurement, and a greedy planner
that meets its budget and follows the measured losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import CONFIGS, calibration, param_count, tiny_model
from dynslice.counts import dense_parameters, layer_parameters, sliced_parameters
from dynslice.errors import PlanError, UnsupportedArchitectureError
from dynslice.plan import SlicePlan
from dynslice.planners_mixed import (ATTENTION, LAYER, MLP, HeldOutLoss, MissingLoss, MixedPlan, apply_removal,
                                     greedy_removal, remaining_config, removal_plan, removed_parameters,
                                     sublayer_parameters)

SEQUENTIAL = ["llama", "mistral", "opt", "qwen2", "qwen3"]


def _loss(model, windows) -> float:
    """Mean token NLL of a model over windows [N, T] (the reference for HeldOutLoss)."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    return float(F.cross_entropy(logits.flatten(0, 1).double(), windows[:, 1:].flatten()))


# -- counts -----------------------------------------------------------------------------------------------
def test_sublayer_parameters_add_up_to_the_layer(family):
    config = CONFIGS[family]()
    per_kind, per_layer = sublayer_parameters(config), layer_parameters(config)
    for (attention, mlp), layer in zip(per_kind, per_layer):
        if family == "phi":  # the shared input norm (weight + bias of D) goes only with the whole layer
            assert attention + mlp + 2 * config.hidden_size == layer
        else:
            assert attention + mlp == layer
    # tiny llama: q, o 32x32, k, v 32x16 (GQA, 2 of 4 heads), + input norm 32; gate, up, down 32x64 + norm 32
    if family == "llama":
        assert per_kind[0] == (2 * 32 * 32 + 2 * 32 * 16 + 32, 3 * 32 * 64 + 32)


@pytest.mark.parametrize("family", SEQUENTIAL)
def test_plan_count_equals_the_reduced_model(family):
    model = tiny_model(family)
    mlp = (2,) if model.config.num_hidden_layers > 2 else ()
    plan = MixedPlan(removed=(1,), removed_attention=(0,), removed_mlp=mlp)
    predicted = plan.num_parameters(model.config)
    assert predicted == dense_parameters(model.config) - removed_parameters(model.config, plan.units())
    reduced = apply_removal(model, plan)
    assert param_count(reduced) == predicted
    assert reduced.config.num_hidden_layers == CONFIGS[family]().num_hidden_layers - 1
    with torch.no_grad():
        assert torch.isfinite(reduced(**calibration()).logits).all()


def test_mixed_plan_with_slicing_counts_the_remaining_layers():
    config = CONFIGS["llama"]()
    slicing = SlicePlan.from_widths([24, 24, config.hidden_size])  # 3 layers - 1 removed = 2 widths + head
    plan = MixedPlan(removed=(1,), slicing=slicing)
    assert plan.num_parameters(config) == sliced_parameters(slicing, remaining_config(config, (1,)))
    with pytest.raises(PlanError, match="layers"):
        MixedPlan(removed=(), slicing=slicing).num_parameters(config)


def test_mixed_plan_checks_and_round_trips():
    plan = MixedPlan.from_units([(2, ATTENTION), (2, MLP), (0, ATTENTION)], provenance={"planner": "x"})
    assert (plan.removed, plan.removed_attention, plan.removed_mlp) == ((2,), (0,), ())
    assert MixedPlan.from_json(plan.to_json()) == plan
    assert MixedPlan.from_json(plan.to_json()).provenance == {"planner": "x"}
    sliced = MixedPlan(removed=(0,), slicing=SlicePlan.from_widths([8, 32]))
    assert MixedPlan.from_dict(sliced.to_dict()) == sliced
    with pytest.raises(PlanError, match="both sublayers"):
        MixedPlan(removed_attention=(1,), removed_mlp=(1,))
    with pytest.raises(PlanError, match="also listed"):
        MixedPlan(removed=(1,), removed_mlp=(1,))
    with pytest.raises(PlanError, match="cannot also slice"):
        MixedPlan(removed_mlp=(1,), slicing=SlicePlan.from_widths([8, 32]))
    with pytest.raises(PlanError, match="does not exist"):
        MixedPlan(removed=(5,)).check(CONFIGS["llama"]())
    with pytest.raises(PlanError, match="not a dynslice mixed plan"):
        MixedPlan.from_dict({"widths": [1]})


# -- measurement ------------------------------------------------------------------------------------------
def test_held_out_loss_equals_the_reduced_model():
    model = tiny_model("llama")
    windows = calibration(n=4, t=12)["input_ids"]
    measure = HeldOutLoss(model, windows, batch_size=3)  # 3 does not divide 4: a ragged last batch
    dense = _loss(model, windows)
    assert measure(frozenset()) == pytest.approx(dense, rel=1e-10)
    cases = [(frozenset(), frozenset({(1, ATTENTION)})),
             (frozenset({(0, MLP)}), frozenset({(2, ATTENTION), (2, MLP)})),
             (frozenset({(0, MLP), (2, ATTENTION)}), frozenset({(1, MLP)})),
             (frozenset({(1, ATTENTION)}), frozenset())]  # the base moves back: states are recomputed
    for removed, extra in cases:
        got = measure(removed, extra)
        reduced = apply_removal(tiny_model("llama"), MixedPlan.from_units(removed | extra))
        assert got == pytest.approx(_loss(reduced, windows), rel=1e-10)
        # a fresh instance (no kept states) agrees: the prefix reuse is exact
        assert HeldOutLoss(model, windows)(removed, extra) == pytest.approx(got, rel=1e-12)
    assert _loss(model, windows) == pytest.approx(dense, rel=1e-12)  # the model was not changed


def test_held_out_kl_compares_with_the_dense_model():
    model = tiny_model("llama")
    windows = calibration(n=3, t=10)["input_ids"]
    measure = HeldOutLoss(model, windows, batch_size=2, criterion="kl")
    assert measure(frozenset()) == 0.0
    units = frozenset({(1, MLP)})
    with torch.no_grad():
        dense = F.log_softmax(model(input_ids=windows).logits[:, :-1].double(), -1)
        reduced = F.log_softmax(apply_removal(tiny_model("llama"), MixedPlan.from_units(units))(
            input_ids=windows).logits[:, :-1].double(), -1)
    expected = float((dense.exp() * (dense - reduced)).sum(-1).mean())
    assert measure(frozenset(), units) == pytest.approx(expected, rel=1e-10)
    assert measure(units) == pytest.approx(expected, rel=1e-10)  # the same through the kept states
    with pytest.raises(PlanError, match="criterion"):
        HeldOutLoss(model, windows, criterion="mse")


# -- the planner ------------------------------------------------------------------------------------------
def _additive(costs):
    """A measure whose loss is the sum of per-unit costs (a stand-in for a model), counting its calls."""
    calls = []

    def measure(removed, extra):
        calls.append((removed, extra))
        return 1.0 + sum(costs[u] for u in removed | extra)

    return measure, calls


def _costs(layers, cheap_attention=(), cheap_mlp=()):
    costs = {}
    for i in range(layers):
        costs[(i, ATTENTION)] = 0.01 if i in cheap_attention else 1.0 + i
        costs[(i, MLP)] = 0.02 if i in cheap_mlp else 2.0 + i
    return costs


def test_greedy_meets_the_budget_with_the_cheapest_units():
    config = CONFIGS["llama"]()  # 3 layers: attention 3104, mlp 6176, layer 9280; dense 30944
    dense = dense_parameters(config)
    attention, mlp = sublayer_parameters(config)[0]
    measure, calls = _additive(_costs(3, cheap_attention=(2,), cheap_mlp=(0,)))
    target = (attention + 1) / dense  # one attention unit is not enough
    plan = greedy_removal(measure, config, target, progress=False)
    # cheapest per parameter: attention 2 (0.01 / 3104), then mlp 0 (0.02 / min(6176, need=1))
    assert plan.units() == {(2, ATTENTION), (0, MLP)}
    assert plan.num_parameters(config) == dense - attention - mlp
    assert dense - plan.num_parameters(config) >= target * dense
    assert plan.provenance["achieved_param_reduction"] >= target
    assert [(p["layer"], p["kind"]) for p in plan.provenance["path"]] == [(2, ATTENTION), (0, MLP)]


def test_greedy_last_step_prefers_a_unit_no_larger_than_needed():
    config = CONFIGS["llama"]()
    dense = dense_parameters(config)
    attention, mlp = sublayer_parameters(config)[0]
    costs = _costs(3)
    costs[(1, MLP)] = 0.10  # 0.10 / 6176 per parameter: the best ratio when much is needed
    costs[(0, ATTENTION)] = 0.09  # 0.09 / 3104: worse ratio, but smaller
    measure, _ = _additive(costs)
    # much needed: the MLP's ratio wins
    big = greedy_removal(measure, config, (mlp - 1) / dense, progress=False)
    assert big.units() == {(1, MLP)}
    # a few parameters needed: per *useful* parameter, 0.09 / min(3104, need) beats 0.10 / min(6176, need)
    small = greedy_removal(measure, config, 100 / dense, progress=False)
    assert small.units() == {(0, ATTENTION)}


def test_greedy_whole_layers_follow_the_measured_losses():
    config = CONFIGS["llama"]()
    dense, per_layer = dense_parameters(config), layer_parameters(config)
    costs = _costs(3)
    costs[(1, ATTENTION)], costs[(1, MLP)] = 0.1, 0.1  # layer 1 is the cheapest to drop whole
    measure, _ = _additive(costs)
    plan = greedy_removal(measure, config, per_layer[1] / dense, kinds=(LAYER,), progress=False)
    assert plan.removed == (1,) and not plan.removed_attention and not plan.removed_mlp
    assert plan.num_parameters(config) == dense - per_layer[1]


def test_greedy_is_lazy_and_shares_measurements_across_targets():
    config = CONFIGS["llama"]()
    dense = dense_parameters(config)
    measure, calls = _additive(_costs(3, cheap_attention=(0, 1, 2)))
    losses = {}
    small = greedy_removal(measure, config, 0.05, losses=losses, progress=False)
    first = len(calls)
    large = greedy_removal(measure, config, 0.25, losses=losses, progress=False)
    # the 25% search walks through the 5% one: its first steps are read from `losses`
    assert small.units() <= large.units()
    assert len(calls) - first < first
    # lazy: after the first step (every candidate, 3 layers x 3 kinds, + the empty set) an additive measure
    # confirms the top candidate at once, so each later step costs a few measurements, not all candidates
    steps = len(large.provenance["path"])
    assert len(losses) < 1 + 9 + 3 * (steps - 1)
    assert dense - large.num_parameters(config) >= 0.25 * dense


def test_greedy_on_a_tiny_model_plans_what_the_measure_saw():
    model = tiny_model("llama")
    windows = calibration(n=4, t=12)["input_ids"]
    measure = HeldOutLoss(model, windows)
    plan = greedy_removal(measure, model.config, 0.2, progress=False)
    assert 1.0 - plan.num_parameters(model.config) / dense_parameters(model.config) >= 0.2
    reduced = apply_removal(tiny_model("llama"), plan)
    assert _loss(reduced, windows) == pytest.approx(plan.provenance["loss"], rel=1e-10)
    assert param_count(reduced) == plan.num_parameters(model.config)


def test_removal_plan_is_a_pure_function_of_the_losses():
    config = CONFIGS["llama"]()
    costs = _costs(3, cheap_attention=(1,))
    measure, _ = _additive(costs)
    losses = {}
    with pytest.raises(MissingLoss) as missing:
        removal_plan(losses, config, 0.05)
    assert (missing.value.removed, missing.value.extra) == (frozenset(), frozenset())  # the dense loss first
    planned = greedy_removal(measure, config, 0.05, losses=losses, progress=False)
    frozen = dict(losses)
    again = removal_plan(frozen, config, 0.05)  # everything it needs is there: no measurement, same plan
    assert again == planned and frozen == losses
    assert again.units() == {(1, ATTENTION)}
    assert again.provenance["path"][0]["increase"] == pytest.approx(0.01)
    # the first step needs every candidate: drop one and the planner asks for exactly that one
    del frozen[frozenset({(2, MLP)})]
    with pytest.raises(MissingLoss) as missing:
        removal_plan(frozen, config, 0.05)
    assert (missing.value.removed, missing.value.extra) == (frozenset(), frozenset({(2, MLP)}))


def test_greedy_refuses_bad_input():
    config = CONFIGS["llama"]()
    measure, _ = _additive(_costs(3))
    with pytest.raises(PlanError, match="target"):
        greedy_removal(measure, config, 1.0)
    with pytest.raises(PlanError, match="kinds"):
        greedy_removal(measure, config, 0.1, kinds=("heads",))
    with pytest.raises(UnsupportedArchitectureError):
        greedy_removal(measure, CONFIGS["phi"](), 0.1)
    with pytest.raises(PlanError, match="not finite"):
        greedy_removal(lambda removed, extra: math.nan, config, 0.1, progress=False)


def test_held_out_loss_and_the_greedy_planner_on_parallel_blocks():
    """Phi: a layer's attention and MLP read one norm, so whole layers are the only candidates, and the measured
    loss equals the loss of the model without them."""
    from dynslice.planners_mixed import greedy_plan

    model = tiny_model("phi")
    windows = calibration(n=3, t=12)["input_ids"]
    measure = HeldOutLoss(model, windows, batch_size=2)
    assert measure(frozenset()) == pytest.approx(_loss(model, windows), rel=1e-10)
    layer = frozenset({(1, ATTENTION), (1, MLP)})
    reduced = apply_removal(tiny_model("phi"), MixedPlan(removed=(1,)))
    assert measure(frozenset(), layer) == pytest.approx(_loss(reduced, windows), rel=1e-10)
    for units in ("sublayers", "layers"):  # sublayers falls back to whole layers
        plan = greedy_plan(model, windows, 0.2, units=units, progress=False)
        assert plan.removed and not plan.removed_attention + plan.removed_mlp
        assert plan.provenance["search"]["kinds"] == [LAYER]


def test_the_greedy_planner_keeps_every_attention_of_a_model_mixing_attention_types():
    """Dropping one attention renumbers the KV cache, which needs one attention type: no such candidate there."""
    import transformers

    from dynslice.planners_mixed import greedy_plan, sublayer_kinds
    from dynslice.removal import prune

    config = CONFIGS["qwen2"]()
    config.num_hidden_layers, config.sliding_window = 4, 8
    config.layer_types = ["sliding_attention", "full_attention"] * 2
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    assert sublayer_kinds(model) == (MLP, LAYER) and sublayer_kinds(tiny_model("llama")) == (ATTENTION, MLP, LAYER)
    plan = greedy_plan(model, calibration(n=3, t=12)["input_ids"], 0.3, progress=False)
    assert not plan.removed_attention and plan.removes
    prune(model, plan)  # and the plan applies
