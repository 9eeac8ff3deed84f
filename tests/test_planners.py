"""Planners: the paper's mapping, clamping, rounding, parameter budgets, the sweep and the selection."""

import copy
import math

import pytest
import transformers

import dynslice
from conftest import calibration, param_count, tiny_model
from dynslice import planners
from dynslice.counts import check_plan, dense_parameters, sliced_parameters
from dynslice.errors import PlanError, ScoreError
from dynslice.plan import SlicePlan

# 12 layers of width 256: fine enough for rounding to matter, built on the meta device only (no weights)
CONFIG = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=12,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
D, L = CONFIG.hidden_size, CONFIG.num_hidden_layers
# an arbitrary score profile shaped like real ones: important first and last layers, a redundant middle
SCORES = (0.9, 0.30, 0.21, 0.18, 0.12, 0.10, 0.08, 0.11, 0.09, 0.14, 0.25, 0.6)


def _params_step(config, round_to):
    """Largest change of the removed fraction when every width moves by one rounding step (constant plans)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    allowed = sorted(set(range(round_to, hidden, round_to)) | {hidden})
    counts = [sliced_parameters(SlicePlan((w,) * layers + (hidden,), (w,) * layers), config) for w in allowed]
    return max(a - b for a, b in zip(counts[1:], counts)) / dense_parameters(config)


def test_fractions_have_mean_t():
    r = dynslice.scores.redundancy(SCORES)
    for t, a in [(0.25, 0.0), (0.25, 0.1), (0.25, 0.25), (0.4, 0.3)]:
        s = planners.slicing_fractions(r, t, a)
        assert sum(s) / len(s) == pytest.approx(t, abs=1e-12)
        assert min(s) == pytest.approx(t - a)  # the most important layer (r = 0) gets t - a


@pytest.mark.parametrize("t", [0.1, 0.25, 0.3, 0.43])
def test_dynamic_with_no_variation_is_constant(t):
    plan = planners.dynamic(SCORES, t, 0.0, config=CONFIG)
    assert plan == planners.constant(t, CONFIG)
    assert plan == SlicePlan.constant(L, D, t)


@pytest.mark.parametrize("round_to", [1, 8, 32])
@pytest.mark.parametrize("t, a", [(0.1, 0.05), (0.25, 0.1), (0.25, 0.25), (0.37, 0.2), (0.6, 0.6)])
def test_mean_slicing_within_one_rounding_step(t, a, round_to):
    plan = planners.dynamic(SCORES, t, a, config=CONFIG, round_to=round_to)
    assert abs(plan.mean_slicing(D) - t) <= round_to / D
    assert all(w % round_to == 0 or w == D for w in plan.widths)
    assert plan.widths[-1] == D and plan.mid == plan.widths[:-1]
    check_plan(plan, CONFIG)


def test_important_layers_keep_more_width():
    plan = planners.dynamic(SCORES, 0.25, 0.25, config=CONFIG)
    assert plan.widths[0] == D  # the highest score: r = 0, s = t - a = 0
    assert plan.widths[6] == min(plan.widths)  # the lowest score: the most redundant layer
    assert plan.widths[11] > plan.widths[5]


@pytest.mark.parametrize("max_slice", [0.5, 0.9, 0.99])
def test_clamping_keeps_widths_in_range(max_slice):
    # one very redundant layer among equally important ones: s = t - a + a * L = 3.0 before clamping
    scores = [1.0] * L
    scores[4] = 0.0
    plan = planners.dynamic(scores, 0.25, 0.25, config=CONFIG, max_slice=max_slice, round_to=8)
    assert all(8 <= w <= D for w in plan.widths + plan.mid)
    assert min(plan.widths) == max(8, round((1 - max_slice) * D / 8) * 8)
    assert abs(plan.mean_slicing(D) - 0.25) <= 8 / D


def test_clamp_fractions_keeps_the_mean():
    s = planners.clamp_fractions([1.5, 0.0, 0.1, 0.2], 0.9)
    assert sum(s) / 4 == pytest.approx(1.8 / 4)
    assert max(s) == pytest.approx(0.9) and min(s) >= 0.0
    assert s[1] < s[2] < s[3]  # the excess is spread by one common shift: the order stays


def test_round_widths_keeps_the_sum():
    widths = [100.4, 101.2, 99.9, 150.0, 30.7]
    rounded = planners.round_widths(widths, 256, 8, 8)
    assert all(w % 8 == 0 for w in rounded)
    assert abs(sum(rounded) - sum(widths)) <= 4  # half a step: as close as multiples of 8 allow
    assert planners.round_widths([100.0] * 3, 256, 8, 8) == (96, 96, 96)  # uniform stays uniform


@pytest.mark.parametrize("a", [0.0, 0.1, 0.2])
def test_params_budget_on_meta_config(a):
    step = _params_step(CONFIG, 8)
    plan = planners.dynamic(SCORES, 0.2, a, config=CONFIG, budget="params")
    removed = 1 - sliced_parameters(plan, CONFIG) / dense_parameters(CONFIG)
    assert 0.2 <= removed <= 0.2 + step
    assert plan.provenance["achieved_param_reduction"] == pytest.approx(removed)
    # the same shape as the mean plan, scaled: the most important layer keeps the most width
    assert plan.widths[0] == max(plan.widths[:-1])


def test_params_budget_met_by_the_sliced_model(family):
    model = tiny_model(family)
    calib = calibration()
    scores = dynslice.score_layers(model, calib, progress=False)
    dense = param_count(model)
    assert dense == dense_parameters(model.config)
    step = _params_step(model.config, 2)
    for plan in (planners.dynamic(scores, 0.2, 0.1, budget="params", round_to=2),
                 planners.constant(0.2, model.config, budget="params", round_to=2)):
        sliced = dynslice.slice_model(copy.deepcopy(model), calib, plan, progress=False)
        removed = 1 - param_count(sliced) / dense
        assert 0.2 <= removed <= 0.2 + step, (plan.widths, removed, step)
        assert plan.provenance["achieved_param_reduction"] == pytest.approx(removed)


def test_mean_budget_removes_fewer_parameters_than_params_budget():
    mean = planners.dynamic(SCORES, 0.25, 0.25, config=CONFIG, budget="mean")
    params = planners.dynamic(SCORES, 0.25, 0.25, config=CONFIG, budget="params")
    # shortcuts and the untied head cost parameters: a mean of t removes less than t of them
    assert mean.provenance["achieved_param_reduction"] < 0.25 <= params.provenance["achieved_param_reduction"]
    assert params.provenance["effective_target"] > 0.25


def test_provenance_and_json_round_trip():
    model = tiny_model("llama")
    scores = dynslice.score_layers(model, calibration(), model_id="tiny", data_id="ids", progress=False)
    plan = planners.dynamic(scores, 0.25, 0.1, budget="params", round_to=4)
    p = plan.provenance
    for key in ("planner", "metric", "target", "variation", "budget", "achieved_mean_slicing",
                "achieved_param_reduction", "model", "data", "round_to", "max_slice"):
        assert key in p, key
    assert (p["planner"], p["metric"], p["target"], p["variation"], p["budget"]) == (
        "dynamic", "cosine", 0.25, 0.1, "params")
    assert p["model"]["id"] == "tiny" and p["data"]["id"] == "ids"
    assert p["achieved_mean_slicing"] == pytest.approx(plan.mean_slicing(32))
    again = SlicePlan.from_json(plan.to_json())
    assert again == plan and again.provenance == plan.provenance


def test_make_plan_dispatches_and_checks():
    assert planners.default_variations(0.25) == [0.0, 0.0625, 0.125, 0.1875, 0.25]
    scores = dynslice.LayerScores(SCORES, "cosine", 10, config=CONFIG.to_dict())
    assert planners.make_plan(scores, "constant", 0.25) == planners.constant(0.25, CONFIG)
    assert planners.make_plan(scores, "dynamic", 0.25, variation=0.1) == planners.dynamic(SCORES, 0.25, 0.1,
                                                                                          config=CONFIG)
    with pytest.raises(PlanError, match="needs a variation"):
        planners.make_plan(scores, "dynamic", 0.25)
    with pytest.raises(PlanError, match="dynamic planner only"):
        planners.make_plan(scores, "constant", 0.25, variation=0.1)
    with pytest.raises(PlanError, match="unknown planner"):
        planners.make_plan(scores, "greedy", 0.25)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"target": 1.0}, PlanError, r"target must be in \[0, 1\)"),
    ({"target": -0.1}, PlanError, r"target must be in \[0, 1\)"),
    ({"target": math.nan}, PlanError, r"target must be in \[0, 1\)"),
    ({"variation": -0.01}, PlanError, "variation must be in"),
    ({"variation": 0.3}, PlanError, "variation must be in"),
    ({"scores": SCORES[:-1]}, ScoreError, "11 scores for a model with 12"),
    ({"scores": SCORES[:-1] + (math.nan,)}, ScoreError, "not finite"),
    ({"budget": "flops"}, PlanError, "budget must be one of"),
    ({"round_to": 0}, PlanError, "round_to must be"),
    ({"max_slice": 1.0}, PlanError, "max_slice must be"),
    ({"target": 0.5, "variation": 0.0, "max_slice": 0.4}, PlanError, "exceeds max_slice"),
    ({"target": 0.95, "variation": 0.0, "budget": "params"}, PlanError, "out of reach"),
])
def test_bad_input_raises(kwargs, error, message):
    args = {"scores": SCORES, "target": 0.25, "variation": 0.1} | kwargs
    with pytest.raises(error, match=message):
        planners.dynamic(args.pop("scores"), args.pop("target"), args.pop("variation"), config=CONFIG, **args)


def test_bad_constant_input_raises():
    with pytest.raises(PlanError, match=r"sparsity must be in \[0, 1\)"):
        planners.constant(1.2, CONFIG)
    with pytest.raises(PlanError, match="config"):
        planners.dynamic(SCORES, 0.25, 0.1)  # plain scores carry no model config
    with pytest.raises(PlanError, match="a transformers config"):
        planners.constant(0.2, "llama")
