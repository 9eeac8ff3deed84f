"""Tied heads stay tied: one [V, D] table serves the head and (its first d_0 columns) the embedding, exactly."""

import copy
import json
import logging

import pytest
import torch
import transformers
from safetensors import safe_open

import dynslice
from conftest import CONFIGS, calibration, logits_of, param_count, tiny_model, tiny_tokenizer, uneven_plan, valid_diff
from dynslice.architectures import spec_for
from dynslice.counts import sliced_parameters
from dynslice.sliced.modeling_dynslice import SharedEmbedding, TiedHead

TIED = ["llama", "qwen3"]  # conftest builds both with tie_word_embeddings=True (RMSNorm families)


def _untied(plan):
    return dynslice.SlicePlan.from_widths(plan.widths, plan.mid, untie_head=True)


@pytest.fixture(scope="module", params=TIED)
def sliced_pair(request):
    """The same tiny tied model sliced with the same uneven widths: head kept tied, and untied."""
    model, cal = tiny_model(request.param), calibration(pad=True)
    plan = uneven_plan(model.config)
    tied, untied = copy.deepcopy(model), copy.deepcopy(model)
    dynslice.slice_model(tied, cal, plan, progress=False)
    dynslice.slice_model(untied, cal, _untied(plan), progress=False)
    return request.param, plan, tied, untied


@pytest.mark.parametrize("family", TIED)
def test_full_width_plan_keeps_thelogits_of(family):
    model, cal = tiny_model(family), calibration(pad=True)
    before = logits_of(model, cal)
    config = model.config
    full = dynslice.SlicePlan.from_widths([config.hidden_size] * (config.num_hidden_layers + 1))
    dynslice.slice_model(model, cal, full, progress=False)
    assert model.config.dynslice["tied_head"] is True
    assert valid_diff(logits_of(model, cal), before, cal) < 1e-10


def test_tied_equals_untied_with_the_same_widths(sliced_pair):
    _, _, tied, untied = sliced_pair
    cal = calibration(n=4, seed=5, pad=True)
    # both are exact rotations of the same sliced stream (the last layer writes all D columns): float64 rounding
    assert valid_diff(logits_of(tied, cal), logits_of(untied, cal), cal) < 1e-12


def test_one_table_serves_head_and_embedding(sliced_pair):
    family, plan, tied, _ = sliced_pair
    spec = spec_for(tied)
    head, embedding = tied.get_submodule(spec.head), tied.get_input_embeddings()
    assert isinstance(head, TiedHead) and isinstance(embedding, SharedEmbedding)
    d, vocab = tied.config.hidden_size, tied.config.vocab_size
    assert head.weight.shape == (vocab, d) and head.norm_scale.shape == (d, d)
    assert embedding.weight.shape == (vocab, plan.widths[0])
    assert embedding.weight.data_ptr() == head.weight.data_ptr()  # a view of the head's table, not a copy
    assert not [n for n, _ in tied.named_parameters() if "embed" in n]
    assert tied.config.tie_word_embeddings is False  # transformers must never re-tie the sliced shapes


def test_parameter_count_is_the_plan_and_smaller_than_untied(sliced_pair):
    _, plan, tied, untied = sliced_pair
    config = CONFIGS[sliced_pair[0]]()
    d, vocab = config.hidden_size, config.vocab_size
    assert param_count(tied) == sliced_parameters(plan, config)
    assert param_count(untied) == sliced_parameters(_untied(plan), config)
    assert param_count(untied) - param_count(tied) == vocab * plan.widths[0] - d * d


def test_save_reload_stores_the_table_once(sliced_pair, tmp_path):
    family, _, tied, _ = sliced_pair
    dynslice.save_sliced(tied, tmp_path, tokenizer=tiny_tokenizer())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dynslice"]["tied_head"] is True and config["tie_word_embeddings"] is False
    d, vocab = config["hidden_size"], config["vocab_size"]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert [n for n, s in shapes.items() if s[0] == vocab] == ["lm_head.weight"]  # one vocabulary-sized matrix
    assert shapes["lm_head.weight"] == (vocab, d) and shapes["lm_head.norm_scale"] == (d, d)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == param_count(tied)

    cal = calibration(n=3, seed=7, pad=True)
    expected = logits_of(tied, cal)
    loaded = dynslice.load_sliced(tmp_path, attn_implementation="eager")
    remote = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True,
                                                               attn_implementation="eager")
    for model in (loaded, remote):
        assert torch.equal(logits_of(model, cal), expected)
        assert param_count(model) == param_count(tied)
        assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()

    prompt = calibration(n=2, t=5, seed=9)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = remote.generate(**prompt, use_cache=True, **kwargs)
    assert with_cache.shape == (2, 13)
    assert torch.equal(with_cache, remote.generate(**prompt, use_cache=False, **kwargs))
    assert torch.equal(with_cache, tied.generate(**prompt, use_cache=True, **kwargs))


@pytest.mark.parametrize("family", ["opt", "phi"])
def test_layernorm_families_untie(family, caplog):
    """Fusion centres a LayerNorm model's embeddings, so the head cannot share them: it is untied, as before."""
    config = CONFIGS[family]()
    config.tie_word_embeddings = True  # OPT ties by default, conftest's Phi does not
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    plan = uneven_plan(model.config)
    with caplog.at_level(logging.INFO, logger="dynslice.compress"):
        dynslice.slice_model(model, calibration(), plan, progress=False)
    assert "LayerNorm" in caplog.text and "untied" in caplog.text
    assert model.config.dynslice["tied_head"] is False
    assert not isinstance(model.get_output_embeddings(), TiedHead)
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert param_count(model) == sliced_parameters(plan, model.config) == sliced_parameters(_untied(plan),
                                                                                             model.config)


def test_untied_or_sliced_head_in_the_plan():
    """untie_head is part of the plan (JSON, equality); a head the plan slices cannot stay tied."""
    config = CONFIGS["llama"]()
    plan = uneven_plan(config)
    untied = _untied(plan)
    assert untied != plan and dynslice.SlicePlan.from_json(untied.to_json()) == untied
    old = {k: v for k, v in plan.to_dict().items() if k != "untie_head"}  # a plan written before the switch
    assert dynslice.SlicePlan.from_dict(old).untie_head is False
    with pytest.raises(dynslice.PlanError, match="untie_head"):
        dynslice.SlicePlan.from_dict({**plan.to_dict(), "untie_head": "yes"})
    d = config.hidden_size
    narrow_head = dynslice.SlicePlan.from_widths(list(plan.widths[:-1]) + [d - 8], plan.mid)
    model = tiny_model("llama")
    dynslice.slice_model(model, calibration(), narrow_head, progress=False)
    assert model.config.dynslice["tied_head"] is False
    assert param_count(model) == sliced_parameters(narrow_head, config)


def test_planners_carry_the_switch():
    from dynslice import planners

    config = CONFIGS["llama"]()
    scores = dynslice.LayerScores((0.9, 0.2, 0.5), "cosine", 10, config=config.to_dict())
    for untie in (False, True):
        for plan in (planners.make_plan(scores, "constant", 0.2, budget="params", round_to=2, untie_head=untie),
                     planners.make_plan(scores, "dynamic", 0.2, variation=0.1, budget="params", round_to=2,
                                        untie_head=untie)):
            assert plan.untie_head is untie
            assert plan.provenance["parameters"] == sliced_parameters(plan, config)
            assert plan.provenance["achieved_param_reduction"] >= 0.2


def test_resume_of_a_tied_run_is_byte_identical(tmp_path):
    """Killed in the last layer (which writes Q_0's basis) and resumed: the same bytes as one uninterrupted run."""
    from test_resume import Crash, _count_attention_calls, _sliced_bytes

    cal = calibration(n=5, pad=True)
    reference = tiny_model("qwen3")
    plan = uneven_plan(reference.config)
    dynslice.slice_model(reference, cal, plan, batch_size=2, progress=False)
    expected = _sliced_bytes(reference, tmp_path / "reference")

    state = str(tmp_path / "state")
    crashed = tiny_model("qwen3")
    last = crashed.config.num_hidden_layers - 1
    _count_attention_calls(crashed, [], crash_at=last)
    with pytest.raises(Crash):
        dynslice.slice_model(crashed, cal, plan, batch_size=2, state_dir=state, progress=False)
    resumed, visited = tiny_model("qwen3"), []
    _count_attention_calls(resumed, visited)
    dynslice.slice_model(resumed, cal, plan, batch_size=2, state_dir=state, progress=False)
    assert visited == [last]
    assert resumed.config.dynslice["tied_head"] is True
    assert _sliced_bytes(resumed, tmp_path / "resumed") == expected

    # a state written for the untied head belongs to another run
    with pytest.raises(dynslice.StateError, match="another run"):
        dynslice.slice_model(tiny_model("qwen3"), cal, _untied(plan), batch_size=2, state_dir=state,
                             progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_tied(dtype):
    model = tiny_model("llama", dtype=dtype)
    dynslice.slice_model(model, calibration(), uneven_plan(model.config), progress=False)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert torch.isfinite(logits_of(model, calibration())).all()
