"""tnconv's per-sample convolution gradients as Opacus' grad samplers (and squared norms for its ghost clipping).

Opacus computes per-sample gradients with a *grad sampler* per module type,
``f(module, activations, backprops) -> {parameter: [B, *parameter.shape]}``,
found in a registry that ``opacus.grad_sample.register_grad_sampler`` fills.
:func:`register` puts :func:`grad_sampler` there for ``nn.Conv1d/2d/3d`` (and
tnconv's own convolutions, which Opacus would otherwise run through functorch),
so a ``PrivacyEngine`` training loop runs unchanged and its convolutions'
per-sample gradients come from tnconv's derived diagram (a PyTorch kernel, no
im2col matrix). :func:`unregister` puts back what was there before; the
context manager :func:`registered` does both::

    from tnconv.integrations import opacus as tnconv_opacus

    tnconv_opacus.register()
    model, optimizer, loader = PrivacyEngine().make_private(module=model, optimizer=optimizer,
                                                             data_loader=loader, noise_multiplier=1.0,
                                                             max_grad_norm=1.0)
    ...                                   # the usual loop: loss.backward(); optimizer.step()

Modes (``PrivacyEngine.make_private(grad_sample_mode=...)``):

- ``"hooks"`` (Opacus' default): every registered convolution uses :func:`grad_sampler`.
- ``"ghost"`` (ghost / fast gradient clipping): with ``norms=True`` (default)
  the convolutions also get :func:`norm_sampler`, the per-sample gradient
  norms from the squared-norm diagram, which contracts the input with itself
  over the kernel patch (an ``[O, O]`` Gram matrix per sample) instead of
  materializing the gradients when that is cheaper; Opacus itself has no
  norm sampler for convolutions and materializes their per-sample gradients.
- ``"functorch"`` and ``"ew"`` (expanded weights) do not consult the registry:
  they are unchanged.

With ``transpose=True`` ``nn.ConvTranspose1d/2d/3d`` are registered too (Opacus
has no sampler for them and falls back to functorch).

The samplers follow Opacus' conventions: the ``backprops`` they get are the
output gradients already multiplied by the batch size for ``loss_reduction="mean"``,
so ``grad_sample[b]`` is the gradient of sample ``b``'s loss; layouts are
``[B, *parameter.shape]`` (``tnconv.curvature.PerSample(convention="opacus")``
gives the same numbers for a whole model).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Dict, List

import torch
from torch import nn

from ..curvature import per_layer
from ..curvature.layers import Layer, find_layers

_LAYERS: "weakref.WeakKeyDictionary[nn.Module, Layer]" = weakref.WeakKeyDictionary()
#: What :func:`register` replaced: ``[(registry, module type, previous sampler or None)]``, in order.
_SAVED: list = []


def _opacus():
    try:
        import opacus.grad_sample as grad_sample
    except ImportError as error:  # pragma: no cover - the extra is missing
        raise ImportError("tnconv.integrations.opacus needs Opacus: python -m pip install -e \".[opacus]\"") from error
    return grad_sample


def _layer(module: nn.Module) -> Layer:
    layer = _LAYERS.get(module)
    if layer is None:
        layer = find_layers(module, warn=False)[0]
        _LAYERS[module] = layer
    return layer


def conv_types(transpose: bool = False) -> tuple:
    """The module types :func:`register` installs the samplers for.

    PyTorch's ``Conv1d/2d/3d`` and tnconv's ``Conv1d/2d/3d/ConvNd`` (Opacus
    looks samplers up by exact type); with ``transpose``, PyTorch's and
    tnconv's ``ConvTranspose1d/2d/3d`` too.

    Example:
        >>> nn.Conv2d in conv_types(), nn.ConvTranspose2d in conv_types(transpose=True)
        (True, True)
    """
    from .. import nn as tnn

    names = ["Conv1d", "Conv2d", "Conv3d"] + (["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
                                             if transpose else [])
    types = [getattr(nn, name) for name in names]
    types += [t for t in (getattr(tnn, name, None) for name in names + ["ConvNd"]) if isinstance(t, type)]
    return tuple(types)


def grad_sampler(module: nn.Module, activations: List[torch.Tensor], backprops: torch.Tensor) -> Dict:
    """Opacus grad sampler: ``{weight: [B, *weight.shape], bias: [B, C_out]}`` of a (transpose) convolution.

    ``activations[0]`` is the module's input ``[B, C_in, *I]`` and
    ``backprops`` its output gradient ``[B, C_out, *O]`` (Opacus' scaling
    included). Parameters that do not require grad are left out, as Opacus does.

    Example:
        >>> conv = nn.Conv2d(2, 3, 3, stride=2)
        >>> x = torch.randn(4, 2, 7, 7)
        >>> out = grad_sampler(conv, [x], torch.randn(4, 3, 3, 3))
        >>> out[conv.weight].shape, out[conv.bias].shape
        (torch.Size([4, 3, 2, 3, 3]), torch.Size([4, 3]))
    """
    layer = _layer(module)
    x = layer.functional_input(activations[0].to(backprops.dtype))
    out = {}
    if module.weight.requires_grad:
        out[module.weight] = per_layer.weight_grad_batch(layer, x, backprops)
    if module.bias is not None and module.bias.requires_grad:
        out[module.bias] = per_layer.bias_grad_batch(layer, backprops)
    return out


def norm_sampler(module: nn.Module, activations: List[torch.Tensor], backprops: torch.Tensor) -> Dict:
    """Opacus norm sampler (ghost clipping): ``{parameter: [B]}``, the per-sample gradient norms (not squared).

    Example:
        >>> conv = nn.Conv1d(2, 3, 3)
        >>> x, g = torch.randn(4, 2, 9), torch.randn(4, 3, 7)
        >>> norms = norm_sampler(conv, [x], g)[conv.weight]
        >>> torch.allclose(norms, grad_sampler(conv, [x], g)[conv.weight].flatten(1).norm(dim=1), atol=1e-5)
        True
    """
    layer = _layer(module)
    x = layer.functional_input(activations[0].to(backprops.dtype))
    out = {}
    if module.weight.requires_grad:
        out[module.weight] = per_layer.weight_sq_norms(layer, x, backprops).clamp_min(0).sqrt()
    if module.bias is not None and module.bias.requires_grad:
        out[module.bias] = per_layer.bias_grad_batch(layer, backprops).norm(dim=1)
    return out


def register(norms: bool = True, transpose: bool = False) -> None:
    """Install :func:`grad_sampler` (and, with ``norms``, :func:`norm_sampler`) for :func:`conv_types`.

    Registering again first restores Opacus' own samplers (no stacking).
    Affects every ``GradSampleModule`` (and ghost-clipping module) created
    afterwards, and existing ones at their next backward pass: Opacus looks
    the sampler up each time.

    Raises:
        ImportError: Opacus is not installed.
        TypeError: ``norms`` or ``transpose`` is not a bool.
    """
    for name, value in (("norms", norms), ("transpose", transpose)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    gs = _opacus()
    unregister()
    registries = [(gs.GradSampleModule.GRAD_SAMPLERS, grad_sampler)]
    if norms:
        registries.append((gs.GradSampleModuleFastGradientClipping.NORM_SAMPLERS, norm_sampler))
    for registry, sampler in registries:
        for module_type in conv_types(transpose):
            _SAVED.append((registry, module_type, registry.get(module_type)))
            registry[module_type] = sampler


def unregister() -> None:
    """Put back the samplers :func:`register` replaced (Opacus' own; none for the types it had none for)."""
    while _SAVED:
        registry, module_type, previous = _SAVED.pop()
        if previous is None:
            registry.pop(module_type, None)
        else:
            registry[module_type] = previous


def is_registered() -> bool:
    """Whether tnconv's samplers are installed.

    Example:
        >>> is_registered()
        False
    """
    return bool(_SAVED)


@contextmanager
def registered(norms: bool = True, transpose: bool = False):
    """:func:`register` on entry, :func:`unregister` on exit (also on an exception).

    Example:
        >>> import pytest; opacus = pytest.importorskip("opacus")  # the "opacus" extra
        >>> with registered():
        ...     opacus.GradSampleModule.GRAD_SAMPLERS[nn.Conv2d] is grad_sampler
        True
        >>> opacus.GradSampleModule.GRAD_SAMPLERS[nn.Conv2d] is grad_sampler
        False
    """
    register(norms, transpose)
    try:
        yield
    finally:
        unregister()


__all__ = ["register", "unregister", "registered", "is_registered", "grad_sampler", "norm_sampler", "conv_types"]
