"""The damped inverse of a KFAC approximation, from its factors' eigendecompositions."""

from __future__ import annotations

import math

import torch

from . import blocks


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive float, got {value!r}")
    return float(value)


def _eigh(M: torch.Tensor, layer: str, which: str):
    """``torch.linalg.eigh`` with a clear error for non-finite factors and a float64 retry (as curvlinops retries)."""
    if not torch.isfinite(M).all():
        raise FloatingPointError(f"the {which} factor of layer {layer!r} is not finite: the training diverged "
                                 "(lower the learning rate or raise the damping)")
    try:
        return torch.linalg.eigh(M)
    except torch.linalg.LinAlgError:
        if M.dtype == torch.float64:
            raise
        lam, Q = torch.linalg.eigh(M.double())
        return lam.to(M.dtype), Q.to(M.dtype)


class KFACInverse:
    """``(KFAC + damping)⁻¹`` block by block: ``(Q_G ⊗ Q_A) diag(1/d) (Q_G ⊗ Q_A)ᵀ``.

    With the eigendecompositions ``A = Q_A diag(λ_A) Q_Aᵀ`` and
    ``G = Q_G diag(λ_G) Q_Gᵀ`` of each layer's factors (per group), a weight
    block's denominators are

    - ``damping=δ``: ``λ_G λ_Aᵀ + δ`` — the exact inverse of ``G ⊗ A + δ I``
      (curvlinops' ``use_exact_damping=True``);
    - ``damping=δ, pi_correction=True``: ``(λ_G + δ_G)(λ_A + δ_A)ᵀ`` with
      ``δ_A = max(π √δ, min_damping)``, ``δ_G = max(√δ / π, min_damping)``,
      ``π = √((tr A / n) / (tr G / m))`` (Martens & Grosse, 2015, §6.3;
      curvlinops' ``use_heuristic_damping=True``; plain ``δ`` for both if a trace
      is not positive);
    - ``damping=(δ_A, δ_G)``: ``(λ_G + δ_G)(λ_A + δ_A)ᵀ`` (curvlinops' default,
      which takes ``(δ, δ)`` for a float).

    A separate bias block ``G`` gets ``λ_G + δ`` with exact damping and
    ``λ_G + δ_G`` otherwise (the weight's damped gradient factor; ``δ`` for a
    layer whose weight is not covered), as in curvlinops. Build it with :meth:`KFAC.inverse`; it is a snapshot of
    the factors at that time.

    Example:
        >>> from tnconv.curvature import KFAC
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> kfac = KFAC(net, torch.nn.MSELoss(), fisher_type="type-2")
        >>> kfac.update(torch.randn(8, 1, 4))
        >>> dense = kfac.to_dense()
        >>> inv = kfac.inverse(damping=0.1).to_dense()
        >>> eye = torch.eye(dense.shape[0])
        >>> torch.allclose(inv @ (dense + 0.1 * eye), eye, atol=1e-4)
        True
    """

    def __init__(self, kfac, damping, pi_correction: bool = False, min_damping: float = 1e-8):
        if not isinstance(pi_correction, bool):
            raise TypeError(f"pi_correction must be a bool, got {pi_correction!r}")
        if isinstance(damping, (tuple, list)):
            if len(damping) != 2:
                raise ValueError(f"damping must be a positive float or a pair (damping_A, damping_G), got {damping!r}")
            if pi_correction:
                raise ValueError("damping must be a single float with pi_correction=True (π splits it between the "
                                 f"factors), got {damping!r}")
            damping = (_positive(damping[0], "damping[0]"), _positive(damping[1], "damping[1]"))
        else:
            damping = _positive(damping, "damping")
        self.damping, self.pi_correction = damping, pi_correction
        self.min_damping = _positive(min_damping, "min_damping")
        self.layers, self.params = kfac.layers, kfac.params
        self._shared, self._joint = kfac._shared, kfac._joint
        self._blocks = {}
        for name, (A, G) in kfac._layer_factors().items():
            lam_G, Q_G = _eigh(G, name, "gradient")
            lam_A, Q_A = (None, None) if A is None else _eigh(A, name, "input")
            self._blocks[name] = (Q_A, Q_G) + self._denominators(A, G, lam_A, lam_G)

    def _split(self, A, G):
        """``(δ_A, δ_G)`` per group ``[G]`` for the weight block."""
        if isinstance(self.damping, tuple):
            d_A, d_G = self.damping
            return A.new_full(A.shape[:1], d_A), A.new_full(A.shape[:1], d_G)
        delta = self.damping
        if not self.pi_correction:
            return None
        mean_A = A.diagonal(dim1=-2, dim2=-1).mean(-1)
        mean_G = G.diagonal(dim1=-2, dim2=-1).mean(-1)
        ok = (mean_A >= 0) & (mean_G > 0)
        pi = torch.where(ok, mean_A / torch.where(ok, mean_G, 1), 1).sqrt()
        root = math.sqrt(delta)
        d_A = torch.where(ok, (root * pi).clamp_min(self.min_damping), delta)
        d_G = torch.where(ok, (root / pi).clamp_min(self.min_damping), delta)
        return d_A, d_G

    def _denominators(self, A, G, lam_A, lam_G):
        bias_damping = self.damping[1] if isinstance(self.damping, tuple) else self.damping
        bias = lam_G + bias_damping
        if A is None:
            return None, bias
        split = self._split(A, G)
        if split is None:
            weight = lam_G.unsqueeze(-1) * lam_A.unsqueeze(-2) + self.damping
        else:
            d_A, d_G = split
            bias = lam_G + d_G.unsqueeze(-1)  # the bias shares the weight's damped gradient factor
            weight = bias.unsqueeze(-1) * (lam_A + d_A.unsqueeze(-1)).unsqueeze(-2)
        return weight, bias

    def __matmul__(self, vector):
        """``(KFAC + damping)⁻¹ @ v``, with ``v`` as for :meth:`KFAC.__matmul__`."""
        parts, restore = blocks.as_list(vector, self.params)

        def weight_fn(layer, W):
            Q_A, Q_G, denom, _ = self._blocks[layer.name]
            W = blocks.sandwich(Q_G.mT, W, Q_A) / denom.unsqueeze(-1)  # into the eigenbasis, divide
            return blocks.sandwich(Q_G, W, Q_A.mT)

        def bias_fn(layer, b):
            _, Q_G, _, denom = self._blocks[layer.name]
            return Q_G @ ((Q_G.mT @ b) / denom.unsqueeze(-1))

        return restore(blocks.apply(self.layers, parts, self._shared, self._joint, weight_fn, bias_fn))

    def to_dense(self) -> torch.Tensor:
        """The inverse as a dense ``[D, D]`` matrix (for small models)."""
        D = sum(p.numel() for p in self.params)
        return self @ torch.eye(D, dtype=self.params[0].dtype, device=self.params[0].device)


__all__ = ["KFACInverse"]
