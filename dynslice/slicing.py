"""Rotate and slice one piece of the model over streamed calibration signals: the embeddings, or one block of
either topology. The layer loop (compress.py) calls these in order.

Signals are kept in the basis of the last PCA, q ([D, D], absolute): a block's shortcut then needs no matmul
(the sliced input is the leading columns of the full one) and its writers are pre-rotated to q, so the new
PCA is taken in q's basis (r) and the absolute basis is q @ r. Per layer this costs one projection of the
signals per PCA, instead of a reconstruction and a projection.

A block given `out_basis` (the last one, when the head stays tied) writes the stream in that absolute basis
instead of its output's PCA: exact when it writes the full width, as nothing is sliced there.
"""

from __future__ import annotations

import torch
from torch import nn

from dynslice.architectures import ArchSpec
from dynslice.capture import LayerInputs, move_to, zero_pads
from dynslice.pca import Covariance, pca_basis
from dynslice.phases import phase
from dynslice.rotate import as_parameter, rotate_embedding, rotate_inputs, rotate_outputs, tied_head_weights
from dynslice.sliced.modeling_dynslice import tie_head_modules, transformers_tying_off

Spectra = dict[str, torch.Tensor]  # name ("mid", "out") -> eigenvalues [D], float64


def _plus_shortcut(update: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """update [B, T, D] + x [B, T, d] zero-padded to D (x holds the leading components of the basis)."""
    update[..., : x.shape[-1]] += x
    return update


def _project(sig: LayerInputs, basis: torch.Tensor, device: torch.device, signal_device: torch.device) -> None:
    """The signals in a new basis [D, d], sliced to its d columns."""
    with phase("signal projection"):
        for b, x in enumerate(sig.inputs):
            sig.inputs[b] = (x.to(device) @ basis.to(device, x.dtype)).to(signal_device)


class _Writer:
    """A linear that writes the stream: rotated to the full current basis for the pass, then to its final basis
    from the original weights (one rounding in the model dtype, not two)."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.weight = linear.weight.data
        self.bias = None if linear.bias is None else linear.bias.data

    def rotate(self, q: torch.Tensor) -> None:
        self.linear.weight = nn.Parameter(self.weight, requires_grad=False)
        if self.bias is not None:
            self.linear.bias = nn.Parameter(self.bias, requires_grad=False)
        self.linear.out_features = self.weight.shape[0]
        rotate_outputs(self.linear, q)


def slice_embeddings(model: nn.Module, paths: tuple[str, ...], width: int, sig: LayerInputs, device: torch.device,
                     signal_device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Q_0 from the embeddings' output; the tables at `paths` rotated and sliced to `width` (a table the head
    shares is left to tie_head) and the signals projected. Returns (Q_0 [D, D] float64, its eigenvalues [D])."""
    cov = Covariance(sig.inputs[0].shape[-1], device)
    with phase("PCA"):
        for x, m in zip(sig.inputs, sig.masks):
            cov.add(x.to(device), m)
        q, spectrum = pca_basis(cov, "embedding")
    with phase("weight updates"):
        for path in paths:
            rotate_embedding(model.get_submodule(path), q[:, :width])
    _project(sig, q[:, :width], device, signal_device)
    return q, spectrum


def tie_head(model: nn.Module, spec: ArchSpec, q: torch.Tensor, gain: torch.Tensor | None, width: int) -> None:
    """The head stays tied: it holds the token table in Q_0's basis (E Q_0 [V, D]) and the final norm's scale g
    as M = Q_0^T diag(g) Q_0 [D, D]; the token embedding becomes its first `width` columns (one stored table)."""
    table = model.get_submodule(spec.embeddings[0]).weight.data  # E [V, D]: fusion leaves RMSNorm tables as they are
    weight, scale = tied_head_weights(table, q, gain)
    head = tie_head_modules(model, spec.to_dict(), width)
    head.weight = nn.Parameter(weight, requires_grad=False)
    head.norm_scale = nn.Parameter(scale, requires_grad=False)
    transformers_tying_off(model)


def _output_basis(q: torch.Tensor, r: torch.Tensor,
                  out_basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(absolute basis, basis relative to q) a block writes: its output's PCA r, or the fixed `out_basis`
    (relative: q^T out_basis, as q is orthogonal). All [D, D] float64."""
    if out_basis is None:
        return q @ r, r
    out_basis = out_basis.to(q)
    return out_basis, q.T @ out_basis


def slice_sequential(block: nn.Module, spec: ArchSpec, q: torch.Tensor, widths: tuple[int, int, int],
                     sig: LayerInputs, device: torch.device, signal_device: torch.device,
                     where: str, out_basis: torch.Tensor | None = None) -> tuple[torch.Tensor, Spectra]:
    """h = x S_a + attn(n1(x)); y = h S_m + mlp(n2(h)): one attention pass, then one MLP pass.
    Returns the absolute basis of the block's output [D, D] and the spectra {"mid", "out"}."""
    d_in, d_mid, d_out = widths
    full = q.shape[0]
    with phase("weight updates"):
        attn_out = _Writer(block.get_submodule(spec.attn_output))
        mlp_out = _Writer(block.get_submodule(spec.mlp_output))
        for path in spec.attn_inputs:
            rotate_inputs(block.get_submodule(path), q[:, :d_in])
        attn_out.rotate(q)
    like = attn_out.weight
    cov = Covariance(full, device)
    with phase("attention passes"):
        for b, (x, m, kw) in enumerate(zip(sig.inputs, sig.masks, sig.kwargs)):
            x = x.to(device)
            mid = zero_pads(_plus_shortcut(block.attend(block.norm_attn(x), **move_to(kw, device)), x), m)  # [B, T, D]
            cov.add(mid, m)
            sig.inputs[b] = mid.to(signal_device)
    with phase("PCA"):
        r_mid, spectrum_mid = pca_basis(cov, f"{where} attention output")
    with phase("weight updates"):
        q_mid = q @ r_mid
        block.attn_shortcut = as_parameter(r_mid[:d_in, :d_mid], like)
        attn_out.rotate(q_mid[:, :d_mid])
        for path in spec.mlp_inputs:
            rotate_inputs(block.get_submodule(path), q_mid[:, :d_mid])
        mlp_out.rotate(q_mid)
    to_mid = r_mid[:, :d_mid].to(device, like.dtype)  # [D, d_mid]
    cov = Covariance(full, device)
    with phase("MLP passes"):
        for b, (mid, m) in enumerate(zip(sig.inputs, sig.masks)):
            h = mid.to(device) @ to_mid
            out = zero_pads(_plus_shortcut(block.feed_forward(block.norm_mlp(h)), h), m)  # [B, T, D]
            cov.add(out, m)
            sig.inputs[b] = out.to(signal_device)
    with phase("PCA"):
        r_out, spectrum_out = pca_basis(cov, f"{where} output")  # (the spectrum is recorded even with out_basis)
    with phase("weight updates"):
        q_out, r_out = _output_basis(q_mid, r_out, out_basis)
        block.mlp_shortcut = as_parameter(r_out[:d_mid, :d_out], like)
        mlp_out.rotate(q_out[:, :d_out])
    _project(sig, r_out[:, :d_out], device, signal_device)
    return q_out, {"mid": spectrum_mid, "out": spectrum_out}


def slice_parallel(block: nn.Module, spec: ArchSpec, q: torch.Tensor, widths: tuple[int, int, int],
                   sig: LayerInputs, device: torch.device, signal_device: torch.device,
                   where: str, out_basis: torch.Tensor | None = None) -> tuple[torch.Tensor, Spectra]:
    """y = x S + attn(n(x)) + mlp(n(x)): one pass of both. Returns the output basis and {"out": spectrum}."""
    d_in, _, d_out = widths
    full = q.shape[0]
    with phase("weight updates"):
        writers = [_Writer(block.get_submodule(spec.attn_output)), _Writer(block.get_submodule(spec.mlp_output))]
        for path in spec.attn_inputs + spec.mlp_inputs:
            rotate_inputs(block.get_submodule(path), q[:, :d_in])
        for writer in writers:
            writer.rotate(q)
    cov = Covariance(full, device)
    with phase("attention + MLP passes"):
        for b, (x, m, kw) in enumerate(zip(sig.inputs, sig.masks, sig.kwargs)):
            x = x.to(device)
            normed = block.norm_attn(x)
            out = _plus_shortcut(block.attend(normed, **move_to(kw, device)) + block.feed_forward(normed), x)
            out = zero_pads(out, m)
            cov.add(out, m)
            sig.inputs[b] = out.to(signal_device)
    with phase("PCA"):
        r, spectrum = pca_basis(cov, f"{where} output")
    with phase("weight updates"):
        q_next, r = _output_basis(q, r, out_basis)
        block.shortcut = as_parameter(r[:d_in, :d_out], writers[0].weight)
        for writer in writers:
            writer.rotate(q_next[:, :d_out])
    _project(sig, r[:, :d_out], device, signal_device)
    return q_next, {"out": spectrum}


SLICERS = {"sequential": slice_sequential, "parallel": slice_parallel}
