"""Which layers of a model the curvature methods handle, and what their functional calls need.

:func:`find_layers` walks a model's modules, keeps every ``Linear``,
``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` (PyTorch's and tnconv's, which
subclass PyTorch's; any ``N`` through ``torch.nn.modules.conv._ConvNd``) and maps
the parameters the caller asked for to them by name. A parameter the curvature
cannot handle is an error that lists it, never a silent omission.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

#: The module types :func:`find_layers` supports (subclasses included).
SUPPORTED = (nn.Linear, _ConvNd)


@dataclass(frozen=True, eq=False)
class Layer:
    """One supported layer of a model and the parameters of it that are in ``params``.

    Attributes:
        name: the module's name in ``model.named_modules()`` (``""`` for the model itself).
        module: the module.
        kind: ``"linear"``, ``"conv"`` or ``"conv_transpose"``.
        weight, bias: the full parameter names (``"conv1.weight"``) if that
            parameter is in ``params``, else ``None``.
        weight_index, bias_index: their positions in ``params`` (or ``None``).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.Flatten(), nn.Linear(4, 2, bias=False))
        >>> [(l.name, l.kind, l.weight, l.bias) for l in find_layers(net)]
        [('0', 'conv', '0.weight', '0.bias'), ('2', 'linear', '2.weight', None)]
    """

    name: str
    module: nn.Module
    kind: str
    weight: Optional[str]
    bias: Optional[str]
    weight_index: Optional[int]
    bias_index: Optional[int]

    @property
    def N(self) -> int:
        """Number of spatial dimensions (0 for a linear layer)."""
        return 0 if self.kind == "linear" else len(self.module.kernel_size)

    @property
    def groups(self) -> int:
        """The convolution's channel groups (1 for a linear layer)."""
        return 1 if self.kind == "linear" else self.module.groups

    @property
    def transposed(self) -> bool:
        """Whether the layer is a transpose convolution."""
        return self.kind == "conv_transpose"

    @property
    def out_features(self) -> int:
        """Channels (or features) of the layer's output."""
        return self.module.out_features if self.kind == "linear" else self.module.out_channels

    @property
    def in_features(self) -> int:
        """Channels (or features) of the layer's input."""
        return self.module.in_features if self.kind == "linear" else self.module.in_channels

    @property
    def patch_size(self) -> int:
        """Rows of one group's weight matrix: ``C_in/G · K1·..·KN`` (``in_features`` for linear)."""
        if self.kind == "linear":
            return self.in_features
        size = self.in_features // self.groups
        for k in self.module.kernel_size:
            size *= k
        return size

    def functional_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the functional calls see it: padded here when ``padding_mode`` is not ``'zeros'``.

        A convolution with ``padding_mode='reflect'`` (or ``'replicate'``,
        ``'circular'``) pads its input itself and then convolves without
        padding; :meth:`hyper` returns ``padding=0`` for it accordingly.

        Example:
            >>> conv = nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular")
            >>> find_layers(conv)[0].functional_input(torch.arange(4.).view(1, 1, 4))
            tensor([[[3., 0., 1., 2., 3., 0.]]])
        """
        m = self.module
        if self.kind == "conv" and m.padding_mode != "zeros":
            return nn.functional.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        return x

    def hyper(self, x: Optional[torch.Tensor] = None, output: Optional[torch.Tensor] = None) -> dict:
        """Keyword arguments for :mod:`tnconv.functional`'s convolution calls on this layer.

        ``kernel_size, stride, padding, dilation, groups`` for a convolution, plus
        ``output_padding`` for a transpose convolution (derived from the shapes of
        its input ``x`` and ``output`` when given, since ``forward(x, output_size)``
        chooses it per call). Empty for a linear layer.

        Example:
            >>> find_layers(nn.Conv2d(4, 6, 3, stride=2, groups=2))[0].hyper()["groups"]
            2
        """
        m = self.module
        if self.kind == "linear":
            return {}
        padding = m.padding
        if self.kind == "conv" and m.padding_mode != "zeros":
            padding = 0
        hyper = dict(kernel_size=tuple(m.kernel_size), stride=tuple(m.stride), padding=padding,
                     dilation=tuple(m.dilation), groups=m.groups)
        if self.transposed:
            hyper["output_padding"] = tuple(m.output_padding)
            if x is not None and output is not None:
                hyper["output_padding"] = tuple(
                    o - ((i - 1) * s - 2 * p + d * (k - 1) + 1)
                    for i, o, k, s, p, d in zip(x.shape[2:], output.shape[2:], m.kernel_size, m.stride, m.padding,
                                                m.dilation))
        return hyper

    def weight_matrix(self, tensor: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor ``[*weight.shape, *rest]`` as per-group matrices ``[G, C_out/G, patch_size, *rest]``.

        For a convolution ``[C_out, C_in/G, *K]`` becomes ``[G, C_out/G, C_in/G·K]``
        (rows of the KFAC gradient factor, columns of the input factor); for a
        transpose convolution, whose weight is ``[C_in, C_out/G, *K]``, the channel
        axes are swapped first (BackPACK's ``weight.transpose(0, 1)``), per group.
        :meth:`weight_from_matrix` is the inverse.

        Example:
            >>> layer = find_layers(nn.ConvTranspose1d(4, 6, 3, groups=2))[0]
            >>> w = layer.module.weight
            >>> torch.equal(layer.weight_from_matrix(layer.weight_matrix(w)), w)
            True
            >>> layer.weight_matrix(w).shape
            torch.Size([2, 3, 6])
        """
        G, m, d = self.groups, self.out_features // self.groups, self.patch_size
        w_ndim = self.module.weight.ndim
        rest = tensor.shape[w_ndim:]
        if self.kind == "linear":
            return tensor.reshape(1, m, d, *rest)
        if self.transposed:
            c = self.in_features // G
            K = tensor.shape[2:w_ndim]
            t = tensor.reshape(G, c, m, *K, *rest).transpose(1, 2)
            return t.reshape(G, m, d, *rest)
        return tensor.reshape(G, m, d, *rest)

    def weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`weight_matrix`: ``[G, C_out/G, patch_size, *rest]`` back to ``[*weight.shape, *rest]``.

        Example:
            >>> layer = find_layers(nn.Conv2d(4, 6, 3, groups=2))[0]
            >>> layer.weight_from_matrix(torch.zeros(2, 3, 18)).shape
            torch.Size([6, 2, 3, 3])
        """
        shape = tuple(self.module.weight.shape)
        rest = matrix.shape[3:]
        if self.transposed:
            G, c, m = self.groups, self.in_features // self.groups, self.out_features // self.groups
            t = matrix.reshape(G, m, c, *shape[2:], *rest).transpose(1, 2)
            return t.reshape(*shape, *rest)
        return matrix.reshape(*shape, *rest)


def _kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _ConvTransposeNd):
        return "conv_transpose"
    if isinstance(module, _ConvNd):
        return "conv"
    return None


def supported_parameters(model: nn.Module) -> list:
    """The trainable ``weight`` and ``bias`` parameters of every supported layer of ``model``, in module order.

    This is what ``params=None`` means for the curvature methods.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
        >>> [p.shape for p in supported_parameters(net)]
        [torch.Size([2, 1, 3, 3]), torch.Size([2]), torch.Size([3, 2]), torch.Size([3])]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params, seen = [], set()
    for _, module in model.named_modules():
        if _kind(module) is None:
            continue
        for attr in ("weight", "bias"):
            p = module._parameters.get(attr)
            if p is not None and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _owners(model: nn.Module) -> dict:
    """``id(parameter) -> [(module name, module, attribute)]`` for every parameter of ``model``."""
    owners: dict = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mod_name, module, attr))
    return owners


def _full(mod_name: str, attr: str) -> str:
    return f"{mod_name}.{attr}" if mod_name else attr


def find_layers(model: nn.Module, params: Optional[Sequence[torch.Tensor]] = None, warn: bool = True) -> list:
    """The supported layers of ``model`` that hold a parameter of ``params``, in module order.

    Args:
        model: the network.
        params: parameters to cover (default: :func:`supported_parameters`). Every
            entry must be a parameter of ``model`` and a ``weight`` or ``bias`` of
            a supported layer.
        warn: with ``params=None``, warn when trainable parameters of
            unsupported layers (e.g. BatchNorm) exist, since they are not covered.

    Returns:
        A list of :class:`Layer`, each with the names and positions in
        ``params`` of its covered parameters.

    Raises:
        TypeError: ``model`` is not a module, or ``params`` is not a sequence of tensors.
        ValueError: ``model`` has no supported layer; ``params`` is empty, holds a
            tensor twice or one that is not a parameter of ``model``, or holds
            parameters of unsupported layers (all listed in the message); a
            supported layer is shared (one parameter in two layers) or lazy.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3))
        >>> [l.name for l in find_layers(net, params=[net[3].weight])]
        ['3']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    supported = [(name, m) for name, m in model.named_modules() if _kind(m) is not None]
    if not supported:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(f"model has no supported layer (Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d or their "
                         f"subclasses); its modules are: {', '.join(kinds)}")
    for name, m in supported:
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(f"model's layer {name or '(the model)'} ({type(m).__name__}) is lazy and not initialized "
                             "yet: run one forward pass before building the curvature")
    owners = _owners(model)
    if params is None:
        params = supported_parameters(model)
        if warn:
            covered = {id(p) for p in params}
            left = [(_full(n, a), type(m).__name__) for pid, uses in owners.items() for n, m, a in uses[:1]
                    if pid not in covered and getattr(m, a).requires_grad]
            if left:
                listed = ", ".join(f"{n} ({t})" for n, t in left[:8]) + (", ..." if len(left) > 8 else "")
                warnings.warn(f"{len(left)} trainable parameter(s) of model are in layers the curvature does not "
                              f"support and are not covered: {listed}. Pass params= to choose the covered "
                              "parameters explicitly (see tnconv.curvature.supported_parameters).", stacklevel=3)
    elif isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise TypeError(f"params must be a list of parameters of model, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params must hold at least one parameter of model, got an empty list")
    positions: dict = {}
    unsupported, foreign = [], []
    for index, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params must hold tensors, got {type(p).__name__} at position {index}")
        if id(p) in positions:
            raise ValueError(f"params holds the same tensor twice (positions {positions[id(p)]} and {index})")
        positions[id(p)] = index
        uses = owners.get(id(p))
        if uses is None:
            foreign.append(f"position {index} (shape {tuple(p.shape)})")
            continue
        layers = {(n, id(m)) for n, m, a in uses if _kind(m) is not None and a in ("weight", "bias")}
        if len({mid for _, mid in layers}) > 1:
            raise ValueError(f"params[{index}] is shared by the layers {sorted(n for n, _ in layers)}: the curvature "
                             "needs one layer per parameter")
        if not layers:
            n, m, a = uses[0]
            unsupported.append(f"{_full(n, a)} ({type(m).__name__})")
    if foreign:
        raise ValueError(f"params holds tensors that are not parameters of model: {', '.join(foreign)}")
    if unsupported:
        raise ValueError(f"params holds {len(unsupported)} parameter(s) of layers the curvature does not support "
                         f"(only the weight and bias of Linear, Conv*d and ConvTranspose*d): {', '.join(unsupported)}")
    layers = []
    for name, m in supported:
        entries = {}
        for attr in ("weight", "bias"):
            p = m._parameters.get(attr)
            if p is not None and id(p) in positions:
                entries[attr] = (_full(name, attr), positions[id(p)])
        if entries:
            w, b = entries.get("weight", (None, None)), entries.get("bias", (None, None))
            layers.append(Layer(name, m, _kind(m), w[0], b[0], w[1], b[1]))
    return layers


__all__ = ["Layer", "find_layers", "supported_parameters", "SUPPORTED"]
