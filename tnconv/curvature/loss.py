r"""Symmetric factorizations of a loss's Hessian with respect to the model output, with explicit scaling.

For a model output ``f`` of shape ``[B, C]`` and targets ``y``, the supported
losses are ``L = r · Σ_b ℓ(f_b, y_b)`` with the per-sample loss ``ℓ`` and the
reduction's constant ``r`` (:func:`reduction_scale`):

=====================  ==============================================  =========  ===========
loss                   ``ℓ(f, y)``                                     ``r`` sum   ``r`` mean
=====================  ==============================================  =========  ===========
``MSELoss``            ``‖f − y‖²``                                    1          ``1/(B·C)``
``CrossEntropyLoss``   ``−log softmax(f)_y``                           1          ``1/B``
``BCEWithLogitsLoss``  ``Σ_c −y_c log σ(f_c) − (1−y_c) log(1−σ(f_c))``  1          ``1/(B·C)``
=====================  ==============================================  =========  ===========

Every factorization here returns ``S`` of shape ``[V, B, C]`` with

    ``Σ_v S[v, b] S[v, b]ᵀ = ∇²_{f_b} L = r · ∇²ℓ(f_b, y_b)``        (exactly, or in expectation)

so that ``Σ_{v,b} J_bᵀ S[v,b] S[v,b]ᵀ J_b`` is the GGN (or Fisher) of ``L``
itself, reduction included — the matrix square root BackPACK backpropagates,
and what curvlinops' KFAC ends up with after its per-batch correction:

- :func:`hessian_sqrt` (``V = C``): the exact square root, ``√r·√2·I`` for MSE,
  ``√r·(diag(√p) − p √pᵀ)`` for cross-entropy (``p = softmax(f_b)``),
  ``√r·diag(√(σ(1−σ)))`` for BCE;
- :func:`sampled_sqrt` (``V = mc_samples``): ``√r · ∇_f ℓ(f_b, ỹ_vb) / √V`` with
  labels ``ỹ`` drawn from the model's predictive distribution
  (:func:`draw_labels`); ``E[S Sᵀ]`` is the exact factor's product;
- :func:`empirical_sqrt` (``V = 1``): ``√r · ∇_f ℓ(f_b, y_b)``, the true
  labels' gradient (empirical Fisher). It equals ``∇_{f_b} L / √r``, so one
  ordinary backward pass of ``L`` gives it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

#: ``fisher_type`` values, as curvlinops names them.
FISHER_TYPES = ("type-2", "mc", "empirical", "forward-only")

_KINDS = ((nn.MSELoss, "mse"), (nn.CrossEntropyLoss, "cross_entropy"), (nn.BCEWithLogitsLoss, "bce"))


@dataclass(frozen=True)
class LossInfo:
    """What the curvature needs to know of a loss: its kind and reduction.

    Attributes:
        kind: ``"mse"``, ``"cross_entropy"`` or ``"bce"``.
        reduction: ``"mean"`` or ``"sum"``.

    Example:
        >>> check_loss(torch.nn.CrossEntropyLoss(reduction="sum"))
        LossInfo(kind='cross_entropy', reduction='sum')
    """

    kind: str
    reduction: str


def check_loss(loss_func) -> LossInfo:
    """Validate ``loss_func`` and return its :class:`LossInfo`.

    Raises:
        ValueError: ``loss_func`` is not an ``MSELoss``, ``CrossEntropyLoss`` or
            ``BCEWithLogitsLoss`` module, has no ``reduction`` or ``reduction="none"``,
            or uses class weights, label smoothing or ``pos_weight`` (their
            Hessians are not the ones here).

    Example:
        >>> check_loss(torch.nn.MSELoss()).reduction
        'mean'
    """
    for cls, kind in _KINDS:
        if isinstance(loss_func, cls):
            break
    else:
        raise ValueError(f"loss_func must be a torch.nn.MSELoss, CrossEntropyLoss or BCEWithLogitsLoss module (with "
                         f"reduction 'mean' or 'sum'), got {loss_func!r}")
    reduction = getattr(loss_func, "reduction", None)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"loss_func must have reduction 'mean' or 'sum' (the curvature's scale depends on it), got "
                         f"{reduction!r}")
    if kind == "cross_entropy":
        if loss_func.weight is not None or loss_func.label_smoothing != 0 or loss_func.ignore_index != -100:
            raise ValueError("loss_func: CrossEntropyLoss with weight, label_smoothing or ignore_index is not "
                             "supported")
    if kind == "bce" and (loss_func.weight is not None or loss_func.pos_weight is not None):
        raise ValueError("loss_func: BCEWithLogitsLoss with weight or pos_weight is not supported")
    return LossInfo(kind, reduction)


def _check_output(output: torch.Tensor, name: str = "output") -> None:
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or not output.is_floating_point():
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"{name} (the model's output) must be a floating-point [B, C] tensor, got {got}")


def reduction_scale(loss_func, output: torch.Tensor) -> float:
    """The constant ``r`` of ``L = r · Σ_b ℓ(f_b, y_b)`` for an output ``[B, C]`` (table above).

    Example:
        >>> reduction_scale(torch.nn.MSELoss(), torch.zeros(4, 3))
        0.08333333333333333
        >>> reduction_scale(torch.nn.CrossEntropyLoss(), torch.zeros(4, 3))
        0.25
    """
    info = check_loss(loss_func)
    _check_output(output)
    B, C = output.shape
    if info.reduction == "sum":
        return 1.0
    return 1.0 / (B * C) if info.kind in ("mse", "bce") else 1.0 / B


def hessian_sqrt(output: torch.Tensor, loss_func, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Exact symmetric factorization ``[C, B, C]`` of the loss Hessian: ``Σ_v S[v,b] S[v,b]ᵀ = ∇²_{f_b} L``.

    The Hessians of these losses do not depend on the targets (``targets`` is
    accepted for a uniform signature and ignored). Differentiable in ``output``
    only through ``softmax``/``sigmoid``; the result is detached.

    Example:
        >>> f = torch.randn(2, 3, dtype=torch.float64)
        >>> S = hessian_sqrt(f, torch.nn.CrossEntropyLoss(reduction="sum"))
        >>> H = torch.autograd.functional.hessian(lambda z: torch.nn.functional.cross_entropy(z, torch.tensor(0)), f[0])
        >>> torch.allclose(torch.einsum("vi,vj->ij", S[:, 0], S[:, 0]), H)
        True
    """
    info = check_loss(loss_func)
    _check_output(output)
    f = output.detach()
    B, C = f.shape
    root_r = math.sqrt(reduction_scale(loss_func, f))
    eye = torch.eye(C, dtype=f.dtype, device=f.device)
    if info.kind == "mse":
        return (eye * (math.sqrt(2.0) * root_r)).unsqueeze(1).expand(C, B, C).contiguous()
    if info.kind == "cross_entropy":
        p = f.softmax(dim=1)
        tau = p.sqrt()
        # column v of diag(√p) − p √pᵀ: component c is √p_v (δ_cv − p_c)
        S = torch.diag_embed(tau) - p.unsqueeze(2) * tau.unsqueeze(1)  # [B, c, v]
        return (S.permute(2, 0, 1) * root_r).contiguous()
    s = f.sigmoid()
    return torch.diag_embed((s * (1 - s)).sqrt() * root_r).permute(2, 0, 1).contiguous()


def draw_labels(output: torch.Tensor, loss_func, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw ``ỹ ~ p(y | f)`` per sample from the predictive distribution the loss is the likelihood of.

    MSE: ``f + N(0, ½)`` (so that ``−log p = ‖y − f‖² + const``); cross-entropy:
    a class from ``softmax(f)``; BCE: ``Bernoulli(σ(f))``. The draws consume
    ``generator`` exactly as curvlinops' ``KFACLinearOperator.draw_label`` does,
    so a generator in the same state gives the same labels.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> draw_labels(torch.zeros(4, 3), torch.nn.CrossEntropyLoss(), g).shape
        torch.Size([4])
    """
    info = check_loss(loss_func)
    _check_output(output)
    f = output.detach()
    if info.kind == "mse":
        return f + math.sqrt(0.5) * torch.randn(f.shape, dtype=f.dtype, device=f.device, generator=generator)
    if info.kind == "cross_entropy":
        return f.softmax(dim=1).multinomial(num_samples=1, generator=generator).squeeze(-1)
    return f.sigmoid().bernoulli(generator=generator)


def _per_sample_grad(f: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """``∇_f ℓ(f_b, y_b)`` for every sample, ``[B, C]``."""
    if kind == "mse":
        return 2 * (f - labels)
    if kind == "cross_entropy":
        return f.softmax(dim=1) - nn.functional.one_hot(labels.long(), f.shape[1]).to(f.dtype)
    return f.sigmoid() - labels.to(f.dtype)


def sampled_sqrt(output: torch.Tensor, loss_func, mc_samples: int = 1,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Monte-Carlo factorization ``[mc_samples, B, C]``: ``√r · ∇_f ℓ(f_b, ỹ_vb) / √mc_samples``.

    ``E[Σ_v S[v,b] S[v,b]ᵀ] = ∇²_{f_b} L`` (the Fisher of these likelihoods is
    their Hessian). Labels come from :func:`draw_labels`, sample by sample
    (``v`` outermost), from ``generator``.

    Example:
        >>> f = torch.randn(3, 4, dtype=torch.float64)
        >>> S = sampled_sqrt(f, torch.nn.MSELoss(reduction="sum"), 20000, torch.Generator().manual_seed(0))
        >>> F = torch.einsum("vbi,vbj->bij", S, S)[0]
        >>> bool((F - 2 * torch.eye(4, dtype=torch.float64)).abs().max() < 0.1)
        True
    """
    info = check_loss(loss_func)
    _check_output(output)
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
    f = output.detach()
    scale = math.sqrt(reduction_scale(loss_func, f) / mc_samples)
    draws = [_per_sample_grad(f, draw_labels(f, loss_func, generator), info.kind) for _ in range(mc_samples)]
    return torch.stack(draws).mul_(scale)


def empirical_sqrt(output: torch.Tensor, loss_func, targets: torch.Tensor) -> torch.Tensor:
    """Empirical-Fisher factor ``[1, B, C]``: ``√r · ∇_f ℓ(f_b, y_b)`` for the true targets.

    Example:
        >>> f, y = torch.randn(3, 4, dtype=torch.float64, requires_grad=True), torch.tensor([0, 2, 1])
        >>> loss = torch.nn.CrossEntropyLoss()
        >>> g, = torch.autograd.grad(loss(f, y), f)
        >>> torch.allclose(empirical_sqrt(f, loss, y)[0], g / reduction_scale(loss, f) ** 0.5)
        True
    """
    info = check_loss(loss_func)
    _check_output(output)
    f = output.detach()
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a tensor, got {type(targets).__name__}")
    expected = f.shape[:1] if info.kind == "cross_entropy" else f.shape
    if tuple(targets.shape) != tuple(expected):
        raise ValueError(f"targets must have shape {tuple(expected)} for {type(loss_func).__name__} on an output "
                         f"{tuple(f.shape)}, got {tuple(targets.shape)}")
    scale = math.sqrt(reduction_scale(loss_func, f))
    return (_per_sample_grad(f, targets, info.kind) * scale).unsqueeze(0)


def output_sqrt(output: torch.Tensor, loss_func, targets: Optional[torch.Tensor], fisher_type: str,
                mc_samples: int = 1, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
    """The factorization ``[V, B, C]`` a ``fisher_type`` backpropagates (``None`` for ``"forward-only"``).

    ``"type-2"``: :func:`hessian_sqrt`; ``"mc"``: :func:`sampled_sqrt`;
    ``"empirical"``: :func:`empirical_sqrt`; ``"forward-only"`` needs no
    backward pass (the gradient factors are identities).

    Example:
        >>> output_sqrt(torch.zeros(2, 3), torch.nn.MSELoss(), None, "type-2").shape
        torch.Size([3, 2, 3])
    """
    check_fisher_type(fisher_type, mc_samples)
    if fisher_type == "type-2":
        return hessian_sqrt(output, loss_func)
    if fisher_type == "mc":
        return sampled_sqrt(output, loss_func, mc_samples, generator)
    if fisher_type == "empirical":
        return empirical_sqrt(output, loss_func, targets)
    check_loss(loss_func)
    return None


def check_fisher_type(fisher_type, mc_samples=1) -> None:
    """``fisher_type`` is one of :data:`FISHER_TYPES`, and ``mc_samples`` is 1 unless it is ``"mc"``.

    Example:
        >>> check_fisher_type("mc", 4)
    """
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
    if fisher_type != "mc" and mc_samples != 1:
        raise ValueError(f"mc_samples must be 1 for fisher_type={fisher_type!r} (it counts Monte-Carlo samples), "
                         f"got {mc_samples}")


__all__ = ["LossInfo", "check_loss", "reduction_scale", "hessian_sqrt", "draw_labels", "sampled_sqrt",
           "empirical_sqrt", "output_sqrt", "check_fisher_type", "FISHER_TYPES"]
