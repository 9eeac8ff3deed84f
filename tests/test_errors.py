"""Bad input is refused with a clear, named error before any work touches the model."""

import pytest
import torch
import transformers

import dynslice
from conftest import calibration, tiny_model


def _unchanged(model, before):
    return all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_range(sparsity):
    with pytest.raises(dynslice.PlanError, match=r"sparsity must be in \[0, 1\)"):
        dynslice.SlicePlan.constant(3, 32, sparsity)


@pytest.mark.parametrize("widths,mid,message", [
    ([32, 32, 40, 32], None, "exceed the hidden size 32"),
    ([32, 32, 32], None, "plan has 2 layers"),
    ([32, 32, 32, 32, 32], None, "plan has 4 layers"),
    ([32, 32, 32, 32], [32, 33, 32], "exceed the hidden size"),
])
def test_plan_that_does_not_fit(widths, mid, message):
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(dynslice.PlanError, match=message):
        dynslice.slice_model(model, calibration(), dynslice.SlicePlan.from_widths(widths, mid), progress=False)
    assert _unchanged(model, before)


def test_malformed_plans():
    with pytest.raises(dynslice.PlanError, match="positive integers"):
        dynslice.SlicePlan.from_widths([32, 0, 32])
    with pytest.raises(dynslice.PlanError, match="mid has 1 entries"):
        dynslice.SlicePlan.from_widths([32, 32, 32], mid=[32])
    with pytest.raises(dynslice.PlanError, match="not valid JSON"):
        dynslice.SlicePlan.from_json("{widths")
    plan = dynslice.SlicePlan.from_widths([24, 16, 32], mid=[20, 24], provenance={"planner": "test"})
    assert dynslice.SlicePlan.from_json(plan.to_json()) == plan


def test_parallel_models_have_no_mid_width():
    model = tiny_model("phi")
    plan = dynslice.SlicePlan.from_widths([32, 32, 32], mid=[24, 32])
    with pytest.raises(dynslice.PlanError, match="parallel-block"):
        dynslice.slice_model(model, calibration(), plan, progress=False)


def test_unsupported_architecture_lists_the_supported_ones():
    config = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    plan = dynslice.SlicePlan.from_widths([32, 32, 32])
    with pytest.raises(dynslice.UnsupportedArchitectureError) as err:
        dynslice.slice_model(model, calibration(), plan, progress=False)
    assert "GPT2LMHeadModel is not supported" in str(err.value)
    for name in ("LlamaForCausalLM", "OPTForCausalLM", "PhiForCausalLM", "Qwen2ForCausalLM"):
        assert name in str(err.value)


def test_unsupported_option_of_a_supported_family():
    config = transformers.OPTConfig(vocab_size=96, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                    num_attention_heads=4, do_layer_norm_before=False, word_embed_proj_dim=32)
    model = transformers.OPTForCausalLM(config)
    with pytest.raises(dynslice.UnsupportedArchitectureError, match="do_layer_norm_before"):
        dynslice.slice_model(model, calibration(), dynslice.SlicePlan.from_widths([32] * 3), progress=False)


@pytest.mark.parametrize("calib,message", [
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.zeros(2, 4, dtype=torch.long)},
     "no valid token"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)},
     "differs from input_ids"),
    (torch.ones(8, dtype=torch.long), r"\[N, T\]"),
    (torch.rand(2, 4), "integer token ids"),
    (torch.full((2, 4), 500), r"token ids must be in \[0, 96\)"),
    ({"attention_mask": torch.ones(2, 4)}, "input_ids"),
    ("some text", "LongTensor"),
])
def test_bad_calibration(calib, message):
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(dynslice.CalibrationError, match=message):
        dynslice.slice_model(model, calib, dynslice.SlicePlan.from_widths([24] * 3 + [32]), progress=False)
    assert _unchanged(model, before)


def test_slicing_twice_is_refused():
    model = tiny_model("llama")
    plan = dynslice.SlicePlan.from_widths([24] * 3 + [32])
    dynslice.slice_model(model, calibration(), plan, progress=False)
    with pytest.raises(dynslice.DynsliceError, match="already sliced"):
        dynslice.slice_model(model, calibration(), plan, progress=False)


def test_bad_batch_size():
    with pytest.raises(dynslice.DynsliceError, match="batch_size"):
        dynslice.slice_model(tiny_model("llama"), calibration(), dynslice.SlicePlan.from_widths([24] * 3 + [32]),
                             batch_size=0, progress=False)
