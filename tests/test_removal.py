"""ShortGPT layer removal: a plain transformers model that runs, generates with a KV cache, and has the
predicted size."""

import pytest
import torch
import transformers

import dynslice
from conftest import calibration, param_count, tiny_model
from dynslice.architectures import spec_for
from dynslice.counts import dense_parameters
from dynslice.errors import PlanError, ScoreError
from dynslice.removal import layers_to_remove, parameters_after_removal


def _skipping(model, skipped):
    """Logits of `model` with the layers `skipped` made identities by hooks (the reference for removal)."""
    layers = model.get_submodule(spec_for(model).layers)

    def identity(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        return (x,) + tuple(output[1:]) if isinstance(output, tuple) else x

    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in skipped]
    try:
        with torch.no_grad():
            return model(**calibration()).logits
    finally:
        for h in handles:
            h.remove()


def test_removal_runs_generates_and_has_the_predicted_size(family):
    model = tiny_model(family)
    layers = model.config.num_hidden_layers
    scores = dynslice.score_layers(model, calibration(), progress=False)
    removed = layers_to_remove(scores, model.config, n=1)
    assert removed == (min(range(layers), key=lambda i: scores.values[i]),)
    predicted = parameters_after_removal(model.config, removed)
    expected = _skipping(model, removed)

    pruned = dynslice.remove_layers(model, scores, 1)
    assert type(pruned).__name__ == f"{type(model).__name__}"
    assert pruned.config.num_hidden_layers == layers - 1
    assert len(pruned.get_submodule(spec_for(pruned).layers)) == layers - 1
    assert param_count(pruned) == predicted
    with torch.no_grad():
        torch.testing.assert_close(pruned(**calibration()).logits, expected, rtol=1e-10, atol=1e-10)
    # greedy decoding with the KV cache equals decoding without it: every layer found its own cache slot
    prompt = calibration(n=2, t=5)["input_ids"]
    cached = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (2, 11)
    assert torch.equal(cached, uncached)


def test_removed_model_round_trips_through_save_pretrained(tmp_path):
    model = tiny_model("qwen2")  # qwen2 keeps a per-layer `layer_types` list in its config
    pruned = dynslice.remove_layers(model, [0.5, 0.1], 1)
    assert pruned.config.layer_types == ["full_attention"]
    pruned.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert again.config.num_hidden_layers == 1
    with torch.no_grad():
        torch.testing.assert_close(again(**calibration()).logits, pruned(**calibration()).logits)


def test_parameter_target_picks_the_fewest_layers():
    model = tiny_model("llama")
    dense = param_count(model)
    assert dense == dense_parameters(model.config)
    scores = [0.3, 0.1, 0.2]  # layer 1 goes first, then layer 2
    one_layer = 1 - parameters_after_removal(model.config, (1,)) / dense
    assert layers_to_remove(scores, model.config, target=one_layer) == (1,)
    assert layers_to_remove(scores, model.config, target=one_layer + 1e-6) == (1, 2)
    assert layers_to_remove(scores, model.config, target=0.0) == ()
    chosen = layers_to_remove(scores, model.config, target=0.2)
    pruned = dynslice.remove_layers(model, scores, target=0.2)
    assert 1 - param_count(pruned) / dense >= 0.2
    assert pruned.config.num_hidden_layers == 3 - len(chosen)
    # renumbered attention modules: the KV cache slot of each kept layer is its new position
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == list(range(pruned.config.num_hidden_layers))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n": 3}, PlanError, r"n must be an integer in \[0, 2\]"),
    ({"n": -1}, PlanError, r"n must be an integer in \[0, 2\]"),
    ({"n": 1, "target": 0.1}, PlanError, "exactly one"),
    ({}, PlanError, "exactly one"),
    ({"target": 1.0}, PlanError, r"target must be in \[0, 1\)"),
    ({"target": 0.9}, PlanError, "short of the target"),
    ({"n": 1, "scores": [0.1, 0.2]}, ScoreError, "2 scores for a model with 3"),
    ({"n": 1, "scores": [0.1, float("nan"), 0.2]}, ScoreError, "not finite"),
])
def test_bad_removal_input_raises(kwargs, error, message):
    model = tiny_model("llama")
    scores = kwargs.pop("scores", [0.3, 0.1, 0.2])
    with pytest.raises(error, match=message):
        dynslice.remove_layers(model, scores, **kwargs)
    assert model.config.num_hidden_layers == 3  # nothing changed
