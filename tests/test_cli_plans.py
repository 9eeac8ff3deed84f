"""`dynslice score`, `dynslice plan` and `dynslice slice --plan` end to end on a tiny local model folder."""

import json


import dynslice
from dynslice.counts import sliced_parameters
from conftest import model_folder, param_count, tiny_model
from dynslice.cli import main




def test_score_plan_slice(tmp_path, capsys):
    folder, dense = model_folder(tmp_path)
    calib = str(tmp_path / "calib.txt")
    scores_json, plot = tmp_path / "scores.json", tmp_path / "scores.png"
    assert main(["score", "--model", str(folder), "--calib", calib, "--out", str(scores_json),
                 "--nsamples", "4", "--seqlen", "32", "--plot", str(plot)]) == 0
    scores = dynslice.LayerScores.from_json(scores_json.read_text())
    assert scores.num_layers == 3 and scores.num_tokens == 4 * 32 and scores.metric == "cosine"
    from dynslice.identity import local_digest as folder_sha256
    assert scores.provenance["model"]["id"] == f"sha256:{folder_sha256(folder)}"  # content identity, not a path
    assert calib in scores.provenance["data"]["id"]
    assert plot.read_bytes().startswith(b"\x89PNG")

    for budget in ("mean", "params"):
        plan_json = tmp_path / f"plan-{budget}.json"
        assert main(["plan", "--scores", str(scores_json), "--target", "0.25", "--variation", "0.1",
                     "--budget", budget, "--round-to", "4", "--out", str(plan_json),
                     "--plot", str(tmp_path / "plan.png")]) == 0
        plan = dynslice.SlicePlan.from_json(plan_json.read_text())
        expected = dynslice.planners.dynamic(scores, 0.25, 0.1, budget=budget, round_to=4)
        assert plan == expected
        assert plan.provenance["budget"] == budget
        assert plan.provenance["model"]["id"] == scores.provenance["model"]["id"]
        assert f"mean slicing {plan.provenance['achieved_mean_slicing']:.4f}" in capsys.readouterr().out

    out = tmp_path / "sliced"
    assert main(["slice", "--model", str(folder), "--calib", calib, "--plan", str(plan_json), "--out", str(out),
                 "--nsamples", "4", "--seqlen", "32"]) == 0
    model = dynslice.load_sliced(out)
    assert model.config.dynslice["widths"] == list(plan.widths)
    assert param_count(model) == sliced_parameters(plan, dense.config)
    assert 1 - param_count(model) / param_count(dense) >= 0.25  # the params budget is met


def test_constant_planner_and_bad_input(tmp_path, capsys):
    scores_json = tmp_path / "scores.json"
    config = json.loads(tiny_model("llama").config.to_json_string(use_diff=False))
    scores_json.write_text(dynslice.LayerScores((0.3, 0.1, 0.2), "cosine", 10, config=config).to_json())
    out = tmp_path / "plan.json"
    assert main(["plan", "--scores", str(scores_json), "--target", "0.25", "--planner", "constant",
                 "--round-to", "4", "--out", str(out)]) == 0
    assert dynslice.SlicePlan.from_json(out.read_text()) == dynslice.SlicePlan.constant(3, 32, 0.25, round_to=4)
    capsys.readouterr()
    for args, message in [(["--target", "1.5", "--variation", "0.1"], "--target: Input should be less than 1"),
                          (["--target", "0.2", "--variation", "0.3"], "must be in [0, target=0.2]"),
                          (["--target", "0.2", "--planner", "constant", "--variation", "0.1"],
                           "applies to the dynamic planner only")]:
        assert main(["plan", "--scores", str(scores_json), "--out", str(out)] + args) == 2
        assert message in capsys.readouterr().err
    scores_json.write_text('{"format": 1, "kind": "layer_scores", "metric": "cosine", "values": [0.1, NaN, 0.2], '
                           '"num_tokens": 3}')
    assert main(["plan", "--scores", str(scores_json), "--target", "0.2", "--variation", "0.1",
                 "--out", str(out)]) == 2
    assert "not finite" in capsys.readouterr().err
