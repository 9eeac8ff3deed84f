"""Layer removal as planners of the pipeline: `removal` (ShortGPT, by score) and `greedy` (by measured held-out
loss). The plan format, the counts, the plan and slice stages and the saved model."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from conftest import TEXT, calibration, logits_of, model_folder, tiny_model
from dynslice.config import CalibrationConfig, ModelConfig, PlanConfig, SelectionConfig
from dynslice.counts import dense_parameters, layer_parameters, sliced_parameters, unique_parameters
from dynslice.errors import ConfigError, PlanError
from dynslice.models import resolve_model
from dynslice.pipeline import calibration as calibration_stage
from dynslice.pipeline import plan as plan_stage
from dynslice.pipeline import score as score_stage
from dynslice.pipeline import slice as slice_stage
from dynslice.plan import SlicePlan
from dynslice.planners import make_plan
from dynslice.planners_mixed import CANDIDATE_KINDS, LAYER, HeldOutLoss, MixedPlan, apply_removal, greedy_removal
from dynslice.removal import layers_to_remove, remove_layers
from dynslice.scores import LayerScores
from dynslice.store import ArtifactStore


def test_a_removal_plan_round_trips_and_slices_nothing():
    plan = SlicePlan.removal(4, 16, [2, 0], provenance={"planner": "removal"})
    assert plan.removed == (0, 2) and set(plan.widths + plan.mid) == {16}
    assert SlicePlan.from_json(plan.to_json()) == plan
    assert "removed" not in SlicePlan.constant(4, 16, 0.25).to_dict()  # older plans keep their bytes
    with pytest.raises(PlanError, match="slices nothing"):
        SlicePlan.from_widths([8, 16, 16, 16, 16], removed=[1]).check(4, 16)
    with pytest.raises(PlanError, match="do not leave a layer"):
        SlicePlan.removal(2, 16, [0, 1]).check(2, 16)
    with pytest.raises(PlanError, match="distinct layer indices"):
        SlicePlan.from_widths([16] * 5, removed=[2, 2])


def test_removal_counts_equal_the_reduced_model():
    model = tiny_model("llama", dtype=torch.float32)
    plan = SlicePlan.removal(model.config.num_hidden_layers, model.config.hidden_size, [1])
    predicted = sliced_parameters(plan, model.config)
    assert predicted == dense_parameters(model.config) - layer_parameters(model.config)[1]
    reduced = remove_layers(model, [1.0, 0.0, 1.0], 1)
    assert unique_parameters(reduced) == predicted


def test_the_removal_planner_drops_the_lowest_scores_to_the_parameter_target():
    model = tiny_model("llama", dtype=torch.float32)
    scores = LayerScores(values=(0.5, 0.1, 0.9), metric="cosine", num_tokens=1, config=model.config.to_dict())
    plan = make_plan(scores, "removal", 0.1, budget="params")
    assert plan.removed == layers_to_remove(scores, model.config, target=0.1) == (1,)
    assert plan.provenance["achieved_param_reduction"] >= 0.1
    assert plan.provenance["achieved_mean_slicing"] == 0.0
    with pytest.raises(PlanError, match="budget: params"):
        make_plan(scores, "removal", 0.1, budget="mean")


@pytest.mark.parametrize("planner", ["removal", "greedy"])
def test_removal_planners_need_a_parameter_budget(planner):
    with pytest.raises(ValidationError, match="budget: params"):
        PlanConfig(planner=planner, target=0.1)
    with pytest.raises(ValidationError, match="variation applies to the dynamic planner"):
        PlanConfig(planner=planner, target=0.1, budget="params", variation=0.05)


def _stages(tmp_path):
    torch.manual_seed(0)
    folder, dense = model_folder(tmp_path)
    (tmp_path / "heldout.txt").write_text(TEXT[::-1])
    store = ArtifactStore(tmp_path / "store")
    model = ModelConfig(source=str(folder))
    cal = calibration_stage.run(store, model, CalibrationConfig(source=str(tmp_path / "calib.txt"), nsamples=4,
                                                                seqlen=32))
    scored = score_stage.run(store, model, cal, batch_size=2, device="cpu")
    selection = SelectionConfig(source=str(tmp_path / "heldout.txt"), split=None, seqlen=32, windows=3)
    return store, model, cal, scored, selection, dense


@pytest.mark.parametrize("units", ["layers", "sublayers"])
def test_greedy_plan_and_the_removed_model_through_the_stages(tmp_path, monkeypatch, units):
    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))
    store, model, cal, scored, selection, dense = _stages(tmp_path)
    config = PlanConfig(planner="greedy", target=0.1, budget="params", units=units)
    with pytest.raises(ConfigError, match="held-out"):
        plan_stage.run(store, scored, config)
    ref = plan_stage.run(store, scored, config, model=model, selection=selection, device="cpu")
    plan = plan_stage.plan_of(store, ref)
    # the same search by hand: the held-out windows of the selection text
    from dynslice.evaluation.perplexity import token_stream, windows_of

    tok = resolve_model(model.source).tokenizer
    windows = windows_of(token_stream(tok, TEXT[::-1]), 32, 3)
    expected = greedy_removal(HeldOutLoss(dense.eval(), windows), dense.config, 0.1,
                              kinds=(LAYER,) if units == "layers" else CANDIDATE_KINDS, progress=False)
    removals = (plan.removed, plan.removed_attention, plan.removed_mlp)
    assert removals == (expected.removed, expected.removed_attention, expected.removed_mlp)
    assert plan.removes and (units == "sublayers" or not plan.removed_attention + plan.removed_mlp)
    assert ref.result["removed"] == list(plan.removed) and ref.result["achieved_param_reduction"] >= 0.1
    assert (tuple(ref.result["removed_attention"]), tuple(ref.result["removed_mlp"])) == removals[1:]
    # cached: a second run is a hit; another held-out text, or other units, is another plan key
    assert plan_stage.run(store, scored, config, model=model, selection=selection, device="cpu").cached
    (tmp_path / "other.txt").write_text(TEXT)
    other = SelectionConfig(source=str(tmp_path / "other.txt"), split=None, seqlen=32, windows=3)
    assert plan_stage.run(store, scored, config, model=model, selection=other, device="cpu").key != ref.key
    flipped = config.model_copy(update={"units": "layers" if units == "sublayers" else "sublayers"})
    assert plan_stage.run(store, scored, flipped, model=model, selection=selection, device="cpu").key != ref.key

    sliced = slice_stage.run(store, model, cal, ref, batch_size=2, device="cpu")
    assert sliced.result["removed"] == list(plan.removed)
    folder = slice_stage.model_dir(store, sliced)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["num_hidden_layers"] == dense.config.num_hidden_layers - len(plan.removed)
    # whole layers only: a plain transformers folder; sublayers: the dynslice format records them
    assert ("dynslice" in saved) == bool(plan.removed_attention or plan.removed_mlp)
    reloaded = resolve_model(str(folder), attn_implementation="eager").model
    assert unique_parameters(reloaded) == sliced.result["parameters"] == sliced_parameters(plan, dense.config)
    by_hand = apply_removal(resolve_model(model.source, attn_implementation="eager").model,
                            MixedPlan(plan.removed, plan.removed_attention, plan.removed_mlp))
    cal_batch = calibration(n=2, t=12)
    assert torch.equal(logits_of(reloaded, cal_batch), logits_of(by_hand, cal_batch))


def test_removal_planner_in_the_plan_stage_uses_the_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))
    store, model, cal, scored, _, dense = _stages(tmp_path)
    ref = plan_stage.run(store, scored, PlanConfig(planner="removal", target=0.1, budget="params"))
    scores = score_stage.scores(store, scored, "cosine")
    assert tuple(ref.result["removed"]) == layers_to_remove(scores, dense.config, target=0.1)


def test_the_plan_command_runs_the_removal_and_greedy_planners(tmp_path, monkeypatch, capsys):
    from dynslice.cli import main

    monkeypatch.setenv("DYNSLICE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model_folder(tmp_path)
    (tmp_path / "heldout.txt").write_text(TEXT[::-1])
    assert main(["score", "--model", "dense", "--calib", "calib.txt", "--nsamples", "4", "--seqlen", "32",
                 "--out", "scores.json"]) == 0
    common = ["plan", "--scores", "scores.json", "--target", "0.1", "--budget", "params"]
    assert main(common + ["--planner", "removal", "--out", "removal.json"]) == 0
    assert main(common + ["--planner", "greedy", "--out", "greedy.json"]) == 2
    assert "give --model" in capsys.readouterr().err
    assert main(common + ["--planner", "greedy", "--model", "dense", "--heldout", "heldout.txt",
                          "--heldout-split", "null", "--heldout-seqlen", "32", "--heldout-windows", "3",
                          "--out", "greedy.json"]) == 0
    assert "layers removed" in capsys.readouterr().out
    for name in ("removal.json", "greedy.json"):
        plan = SlicePlan.from_json((tmp_path / name).read_text())
        assert plan.removes and plan.provenance["achieved_param_reduction"] >= 0.1
    assert main(["plan", "--scores", "scores.json", "--planner", "removal", "--target", "0.1", "--out", "x.json"]) == 2
    assert "budget: params" in capsys.readouterr().err
    # the removal plan through `dynslice slice --plan`: a standard model with the layers gone
    assert main(["slice", "--model", "dense", "--calib", "calib.txt", "--nsamples", "2", "--seqlen", "16",
                 "--plan", "removal.json", "--out", "removed"]) == 0
    removed = SlicePlan.from_json((tmp_path / "removal.json").read_text()).removed
    reloaded = resolve_model(str(tmp_path / "removed")).model
    assert reloaded.config.num_hidden_layers == 3 - len(removed)
    dense = resolve_model(str(tmp_path / "dense")).model
    assert unique_parameters(reloaded) == sliced_parameters(SlicePlan.from_json((tmp_path / "removal.json")
                                                                                .read_text()), dense.config)
    # the greedy plan (a sublayer here) the same way: the dynslice format, as small as the plan says
    greedy = SlicePlan.from_json((tmp_path / "greedy.json").read_text())
    assert main(["slice", "--model", "dense", "--calib", "calib.txt", "--nsamples", "2", "--seqlen", "16",
                 "--plan", "greedy.json", "--out", "pruned"]) == 0
    pruned = resolve_model(str(tmp_path / "pruned")).model
    assert unique_parameters(pruned) == sliced_parameters(greedy, dense.config) < unique_parameters(dense)


def test_slice_model_refuses_a_plan_that_removes_layers():
    from dynslice.compress import slice_model

    model = tiny_model("llama", dtype=torch.float32)
    plan = SlicePlan.removal(model.config.num_hidden_layers, model.config.hidden_size, [1])
    with pytest.raises(PlanError, match=r"removal.prune\(model, plan\)"):
        slice_model(model, calibration(), plan)
