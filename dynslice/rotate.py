"""Rotations folded into weights: float64 math (the bases are float64; a weight is rounded once, to its own
dtype, at the end), which also keeps a globally enabled TF32 out of these products."""

from __future__ import annotations

import torch
from torch import nn

_ROW_CHUNK = 8192  # embedding/head rows per chunk: bounds the extra memory for 100k+ vocabularies


def _rows_times(weight: torch.Tensor, q: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """weight [R, D] @ q [D, d] in float64, a chunk of rows at a time, cast back. `in_place` (square q only)
    overwrites `weight` itself: a vocabulary-sized table then needs no second copy."""
    q = q.to(device=weight.device, dtype=torch.float64)
    if in_place and q.shape[0] != q.shape[1]:
        raise ValueError("an in-place rotation keeps the width: q must be square")
    out = weight if in_place else torch.empty(weight.shape[0], q.shape[1], dtype=weight.dtype, device=weight.device)
    for start in range(0, weight.shape[0], _ROW_CHUNK):
        out[start:start + _ROW_CHUNK] = (weight[start:start + _ROW_CHUNK].double() @ q).to(weight.dtype)
    return out


def rotate_inputs(linear: nn.Linear, q: torch.Tensor) -> None:
    """The linear now reads x' = x @ q: W [out, D] -> W @ q [out, d]."""
    linear.weight = nn.Parameter(_rows_times(linear.weight.data, q), requires_grad=False)
    linear.in_features = q.shape[1]


def rotate_outputs(linear: nn.Linear, q: torch.Tensor) -> None:
    """The linear now writes y' = y @ q: W [D, in] -> q^T W [d, in], b -> q^T b."""
    w = linear.weight.data
    qd = q.to(device=w.device, dtype=torch.float64)
    linear.weight = nn.Parameter((qd.T @ w.double()).to(w.dtype), requires_grad=False)
    if linear.bias is not None:
        b = linear.bias.data
        linear.bias = nn.Parameter((b.double() @ qd).to(b.dtype), requires_grad=False)
    linear.out_features = q.shape[1]


def rotate_embedding(embedding: nn.Embedding, q: torch.Tensor) -> None:
    """Rows of the table live in the stream: E [V, D] -> E @ q [V, d]."""
    embedding.weight = nn.Parameter(_rows_times(embedding.weight.data, q), requires_grad=False)
    embedding.embedding_dim = q.shape[1]


def as_parameter(matrix: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    """A float64 basis block (e.g. a residual shortcut [d_in, d_out]) as a frozen weight like `like`."""
    # clone: a slice of a basis is a view that would keep (and save) the whole [D, D] matrix
    return nn.Parameter(matrix.to(device=like.device, dtype=like.dtype).clone(), requires_grad=False)


def tied_head_weights(table: torch.Tensor, q: torch.Tensor,
                      gain: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A head tied to the table E [V, D], reading the stream in the basis q [D, D] through a norm of scale g [D]:
    n(x q^T) diag(g) E^T = n(x) (q^T diag(g) q) (E q)^T (n commutes with the rotation: it keeps norms).
    Returns (E q [V, D], M = q^T diag(g) q [D, D]) in the table's dtype; without a scale, g = 1.
    The table is rotated in place (it is not used unrotated afterwards): no second vocabulary-sized copy."""
    weight = _rows_times(table, q, in_place=True)
    qd = q.to(device=table.device, dtype=torch.float64)
    g = torch.ones(qd.shape[0], dtype=torch.float64, device=qd.device) if gain is None \
        else gain.to(device=qd.device, dtype=torch.float64)
    return weight, (qd.T @ (g[:, None] * qd)).to(table.dtype)
