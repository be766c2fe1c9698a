"""``tnconv.compile``: passes, then a cached plan per shapes, dtype and device."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

from .autotune import switch as _switch
from .backends import BACKENDS, get_backend
from .bind import ShapeError, bind, concrete
from .ir import NetworkSum, TensorNetwork, check, pattern_tensor, size_symbol
from .lowering import LOWERINGS, candidates, check_lowering, choose

#: Plans kept per compiled network (least recently used are dropped).
PLAN_CACHE_SIZE = 64

#: Largest number of elements of a result, pattern or intermediate tnconv agrees to
#: allocate; beyond it a call fails with a ValueError instead of exhausting memory.
MAX_ELEMENTS = 2**31


@dataclass
class _TermPlan:
    sources: Tuple  # per operand: ("input", name, leg shape) or ("const", tensor)
    plan: object
    out_shape: Tuple[int, ...]
    scale: float
    label: str = ""  # the lowering chosen (a candidate's label, see tnconv.lowering.candidates)


class _ExecutionPlan:
    """Everything a call needs once the shapes are known: no strings, no planning."""

    def __init__(self, terms, out_shape, dtype, device, selects=None):
        self.terms = terms
        self.out_shape = out_shape
        self.dtype = dtype
        self.device = device
        self.selects = selects or {}  # name -> (I, M), drawn at every call

    def __call__(self, tensors, generator=None):
        result = None
        if self.selects:
            tensors = dict(tensors)
            for name, (I, M) in self.selects.items():
                if name not in tensors:
                    tensors[name] = _selection(I, M, generator, self.dtype, self.device)
        owned = False  # whether ``result`` is ours to write into
        for term in self.terms:
            if term.plan is None:  # a zero-sized leg: the contraction is empty
                value, mine = torch.zeros(self.out_shape, dtype=self.dtype, device=self.device), True
            else:
                operands = [_shaped(tensors[s[1]], s[2]) if s[0] == "input" else s[1] for s in term.sources]
                value = _shaped(term.plan(*operands), self.out_shape)
                if len(self.terms) == 1 and term.scale == 1:
                    return value.contiguous() if _broadcast(value) else value
                mine = _owned(value, operands)
            # a fresh result of the plan is scaled and accumulated in place: one pass and one allocation less
            if term.scale != 1:
                value = value.mul_(term.scale) if mine else value * term.scale
                mine = True
            if result is None:
                result, owned = value, mine
            elif owned:
                result.add_(value)
            else:
                result, owned = result + value, True
        if _broadcast(result):  # never hand out a stride-0 view: callers may write into results
            result = result.contiguous()
        return result

    @property
    def flops(self) -> float:
        return sum(t.plan.flops for t in self.terms if t.plan is not None)

    @property
    def largest_intermediate(self) -> int:
        return max((t.plan.largest_intermediate for t in self.terms if t.plan is not None), default=0)


def _shaped(tensor, shape):
    return tensor if tensor.shape == shape else tensor.reshape(shape)


def _broadcast(tensor) -> bool:
    return any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape))


def _owned(value, operands) -> bool:
    """Whether ``value`` may be written in place: no autograd history and no memory shared with an operand."""
    if value.requires_grad or value._base is not None and value._base.requires_grad or _broadcast(value):
        return False
    try:
        storage = value.untyped_storage().data_ptr()
        return all(not isinstance(a, torch.Tensor) or a.untyped_storage().data_ptr() != storage for a in operands)
    except (NotImplementedError, RuntimeError):  # functorch's wrapped tensors (vmap, grad) have no plain storage
        return False


def _selection(I, M, generator, dtype, device):
    """One-hot ``[I, M]``: ``M`` of ``I`` indices without replacement, in increasing order.

    Drawn on the generator's device (the result's without one), so no tensor is made
    on the CPU for another device; on ``meta`` only the shape exists.
    """
    out = torch.zeros(I, M, dtype=dtype, device=device)
    if device.type == "meta":
        return out
    index = torch.randperm(I, generator=generator, device=device if generator is None else generator.device)
    index = index[:M].sort().values.to(device)
    out[index, torch.arange(M, device=device)] = 1
    return out


def _timing_input(tensors, name, shape, dtype, device):
    """The call's tensor ``name``, detached (timing records no autograd history), or for a CRS selection the
    call did not pass, a stand-in drawn from a private generator (the caller's random stream stays untouched)."""
    if name in tensors:
        return tensors[name].detach()
    I, M = shape
    return _selection(I, M, torch.Generator().manual_seed(0), dtype, device)


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
        trace: with ``trace=True``, a :class:`~tnconv.passes.Trace`: the ``(pass name, text)``
            pairs after every pass that ran, with ``.diff()`` showing what each pass changed.
    """

    def __init__(self, tn, backend="cotengra", passes="default", memory_limit=None, trace=False, debug=None,
                 lowering=LOWERINGS, autotune=None):
        from .passes.pipeline import run_pipeline

        if not isinstance(tn, (TensorNetwork, NetworkSum)):
            raise TypeError(f"tn must be a TensorNetwork or NetworkSum, got {type(tn).__name__}")
        if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit < 1):
            raise ValueError(f"memory_limit must be a positive int (elements) or None, got {memory_limit!r}")
        self._plan_backend = get_backend(backend)
        self.backend = backend
        self.memory_limit = memory_limit
        self.lowering = check_lowering(lowering)
        if autotune is not None and not isinstance(autotune, bool):
            raise TypeError(f"autotune must be True, False or None (follow tnconv.set_autotune), got {autotune!r}")
        self.autotune = autotune
        self.source = tn
        check(tn)
        self.network, recorded = run_pipeline(tn, passes, record=trace, debug=debug)
        self.trace = recorded if trace else None
        self.inputs = self.network.inputs
        self.selects = {t.name for term in self.network.terms for t in term.tensors if t.kind == "select"}
        self.generator = self.network.generator
        self._size_names = frozenset(str(s) for s in self.network.size_symbols)
        self._reset()

    def _reset(self):
        """An empty plan cache: the state that is not the compiled network's value."""
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._last = None
        self.cache_hits = 0
        self.cache_misses = 0
        if self.autotune is None:  # plans made under the process-wide switch are dropped when it flips
            _switch.follow(self)

    def _autotune_changed(self):
        """The process-wide autotune switch flipped: plans made under the old setting are dropped."""
        with self._lock:
            self._cache.clear()

    @property
    def trace_dots(self):
        """With ``trace=True``, ``(pass name, DOT text)`` after every pass (drawn on demand), else None."""
        return self.trace.dots() if self.trace is not None else None

    # -- pickling: the network and options are the state; plans (closures over kernels) and the lock are
    # rebuilt, the plans lazily on the first call of each shape
    def __getstate__(self):
        state = dict(self.__dict__)
        for name in ("_cache", "_lock", "_last", "cache_hits", "cache_misses"):
            state.pop(name)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # -- calling ---------------------------------------------------------------
    def __call__(self, **kwargs) -> torch.Tensor:
        """Evaluate on the input tensors (by name); ints fix size symbols no input determines.

        ``dtype`` and ``device`` set the result's for networks without inputs.
        """
        plan = self.plan(**kwargs)
        return plan(kwargs, kwargs.get("generator", self.generator))

    def plan(self, **kwargs) -> "_ExecutionPlan":
        """The execution plan for these arguments (as :meth:`__call__` takes them), from the cache or built.

        Only the tensors' shapes, dtypes and devices are read, so stand-ins such as
        ``x.new_empty(1).expand(shape)`` plan a call without its data.
        """
        try:
            key = tuple((kwargs[name].shape, kwargs[name].dtype, kwargs[name].device) for name in self.inputs)
        except (KeyError, AttributeError):
            self._check_call(kwargs)
            raise
        if len(kwargs) != len(self.inputs):
            key += tuple(sorted((k, v) for k, v in self._check_call(kwargs).items()))
        with self._lock:
            plan = self._cache.get(key)
            if plan is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
        if plan is None:
            plan = self._build(kwargs)
            with self._lock:
                self.cache_misses += 1
                self._cache[key] = plan
                while len(self._cache) > PLAN_CACHE_SIZE:
                    self._cache.popitem(last=False)
        self._last = plan
        return plan

    def _check_call(self, kwargs) -> dict:
        """Validate the call's arguments; return the ones that are not input tensors."""
        missing = [n for n in self.inputs if n not in kwargs]
        if missing:
            raise TypeError(f"missing the input tensors {missing}; the network's inputs are {list(self.inputs)}")
        for name in self.inputs:
            if not isinstance(kwargs[name], torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(kwargs[name]).__name__}")
        extras = {k: v for k, v in kwargs.items() if k not in self.inputs}
        sizes = self._size_names
        for name, value in extras.items():
            if name == "dtype":
                if not isinstance(value, torch.dtype):
                    raise TypeError(f"dtype must be a torch.dtype, got {value!r}")
            elif name == "device":
                extras[name] = torch.device(value)
            elif name == "generator":
                if value is not None and not isinstance(value, torch.Generator):
                    raise TypeError(f"generator must be a torch.Generator, got {type(value).__name__}")
                extras[name] = None  # not part of the plan
            elif name in self.selects:
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"{name} must be a torch.Tensor (a one-hot selection), got {type(value).__name__}")
                extras[name] = tuple(value.shape)
            elif name in sizes:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"size {name} must be a non-negative int, got {value!r}")
            else:
                raise TypeError(f"unexpected argument {name!r}: the network's inputs are {list(self.inputs)}"
                                + (f" and its sizes {sorted(sizes)}" if sizes else ""))
        return extras

    def _build(self, kwargs, tuner=None) -> _ExecutionPlan:
        # tuner: an object whose choose(candidates, operands, scale) picks each term's lowering (tests force one)
        extras = self._check_call(kwargs)
        tensors = [kwargs[n] for n in self.inputs]
        first = tensors[0] if tensors else None
        for name, t in zip(self.inputs, tensors):
            if t.dtype != first.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but {self.inputs[0]} has {first.dtype}")
            if t.device != first.device:
                raise ValueError(f"{name} is on device {t.device} but {self.inputs[0]} is on device {first.device}")
        dtype = first.dtype if first is not None else extras.get("dtype", torch.get_default_dtype())
        device = first.device if first is not None else extras.get("device", torch.device("cpu"))
        given = {size_symbol(k): v for k, v in extras.items()
                 if k not in ("dtype", "device", "generator") and k not in self.selects}
        shapes = {n: tuple(kwargs[n].shape) for n in self.inputs}
        shapes.update({n: tuple(kwargs[n].shape) for n in self.selects if n in kwargs})
        known = bind(self.network, shapes, given)
        if tuner is None and (self.autotune or self.autotune is None and _switch.autotune_enabled()):
            from .autotune.tuner import Tuner

            tuner = Tuner(self._tuning_fields(shapes, extras, dtype, device), tensors, device)
        plan = self._plan(known, dtype, device, tuner=tuner, tensors=kwargs)
        if tuner is not None and hasattr(tuner, "finish"):
            tuner.finish()
        return plan

    def _tuning_fields(self, shapes, extras, dtype, device) -> dict:
        """What an autotune verdict depends on: the key of its cache entry."""
        from . import __version__
        from .autotune.cache import text_hash

        if getattr(self, "_text_hash", None) is None:
            self._text_hash = text_hash(self.network.to_text())
        sizes = {k: int(v) for k, v in extras.items() if k not in ("dtype", "device", "generator") and k not in self.selects}
        return dict(network=self._text_hash, name=self.network.name, shapes={n: [int(d) for d in s] for n, s in shapes.items()},
                    sizes=sizes, dtype=str(dtype).replace("torch.", ""), device=str(device), torch=torch.__version__,
                    threads=torch.get_num_threads(), backend=self.backend, lowering=list(self.lowering),
                    memory_limit=self.memory_limit, tnconv=__version__)

    def _plan(self, known, dtype, device, dry=False, tuner=None, tensors=None) -> _ExecutionPlan:
        # dry: plan for cost() only, so neither refuse large sizes nor build constants
        # tuner: choose each term's lowering by measurement (autotune) on ``tensors``, the call's arguments
        terms, selects = [], {}
        out_shape = None
        others = {name: get_backend(name) for name in BACKENDS if name != self.backend} if tuner else None
        for term in self.network.terms:
            sizes = {name: concrete(leg.size, known) for name, leg in term.legs.items()}
            shape = tuple(int(_prod(sizes[leg.name] for leg in axis)) for axis in term.output)
            out_shape = out_shape or shape
            if not dry:
                _check_size(f"the result of {term.name!r}", shape)
            scale = float(term.scale.subs(known)) if term.scale.free_symbols else float(term.scale)
            if any(v == 0 for v in sizes.values()):
                terms.append(_TermPlan((), None, shape, scale))
                continue
            found = candidates(term, sizes, dtype, self._plan_backend, self.memory_limit, self.lowering,
                               None if dry else MAX_ELEMENTS, others)
            if tuner is None:
                chosen = choose(found)
            else:
                def operands(candidate, term=term, sizes=sizes):
                    sources = self._sources(term, candidate.positions, sizes, dtype, device, False, {})
                    return [_shaped(_timing_input(tensors, s[1], s[2], dtype, device), s[2]) if s[0] == "input"
                            else s[1] for s in sources]

                chosen = tuner.choose(found, operands, scale)
            plan = chosen.plan
            sources = self._sources(term, chosen.positions, sizes, dtype, device, dry, selects)
            if not dry and plan.largest_intermediate > MAX_ELEMENTS:
                raise ValueError(f"contracting {term.name!r} needs an intermediate of {plan.largest_intermediate} elements, "
                                 f"more than MAX_ELEMENTS={MAX_ELEMENTS}; pass a memory_limit to slice it")
            if scale != 1 and plan.with_scale is not None:  # the scale rides on a matrix product: no pass over the result
                plan, scale = plan.with_scale(scale), 1.0
            terms.append(_TermPlan(tuple(sources), plan, shape, scale, chosen.label))
        return _ExecutionPlan(terms, out_shape, dtype, device, selects)

    def _sources(self, term, positions, sizes, dtype, device, dry, selects) -> list:
        """Per operand of the plan: ``("input", name, leg shape)`` or ``("const", tensor)``; records selections."""
        sources = []
        for position in positions:
            t = term.tensors[position]
            shape_of_legs = tuple(sizes[leg.name] for leg in t.legs)
            if t.kind == "select":
                selects[t.name] = shape_of_legs
            if t.kind in ("input", "select"):
                sources.append(("input", t.name, shape_of_legs))
            elif dry:
                sources.append(("const", None))
            else:
                _check_size(f"the {t.kind} tensor {t.name!r}", shape_of_legs)
                sources.append(("const", _constant(t, sizes, dtype, device)))
        return sources

    @property
    def lowerings(self) -> Tuple[str, ...]:
        """The label of the lowering each term of the last call's plan runs (see :func:`tnconv.lowering.candidates`).

        Example:
            >>> import torch, tnconv
            >>> f = tnconv.compile(tnconv.diagrams.conv(N=1, kernel_size=3))
            >>> _ = f(x=torch.randn(2, 4, 10), w=torch.randn(5, 4, 3)); f.lowerings
            ('native',)
        """
        if self._last is None:
            raise ValueError("lowerings needs a call of the compiled network first")
        return tuple(t.label for t in self._last.terms)

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
        name -> shape tuple (and ints for size symbols no input fixes), planned
        without running anything.
        """
        if shapes:
            given = {size_symbol(n): v for n, v in shapes.items() if isinstance(v, int)}
            known = bind(self.network, {n: tuple(s) for n, s in shapes.items() if not isinstance(s, int)}, given)
            plan = self._plan(known, torch.float32, torch.device("cpu"), dry=True)
        elif self._last is not None:
            plan = self._last
        else:
            raise ValueError("cost() needs input shapes, or a call of the compiled network first")
        return {"flops": plan.flops, "largest_intermediate": plan.largest_intermediate}

    def __repr__(self):
        return f"Compiled({self.network.name!r}, backend={self.backend!r}, inputs={list(self.inputs)})"


def _check_size(what, shape):
    if _prod(shape) > MAX_ELEMENTS:
        raise ValueError(f"{what} would have shape {shape}, more than MAX_ELEMENTS={MAX_ELEMENTS} elements; "
                         "check the sizes and hyper-parameters (e.g. padding)")


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def compile(tn, backend: str = "cotengra", passes="default", memory_limit=None, trace: bool = False, *, debug=None,
            lowering=LOWERINGS, autotune=None) -> Compiled:
    """Compile a network (or sum of networks) into a callable.

    Args:
        tn: the network, e.g. from :mod:`tnconv.diagrams`.
        backend: ``"cotengra"`` (default), ``"opt_einsum"`` or ``"torch"``.
        passes: ``"default"``, ``None`` (no passes), or a list of pass names or callables.
        memory_limit: cap on the largest intermediate, in elements (cotengra slices to meet it).
        trace: record the network after every pass: ``.trace`` is a :class:`~tnconv.passes.Trace`
            of ``(pass, text)`` pairs starting with the input, whose ``.diff()`` prints a
            unified diff per pass (``unchanged`` for a no-op); ``.trace_dots`` the
            ``(pass, DOT)`` pairs.
        debug: check the IR's invariants before and after every pass (default:
            the environment variable ``TNCONV_DEBUG``).
        lowering: what each term may be lowered to besides the plain contraction,
            chosen per term by FLOPs once its sizes are known: ``"native"``
            (PyTorch's convolution kernels for terms that are convolutions or
            their VJPs) and ``"views"`` (patterns as strided views of an input);
            ``()`` runs the plain contraction only. See :mod:`tnconv.lowering`.
        autotune: ``True``: on the first call for new shapes, time every lowering of
            each term on the call's tensors (each backend's plain contraction and the
            executions only measurement ranks included) and keep the fastest, like
            ``torch.backends.cudnn.benchmark``; verdicts persist in
            :func:`tnconv.autotune_cache`. ``False``: the cost model chooses. ``None``
            (default): follow :func:`tnconv.set_autotune` / ``TNCONV_AUTOTUNE``.
            Results agree whichever lowering runs, up to rounding. See :mod:`tnconv.autotune`.

    Example:
        >>> import torch, tnconv
        >>> f = tnconv.compile(tnconv.diagrams.conv(N=1, kernel_size=3))
        >>> x, w = torch.randn(2, 4, 10), torch.randn(5, 4, 3)
        >>> torch.allclose(f(x=x, w=w), torch.nn.functional.conv1d(x, w), atol=1e-5)
        True
    """
    return Compiled(tn, backend, passes, memory_limit, trace, debug, lowering, autotune)


__all__ = ["compile", "Compiled", "ShapeError", "PLAN_CACHE_SIZE", "MAX_ELEMENTS"]
