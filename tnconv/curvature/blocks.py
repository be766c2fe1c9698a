"""Parameter-shaped tensors as per-layer Kronecker blocks, for products with KFAC and its inverse.

A vector over ``params`` is a list of parameter-shaped tensors or one flat
tensor (``[D]`` or ``[D, K]`` for ``K`` vectors). Each covered layer's part is
a weight block ``[G, m, n, K]`` (its per-group weight matrices, :meth:`Layer.weight_matrix`;
weight and bias as one ``[W | b]`` matrix when treated jointly) and a bias
block ``[G, m, K]``, on which the Kronecker factors act.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .layers import Layer


def layer_groups(layer: Layer, shared: bool) -> tuple:
    """``(G, m)``: the groups the layer's factors have and the output channels per group.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> layer = find_layers(torch.nn.Conv2d(4, 6, 3, groups=2))[0]
        >>> layer_groups(layer, False), layer_groups(layer, True)
        ((2, 3), (1, 6))
    """
    G = 1 if shared else layer.groups
    return G, layer.out_features // G


def sandwich(left: torch.Tensor, W: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ W[..., v] @ right`` per group for a block ``W [G, m, n, K]``: ``[G, m', n', K]``.

    Example:
        >>> G, W, A = torch.randn(2, 3, 3), torch.randn(2, 3, 4, 5), torch.randn(2, 4, 4)
        >>> torch.allclose(sandwich(G, W, A), torch.einsum("gij,gjkv,gkl->gilv", G, W, A), atol=1e-5)
        True
    """
    out = left.unsqueeze(1) @ W.permute(0, 3, 1, 2) @ right.unsqueeze(1)  # [G, K, m', n']
    return out.permute(0, 2, 3, 1)


def as_list(vector, params: Sequence[torch.Tensor], name: str = "vector"):
    """``vector`` as a list of ``[*p.shape, K]`` tensors, and a function that restores its format.

    Raises:
        ValueError: ``vector`` matches neither the shapes of ``params`` nor their total size ``D``.

    Example:
        >>> params = [torch.zeros(2, 3), torch.zeros(4)]
        >>> parts, restore = as_list(torch.arange(10.), params)
        >>> [tuple(p.shape) for p in parts], restore(parts).shape
        ([(2, 3, 1), (4, 1)], torch.Size([10]))
    """
    shapes = [tuple(p.shape) for p in params]
    D = sum(p.numel() for p in params)
    if isinstance(vector, torch.Tensor):
        if vector.ndim not in (1, 2) or vector.shape[0] != D:
            raise ValueError(f"{name} must be a list of parameter-shaped tensors or a flat tensor of shape [D] or "
                             f"[D, K] with D = {D}, got shape {tuple(vector.shape)}")
        matrix = vector.ndim == 2
        flat = vector if matrix else vector.unsqueeze(1)
        parts = [chunk.reshape(*s, flat.shape[1]) for chunk, s in zip(flat.split([p.numel() for p in params]), shapes)]

        def restore(out):
            cat = torch.cat([o.reshape(-1, o.shape[-1]) for o in out])
            return cat if matrix else cat.squeeze(1)

        return parts, restore
    if not isinstance(vector, (list, tuple)) or len(vector) != len(params) or not all(
            isinstance(v, torch.Tensor) for v in vector):
        raise ValueError(f"{name} must be a list of {len(params)} tensors shaped like params (or a flat tensor of "
                         f"size {D}), got {type(vector).__name__}")
    matrix = None
    parts = []
    for i, (v, s) in enumerate(zip(vector, shapes)):
        if tuple(v.shape) == s and matrix is not True:
            matrix = False
            parts.append(v.unsqueeze(-1))
        elif tuple(v.shape[:-1]) == s and matrix is not False:
            matrix = True
            parts.append(v)
        else:
            raise ValueError(f"{name}[{i}] must have the shape of params[{i}], {s} (or {s} + (K,) for all entries), "
                             f"got {tuple(v.shape)}")

    def restore(out):
        return [o if matrix else o.squeeze(-1) for o in out]

    return parts, restore


def apply(layers: Sequence[Layer], parts: list, shared: Callable[[Layer], bool], joint: Callable[[Layer], bool],
          weight_fn: Callable, bias_fn: Callable) -> list:
    """``weight_fn(layer, block [G, m, n, K])`` and ``bias_fn(layer, block [G, m, K])`` on each layer's blocks.

    Returns the list of results in the layout of ``parts`` (``[*p.shape, K]``).

    Example:
        >>> from tnconv.curvature import find_layers
        >>> net = torch.nn.Linear(3, 2)
        >>> layers = find_layers(net)
        >>> parts, _ = as_list([torch.ones(2, 3), torch.ones(2)], list(net.parameters()))
        >>> out = apply(layers, parts, lambda l: True, lambda l: False, lambda l, w: 2 * w, lambda l, b: -b)
        >>> out[0][0, 0, 0].item(), out[1][0, 0].item()
        (2.0, -1.0)
    """
    out = [None] * len(parts)
    for layer in layers:
        G, m = layer_groups(layer, shared(layer))
        K = parts[layer.weight_index if layer.weight is not None else layer.bias_index].shape[-1]
        W = None
        if layer.weight is not None:
            W = layer.weight_matrix(parts[layer.weight_index]).reshape(G, m, layer.patch_size, K)
        b = None if layer.bias is None else parts[layer.bias_index].reshape(G, m, K)
        if W is not None and b is not None and joint(layer):
            Wb = weight_fn(layer, torch.cat([W, b.unsqueeze(2)], dim=2))
            W, b = Wb[:, :, :-1], Wb[:, :, -1]
        else:
            W = None if W is None else weight_fn(layer, W)
            b = None if b is None else bias_fn(layer, b)
        if W is not None:
            out[layer.weight_index] = layer.weight_from_matrix(
                W.reshape(layer.groups, layer.out_features // layer.groups, layer.patch_size, K))
        if b is not None:
            out[layer.bias_index] = b.reshape(layer.out_features, K)
    return out


__all__ = ["as_list", "apply", "layer_groups", "sandwich"]
