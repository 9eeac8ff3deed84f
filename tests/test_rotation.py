"""Fusion and rotation are exact: without slicing, the logits do not change (float64)."""

import torch

import dynslice
from conftest import calibration, tiny_model
from dynslice.architectures import spec_for
from dynslice.fusion import fuse_norms


def _logits(model, cal):
    with torch.no_grad():
        return model(**cal).logits


def _valid_diff(a, b, cal):
    return (a - b)[cal["attention_mask"].bool()].abs().max().item()


def test_fusion_alone_keeps_logits(family):
    model, cal = tiny_model(family), calibration(pad=True)
    before = _logits(model, cal)
    with torch.no_grad():
        fuse_norms(model, spec_for(model))
    assert _valid_diff(_logits(model, cal), before, cal) < 1e-8


def test_rotation_without_slicing_keeps_logits(family):
    model, cal = tiny_model(family), calibration(pad=True)
    before = _logits(model, cal)
    config = model.config
    full = dynslice.SlicePlan.from_widths([config.hidden_size] * (config.num_hidden_layers + 1))
    dynslice.slice_model(model, cal, full, progress=False)
    after = _logits(model, cal)
    assert _valid_diff(after, before, cal) < 1e-8
    # the weights really were rotated: the embedding table is no longer the original one
    assert not torch.allclose(model.get_input_embeddings().weight, tiny_model(family).get_input_embeddings().weight)


def test_slicing_keeps_most_of_the_signal(family):
    """Slicing 25% of random tiny models must still track the dense logits far better than chance."""
    model, cal = tiny_model(family), calibration(n=8, t=24)
    dense = _logits(model, cal)
    config = model.config
    plan = dynslice.SlicePlan.constant(config.num_hidden_layers, config.hidden_size, 0.25, round_to=4)
    dynslice.slice_model(model, cal, plan, progress=False)
    sliced = _logits(model, cal)
    cos = torch.nn.functional.cosine_similarity(sliced.flatten(), dense.flatten(), dim=0).item()
    assert cos > 0.9
    assert torch.isfinite(sliced).all()
