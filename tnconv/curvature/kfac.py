"""KFAC for a whole model: Kronecker factors of every supported layer, accumulated over batches.

``KFAC(model, loss_func)`` approximates the GGN (or Fisher) of the loss over
the data passed to :meth:`KFAC.update` by a block-diagonal matrix, one block
per layer, each the Kronecker product ``G ⊗ A`` of a gradient factor and an
input factor (per channel group for grouped convolutions). The factors come
from :mod:`tnconv.functional` (``kfc``, ``kfac_reduce``, their transpose
forms, ``kfc_output``, ``kfac_reduce_output``); the constants follow
curvlinops or BackPACK as asked (``docs/curvature.md``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from . import blocks
from .capture import STRATEGIES, Capture
from .factors import Block, gradient_factor, input_factor_block
from .layers import find_layers
from .loss import check_fisher_type, check_loss, output_sqrt, reduction_scale

APPROXES = ("expand", "reduce")
CONVENTIONS = ("curvlinops", "backpack")
GROUPED = ("shared", "per-group")

#: curvlinops' default seed for the Monte-Carlo labels.
DEFAULT_SEED = 2147483647


def _choice(value, name, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


class KFAC:
    """Kronecker-factored approximate curvature of ``loss_func(model(x), y)`` over the data seen.

    Each covered layer's block of the GGN/Fisher is ``G ⊗ A`` (rows of ``G``:
    output channels, of ``A``: the weight matrix's columns, see
    :meth:`Layer.weight_matrix`). A bias is a block ``G`` of its own, or, with
    ``separate_weight_and_bias=False``, one block with the weight (``A`` gains
    the bias's constant input).

    Args:
        model: the network; its ``forward(inputs)`` gives ``[B, C]`` outputs.
        loss_func: ``torch.nn.MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss``
            with ``reduction`` ``"mean"`` or ``"sum"``.
        params: the parameters to cover (default: every weight and bias of the
            supported layers, :func:`~tnconv.curvature.supported_parameters`).
        approx: ``"expand"`` or ``"reduce"`` (Eschenhagen et al., 2023) for the
            layers with weight sharing (convolutions, linear layers on
            ``[B, *S, d]`` inputs).
        convention: ``"curvlinops"`` (its ``KFACLinearOperator``'s numbers) or
            ``"backpack"`` (BackPACK's ``KFAC``/``KFLR``: ``kfc`` input factor
            with the reduce-form gradient factor; ``approx`` must be ``"expand"``).
        fisher_type: ``"type-2"`` (the loss Hessian's exact square root, one
            backward pass per output), ``"mc"`` (``mc_samples`` sampled labels),
            ``"empirical"`` (the true labels' gradients) or ``"forward-only"``
            (identity gradient factors), as curvlinops names them.
        mc_samples: Monte-Carlo samples per datum (``fisher_type="mc"`` only).
        separate_weight_and_bias: treat a layer's bias as its own block (curvlinops'
            default) or jointly with the weight.
        grouped: ``"per-group"`` (exact per-group factors of a grouped
            convolution) or ``"shared"`` (curvlinops' factors of the
            group-averaged input and of all output channels). Default: the
            convention's (``"shared"`` for curvlinops, ``"per-group"`` for backpack).
        ema: ``None``: every batch weighs by its size, so the factors are those
            of all the data seen since :meth:`reset` (for ``reduction="sum"`` the
            gradient factor is a sum over the data, as the loss is). A float
            ``β`` in ``[0, 1)``: exponential moving average of the batches'
            factors, ``F ← β F + (1 − β) F_batch``.
        seed, generator: the Monte-Carlo labels' generator (default: a new one
            seeded with ``seed``, curvlinops' default seed; re-seeded by :meth:`reset`).
        strategy: how several vectors are backpropagated, ``"loop"`` or
            ``"vmap"`` (:meth:`Capture.backward`).
        distributed: all-reduce every batch's factors over ``torch.distributed``'s
            ``process_group`` so that every rank holds the factors of the
            concatenated batch (default: when ``torch.distributed`` is initialized
            with more than one process).

    Attributes:
        layers: the covered layers (:class:`~tnconv.curvature.Layer`).
        params: the covered parameters, in the order of vectors.
        num_data: data seen since the last :meth:`reset`.

    Raises:
        ValueError: an argument outside the documented values (the message
            names it), a model without supported layers, a parameter not in it.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
        >>> kfac = KFAC(net, nn.CrossEntropyLoss(), approx="reduce", fisher_type="type-2")
        >>> kfac.update(torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
        >>> A, G = kfac.factors["0.weight"]
        >>> tuple(A.shape), tuple(G.shape)
        ((1, 9, 9), (1, 2, 2))
        >>> v = [torch.randn_like(p) for p in kfac.params]
        >>> [tuple(t.shape) for t in kfac @ v] == [tuple(p.shape) for p in kfac.params]
        True
        >>> Kv = [k + 0.1 * u for k, u in zip(kfac @ v, v)]           # (KFAC + 0.1 I) v
        >>> x = kfac.inverse(damping=0.1) @ Kv
        >>> bool(max((a - b).abs().max() for a, b in zip(x, v)) < 1e-4)
        True
    """

    def __init__(self, model: nn.Module, loss_func, params: Optional[Sequence[torch.Tensor]] = None,
                 approx: str = "expand", convention: str = "curvlinops", fisher_type: str = "mc", mc_samples: int = 1,
                 separate_weight_and_bias: bool = True, grouped: Optional[str] = None, ema: Optional[float] = None,
                 seed: int = DEFAULT_SEED, generator: Optional[torch.Generator] = None, strategy: str = "loop",
                 distributed: Optional[bool] = None, process_group=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.loss_info = check_loss(loss_func)
        _choice(approx, "approx", APPROXES)
        _choice(convention, "convention", CONVENTIONS)
        if convention == "backpack" and approx != "expand":
            raise ValueError("approx must be 'expand' with convention='backpack': BackPACK's KFAC/KFLR pair kfc's "
                             f"input factor with the reduce-form gradient factor and has no KFAC-reduce; got {approx!r}")
        check_fisher_type(fisher_type, mc_samples)
        if grouped is not None:
            _choice(grouped, "grouped", GROUPED)
        if not isinstance(separate_weight_and_bias, bool):
            raise TypeError(f"separate_weight_and_bias must be a bool, got {separate_weight_and_bias!r}")
        if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1):
            raise ValueError(f"ema must be None or a float in [0, 1), got {ema!r}")
        _choice(strategy, "strategy", STRATEGIES)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.model, self.loss_func = model, loss_func
        self.layers = find_layers(model, params)
        self.params = list(params) if params is not None else self._params_in_order()
        self.approx, self.convention, self.fisher_type, self.mc_samples = approx, convention, fisher_type, mc_samples
        self.separate_weight_and_bias = separate_weight_and_bias
        self.grouped = grouped or ("shared" if convention == "curvlinops" else "per-group")
        self.ema, self.seed, self.strategy = ema, seed, strategy
        self._user_generator = generator
        self.generator = generator
        self._distributed, self.process_group = distributed, process_group
        if convention == "curvlinops":
            self._input_form, self._output_form = approx, approx
        else:
            self._input_form, self._output_form = "sum", "reduce"
        self.reset()

    def _params_in_order(self) -> list:
        index = {}
        for layer in self.layers:
            for name, pos in ((layer.weight, layer.weight_index), (layer.bias, layer.bias_index)):
                if name is not None:
                    index[pos] = self.model.get_parameter(name)
        return [index[i] for i in range(len(index))]

    # ------------------------------------------------------------------ accumulation

    def reset(self) -> None:
        """Forget all factors (and re-seed the Monte-Carlo generator unless one was passed)."""
        self._A: dict = {}
        self._G: dict = {}
        self._finished = None  # the normalized factors, until the next update
        self.num_data = 0
        self.num_updates = 0
        if self._user_generator is None:
            self.generator = None

    def _shared(self, layer) -> bool:
        return self.grouped == "shared" and layer.kind != "linear"

    def _joint(self, layer) -> bool:
        return not self.separate_weight_and_bias and layer.weight is not None and layer.bias is not None

    def _world(self):
        import torch.distributed as dist

        if self._distributed is False or not dist.is_available() or not dist.is_initialized():
            if self._distributed:
                raise RuntimeError("distributed=True needs an initialized torch.distributed process group")
            return None
        if self._distributed is None and dist.get_world_size(self.process_group) == 1:
            return None
        return dist

    def _rng(self, device) -> torch.Generator:
        if self.generator is None or self.generator.device != torch.device(device):
            dist = self._world()
            rank = dist.get_rank(self.process_group) if dist is not None else 0
            self.generator = torch.Generator(device=device).manual_seed(self.seed + rank)
        return self.generator

    def batch_input_factor(self, layer, x: torch.Tensor, output_shape: tuple) -> Block:
        """One batch's input factor of ``layer`` (normalized by the batch size), as a :class:`~tnconv.curvature.factors.Block`.

        Called from the forward hook with the layer's input ``x`` (as
        :meth:`Layer.functional_input` gives it) and its output's shape. A
        subclass may override it to compute the factor another way (the
        KFAC-reduce example does, to compare with the im2col factor).
        """
        return input_factor_block(layer, x, output_shape, self._input_form, self._shared(layer), self._joint(layer))

    def update(self, inputs, targets: Optional[torch.Tensor] = None) -> None:
        """One forward and backward pass on a batch; adds its factors to the running ones.

        ``targets`` are needed for ``fisher_type="empirical"`` only. No parameter
        gradient is computed (``.grad`` is untouched).
        """
        self._update(inputs, targets, loss_backward=False)

    def _update(self, inputs, targets, loss_backward: bool):
        """The batch's factors; with ``loss_backward`` also ``loss.backward()`` (returns the loss)."""
        batch_A: dict = {}
        batch_G: dict = {}

        def on_input(layer, x, output):
            if layer.weight is not None:
                batch_A[layer.name] = self.batch_input_factor(layer, x, tuple(output.shape))

        def on_grad(layer, grads):
            G = gradient_factor(layer, grads, self._output_form, self._shared(layer))
            if layer.name in batch_G:
                batch_G[layer.name].add_(G)
            else:
                batch_G[layer.name] = G

        record = loss_backward and self.fisher_type == "empirical"
        loss = None
        # forward-only needs no graph at all, unless the caller backpropagates the loss
        grad_mode = torch.enable_grad() if loss_backward or self.fisher_type != "forward-only" else torch.no_grad()
        with grad_mode, Capture(self.layers, keep_inputs=False, on_input=on_input) as cap:
            output = self.model(inputs)
            if not isinstance(output, torch.Tensor) or output.ndim != 2:
                got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"model(inputs) must return a [B, C] tensor for the curvature, got {got}")
            B = output.shape[0]
            if loss_backward:
                if targets is None:
                    raise ValueError("targets are needed for the loss's backward pass")
                loss = self.loss_func(output, targets)
            if self.fisher_type == "forward-only":
                if loss_backward:
                    loss.backward()
            elif record:  # the true gradient's backward pass gives the empirical factors on the way
                with cap.streaming(on_grad) as fired:
                    loss.backward()
                for layer in self.layers:
                    if layer.name not in fired:  # the loss does not depend on this layer
                        on_grad(layer, output.new_zeros((1,) + cap.output_shapes[layer.name]))
                    batch_G[layer.name].mul_(1 / reduction_scale(self.loss_func, output))  # ∇L = r ∇ℓ: S = ∇L/√r
            else:
                S = output_sqrt(output, self.loss_func, targets, self.fisher_type, self.mc_samples,
                                self._rng(output.device) if self.fisher_type == "mc" else None)
                cap.backward(output, S, callback=on_grad, strategy=self.strategy, retain_graph=loss_backward)
                if loss_backward:
                    loss.backward()
        self._accumulate(batch_A, batch_G, B)
        return None if loss is None else loss.detach()

    def _accumulate(self, batch_A: dict, batch_G: dict, B: int) -> None:
        """Fold one batch's factors (normalized per batch) into the running ones, all-reduced when distributed.

        Works in place on the batch's fresh factors, and on input factors only
        over the rows of live kernel taps (:class:`~tnconv.curvature.factors.Block`):
        the largest factors (``[C·K, C·K]`` of a deep convolution on a tiny
        input) are neither copied nor rewritten per batch.
        """
        mean = self.loss_info.reduction == "mean"
        # contributions that add up over ranks: the sums over the batch's data
        for A in batch_A.values():
            A.values.mul_(B)
        if mean:
            for G in batch_G.values():
                G.mul_(B)
        n = B
        dist = self._world()
        if dist is not None:
            for t in [A.values for A in batch_A.values()] + list(batch_G.values()):
                dist.all_reduce(t, group=self.process_group)
            count = torch.tensor([B], dtype=torch.int64)
            dist.all_reduce(count, group=self.process_group)
            n = int(count.item())
        beta = self.ema
        for name, block in batch_A.items():
            if beta is not None:
                block.values.div_(n)
            if name not in self._A:
                self._A[name] = block
                continue
            stored = self._A[name]
            if beta is not None:
                stored.values.mul_(beta)
                block.values.mul_(1 - beta)
            if stored.index is not None and stored.key != block.key:  # the live taps changed: go dense
                stored = self._A[name] = Block(stored.dense(), None, stored.size)
            if stored.index is None and block.index is not None:
                index = block.index_tensor(stored.values.device)
                stored.values[:, index.unsqueeze(1), index] += block.values
            else:
                stored.values.add_(block.values)
        for name, total in batch_G.items():
            if beta is not None and mean:
                total.div_(n)
            if name not in self._G:
                self._G[name] = total
            elif beta is None:
                self._G[name].add_(total)
            else:
                self._G[name].mul_(beta).add_(total, alpha=1 - beta)
        self.num_data += n
        self.num_updates += 1
        self._finished = None

    # ------------------------------------------------------------------ factors

    def _factor_A(self, name: str) -> torch.Tensor:
        block = self._A[name]
        if self.ema is not None:
            return block.dense()
        return block.values / self.num_data if block.index is None else block.dense().div_(self.num_data)

    def _factor_G(self, layer) -> torch.Tensor:
        if self.fisher_type == "forward-only":
            G, m = blocks.layer_groups(layer, self._shared(layer))
            ref = self._A[layer.name].values if layer.name in self._A else None
            dtype = ref.dtype if ref is not None else self.params[0].dtype
            device = ref.device if ref is not None else self.params[0].device
            return torch.eye(m, dtype=dtype, device=device).expand(G, m, m).clone()
        G = self._G[layer.name]
        if self.ema is None and self.loss_info.reduction == "mean":
            return G / self.num_data
        return G

    def _check_updated(self):
        if self.num_updates == 0:
            raise RuntimeError("KFAC has no factors yet: call update(inputs, targets) first")

    @property
    def factors(self) -> dict:
        """``{parameter name: (input factor A [G, n, n], gradient factor G [G, m, m])}``.

        A separate bias's input factor is ``ones [G, 1, 1]``; with
        ``separate_weight_and_bias=False`` the weight and the bias map to the
        same joint pair.
        """
        out = {}
        for layer in self.layers:
            A, Gf = self._layer_factors()[layer.name]
            if layer.weight is not None:
                out[layer.weight] = (A, Gf)
            if layer.bias is not None:
                out[layer.bias] = out[layer.weight] if self._joint(layer) else (Gf.new_ones(Gf.shape[0], 1, 1), Gf)
        return out

    def _layer_factors(self) -> dict:
        """``{layer name: (A or None, G)}`` in the blocks' layout (computed once per update)."""
        self._check_updated()
        if self._finished is None:
            self._finished = {layer.name: (self._factor_A(layer.name) if layer.weight is not None else None,
                                           self._factor_G(layer)) for layer in self.layers}
        return self._finished

    def __matmul__(self, vector):
        """``KFAC @ v`` for ``v`` a list shaped like :attr:`params` (``[*p.shape]`` or ``[*p.shape, K]``) or flat ``[D]``/``[D, K]``."""
        parts, restore = blocks.as_list(vector, self.params)
        factors = self._layer_factors()

        def weight_fn(layer, W):
            A, G = factors[layer.name]
            return blocks.sandwich(G, W, A)

        def bias_fn(layer, b):
            return factors[layer.name][1] @ b

        return restore(blocks.apply(self.layers, parts, self._shared, self._joint, weight_fn, bias_fn))

    def to_dense(self) -> torch.Tensor:
        """The approximation as a dense ``[D, D]`` matrix over the flattened :attr:`params` (for small models)."""
        D = sum(p.numel() for p in self.params)
        return self @ torch.eye(D, dtype=self.params[0].dtype, device=self.params[0].device)

    def inverse(self, damping, pi_correction: bool = False, min_damping: float = 1e-8):
        """The damped inverse, from the factors' eigendecompositions (:class:`~tnconv.curvature.KFACInverse`).

        Args:
            damping: ``δ > 0``. A float: ``(G ⊗ A + δ I)⁻¹`` per block (exact
                damping), or with ``pi_correction`` Martens & Grosse's
                ``((G + δ_G I) ⊗ (A + δ_A I))⁻¹`` with ``δ_A = π √δ``,
                ``δ_G = √δ / π``, ``π = √((tr A / n) / (tr G / m))``. A pair
                ``(δ_A, δ_G)``: ``((G + δ_G I) ⊗ (A + δ_A I))⁻¹``.
            pi_correction: see ``damping``.
            min_damping: lower bound of ``δ_A`` and ``δ_G`` with ``pi_correction``.
        """
        from .inverse import KFACInverse

        return KFACInverse(self, damping, pi_correction, min_damping)

    # ------------------------------------------------------------------ state

    def _config(self) -> dict:
        return dict(approx=self.approx, convention=self.convention, fisher_type=self.fisher_type,
                    mc_samples=self.mc_samples, separate_weight_and_bias=self.separate_weight_and_bias,
                    grouped=self.grouped, ema=self.ema, loss=type(self.loss_func).__name__,
                    reduction=self.loss_info.reduction, layers=[(l.name, l.weight, l.bias) for l in self.layers])

    def state_dict(self) -> dict:
        """The running factors, data count, configuration and generator state (not the model's parameters)."""
        return dict(config=self._config(), A={k: v.dense().clone() for k, v in self._A.items()},
                    G={k: v.clone() for k, v in self._G.items()}, num_data=self.num_data,
                    num_updates=self.num_updates,
                    generator=None if self.generator is None else self.generator.get_state())

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; the configuration must match this KFAC's.

        Raises:
            ValueError: ``state`` comes from a KFAC with another configuration or other layers.
        """
        if not isinstance(state, dict) or "config" not in state:
            raise ValueError("state must be a dict from KFAC.state_dict()")
        mine, theirs = self._config(), state["config"]
        diff = [k for k in mine if mine[k] != theirs.get(k)]
        if diff:
            raise ValueError(f"state comes from a KFAC with other settings: {', '.join(f'{k}={theirs.get(k)!r} (here {mine[k]!r})' for k in diff)}")
        self._A = {k: Block(v.clone(), None, v.shape[-1]) for k, v in state["A"].items()}
        self._G = {k: v.clone() for k, v in state["G"].items()}
        self._finished = None
        self.num_data, self.num_updates = state["num_data"], state["num_updates"]
        if state["generator"] is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"KFAC({len(self.layers)} layers, {len(self.params)} parameters, approx={self.approx!r}, "
                f"convention={self.convention!r}, fisher_type={self.fisher_type!r}, num_data={self.num_data})")


__all__ = ["KFAC", "APPROXES", "CONVENTIONS", "GROUPED"]
