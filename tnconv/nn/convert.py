"""``convert``: make a model's convolutions tnconv layers, in place.

A module is converted by changing its class to its tnconv twin, so the module
object, its parameters, buffers and hooks stay what they were (optimizers and
references keep working). PyTorch's ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d``
have fixed twins (:class:`tnconv.nn.Conv2d`, ...). A *subclass* of one of them
gets a twin derived from it, whose convolution is tnconv's while everything the
subclass adds stays, as long as tnconv can take the convolution over: a
``Conv*d`` subclass that does not replace ``_conv_forward`` (its ``forward``, if
replaced, must call ``_conv_forward``), a ``ConvTranspose*d`` subclass that
does not replace ``forward``. Other subclasses are left as they are, with a
warning that names them; ``strict=True`` refuses every subclass instead.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.modules.conv import _ConvTransposeNd

from .conv import Conv1d, Conv2d, Conv3d, _TNConvMixin
from .conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, _TNConvTransposeMixin

_FIXED = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d,
          torch.nn.ConvTranspose1d: ConvTranspose1d, torch.nn.ConvTranspose2d: ConvTranspose2d,
          torch.nn.ConvTranspose3d: ConvTranspose3d}
_DERIVED: dict = {}  # subclass -> its twin


def _torch_base(cls):
    """The PyTorch convolution class ``cls`` derives from, or ``None``."""
    return next((base for base in cls.__mro__ if base in _FIXED), None)


def _is_tnconv(module) -> bool:
    return isinstance(module, (_TNConvMixin, _TNConvTransposeMixin))


def _takes_over(cls, base) -> bool:
    """Whether a twin derived from ``cls`` computes its convolution with tnconv."""
    if issubclass(base, _ConvTransposeNd):
        return cls.forward is base.forward
    if cls._conv_forward is not base._conv_forward:
        return False
    return cls.forward is base.forward or "_conv_forward" in cls.forward.__code__.co_names


def _twin(cls):
    """tnconv's twin of the convolution class ``cls``."""
    if cls in _FIXED:
        return _FIXED[cls]
    twin = _DERIVED.get(cls)
    if twin is None:
        mixin = _TNConvTransposeMixin if issubclass(cls, _ConvTransposeNd) else _TNConvMixin
        twin = type(cls.__name__, (mixin, cls), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__reduce_ex__": _reduce_derived,
            "__doc__": f"``{cls.__qualname__}`` with its convolution computed by tnconv (made by ``tnconv.nn.convert``).",
            "_tnconv_base": cls})
        _DERIVED[cls] = twin
    return twin


def _reduce_derived(self, protocol):
    # a derived twin is not importable by name: rebuild it from the subclass it was derived from
    return _rebuild_derived, (type(self)._tnconv_base,), self.__getstate__()


def _rebuild_derived(base):
    return object.__new__(_twin(base))


def _modules(module):
    """``(name, module)`` of ``module`` (named ``<root>``) and everything below it."""
    return [("<root>", module)] + list(module.named_modules())[1:]


def _subclasses(module):
    """``(name, module)`` of every convolution in ``module`` whose class is a subclass of PyTorch's."""
    found = []
    for name, child in _modules(module):
        base = _torch_base(type(child))
        if base is not None and type(child) is not base and not _is_tnconv(child):
            found.append((name, child))
    return found


def convert(module: torch.nn.Module, crs_keep=None, generator=None, strict: bool = False) -> torch.nn.Module:
    """Make every convolution inside ``module`` (and ``module`` itself) its tnconv twin, in place.

    ``torch.nn.Conv1d/2d/3d`` become :class:`~tnconv.nn.Conv1d` ... and
    ``torch.nn.ConvTranspose1d/2d/3d`` :class:`~tnconv.nn.ConvTranspose1d` ...: the
    module objects stay (their class changes), so parameters are the same
    ``Parameter`` objects and optimizers, state_dicts and hooks keep working.
    Subclasses are converted when tnconv can take their convolution over (see
    :mod:`tnconv.nn.convert`) and left alone with a warning otherwise.

    Args:
        module: a model, or a single convolution.
        crs_keep: a float, or keep probabilities for the channel axis then each
            spatial axis: column-row sampling in every converted convolution's
            backward pass (transpose convolutions stay exact).
        generator: the ``torch.Generator`` of the samples.
        strict: refuse subclasses of PyTorch's convolutions: a ``ValueError`` names them all.

    Returns:
        ``module``, converted.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
        >>> convert(net)[0]
        tnconv.Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))
        >>> convert(torch.nn.ConvTranspose1d(2, 2, 3))
        tnconv.ConvTranspose1d(2, 2, kernel_size=(3,), stride=(1,))
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {strict!r}")
    subclasses = _subclasses(module)
    if strict and subclasses:
        names = ", ".join(f"{name} ({type(child).__module__}.{type(child).__qualname__})" for name, child in subclasses)
        raise ValueError(f"convert(strict=True) converts PyTorch's Conv1d/2d/3d and ConvTranspose1d/2d/3d only; "
                         f"these modules are subclasses of them: {names}. Pass strict=False to convert the "
                         "subclasses whose convolution tnconv can take over")
    skipped = []
    for name, child in _modules(module):
        base = _torch_base(type(child))
        if base is None:
            continue
        if not _is_tnconv(child):
            if type(child) is not base and not _takes_over(type(child), base):
                skipped.append(f"{name} ({type(child).__qualname__})")
                continue
            child.__class__ = _twin(type(child))
        if isinstance(child, _TNConvMixin):
            child._setup_crs(crs_keep, generator)
    if skipped:
        warnings.warn(f"convert left these convolutions unconverted: their class replaces the convolution itself "
                      f"(forward without _conv_forward, or _conv_forward), which tnconv cannot take over: "
                      f"{', '.join(skipped)}", UserWarning, stacklevel=2)
    return module


__all__ = ["convert"]
