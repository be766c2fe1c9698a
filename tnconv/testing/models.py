"""CNNs for tests, benchmarks and examples, written here (no torchvision needed).

``resnet18`` and ``mobilenet_v2`` reproduce torchvision's architectures
(module names, layer hyper-parameters and initialization), so their
convolutions are the ones :mod:`tnconv.bench.layers` lists; torchvision's
CPU wheel for this torch cannot load beside it, and tests must not download
weights anyway. ``c3d3`` (DeepOBS's 3c3d), ``all_cnn_c`` and ``cnn3d`` are the
small nets of the examples and of the 3-d tests.

Every builder takes ``num_classes`` and returns a fresh ``torch.nn.Module``
with random weights from PyTorch's default generator.
"""

from __future__ import annotations

import torch
from torch import nn


def _init_conv_bn(model: nn.Module) -> None:
    """torchvision's initialization: Kaiming-normal (fan-out) convolutions, unit BatchNorm."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """ResNet's two-convolution residual block (torchvision's ``BasicBlock``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's ``resnet18`` (ImageNet stem: 7x7/2 convolution and 3x3/2 max-pool)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for n, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if n == 0 else 2
            setattr(self, f"layer{n + 1}", nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init_conv_bn(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-18, 20 convolutions, any input of at least 32x32.

    Example:
        >>> resnet18(10)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet18(num_classes)


def _conv_bn_relu6(cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with ReLU6: ``[conv, bn, relu6]``."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (unless ``expand_ratio == 1``), depthwise 3x3, 1x1 projection."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [] if expand_ratio == 1 else [_conv_bn_relu6(inp, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, oup, 1, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's ``mobilenet_v2`` at width 1.0 (52 convolutions, 17 of them depthwise)."""

    #: expansion t, output channels c, repeats n, first stride s
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        features = [_conv_bn_relu6(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(_conv_bn_relu6(inp, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        _init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """torchvision's MobileNetV2 (width 1.0), any input of at least 32x32.

    Example:
        >>> mobilenet_v2(10)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return MobileNetV2(num_classes)


def c3d3(num_classes: int = 10) -> nn.Sequential:
    """DeepOBS's 3c3d CIFAR-10 net for 32x32 RGB inputs: three convolutions, three dense layers.

    TensorFlow's ``'same'`` max-pools (3x3, stride 2) become padding 1, which
    gives the same sizes here (28 -> 14, 12 -> 6, 6 -> 3).

    Example:
        >>> c3d3()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(64, 96, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, num_classes))


def all_cnn_c(num_classes: int = 10) -> nn.Sequential:
    """All-CNN-C as in DeepOBS's CIFAR-100 problem (Xavier-normal weights, bias 0.1), for 32x32 RGB inputs.

    TensorFlow's 'same' padding of the stride-2 layers becomes padding 1 (same
    output sizes: 32 -> 16 -> 8). Dropout layers are kept so the architecture
    reads as published; put the model in eval mode to disable them.

    Example:
        >>> all_cnn_c()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    # (in, out, kernel, stride, padding); a float is a dropout layer with that rate
    layout = [0.2, (3, 96, 3, 1, 1), (96, 96, 3, 1, 1), (96, 96, 3, 2, 1),
              0.5, (96, 192, 3, 1, 1), (192, 192, 3, 1, 1), (192, 192, 3, 2, 1),
              0.5, (192, 192, 3, 1, 0), (192, 192, 1, 1, 0), (192, num_classes, 1, 1, 0)]
    layers = []
    for item in layout:
        if isinstance(item, float):
            layers.append(nn.Dropout(item))
            continue
        conv = nn.Conv2d(*item)
        nn.init.xavier_normal_(conv.weight)
        nn.init.constant_(conv.bias, 0.1)
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def cnn3d(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """A small volumetric CNN (C3D-like) for ``[B, in_channels, 16, 16, 16]`` inputs.

    Covers what 3-d users combine: padding, a strided and a dilated
    convolution, a grouped one, a 1x1x1 projection, BatchNorm and a linear head.

    Example:
        >>> cnn3d()(torch.randn(2, 1, 16, 16, 16)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv3d(in_channels, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
        nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv3d(16, 16, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
        nn.Conv3d(16, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(2), nn.Flatten(), nn.Linear(8 * 8, num_classes))


__all__ = ["resnet18", "mobilenet_v2", "c3d3", "all_cnn_c", "cnn3d", "ResNet18", "MobileNetV2", "BasicBlock",
           "InvertedResidual"]


def curvature_cnn(num_classes: int = 4, in_channels: int = 2, N: int = 2, size: int = 8, groups: int = 1,
                  transpose: bool = False, inplace: bool = False, output_padding: int = 1) -> nn.Sequential:
    """A small CNN with every convolution feature the curvature methods must handle, for ``size``-wide N-d inputs.

    A strided padded convolution, a dilated (optionally grouped) one, a 1x1
    convolution, optionally a strided transpose convolution (which doubles
    the size back with ``output_padding=1``; BackPACK 1.7.1 ignores a
    transpose convolution's ``output_padding``), a bias-free convolution, and a linear head; ReLU and
    sigmoid activations (``inplace=True`` makes the first ReLU in-place). With
    ``groups=1`` and ``inplace=False`` every layer is one BackPACK's KFAC
    supports; curvlinops' needs ``N=2`` and ``transpose=False``. ``size`` must
    be a multiple of 4.

    Example:
        >>> curvature_cnn(transpose=True)(torch.randn(2, 2, 8, 8)).shape
        torch.Size([2, 4])
        >>> curvature_cnn(N=3, groups=2)(torch.randn(2, 2, 8, 8, 8)).shape
        torch.Size([2, 4])
        >>> curvature_cnn(N=1, transpose=True, output_padding=0)(torch.randn(2, 2, 8)).shape
        torch.Size([2, 4])
    """
    if size % 4:
        raise ValueError(f"size must be a multiple of 4, got {size}")
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[N]
    tconv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[N]
    layers = [conv(in_channels, 6, 3, stride=2, padding=1), nn.ReLU(inplace=inplace),
              conv(6, 6, 3, padding=2, dilation=2, groups=groups), nn.Sigmoid(),
              conv(6, 4, 1), nn.ReLU()]
    side = size // 2
    if transpose:
        layers += [tconv(4, 4, 3, stride=2, padding=1, output_padding=output_padding), nn.ReLU()]
        side = 2 * side - 1 + output_padding
    layers += [conv(4, 3, 2, stride=2, bias=False), nn.Flatten(), nn.Linear(3 * (side // 2) ** N, num_classes)]
    return nn.Sequential(*layers)



__all__ += ["curvature_cnn"]
