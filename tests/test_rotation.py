"""Fusion and rotation are exact: without slicing, the logits do not change (float64)."""

import torch

import dynslice
from conftest import calibration, logits_of, tiny_model, valid_diff
from dynslice.architectures import spec_for
from dynslice.fusion import fuse_norms


def test_fusion_alone_keepslogits_of(family):
    model, cal = tiny_model(family), calibration(pad=True)
    before = logits_of(model, cal)
    with torch.no_grad():
        fuse_norms(model, spec_for(model))
    assert valid_diff(logits_of(model, cal), before, cal) < 1e-8


def test_rotation_without_slicing_keepslogits_of(family):
    model, cal = tiny_model(family), calibration(pad=True)
    before = logits_of(model, cal)
    config = model.config
    full = dynslice.SlicePlan.from_widths([config.hidden_size] * (config.num_hidden_layers + 1))
    dynslice.slice_model(model, cal, full, progress=False)
    after = logits_of(model, cal)
    assert valid_diff(after, before, cal) < 1e-8
    # the weights really were rotated: the embedding table is no longer the original one
    assert not torch.allclose(model.get_input_embeddings().weight, tiny_model(family).get_input_embeddings().weight)


def _sliced_error(family, monkeypatch=None, basis=None) -> float:
    """Relative error of the logits after slicing 25% of a tiny model (valid tokens only)."""
    model, cal = tiny_model(family), calibration(n=8, t=24)
    dense = logits_of(model, cal)
    if basis is not None:
        monkeypatch.setattr("dynslice.slicing.pca_basis", basis)
    config = model.config
    plan = dynslice.SlicePlan.constant(config.num_hidden_layers, config.hidden_size, 0.25, round_to=4)
    dynslice.slice_model(model, cal, plan, progress=False)
    sliced = logits_of(model, cal)
    assert torch.isfinite(sliced).all()
    keep = cal["attention_mask"].bool()
    return ((sliced - dense)[keep].norm() / dense[keep].norm()).item()


def test_pca_slicing_beats_slicing_along_random_directions(family, monkeypatch):
    """The baseline: the same plan with random orthogonal bases instead of the PCA ones (the components sliced
    away are then arbitrary). Keeping the principal components must lose far less of the logits."""
    g = torch.Generator().manual_seed(0)

    def random_basis(cov, where="signal"):
        d = cov.matrix().shape[0]
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        return q.to(cov.matrix().device), torch.ones(d, dtype=torch.float64)

    pca = _sliced_error(family)
    random = _sliced_error(family, monkeypatch, random_basis)
    assert pca < 0.5 * random, (pca, random)
