"""Streaming covariance of masked signals and its PCA basis."""

from __future__ import annotations

import torch

from dynslice.errors import DynsliceError

DAMP = 0.01  # added to the diagonal, as a fraction of its mean: keeps eigh stable on rank-deficient signals


class Covariance:
    """sum over valid tokens of x x^T, accumulated in float64 as batches stream (memory O(D^2)).

    Each batch's product is formed in float32 (float64 for float64 signals): a batch holds a few thousand
    tokens, whose float32 sum is exact to ~1e-6 relative, while a float64 GEMM costs twice as much on CPUs
    and far more on most GPUs. The running sum over batches is float64."""

    def __init__(self, width: int, device: torch.device):
        self._sum = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """x: [B, T, D] signal, mask: [B, T] (1 = real token)."""
        rows = x.reshape(-1, x.shape[-1]) if bool(mask.all()) else x[mask.to(x.device).bool()]  # [n, D]
        rows = rows.to(self._sum.device, torch.float64 if x.dtype == torch.float64 else torch.float32)
        # (BLAS syrk would halve the flops, but SciPy's OpenBLAS threads then fight torch's for the cores)
        if rows.is_cuda and rows.dtype == torch.float32:
            precision = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("highest")  # no TF32 here, whatever the user enabled globally
            try:
                product = rows.T @ rows
            finally:
                torch.set_float32_matmul_precision(precision)
        else:
            product = rows.T @ rows
        self._sum += product.to(torch.float64)
        self.count += rows.shape[0]

    def matrix(self) -> torch.Tensor:
        return self._sum


def pca_basis(cov: Covariance, where: str = "signal") -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors of the damped covariance as columns, by decreasing eigenvalue: Q [D, D], float64, and
    the covariance's eigenvalues in the same order (the damping taken back out) [D]."""
    h = cov.matrix()
    if not bool(torch.isfinite(h).all()):
        raise DynsliceError(f"non-finite values in the {where} covariance: the model produced NaN/Inf there")
    damp = DAMP * torch.mean(torch.diag(h))
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    values, vectors = torch.linalg.eigh(h)
    order = torch.argsort(values, descending=True)
    return vectors[:, order], values[order] - damp.to(values.device)
