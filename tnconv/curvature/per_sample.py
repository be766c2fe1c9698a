"""Per-sample gradients, their squared norms and the exact GGN diagonal of a whole model, from one forward pass.

:class:`PerSample` runs the model once under :class:`~tnconv.curvature.Capture`
and backpropagates the loss's output gradient to the covered layers' outputs
(no parameter gradient is computed unless asked for); each layer's quantities
are computed from its input and that gradient as soon as the backward pass
reaches it (:mod:`~tnconv.curvature.per_layer`), and the gradient is freed.
The GGN diagonal backpropagates the loss Hessian's exact square root
(:func:`~tnconv.curvature.hessian_sqrt`) the same way, one vector per output.

Scaling (``docs/curvature.md``): with ``L = r Σ_b ℓ(f_b, y_b)`` (``r`` the
reduction's constant, :func:`~tnconv.curvature.reduction_scale`),

- ``convention="backpack"`` (``BatchGrad``, ``BatchL2Grad``): ``grad_batch[b] = r ∇ℓ_b``,
  whose sum over the batch is the gradient of ``L``;
- ``convention="opacus"`` (``GradSampleModule(loss_reduction=reduction)``):
  ``grad_sample[b] = c r ∇ℓ_b`` with ``c = B`` for ``reduction="mean"`` (Opacus
  multiplies the output gradients by the batch size) and ``1`` for ``"sum"``;
- ``batch_l2[b] = ‖grad_batch[b]‖²`` in either convention;
- ``diag_ggn = diag(Σ_b J_bᵀ ∇²_{f_b} L J_b)`` (BackPACK's ``DiagGGNExact``), the same in both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from . import per_layer
from .capture import STRATEGIES, Capture
from .layers import find_layers
from .loss import check_loss, hessian_sqrt, reduction_scale

#: The quantities :class:`PerSample` computes (BackPACK's attribute names).
QUANTITIES = ("grad_batch", "batch_l2", "diag_ggn")
#: The scaling conventions of the per-sample gradients.
CONVENTIONS = ("backpack", "opacus")


@dataclass
class PerSampleResult:
    """What one :class:`PerSample` call computed, by parameter name (``"conv1.weight"``), in ``params`` order.

    Attributes:
        loss: the loss of the batch (detached).
        grad_batch: ``{name: [B, *p.shape]}`` per-sample gradients (if asked for).
        batch_l2: ``{name: [B]}`` squared norms of the per-sample gradients (if asked for).
        diag_ggn: ``{name: p.shape}`` the exact GGN diagonal (if asked for).
        scale: the factor ``c`` of the convention (``B`` for Opacus' with a mean, else 1).
    """

    loss: torch.Tensor
    grad_batch: dict = field(default_factory=dict)
    batch_l2: dict = field(default_factory=dict)
    diag_ggn: dict = field(default_factory=dict)
    scale: float = 1.0

    def sq_norms(self) -> torch.Tensor:
        """``‖∇_θ‖²`` per sample over all covered parameters, ``[B]`` (what DP-SGD clips), from :attr:`batch_l2`.

        Raises:
            ValueError: ``batch_l2`` was not computed.
        """
        if not self.batch_l2:
            raise ValueError("sq_norms needs batch_l2: call PerSample with batch_l2=True")
        return torch.stack(list(self.batch_l2.values())).sum(0)


class PerSample:
    """Per-sample gradients, their squared norms and the exact GGN diagonal of ``loss_func(model(x), y)``.

    Covers the weights and biases of every ``Linear``, ``Conv1d/2d/3d`` and
    ``ConvTranspose1d/2d/3d`` layer (PyTorch's and ``tnconv.nn``'s, any groups,
    stride, padding, dilation and ``padding_mode``). Per-sample quantities are
    only meaningful when samples do not interact (no BatchNorm in training mode).

    Args:
        model: the network; ``model(inputs)`` gives ``[B, C]`` outputs.
        loss_func: ``torch.nn.MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss``,
            ``reduction`` ``"mean"`` or ``"sum"``.
        params: the parameters to cover (default: every weight and bias of the supported layers).
        convention: ``"backpack"`` (``BatchGrad``'s scaling) or ``"opacus"``
            (``grad_sample``'s; module docstring).
        strategy: how the GGN diagonal backpropagates its ``C`` vectors,
            ``"loop"`` (one backward pass each, each layer's share reduced at
            once) or ``"vmap"`` (one batched backward pass).

    Raises:
        ValueError: an argument outside the documented values (the message
            names it), a model without supported layers, a parameter not in it.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
        >>> x, y = torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
        >>> net = net.double()
        >>> res = PerSample(net, nn.CrossEntropyLoss())(x, y, batch_l2=True, diag_ggn=True)
        >>> res.grad_batch["0.weight"].shape, res.batch_l2["3.bias"].shape, res.diag_ggn["3.weight"].shape
        (torch.Size([4, 2, 1, 3, 3]), torch.Size([4]), torch.Size([3, 8]))
        >>> loss = nn.CrossEntropyLoss()(net(x), y)
        >>> grad, = torch.autograd.grad(loss, net[0].weight)
        >>> torch.allclose(res.grad_batch["0.weight"].sum(0), grad)
        True
    """

    def __init__(self, model: nn.Module, loss_func, params: Optional[Sequence[torch.Tensor]] = None,
                 convention: str = "backpack", strategy: str = "loop"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.loss_info = check_loss(loss_func)
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.model, self.loss_func, self.convention, self.strategy = model, loss_func, convention, strategy
        self.layers = find_layers(model, params)
        names = {}
        for layer in self.layers:
            for name, pos in ((layer.weight, layer.weight_index), (layer.bias, layer.bias_index)):
                if name is not None:
                    names[pos] = name
        #: the covered parameters' names, in the order of ``params``
        self.names = [names[i] for i in range(len(names))]

    def __call__(self, inputs, targets, grad_batch: bool = True, batch_l2: bool = False, diag_ggn: bool = False,
                 grad: bool = False) -> PerSampleResult:
        """One forward pass and the backward passes the asked-for quantities need.

        Args:
            inputs, targets: a batch; ``loss_func(model(inputs), targets)`` is the loss.
            grad_batch: compute the per-sample gradients.
            batch_l2: compute their squared norms (without the gradients
                themselves when ``grad_batch=False`` and the layer allows).
            diag_ggn: compute the exact GGN diagonal (``C`` more backward
                passes to the layers' outputs, ``C`` the model's outputs).
            grad: also accumulate the ordinary gradient into ``.grad`` of
                every parameter of the model (one ``loss.backward()``, which
                then also gives the per-sample quantities).

        Returns:
            A :class:`PerSampleResult`.
        """
        for flag, value in (("grad_batch", grad_batch), ("batch_l2", batch_l2), ("diag_ggn", diag_ggn),
                            ("grad", grad)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, got {value!r}")
        if not (grad_batch or batch_l2 or diag_ggn or grad):
            raise ValueError(f"nothing to compute: set at least one of {QUANTITIES} (or grad) to True")
        first_order = grad_batch or batch_l2
        mixing = [name or type(m).__name__ for name, m in self.model.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if mixing and (first_order or diag_ggn):
            warnings.warn(f"model has BatchNorm layers in training mode ({', '.join(mixing[:4])}"
                          f"{', ...' if len(mixing) > 4 else ''}): they mix the samples of a batch, so the per-sample "
                          "quantities are those of each sample's share of the batch's loss, not of its own loss. Put "
                          "them in eval mode (or replace them by GroupNorm) for true per-sample quantities.",
                          stacklevel=2)
        with torch.enable_grad(), Capture(self.layers, keep_inputs=True) as cap:
            output = self.model(inputs)
            if not isinstance(output, torch.Tensor) or output.ndim != 2:
                got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"model(inputs) must return a [B, C] tensor, got {got}")
            loss = self.loss_func(output, targets)
            scale = output.shape[0] if self.convention == "opacus" and self.loss_info.reduction == "mean" else 1
            result = PerSampleResult(loss.detach(), scale=float(scale))

            def on_grad(layer, g):
                for (attr, name), value in self._first_order(layer, cap.inputs[layer.name], g[0], scale,
                                                             grad_batch, batch_l2).items():
                    getattr(result, attr)[name] = value

            if grad and first_order:  # the true gradient's backward pass gives the per-sample ones on the way
                with cap.streaming(on_grad) as fired:
                    loss.backward(retain_graph=diag_ggn)
                for layer in self.layers:
                    if layer.name not in fired:  # the loss does not depend on this layer
                        on_grad(layer, output.new_zeros((1,) + cap.output_shapes[layer.name]))
            elif grad:
                loss.backward(retain_graph=diag_ggn)
            elif first_order:
                g_out, = torch.autograd.grad(loss, output, retain_graph=diag_ggn)
                cap.backward(output, g_out.unsqueeze(0), callback=on_grad, retain_graph=diag_ggn)
            if diag_ggn:
                ggn: dict = {}

                def on_sqrt(layer, s):
                    parts = self._diag_ggn(layer, cap.inputs[layer.name], s)
                    for name, value in parts.items():
                        if name in ggn:
                            ggn[name].add_(value)
                        else:
                            ggn[name] = value

                S = hessian_sqrt(output, self.loss_func)
                cap.backward(output, S, callback=on_sqrt, strategy=self.strategy)
        # the backward pass reaches the layers in reverse: report in the order of params
        result.grad_batch = {name: result.grad_batch[name] for name in self.names if name in result.grad_batch}
        result.batch_l2 = {name: result.batch_l2[name] for name in self.names if name in result.batch_l2}
        if diag_ggn:
            result.diag_ggn = {name: ggn[name] for name in self.names}
        return result

    def _first_order(self, layer, x, g, scale, grad_batch, batch_l2) -> dict:
        """``{(quantity, parameter name): value}`` of one layer from its output gradient ``g`` ``[B, C_out, *O]``."""
        out = {}
        if scale != 1:
            g = g * scale
        if layer.weight is not None:
            if grad_batch:
                gb = per_layer.weight_grad_batch(layer, x, g)
                out[("grad_batch", layer.weight)] = gb
                if batch_l2:
                    out[("batch_l2", layer.weight)] = gb.reshape(gb.shape[0], -1).pow(2).sum(1)
            elif batch_l2:
                out[("batch_l2", layer.weight)] = per_layer.weight_sq_norms(layer, x, g)
        if layer.bias is not None:
            gb = per_layer.bias_grad_batch(layer, g)
            if grad_batch:
                out[("grad_batch", layer.bias)] = gb
            if batch_l2:
                out[("batch_l2", layer.bias)] = gb.pow(2).sum(1)
        return out

    def _diag_ggn(self, layer, x, s) -> dict:
        out = {}
        if layer.weight is not None:
            out[layer.weight] = per_layer.weight_diag_ggn(layer, x, s)
        if layer.bias is not None:
            out[layer.bias] = per_layer.bias_diag_ggn(layer, s)
        return out

    def __repr__(self) -> str:
        return f"PerSample({len(self.layers)} layers, {len(self.names)} parameters, convention={self.convention!r})"


__all__ = ["PerSample", "PerSampleResult", "QUANTITIES", "CONVENTIONS"]
