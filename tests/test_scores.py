"""Layer redundancy scores against an independent hook-based computation, on tiny float64 models."""

import math

import pytest
import torch

import dynslice
from conftest import calibration, tiny_model
from dynslice.architectures import spec_for
from dynslice.errors import ScoreError
from dynslice.scores import LayerScores, redundancy


def _hooked_scores(model, calib, metric):
    """Reference: one full forward with hooks on every decoder layer; cosines by torch's own function."""
    layers = model.get_submodule(spec_for(model).layers)
    seen = {}

    def hook(i):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            seen[i] = (x, output[0] if isinstance(output, tuple) else output)
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(input_ids=calib["input_ids"], attention_mask=calib["attention_mask"], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    valid = calib["attention_mask"].bool()
    out = []
    for i in range(len(layers)):
        x, y = seen[i]
        cos = torch.nn.functional.cosine_similarity(x[valid].double(), y[valid].double(), dim=-1)
        per_token = 1 - cos if metric == "cosine" else torch.arccos(cos.clamp(-1, 1)) / math.pi
        out.append(float(per_token.mean()))
    return out


@pytest.mark.parametrize("metric", ["cosine", "angular"])
def test_scores_match_hooks(family, metric):
    model = tiny_model(family)
    calib = calibration(pad=True)
    # batch 4 over 6 samples: a partial batch, and pads of different lengths within a batch
    scores = dynslice.score_layers(model, calib, metric=metric, batch_size=4, progress=False)
    expected = _hooked_scores(model, calib, metric)
    assert scores.num_layers == model.config.num_hidden_layers
    assert scores.num_tokens == int(calib["attention_mask"].sum())
    assert scores.values == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert all(v > 0 for v in scores.values)  # random layers do change the stream


def test_scoring_leaves_the_model_unchanged():
    model = tiny_model("llama")
    calib = calibration()
    with torch.no_grad():
        before = model(**calib).logits
    dynslice.score_layers(model, calib, progress=False)
    with torch.no_grad():
        after = model(**calib).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_pad_tokens_do_not_change_the_score(family):
    model = tiny_model(family)
    calib = calibration(pad=True)
    extra = 5  # the same sequences with 5 more pad columns, filled with a real token id
    ids = torch.cat([calib["input_ids"], torch.full((6, extra), 7)], dim=1)
    mask = torch.cat([calib["attention_mask"], torch.zeros(6, extra, dtype=torch.long)], dim=1)
    plain = dynslice.score_layers(model, calib, batch_size=3, progress=False)
    padded = dynslice.score_layers(model, {"input_ids": ids, "attention_mask": mask}, batch_size=3, progress=False)
    assert padded.num_tokens == plain.num_tokens
    assert padded.values == pytest.approx(plain.values, rel=1e-10, abs=1e-12)


def test_angular_and_cosine_agree_in_ordering(family):
    # random tiny layers have near-equal scores, whose order two different means may swap; scaling what
    # each layer writes into the stream (x0.3, x3, x1) gives layers of clearly different influence
    model = tiny_model(family, seed=3)
    spec = spec_for(model)
    for i, layer in enumerate(model.get_submodule(spec.layers)):
        for path in (spec.attn_output, spec.mlp_output):
            layer.get_submodule(path).weight.data *= (0.3, 3.0, 1.0)[i]
    cosine = dynslice.score_layers(model, calibration(), metric="cosine", progress=False)
    angular = dynslice.score_layers(model, calibration(), metric="angular", progress=False)
    layers = range(cosine.num_layers)
    assert sorted(layers, key=lambda i: cosine.values[i]) == sorted(layers, key=lambda i: angular.values[i])
    assert cosine.values[0] < cosine.values[1]  # the down-scaled layer is the least influential
    assert cosine.values != angular.values


def test_scores_json_round_trip_keeps_provenance():
    model = tiny_model("qwen2")
    scores = dynslice.score_layers(model, calibration(), model_id="tiny-qwen2", data_id="random ids",
                                   progress=False)
    again = LayerScores.from_json(scores.to_json())
    assert again == scores
    assert again.provenance == scores.provenance
    assert again.provenance["model"]["id"] == "tiny-qwen2"
    assert again.provenance["data"]["id"] == "random ids"
    assert len(again.provenance["data"]["fingerprint"]) == 64
    assert again.config["num_hidden_layers"] == 2 and again.config["model_type"] == "qwen2"


def test_redundancy_is_one_minus_minmax():
    assert redundancy([0.1, 0.3, 0.2]) == pytest.approx((1.0, 0.0, 0.5))
    assert redundancy([0.2, 0.2]) == (1.0, 1.0)  # no layer stands out: all equally redundant


@pytest.mark.parametrize("bad, message", [
    ({"values": (0.1, float("nan")), "metric": "cosine", "num_tokens": 3}, "not finite"),
    ({"values": (), "metric": "cosine", "num_tokens": 3}, "empty"),
    ({"values": (0.1,), "metric": "euclid", "num_tokens": 3}, "unknown metric"),
    ({"values": (0.1,), "metric": "cosine", "num_tokens": 3, "config": {"num_hidden_layers": 2}}, "2 layers"),
])
def test_bad_scores_raise(bad, message):
    with pytest.raises(ScoreError, match=message):
        LayerScores(**bad)


def test_bad_score_inputs_raise():
    model = tiny_model("llama")
    with pytest.raises(ScoreError, match="unknown metric"):
        dynslice.score_layers(model, calibration(), metric="l2", progress=False)
    with pytest.raises(ScoreError, match="not dynslice layer scores"):
        LayerScores.from_json('{"format": 1, "widths": [1]}')
    with pytest.raises(ScoreError, match="not valid JSON"):
        LayerScores.from_json("{")
    text = LayerScores((0.1, 0.2), "cosine", 4).to_json().replace("0.2", "NaN")
    with pytest.raises(ScoreError, match="not finite"):
        LayerScores.from_json(text)
