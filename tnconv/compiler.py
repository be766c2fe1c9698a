"""``tnconv.compile``: passes, then a cached plan per shapes, dtype and device."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

from .backends import get_backend
from .bind import ShapeError, bind, concrete
from .ir import NetworkSum, TensorNetwork, check, pattern_tensor

#: Plans kept per compiled network (least recently used are dropped).
PLAN_CACHE_SIZE = 64


@dataclass
class _TermPlan:
    sources: Tuple  # per operand: ("input", name, leg shape) or ("const", tensor)
    plan: object
    out_shape: Tuple[int, ...]
    scale: float


class _ExecutionPlan:
    """Everything a call needs once the shapes are known: no strings, no planning."""

    def __init__(self, terms, out_shape, dtype, device):
        self.terms = terms
        self.out_shape = out_shape
        self.dtype = dtype
        self.device = device

    def __call__(self, tensors):
        result = None
        for term in self.terms:
            if term.plan is None:  # a zero-sized leg: the contraction is empty
                value = torch.zeros(self.out_shape, dtype=self.dtype, device=self.device)
            else:
                operands = [tensors[s[1]].reshape(s[2]) if s[0] == "input" else s[1] for s in term.sources]
                value = term.plan(*operands).reshape(self.out_shape)
            if term.scale != 1:
                value = value * term.scale
            result = value if result is None else result + value
        return result

    @property
    def flops(self) -> float:
        return sum(t.plan.flops for t in self.terms if t.plan is not None)

    @property
    def largest_intermediate(self) -> int:
        return max((t.plan.largest_intermediate for t in self.terms if t.plan is not None), default=0)


def _constant(t, sizes, dtype, device):
    if t.kind == "pattern":
        i, o, k = (sizes[leg.name] for leg in t.legs)
        a = t.attr
        return pattern_tensor(i, o, k, a["stride"], a["pad_left"], a["dilation"], dtype, device)
    shape = tuple(sizes[leg.name] for leg in t.legs)
    if t.kind == "delta":
        n = shape[0]
        out = torch.zeros(shape, dtype=dtype, device=device)
        index = torch.arange(n, device=device)
        out[(index,) * len(shape)] = 1
        return out
    return torch.full(shape, t.attr["value"], dtype=dtype, device=device)


class Compiled:
    """A compiled network: ``compiled(**tensors) -> torch.Tensor``.

    Attributes:
        network: the network after the passes.
        source: the network as given.
        trace: with ``trace=True``, ``(pass name, text)`` after every pass that ran.
    """

    def __init__(self, tn, backend="cotengra", passes="default", memory_limit=None, trace=False):
        from .passes.pipeline import run_pipeline

        if not isinstance(tn, (TensorNetwork, NetworkSum)):
            raise TypeError(f"tn must be a TensorNetwork or NetworkSum, got {type(tn).__name__}")
        if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit < 1):
            raise ValueError(f"memory_limit must be a positive int (elements) or None, got {memory_limit!r}")
        self._plan_backend = get_backend(backend)
        self.backend = backend
        self.memory_limit = memory_limit
        self.source = tn
        check(tn)
        self.network, self.trace_dots = run_pipeline(tn, passes, record=trace)
        self.trace = [(name, text) for name, text, _ in self.trace_dots] if trace else None
        self.inputs = self.network.inputs
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._last = None
        self.cache_hits = 0
        self.cache_misses = 0

    # -- calling ---------------------------------------------------------------
    def __call__(self, **tensors) -> torch.Tensor:
        key = self._key(tensors)
        with self._lock:
            plan = self._cache.get(key)
            if plan is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
        if plan is None:
            plan = self._build(tensors)
            with self._lock:
                self.cache_misses += 1
                self._cache[key] = plan
                while len(self._cache) > PLAN_CACHE_SIZE:
                    self._cache.popitem(last=False)
        self._last = plan
        return plan(tensors)

    def _key(self, tensors):
        try:
            return tuple((tensors[name].shape, tensors[name].dtype, tensors[name].device) for name in self.inputs) + (len(tensors),)
        except KeyError:
            self._check_names(tensors)
            raise
        except AttributeError:
            self._check_names(tensors)
            bad = [n for n in self.inputs if not isinstance(tensors[n], torch.Tensor)]
            raise TypeError(f"{bad[0]} must be a torch.Tensor, got {type(tensors[bad[0]]).__name__}") from None

    def _check_names(self, tensors):
        missing = [n for n in self.inputs if n not in tensors]
        extra = [n for n in tensors if n not in self.inputs]
        if missing or extra:
            raise TypeError(f"expected the tensors {list(self.inputs)}, missing {missing}, unexpected {extra}")

    def _build(self, tensors) -> _ExecutionPlan:
        self._check_names(tensors)
        first = tensors[self.inputs[0]]
        for name in self.inputs:
            t = tensors[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != first.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but {self.inputs[0]} has {first.dtype}")
            if t.device != first.device:
                raise ValueError(f"{name} is on {t.device} but {self.inputs[0]} is on {first.device}")
        known = bind(self.network, {n: tuple(tensors[n].shape) for n in self.inputs})
        return self._plan(known, first.dtype, first.device)

    def _plan(self, known, dtype, device) -> _ExecutionPlan:
        terms = []
        out_shape = None
        for term in self.network.terms:
            sizes = {name: concrete(leg.size, known) for name, leg in term.legs.items()}
            shape = tuple(int(_prod(sizes[leg.name] for leg in axis)) for axis in term.output)
            out_shape = out_shape or shape
            scale = float(term.scale.subs(known)) if term.scale.free_symbols else float(term.scale)
            if any(v == 0 for v in sizes.values()):
                terms.append(_TermPlan((), None, shape, scale))
                continue
            sources, legs = [], []
            for t in term.tensors:
                names = tuple(leg.name for leg in t.legs)
                legs.append(names)
                if t.kind == "input":
                    sources.append(("input", t.name, tuple(sizes[n] for n in names)))
                else:
                    sources.append(("const", _constant(t, sizes, dtype, device)))
            output = tuple(leg.name for leg in term.output_legs)
            plan = self._plan_backend(legs, output, sizes, self.memory_limit)
            terms.append(_TermPlan(tuple(sources), plan, shape, scale))
        return _ExecutionPlan(terms, out_shape, dtype, device)

    # -- inspection --------------------------------------------------------------
    @property
    def equation(self) -> str:
        """The einsum equation(s) the backend runs, ``' + '``-joined for a sum."""
        from .backends.letters import equation

        return " + ".join(equation([tuple(l.name for l in t.legs) for t in term.tensors],
                                   tuple(l.name for l in term.output_legs)) for term in self.network.terms)

    def cost(self, **shapes) -> dict:
        """FLOPs and largest intermediate (elements) of the plan for ``shapes``.

        Without arguments: of the plan of the last call. With arguments: input
        name -> shape tuple, planned without running anything.
        """
        if shapes:
            known = bind(self.network, {n: tuple(s) for n, s in shapes.items()})
            plan = self._plan(known, torch.float32, torch.device("cpu"))
        elif self._last is not None:
            plan = self._last
        else:
            raise ValueError("cost() needs input shapes, or a call of the compiled network first")
        return {"flops": plan.flops, "largest_intermediate": plan.largest_intermediate}

    def __repr__(self):
        return f"Compiled({self.network.name!r}, backend={self.backend!r}, inputs={list(self.inputs)})"


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def compile(tn, backend: str = "cotengra", passes="default", memory_limit=None, trace: bool = False) -> Compiled:
    """Compile a network (or sum of networks) into a callable.

    Args:
        tn: the network, e.g. from :mod:`tnconv.diagrams`.
        backend: ``"cotengra"`` (default), ``"opt_einsum"`` or ``"torch"``.
        passes: ``"default"``, ``None`` (no passes), or a list of pass names or callables.
        memory_limit: cap on the largest intermediate, in elements (cotengra slices to meet it).
        trace: record the network's text after every pass in ``.trace``.

    Example:
        >>> import torch, tnconv
        >>> f = tnconv.compile(tnconv.diagrams.conv(N=1, kernel_size=3))
        >>> x, w = torch.randn(2, 4, 10), torch.randn(5, 4, 3)
        >>> torch.allclose(f(x=x, w=w), torch.nn.functional.conv1d(x, w), atol=1e-5)
        True
    """
    return Compiled(tn, backend, passes, memory_limit, trace)


__all__ = ["compile", "Compiled", "ShapeError", "PLAN_CACHE_SIZE"]
