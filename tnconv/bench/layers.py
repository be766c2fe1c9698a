"""The unique convolution layers of nine CNNs, written as data.

Each net's layers are its distinct 2d convolutions: two convolutions with the
same hyper-parameters (channels, input size, kernel, stride, padding,
dilation, groups) appear once, under the name of the first one in the net.
All layers of all nets are kept (130 in total); none is sub-selected.

Sources of the hyper-parameters:

* ``3c3d`` (CIFAR-10, 32x32) and ``2c2d`` (Fashion-MNIST, 28x28): DeepOBS's
  test problems. Their TensorFlow ``'same'`` padding is symmetric for these
  stride-1, odd kernels; the max-pools between convolutions (3x3 stride 2
  resp. 2x2 stride 2, ``'same'``) halve the size, rounding up.
* ``allcnnc`` (CIFAR-100, 32x32): All-CNN-C (Springenberg et al., 2015) as in
  DeepOBS. Its two stride-2 3x3 convolutions use padding 1, which gives the
  same output size as TensorFlow's ``'same'`` (there: 0 left, 1 right).
* ``alexnet``, ``resnet18``, ``resnext101`` (32x8d), ``convnext_base``,
  ``inception_v3`` (299x299, without the auxiliary classifier) and
  ``mobilenet_v2`` (224x224): torchvision's definitions, with the input size
  of every convolution as a forward pass at the net's resolution gives it.

Batch sizes follow one rule (:func:`default_batch`): the largest power of two
up to the net's cap (128 for the small nets, 8 for the ImageNet nets) such
that the largest tensor of a sample -- input, output or im2col matrix --
times the batch stays within :data:`MEMORY_BUDGET` elements and the most
expensive operation (convolution or KFC) within :data:`FLOP_BUDGET` FLOPs;
at least 1. So each measurement fits in a few hundred MB and takes well
under a second on a 2-core CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

#: Element budget of the largest tensor of one measurement (64 MiB in float32).
MEMORY_BUDGET = 2**24

#: FLOP budget of the most expensive operation of one measurement.
FLOP_BUDGET = 8 * 10**9

#: The kinds of :attr:`Layer.kind`, in the order tables and plots list them.
KINDS = ("general", "mixed-dense", "dense", "down-sampling")


def _out(I: int, K: int, S: int, P: int, D: int) -> int:
    return (I + 2 * P - D * (K - 1) - 1) // S + 1


@dataclass(frozen=True)
class Layer:
    """One 2d convolution of a net, with the batch size it is measured at.

    Spatial hyper-parameters are tuples with one entry per dimension; the
    padding is symmetric within a dimension, as ``torch.nn.Conv2d`` has it.

    Example:
        >>> layer = Layer("resnet18", "conv1", 3, 64, (224, 224), (7, 7), (2, 2), (3, 3), (1, 1), 1, 2)
        >>> layer.output_size, layer.kind
        ((112, 112), 'general')
    """

    net: str
    name: str
    in_channels: int
    out_channels: int
    input_size: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int
    batch: int

    @property
    def output_size(self) -> Tuple[int, ...]:
        """Spatial output size, one entry per dimension."""
        return tuple(_out(*args) for args in zip(self.input_size, self.kernel_size, self.stride, self.padding, self.dilation))

    @property
    def dim_kinds(self) -> Tuple[str, ...]:
        """Per dimension: ``'trivial'`` (K = S = 1, P = 0, D = 1), ``'dense'``, ``'down'`` or ``'general'``."""
        kinds = []
        for K, S, P, D in zip(self.kernel_size, self.stride, self.padding, self.dilation):
            if P or D != 1:
                kinds.append("general")
            elif K == S:
                kinds.append("trivial" if K == 1 else "dense")
            else:
                kinds.append("down" if S > K else "general")
        return tuple(kinds)

    @property
    def kind(self) -> str:
        """``'dense'``, ``'mixed-dense'``, ``'down-sampling'`` or ``'general'``.

        Dense: ``K = S``, ``P = 0``, ``D = 1`` in every dimension (a 1x1
        convolution with stride 1 is dense). Down-sampling: ``S > K``, ``P =
        0``, ``D = 1`` wherever the dimension is not trivial (e.g. ResNet's
        1x1 stride-2 shortcut). Mixed-dense: dense with ``K = S > 1`` in some
        dimensions but not in all. A trivial dimension (``K = S = 1``, ``P =
        0``, ``D = 1``) is neutral: it makes no layer mixed, so Inception's 1x7
        convolution with padding (0, 3) -- trivial along the first dimension,
        padded along the second -- is general, not mixed-dense.

        Example:
            >>> stem = Layer("convnext_base", "stem", 3, 128, (224, 224), (4, 4), (4, 4), (0, 0), (1, 1), 1, 1)
            >>> stem.kind
            'dense'
        """
        kinds = set(self.dim_kinds) - {"trivial"}
        if kinds <= {"dense"}:
            return "dense"
        if kinds == {"down"}:
            return "down-sampling"
        if "dense" in kinds:
            return "mixed-dense"
        return "general"

    @property
    def weight_size(self) -> Tuple[int, ...]:
        """``[C_out, C_in/groups, *K]``."""
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    @property
    def x_size(self) -> Tuple[int, ...]:
        """The input's full shape ``[B, C_in, *I]``."""
        return (self.batch, self.in_channels) + self.input_size

    @property
    def label(self) -> str:
        """``net/name``, unique over all nets."""
        return f"{self.net}/{self.name}"


def sample_cost(in_channels, out_channels, input_size, kernel_size, stride, padding, dilation, groups):
    """``(elements, flops)`` of one sample: its largest tensor and its most expensive operation.

    The largest tensor is the input, the output or the im2col matrix
    ``[C_in·K, O]``; the most expensive operation the convolution (and so its
    VJPs) or KFC.

    Example:
        >>> sample_cost(3, 64, (32, 32), (5, 5), (1, 1), (0, 0), (1, 1), 1)
        (58800, 8820000)
    """
    O = math.prod(_out(*a) for a in zip(input_size, kernel_size, stride, padding, dilation))
    K = math.prod(kernel_size)
    elements = max(in_channels * math.prod(input_size), out_channels * O, in_channels * K * O)
    conv = 2 * out_channels * (in_channels // groups) * K * O
    kfc = 2 * O * in_channels * (in_channels // groups) * K * K
    return elements, max(conv, kfc)


def default_batch(cap: int, *hyper) -> int:
    """The largest power of two ``<= cap`` within both budgets for a layer's ``hyper``-parameters, at least 1.

    ``hyper`` are :func:`sample_cost`'s arguments.

    Example:
        >>> default_batch(128, 3, 64, (32, 32), (5, 5), (1, 1), (0, 0), (1, 1), 1)
        128
        >>> default_batch(8, 64, 64, (56, 56), (3, 3), (1, 1), (1, 1), (1, 1), 1)
        2
    """
    elements, flops = sample_cost(*hyper)
    fits = min(cap, MEMORY_BUDGET // elements, FLOP_BUDGET // flops)
    return 2 ** int(math.log2(fits)) if fits >= 1 else 1


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _net(net: str, cap: int, rows) -> Tuple[Layer, ...]:
    """Layers of ``net`` from rows ``(name, C_in, C_out, size, kernel, stride, padding[, groups])``."""
    layers = []
    for name, cin, cout, size, k, s, p, *g in rows:
        hyper = (cin, cout, _pair(size), _pair(k), _pair(s), _pair(p), (1, 1), g[0] if g else 1)
        layers.append(Layer(net, name, *hyper, batch=default_batch(cap, *hyper)))
    return tuple(layers)


_SMALL, _IMAGENET = 128, 8

#: Net name -> its unique convolution layers.
NETS = {
    "3c3d": _net("3c3d", _SMALL, [
        ("conv1", 3, 64, 32, 5, 1, 0),
        ("conv2", 64, 96, 14, 3, 1, 0),
        ("conv3", 96, 128, 6, 3, 1, 1),
    ]),
    "2c2d": _net("2c2d", _SMALL, [
        ("conv1", 1, 32, 28, 5, 1, 2),
        ("conv2", 32, 64, 14, 5, 1, 2),
    ]),
    "allcnnc": _net("allcnnc", _SMALL, [
        ("conv1", 3, 96, 32, 3, 1, 1),
        ("conv2", 96, 96, 32, 3, 1, 1),
        ("conv3", 96, 96, 32, 3, 2, 1),
        ("conv4", 96, 192, 16, 3, 1, 1),
        ("conv5", 192, 192, 16, 3, 1, 1),
        ("conv6", 192, 192, 16, 3, 2, 1),
        ("conv7", 192, 192, 8, 3, 1, 0),
        ("conv8", 192, 192, 6, 1, 1, 0),
        ("conv9", 192, 100, 6, 1, 1, 0),
    ]),
    "alexnet": _net("alexnet", _IMAGENET, [
        ("features.0", 3, 64, 224, 11, 4, 2),
        ("features.3", 64, 192, 27, 5, 1, 2),
        ("features.6", 192, 384, 13, 3, 1, 1),
        ("features.8", 384, 256, 13, 3, 1, 1),
        ("features.10", 256, 256, 13, 3, 1, 1),
    ]),
    "resnet18": _net("resnet18", _IMAGENET, [
        ("conv1", 3, 64, 224, 7, 2, 3),
        ("layer1.0.conv1", 64, 64, 56, 3, 1, 1),
        ("layer2.0.conv1", 64, 128, 56, 3, 2, 1),
        ("layer2.0.conv2", 128, 128, 28, 3, 1, 1),
        ("layer2.0.downsample.0", 64, 128, 56, 1, 2, 0),
        ("layer3.0.conv1", 128, 256, 28, 3, 2, 1),
        ("layer3.0.conv2", 256, 256, 14, 3, 1, 1),
        ("layer3.0.downsample.0", 128, 256, 28, 1, 2, 0),
        ("layer4.0.conv1", 256, 512, 14, 3, 2, 1),
        ("layer4.0.conv2", 512, 512, 7, 3, 1, 1),
        ("layer4.0.downsample.0", 256, 512, 14, 1, 2, 0),
    ]),
    "resnext101": _net("resnext101", _IMAGENET, [  # 32x8d: 3x3 convolutions in 32 groups
        ("conv1", 3, 64, 224, 7, 2, 3),
        ("layer1.0.conv1", 64, 256, 56, 1, 1, 0),
        ("layer1.0.conv2", 256, 256, 56, 3, 1, 1, 32),
        ("layer1.0.conv3", 256, 256, 56, 1, 1, 0),
        ("layer2.0.conv1", 256, 512, 56, 1, 1, 0),
        ("layer2.0.conv2", 512, 512, 56, 3, 2, 1, 32),
        ("layer2.0.conv3", 512, 512, 28, 1, 1, 0),
        ("layer2.0.downsample.0", 256, 512, 56, 1, 2, 0),
        ("layer2.1.conv2", 512, 512, 28, 3, 1, 1, 32),
        ("layer3.0.conv1", 512, 1024, 28, 1, 1, 0),
        ("layer3.0.conv2", 1024, 1024, 28, 3, 2, 1, 32),
        ("layer3.0.conv3", 1024, 1024, 14, 1, 1, 0),
        ("layer3.0.downsample.0", 512, 1024, 28, 1, 2, 0),
        ("layer3.1.conv2", 1024, 1024, 14, 3, 1, 1, 32),
        ("layer4.0.conv1", 1024, 2048, 14, 1, 1, 0),
        ("layer4.0.conv2", 2048, 2048, 14, 3, 2, 1, 32),
        ("layer4.0.conv3", 2048, 2048, 7, 1, 1, 0),
        ("layer4.0.downsample.0", 1024, 2048, 14, 1, 2, 0),
        ("layer4.1.conv2", 2048, 2048, 7, 3, 1, 1, 32),
    ]),
    "convnext_base": _net("convnext_base", _IMAGENET, [  # stem and down-sampling layers are dense, 7x7 depthwise
        ("features.0.0", 3, 128, 224, 4, 4, 0),
        ("features.1.0.block.0", 128, 128, 56, 7, 1, 3, 128),
        ("features.2.1", 128, 256, 56, 2, 2, 0),
        ("features.3.0.block.0", 256, 256, 28, 7, 1, 3, 256),
        ("features.4.1", 256, 512, 28, 2, 2, 0),
        ("features.5.0.block.0", 512, 512, 14, 7, 1, 3, 512),
        ("features.6.1", 512, 1024, 14, 2, 2, 0),
        ("features.7.0.block.0", 1024, 1024, 7, 7, 1, 3, 1024),
    ]),
    "inception_v3": _net("inception_v3", _IMAGENET, [
        ("Conv2d_1a_3x3", 3, 32, 299, 3, 2, 0),
        ("Conv2d_2a_3x3", 32, 32, 149, 3, 1, 0),
        ("Conv2d_2b_3x3", 32, 64, 147, 3, 1, 1),
        ("Conv2d_3b_1x1", 64, 80, 73, 1, 1, 0),
        ("Conv2d_4a_3x3", 80, 192, 73, 3, 1, 0),
        ("Mixed_5b.branch1x1", 192, 64, 35, 1, 1, 0),
        ("Mixed_5b.branch5x5_1", 192, 48, 35, 1, 1, 0),
        ("Mixed_5b.branch5x5_2", 48, 64, 35, 5, 1, 2),
        ("Mixed_5b.branch3x3dbl_2", 64, 96, 35, 3, 1, 1),
        ("Mixed_5b.branch3x3dbl_3", 96, 96, 35, 3, 1, 1),
        ("Mixed_5b.branch_pool", 192, 32, 35, 1, 1, 0),
        ("Mixed_5c.branch1x1", 256, 64, 35, 1, 1, 0),
        ("Mixed_5c.branch5x5_1", 256, 48, 35, 1, 1, 0),
        ("Mixed_5d.branch1x1", 288, 64, 35, 1, 1, 0),
        ("Mixed_5d.branch5x5_1", 288, 48, 35, 1, 1, 0),
        ("Mixed_6a.branch3x3", 288, 384, 35, 3, 2, 0),
        ("Mixed_6a.branch3x3dbl_3", 96, 96, 35, 3, 2, 0),
        ("Mixed_6b.branch1x1", 768, 192, 17, 1, 1, 0),
        ("Mixed_6b.branch7x7_1", 768, 128, 17, 1, 1, 0),
        ("Mixed_6b.branch7x7_2", 128, 128, 17, (1, 7), 1, (0, 3)),
        ("Mixed_6b.branch7x7_3", 128, 192, 17, (7, 1), 1, (3, 0)),
        ("Mixed_6b.branch7x7dbl_2", 128, 128, 17, (7, 1), 1, (3, 0)),
        ("Mixed_6b.branch7x7dbl_5", 128, 192, 17, (1, 7), 1, (0, 3)),
        ("Mixed_6c.branch7x7_1", 768, 160, 17, 1, 1, 0),
        ("Mixed_6c.branch7x7_2", 160, 160, 17, (1, 7), 1, (0, 3)),
        ("Mixed_6c.branch7x7_3", 160, 192, 17, (7, 1), 1, (3, 0)),
        ("Mixed_6c.branch7x7dbl_2", 160, 160, 17, (7, 1), 1, (3, 0)),
        ("Mixed_6c.branch7x7dbl_5", 160, 192, 17, (1, 7), 1, (0, 3)),
        ("Mixed_6e.branch7x7_2", 192, 192, 17, (1, 7), 1, (0, 3)),
        ("Mixed_6e.branch7x7_3", 192, 192, 17, (7, 1), 1, (3, 0)),
        ("Mixed_7a.branch3x3_2", 192, 320, 17, 3, 2, 0),
        ("Mixed_7a.branch7x7x3_4", 192, 192, 17, 3, 2, 0),
        ("Mixed_7b.branch1x1", 1280, 320, 8, 1, 1, 0),
        ("Mixed_7b.branch3x3_1", 1280, 384, 8, 1, 1, 0),
        ("Mixed_7b.branch3x3_2a", 384, 384, 8, (1, 3), 1, (0, 1)),
        ("Mixed_7b.branch3x3_2b", 384, 384, 8, (3, 1), 1, (1, 0)),
        ("Mixed_7b.branch3x3dbl_1", 1280, 448, 8, 1, 1, 0),
        ("Mixed_7b.branch3x3dbl_2", 448, 384, 8, 3, 1, 1),
        ("Mixed_7b.branch_pool", 1280, 192, 8, 1, 1, 0),
        ("Mixed_7c.branch1x1", 2048, 320, 8, 1, 1, 0),
        ("Mixed_7c.branch3x3_1", 2048, 384, 8, 1, 1, 0),
        ("Mixed_7c.branch3x3dbl_1", 2048, 448, 8, 1, 1, 0),
        ("Mixed_7c.branch_pool", 2048, 192, 8, 1, 1, 0),
    ]),
    "mobilenet_v2": _net("mobilenet_v2", _IMAGENET, [  # inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project
        ("features.0.0", 3, 32, 224, 3, 2, 1),
        ("features.1.conv.0.0", 32, 32, 112, 3, 1, 1, 32),
        ("features.1.conv.1", 32, 16, 112, 1, 1, 0),
        ("features.2.conv.0.0", 16, 96, 112, 1, 1, 0),
        ("features.2.conv.1.0", 96, 96, 112, 3, 2, 1, 96),
        ("features.2.conv.2", 96, 24, 56, 1, 1, 0),
        ("features.3.conv.0.0", 24, 144, 56, 1, 1, 0),
        ("features.3.conv.1.0", 144, 144, 56, 3, 1, 1, 144),
        ("features.3.conv.2", 144, 24, 56, 1, 1, 0),
        ("features.4.conv.1.0", 144, 144, 56, 3, 2, 1, 144),
        ("features.4.conv.2", 144, 32, 28, 1, 1, 0),
        ("features.5.conv.0.0", 32, 192, 28, 1, 1, 0),
        ("features.5.conv.1.0", 192, 192, 28, 3, 1, 1, 192),
        ("features.5.conv.2", 192, 32, 28, 1, 1, 0),
        ("features.7.conv.1.0", 192, 192, 28, 3, 2, 1, 192),
        ("features.7.conv.2", 192, 64, 14, 1, 1, 0),
        ("features.8.conv.0.0", 64, 384, 14, 1, 1, 0),
        ("features.8.conv.1.0", 384, 384, 14, 3, 1, 1, 384),
        ("features.8.conv.2", 384, 64, 14, 1, 1, 0),
        ("features.11.conv.2", 384, 96, 14, 1, 1, 0),
        ("features.12.conv.0.0", 96, 576, 14, 1, 1, 0),
        ("features.12.conv.1.0", 576, 576, 14, 3, 1, 1, 576),
        ("features.12.conv.2", 576, 96, 14, 1, 1, 0),
        ("features.14.conv.1.0", 576, 576, 14, 3, 2, 1, 576),
        ("features.14.conv.2", 576, 160, 7, 1, 1, 0),
        ("features.15.conv.0.0", 160, 960, 7, 1, 1, 0),
        ("features.15.conv.1.0", 960, 960, 7, 3, 1, 1, 960),
        ("features.15.conv.2", 960, 160, 7, 1, 1, 0),
        ("features.17.conv.2", 960, 320, 7, 1, 1, 0),
        ("features.18.0", 320, 1280, 7, 1, 1, 0),
    ]),
}


def select(nets=None) -> Tuple[Layer, ...]:
    """The layers of ``nets`` (names of :data:`NETS`, all by default), in net order.

    Example:
        >>> [layer.name for layer in select(["2c2d"])]
        ['conv1', 'conv2']
    """
    names = list(NETS) if nets is None else list(nets)
    unknown = [n for n in names if n not in NETS]
    if unknown:
        raise ValueError(f"unknown net(s) {unknown}; choose from {list(NETS)}")
    return tuple(layer for n in names for layer in NETS[n])


__all__ = ["Layer", "NETS", "KINDS", "MEMORY_BUDGET", "FLOP_BUDGET", "default_batch", "sample_cost", "select"]
