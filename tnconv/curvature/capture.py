"""Hooks that collect what curvature needs from one forward pass: layer inputs and output gradients.

:class:`Capture` is a context manager around one forward pass of a model. Its
forward hooks keep (or hand to a callback) each layer's input, and remember
where each layer's output enters the autograd graph (its gradient edge).
:meth:`Capture.backward` then backpropagates one or several vectors from the
model's output to those edges only: no parameter gradient is computed, and
because an edge is taken when the layer runs, an in-place operation after the
layer (``ReLU(inplace=True)``) does not change what is differentiated. With
``keep_grad_outputs=True`` tensor hooks also record the output gradients of
any ordinary backward pass (``loss.backward()``), so the true gradient and the
empirical-Fisher factors come from one backward.

Nothing outlives the context: on exit the hooks are removed and every kept
tensor, edge and graph reference is dropped.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import torch
from torch.autograd.graph import get_gradient_edge

from .layers import Layer

#: Strategies of :meth:`Capture.backward` for several vectors.
STRATEGIES = ("loop", "vmap")


class Capture:
    """Keep layer inputs and collect output gradients for one forward pass (a context manager).

    Args:
        layers: from :func:`~tnconv.curvature.find_layers`.
        keep_inputs: keep each layer's input (detached) in :attr:`inputs`.
        keep_grad_outputs: record the output gradient of every backward pass run
            while the context is open (``loss.backward()``, ``torch.autograd.grad``
            to the parameters) in :attr:`grad_outputs`.
        on_input: called as ``on_input(layer, x, output)`` inside the forward hook
            (``x`` detached, as :meth:`Layer.functional_input` expects it;
            ``output`` detached), e.g. to reduce ``x`` to a Kronecker factor at
            once instead of keeping it.

    Attributes:
        inputs: ``{layer name: input}`` (with ``keep_inputs``).
        grad_outputs: ``{layer name: [V, B, C_out, *O]}``, one entry along ``V``
            per recorded backward pass (with ``keep_grad_outputs``).
        output_shapes: ``{layer name: output shape}`` of the forward pass.

    Raises:
        RuntimeError: a layer runs twice within the context (weight sharing
            across calls is not supported), or its output does not require grad
            when a gradient is asked for.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU(inplace=True), torch.nn.Flatten(),
        ...                           torch.nn.Linear(8, 3))
        >>> layers = find_layers(net)
        >>> with Capture(layers) as cap:
        ...     out = net(torch.randn(5, 1, 6))
        ...     grads = cap.backward(out, torch.randn(7, 5, 3))
        ...     shapes = {name: tuple(x.shape) for name, x in cap.inputs.items()}
        >>> shapes, tuple(grads["0"].shape), tuple(grads["3"].shape)
        ({'0': (5, 1, 6), '3': (5, 8)}, (7, 5, 2, 4), (7, 5, 3))
    """

    def __init__(self, layers: Sequence[Layer], keep_inputs: bool = True, keep_grad_outputs: bool = False,
                 on_input: Optional[Callable] = None):
        self.layers = list(layers)
        if not self.layers or not all(isinstance(layer, Layer) for layer in self.layers):
            raise TypeError("layers must be a non-empty list of tnconv.curvature.Layer (from find_layers)")
        self.keep_inputs, self.keep_grad_outputs, self.on_input = keep_inputs, keep_grad_outputs, on_input
        self._handles: list = []
        self._active = False
        self._clear()

    def _clear(self):
        self.inputs: dict = {}
        self.output_shapes: dict = {}
        self._grads: dict = {}
        self._edges: dict = {}
        self._callback = None
        self._fired: set = set()

    def __enter__(self) -> "Capture":
        if self._active:
            raise RuntimeError("this Capture is already open")
        self._clear()
        self._active = True
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._forward_hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._active = False
        self._clear()

    def _forward_hook(self, layer: Layer):
        def hook(module, args, output):
            if not self._active:
                return
            if layer.name in self.output_shapes:
                raise RuntimeError(f"layer {layer.name!r} ran twice in one captured forward pass: layers called "
                                   "several times (weight sharing across calls) are not supported")
            x = layer.functional_input(args[0].detach())
            self.output_shapes[layer.name] = tuple(output.shape)
            if self.keep_inputs:
                self.inputs[layer.name] = x
            if self.on_input is not None:
                self.on_input(layer, x, output.detach())
            if output.requires_grad:
                self._edges[layer.name] = get_gradient_edge(output)
                self._grads[layer.name] = []
                # registered before any in-place op on the output: it sees the gradient of the layer's own output
                output.register_hook(self._tensor_hook(layer))

        return hook

    def _tensor_hook(self, layer: Layer):
        def hook(grad):
            if not self._active:
                return
            if self._callback is not None:
                self._fired.add(layer.name)
                self._callback(layer, grad.detach().unsqueeze(0))
            elif self.keep_grad_outputs:
                self._grads[layer.name].append(grad.detach())

        return hook

    @contextmanager
    def streaming(self, callback: Callable):
        """Within this block, every backward pass hands each layer's output gradient to ``callback`` at once.

        ``callback(layer, grad)`` gets ``grad`` ``[1, B, C_out, *O]`` when the
        backward pass reaches the layer (nothing is kept). Yields the set of the
        names of the layers handed over so far (a layer the loss does not depend
        on never is).

        Example:
            >>> from tnconv.curvature import find_layers
            >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
            >>> with Capture(find_layers(net), keep_inputs=False) as cap:
            ...     loss = net(torch.randn(5, 3)).sum()
            ...     with cap.streaming(lambda layer, g: print(layer.name, tuple(g.shape))) as fired:
            ...         loss.backward()
            1 (1, 5, 2)
            0 (1, 5, 4)
        """
        if not self._active:
            raise RuntimeError("Capture.streaming must be used inside the with-block")
        self._callback, self._fired = callback, set()
        try:
            yield self._fired
        finally:
            self._callback = None

    @property
    def grad_outputs(self) -> dict:
        """``{layer name: [V, B, C_out, *O]}`` from the backward passes recorded so far."""
        return {name: torch.stack(grads) for name, grads in self._grads.items() if grads}

    def _edges_of(self, names):
        missing = [layer.name for layer in self.layers if layer.name not in self.output_shapes]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the captured forward pass")
        frozen = [name for name in names if name not in self._edges]
        if frozen:
            raise RuntimeError(f"the outputs of layers {frozen} do not require grad (are the model's parameters "
                               "frozen and its input without grad?): no gradient can reach them")
        return [self._edges[name] for name in names]

    def backward(self, output: torch.Tensor, vectors: torch.Tensor, callback: Optional[Callable] = None,
                 strategy: str = "loop", retain_graph: bool = False) -> Optional[dict]:
        """Backpropagate ``vectors`` ``[V, *output.shape]`` from ``output`` to every layer's output.

        Computes ``J_lᵀ v`` for every vector ``v`` and layer ``l`` (``J_l`` the
        Jacobian of ``output`` with respect to layer ``l``'s output), without
        computing any parameter gradient.

        Args:
            output: a tensor computed in the captured forward pass (the model's output).
            vectors: ``[V, *output.shape]``, e.g. the loss Hessian's square root
                from :mod:`tnconv.curvature.loss`.
            callback: if given, called as ``callback(layer, grads)`` with
                ``grads`` ``[k, B, C_out, *O]`` for each chunk of ``k`` vectors
                (``k = 1`` for ``"loop"``, ``V`` for ``"vmap"``), and nothing is
                kept; otherwise the gradients are returned.
            strategy: ``"loop"``: one backward pass per vector (``retain_graph``
                between them); ``"vmap"``: one batched backward
                (``is_grads_batched``).
            retain_graph: keep the graph after the last vector (to backpropagate again).

        Returns:
            ``{layer name: [V, B, C_out, *O]}``, or ``None`` with a ``callback``.
            A layer the output does not depend on gets zeros.
        """
        if not self._active:
            raise RuntimeError("Capture.backward must be called inside the with-block")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not isinstance(vectors, torch.Tensor) or tuple(vectors.shape[1:]) != tuple(output.shape):
            got = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
            raise ValueError(f"vectors must have shape [V, *output.shape] = [V, {', '.join(map(str, output.shape))}], "
                             f"got {got}")
        names = [layer.name for layer in self.layers]
        edges = self._edges_of(names)
        if callback is not None and strategy == "loop":
            self._backward_streaming(output, vectors, callback, names, retain_graph)
            return None
        chunks = [vectors] if strategy == "vmap" else list(vectors.unbind(0))
        kept = {name: [] for name in names} if callback is None else None
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            grads = torch.autograd.grad(output, edges, chunk, retain_graph=retain_graph or not last, allow_unused=True,
                                        is_grads_batched=strategy == "vmap")
            for layer, grad in zip(self.layers, grads):
                shape = (chunk.shape[0],) if strategy == "vmap" else ()
                shape += self.output_shapes[layer.name]
                grad = output.new_zeros(shape) if grad is None else grad.detach()
                if strategy == "loop":
                    grad = grad.unsqueeze(0)
                if callback is None:
                    kept[layer.name].append(grad)
                else:
                    callback(layer, grad)
        if callback is None:
            return {name: torch.cat(grads) for name, grads in kept.items()}
        return None

    def _backward_streaming(self, output, vectors, callback, names, retain_graph):
        """One backward pass per vector, each layer's gradient handed to ``callback`` as soon as it is computed.

        The passes stop at the outputs of the *first* layers only (those with no
        other layer upstream); every later layer's gradient flows through on
        the way there and is taken by its tensor hook, then freed. So at most
        the first layers' gradients are held at once, not every layer's.
        """
        first = self._first_layers(output, names)
        by_name = {layer.name: layer for layer in self.layers}
        for i, v in enumerate(vectors.unbind(0)):
            with self.streaming(callback) as fired:
                grads = torch.autograd.grad(output, [self._edges[n] for n in first], v,
                                            retain_graph=retain_graph or i < len(vectors) - 1, allow_unused=True)
            returned = dict(zip(first, grads))
            for name in names:
                if name in fired:
                    continue
                grad = returned.get(name)
                shape = (1,) + self.output_shapes[name]
                callback(by_name[name], output.new_zeros(shape) if grad is None else grad.detach().unsqueeze(0))

    def _first_layers(self, output, names) -> list:
        """The layers whose output edge has no other layer's edge upstream of it in ``output``'s graph."""
        layer_of = {}
        for name in names:
            layer_of.setdefault(self._edges[name].node, []).append(name)
        below: dict = {}  # node -> whether a layer's node lies strictly upstream of it
        root = output.grad_fn
        stack = [(root, False)] if root is not None else []
        while stack:
            node, expanded = stack.pop()
            if node in below:
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in children if child not in below)
                continue
            below[node] = any(child in layer_of or below.get(child, False) for child in children)
        return [name for node, group in layer_of.items() for name in group if not below.get(node, False)]


__all__ = ["Capture", "STRATEGIES"]
