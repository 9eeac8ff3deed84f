"""Models that lost single sublayers (the `greedy` planner's plans): the plan value, the saved format (format 3)
that reloads to identical logits with and without dynslice, counts that match the plan, and a KV cache that
stays right when a layer's attention is gone."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open

from conftest import CONFIGS, calibration, logits_of, param_count, tiny_model
from dynslice.counts import dense_parameters, removed_parameters, sliced_parameters
from dynslice.errors import PlanError, UnsupportedArchitectureError
from dynslice.plan import SlicePlan
from dynslice.removal import prune
from dynslice.sliced import modeling_dynslice
from dynslice.sliced.format import load_sliced, save_model, save_sliced

SEQUENTIAL = ["llama", "mistral", "opt", "qwen2", "qwen3"]


def _plan(config, removed=(), attention=(0,), mlp=(1,)) -> SlicePlan:
    return SlicePlan.removal(config.num_hidden_layers, config.hidden_size, removed, attention=attention, mlp=mlp)


def test_a_sublayer_plan_round_trips_and_refuses_contradictions():
    plan = _plan(CONFIGS["llama"](), removed=(2,))
    assert plan.removes and SlicePlan.from_json(plan.to_json()) == plan
    assert json.loads(plan.to_json())["removed_attention"] == [0]
    assert "removed_mlp" not in SlicePlan.removal(3, 32, [1]).to_dict()  # plans without sublayers keep their bytes
    with pytest.raises(PlanError, match=r"layers \[1\] are in both removed_attention and removed_mlp"):
        SlicePlan.removal(3, 32, (), attention=(1,), mlp=(1,))
    with pytest.raises(PlanError, match="in both removed and removed_mlp"):
        SlicePlan.removal(3, 32, (1,), mlp=(1,))
    with pytest.raises(PlanError, match="removed_attention must be a list of layer indices"):
        SlicePlan.from_dict({**plan.to_dict(), "removed_attention": [0, "1"]})
    with pytest.raises(PlanError, match="the model has 3 layers"):
        _plan(CONFIGS["llama"](), mlp=(3,)).check(3, 32)
    with pytest.raises(PlanError, match="slices nothing"):
        SlicePlan(widths=(24, 32, 32, 32), mid=(24, 32, 32), removed_mlp=(1,)).check(3, 32)
    with pytest.raises(PlanError, match="parallel blocks cannot lose one sublayer"):
        sliced_parameters(_plan(CONFIGS["phi"]()), CONFIGS["phi"]())


@pytest.mark.parametrize("family", SEQUENTIAL)
def test_a_pruned_model_saves_and_reloads_to_identical_logits(tmp_path, family):
    model = tiny_model(family, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    plan = _plan(model.config, removed=(2,) if layers > 2 else (), attention=(0,), mlp=(1,))
    tied = model.config.tie_word_embeddings
    pruned = prune(model, plan)
    dense = CONFIGS[family]()
    units = [(i, k) for i in plan.removed for k in ("attention", "mlp")] + [(0, "attention"), (1, "mlp")]
    assert param_count(pruned) == sliced_parameters(plan, dense) == \
        dense_parameters(dense) - removed_parameters(dense, units) < dense_parameters(dense)
    cal = calibration()
    expected = logits_of(pruned, cal)
    save_sliced(pruned, tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved["dynslice"]["format"] == modeling_dynslice.PRUNED_FORMAT and not saved["dynslice"]["rotated"]
    assert (saved["dynslice"]["skip_attention"], saved["dynslice"]["skip_mlp"]) == ([0], [1])
    assert saved["tie_word_embeddings"] == tied and saved["num_hidden_layers"] == layers - len(plan.removed)
    with safe_open(str(tmp_path / "pruned" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) != tied  # a tied table is stored once
    assert not any(".0.self_attn." in k or ".0.input_layernorm" in k or ".0.self_attn_layer_norm" in k for k in keys)

    reloaded = load_sliced(tmp_path / "pruned", attn_implementation="eager")
    assert param_count(reloaded) == param_count(pruned)
    assert torch.equal(logits_of(reloaded, cal), expected)
    if tied:
        assert reloaded.lm_head.weight is reloaded.get_input_embeddings().weight
    # without dynslice: the modeling file saved beside the weights
    remote = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True,
                                                               attn_implementation="eager")
    assert torch.equal(logits_of(remote, cal), expected)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decoding_with_a_kv_cache_matches_the_full_forward(tmp_path, family):
    """Layer 0's attention is gone: the cache reads its length from its layer 0, so the attention modules left are
    renumbered onto the first cache slots. Without that, every cached step would see position 0 (the logits
    drift by ~1e-4 on this tiny model, far beyond rounding)."""
    model = prune(tiny_model(family), _plan(CONFIGS[family](), attention=(0,), mlp=()))
    save_sliced(model, tmp_path / "pruned")
    reloaded = load_sliced(tmp_path / "pruned", attn_implementation="eager")
    assert reloaded.dtype == torch.float64
    prompt = calibration(n=2, t=6)["input_ids"]
    for m in (model, reloaded):
        with torch.no_grad():
            out = m(input_ids=prompt, use_cache=True)
            ids, cache = prompt, out.past_key_values
            for _ in range(4):
                nxt = out.logits[:, -1:].argmax(-1)
                ids = torch.cat([ids, nxt], dim=1)
                out = m(input_ids=nxt, past_key_values=cache, use_cache=True)
                assert cache.get_seq_length() == ids.shape[1]
                full = m(input_ids=ids).logits[:, -1]
                assert (out.logits[:, -1] - full).abs().max() < 1e-7  # (transformers norms round via float32)
        generated = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                               pad_token_id=0)
        assert torch.equal(generated, ids)


def test_pruning_refuses_what_it_cannot_do(tmp_path):
    config = CONFIGS["qwen2"]()
    config.num_hidden_layers = 3
    config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    config.sliding_window = 8
    mixed = transformers.AutoModelForCausalLM.from_config(config)
    before = {k: v.clone() for k, v in mixed.state_dict().items()}
    with pytest.raises(UnsupportedArchitectureError, match="one attention type per layer"):
        prune(mixed, _plan(config, removed=(0,), attention=(1,), mlp=()))
    after = mixed.state_dict()  # refused before anything changed: layer 0 is still there
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert mixed.config.num_hidden_layers == 3
    with pytest.raises(PlanError, match="removes nothing"):
        prune(tiny_model("llama"), SlicePlan.constant(3, 32, 0.0))
    with pytest.raises(PlanError, match="parallel blocks cannot lose one sublayer"):
        prune(tiny_model("phi"), _plan(CONFIGS["phi"]()))


def test_save_model_writes_each_kind_of_model_in_its_format(tmp_path):
    """Whole layers removed: a plain transformers folder; sublayers removed: the dynslice format."""
    layers_only = prune(tiny_model("llama", dtype=torch.float32), SlicePlan.removal(3, 32, [1]))
    save_model(layers_only, tmp_path / "layers")
    assert "dynslice" not in json.loads((tmp_path / "layers" / "config.json").read_text())
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "layers", attn_implementation="eager")
    assert torch.equal(logits_of(plain, calibration()), logits_of(layers_only, calibration()))
    save_model(prune(tiny_model("llama", dtype=torch.float32), _plan(CONFIGS["llama"]())), tmp_path / "sub")
    assert "dynslice" in json.loads((tmp_path / "sub" / "config.json").read_text())
    from dynslice.errors import HubError
    from dynslice.hub import sliced_config

    with pytest.raises(HubError, match="pruned model"):
        sliced_config(tmp_path / "sub")


def test_prune_refuses_a_model_that_is_already_sliced_or_pruned():
    from dynslice.compress import slice_model

    pruned = prune(tiny_model("llama"), _plan(CONFIGS["llama"](), attention=(0,), mlp=()))
    with pytest.raises(PlanError, match="already sliced or pruned"):
        prune(pruned, _plan(CONFIGS["llama"](), attention=(), mlp=(1,)))
    sliced = slice_model(tiny_model("llama"), calibration(), SlicePlan.constant(3, 32, 0.25), progress=False)
    with pytest.raises(PlanError, match="already sliced or pruned"):
        prune(sliced, _plan(CONFIGS["llama"]()))


@pytest.mark.parametrize("field, value", [("removed_attention", 0), ("removed_mlp", None), ("removed", ["2"]),
                                          ("removed_attention", [True]), ("removed_mlp", {"1": 0}),
                                          ("removed", [1.5])])
def test_a_plan_file_with_bad_removal_lists_names_the_field(field, value):
    data = {**_plan(CONFIGS["llama"](), attention=(), mlp=()).to_dict(), field: value}
    with pytest.raises(PlanError, match=f"{field} must be a list of layer indices"):
        SlicePlan.from_dict(data)
    # integral floats (JSON 1.0) are indices
    assert SlicePlan.from_dict({**data, field: [1.0]}).to_dict()[field] == [1]
