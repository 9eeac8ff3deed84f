"""The sliced model has the plan's shapes and exactly the parameter count the plan predicts."""

import pytest
import torch

import dynslice
from dynslice.counts import sliced_parameters
from conftest import calibration, param_count, tiny_model, uneven_plan
from dynslice.architectures import spec_for


def test_parameter_count_matches_plan(family):
    model = tiny_model(family)
    plan = uneven_plan(model.config)
    predicted = sliced_parameters(plan, model.config)
    dynslice.slice_model(model, calibration(), plan, progress=False)
    assert param_count(model) == predicted


def test_widths_follow_the_plan(family):
    model = tiny_model(family)
    spec = spec_for(model)
    plan = uneven_plan(model.config)
    dynslice.slice_model(model, calibration(), plan, progress=False)
    assert model.get_input_embeddings().weight.shape[1] == plan.widths[0]
    assert model.get_submodule(spec.head).in_features == plan.widths[-1]
    for i, block in enumerate(model.get_submodule(spec.layers)):
        for path in spec.attn_inputs:
            assert block.get_submodule(path).in_features == plan.widths[i]
        writes = plan.widths[i + 1] if spec.topology == "parallel" else plan.mid[i]
        assert block.get_submodule(spec.attn_output).out_features == writes
        assert block.get_submodule(spec.mlp_output).out_features == plan.widths[i + 1]


def test_dense_count_is_the_full_plan_minus_norms_plus_shortcuts():
    """A no-op plan on an untied model: + 2 D^2 shortcuts per layer, - the norm scales (folded)."""
    model = tiny_model("qwen2")  # untied head, RMSNorm: no biases are added by fusion
    config = model.config
    d, n = config.hidden_size, config.num_hidden_layers
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    full = dynslice.SlicePlan.from_widths([d] * (n + 1))
    assert sliced_parameters(full, config) == param_count(model) - norms + 2 * d * d * n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_dtypes(dtype):
    model = tiny_model("llama", dtype=dtype)
    plan = uneven_plan(model.config)
    dynslice.slice_model(model, calibration(), plan, progress=False)
    assert {p.dtype for p in model.parameters()} == {dtype}
    with torch.no_grad():
        logits = model(**calibration()).logits
    assert torch.isfinite(logits).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: compares GPU slicing with CPU signals "
                                                           "against slicing on the CPU")
def test_signals_on_another_device_give_the_same_model():
    """Layers on the GPU, signals waiting on the CPU between layers: the same model as slicing on the CPU."""
    a, b = tiny_model("llama"), tiny_model("llama")
    plan = uneven_plan(a.config)
    dynslice.slice_model(a, calibration(), plan, progress=False)
    dynslice.slice_model(b, calibration(), plan, progress=False, device="cuda", signal_device="cpu")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(y.cpu(), x, rtol=1e-9, atol=1e-9, msg=name)  # float64 on both


def test_zero_pads_clears_non_finite_values():
    from dynslice.capture import zero_pads

    x = torch.tensor([[[1.0, 2.0], [float("nan"), float("inf")]]])
    out = zero_pads(x, torch.tensor([[1, 0]]))
    assert torch.equal(out, torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]))
