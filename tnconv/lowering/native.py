"""Template matching (the paper's §4.2): a term that *is* a convolution runs PyTorch's kernel.

A convolution is the contraction ``Y[b, g, co, o] = Σ X[b, g, ci, i] W[g, co, ci, k]
Π(i, o, k)``. Every pattern ``Π(i, o, k)`` names three roles: the tensor
holding ``i`` plays the input ``X``, the one holding ``k`` the kernel ``W``,
the one holding ``o`` the output ``Y``. When two input tensors and the
term's output take these three roles consistently for all patterns, the term
is one of PyTorch's primitives:

* output = ``Y``: the forward convolution,
* output = ``X``: the input VJP (a transpose convolution),
* output = ``W``: the weight VJP,

and every other leg is classified by the roles that carry it: all three —
a group leg (channel groups, and the batch of a per-sample gradient, which
is how that becomes a grouped convolution); ``X`` and ``Y`` — batch; ``X``
and ``W`` — input channel; ``W`` and ``Y`` — output channel. Anything else
(a delta, a constant, more than three spatial dimensions) is not a
template and is left to the einsum backends; a leg on one operand only that
the output lacks is summed out first. A term without patterns (a 1x1
convolution once ``squeeze_trivial`` removed its identity patterns) is a 1x1
convolution over its flattened pixels.

Sizes the pattern fixes but PyTorch derives (an output shorter than the
formula, asymmetric or negative padding) are met by explicit padding or
cropping with :func:`torch.nn.functional.pad`, so the kernel always sees
symmetric padding or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..backends.base import Plan
from ..ir.pattern import pattern_empty
from . import views

#: dtypes PyTorch's convolution kernels take on every device.
NATIVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ConvTemplate:
    """A term recognized as a convolution: who plays which role, and its legs."""

    output_role: str  # "y" (forward), "x" (input VJP) or "w" (weight VJP)
    x: Tuple[str, ...]  # legs of the input operand playing X (or of the output)
    w: Tuple[str, ...]
    y: Tuple[str, ...]
    operands: Tuple[str, str]  # the roles of the term's first and second input tensor
    batch: Tuple[str, ...]
    group: Tuple[str, ...]
    c_in: Tuple[str, ...]
    c_out: Tuple[str, ...]
    spatial: Tuple[Tuple[str, str, str], ...]  # (i, o, k) per dimension
    attrs: Tuple[dict, ...]
    summed: Tuple[Tuple[int, ...], Tuple[int, ...]] = ((), ())  # axes of each operand only it carries
    flat: Tuple[str, ...] = ()  # a pattern-free term: X-and-Y legs run as one spatial axis of a 1x1 kernel


@dataclass(frozen=True)
class NativeCall:
    """What a native plan runs when it is exactly one PyTorch kernel call on its operands.

    Set on the plan (``Plan.native``) only when nothing happens around the kernel but
    reshapes: symmetric padding, no pre-summed axes, no permutation of an operand or the
    result. ``shapes`` maps each role (``"x"``, ``"w"``, ``"y"``) to the shape the kernel
    sees; an operand of exactly that shape reaches the kernel untouched.

    Example:
        >>> import torch, tnconv
        >>> f = tnconv.compile(tnconv.diagrams.conv(N=1, kernel_size=3, padding=1))
        >>> plan = f.plan(x=torch.randn(2, 3, 8), w=torch.randn(4, 3, 3))
        >>> plan.terms[0].plan.native
        NativeCall(role='y', operands=('x', 'w'), stride=(1,), padding=(1,), dilation=(1,), groups=1, shapes=(('x', (2, 3, 8)), ('w', (4, 3, 3)), ('y', (2, 4, 8))))
    """

    role: str  # what the term computes: "y" forward, "x" input VJP, "w" weight VJP
    operands: Tuple[str, str]  # the roles of the plan's two operands, in order
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int
    shapes: Tuple[Tuple[str, Tuple[int, ...]], ...]


def match(term) -> Optional[ConvTemplate]:
    """The convolution ``term`` is, or ``None``."""
    patterns = [t for t in term.tensors if t.kind == "pattern"]
    others = [t for t in term.tensors if t.kind != "pattern"]
    if len(patterns) > 3 or len(others) != 2 or any(t.kind != "input" for t in others):
        return None
    holders = {0: [l.name for l in others[0].legs], 1: [l.name for l in others[1].legs],
               "out": [l.name for l in term.output_legs]}
    if any(len(set(legs)) != len(legs) for legs in holders.values()):
        return None
    spatial, attrs, pattern_legs = [], [], set()
    for p in patterns:
        names = tuple(l.name for l in p.legs)
        pattern_legs |= set(names)
        spatial.append(names)
        attrs.append(p.attr)
    if len(pattern_legs) != 3 * len(patterns):
        return None
    # a summed leg that only one operand carries is summed out first (size-1 kernel legs, KFAC-reduce's o)
    summed = []
    for n in (0, 1):
        alone = [a for a, leg in enumerate(holders[n]) if leg not in pattern_legs
                 and leg not in holders[1 - n] and leg not in holders["out"]]
        summed.append(tuple(alone))
        holders[n] = [leg for a, leg in enumerate(holders[n]) if a not in alone]
    role_of = _roles(spatial, holders) if patterns else _pointwise_roles(holders)
    if role_of is None:
        return None
    legs = {role: holders[h] for role, h in role_of.items()}
    kinds = {(True, True, True): [], (True, False, True): [], (True, True, False): [], (False, True, True): []}
    seen = set()
    for leg in legs["x"] + legs["w"] + legs["y"]:
        if leg in pattern_legs or leg in seen:
            continue
        seen.add(leg)
        key = (leg in legs["x"], leg in legs["w"], leg in legs["y"])
        if key not in kinds:
            return None
        kinds[key].append(leg)
    batch, flat = kinds[(True, False, True)], ()
    # X-and-Y legs after X's first channel leg are pixels (of a dimension squeeze_trivial emptied): kept
    # in place as size-1 kernel dimensions, moving them into the batch would copy X and Y
    channels = [a for a, leg in enumerate(legs["x"]) if leg in kinds[(True, True, False)] + kinds[(True, True, True)]]
    first = channels[0] if channels else len(legs["x"])
    pixels = tuple(leg for leg in legs["x"][first:] if leg in batch)
    if not patterns and len(pixels) > 3:  # flattened into one spatial axis of a 1x1 kernel
        flat = pixels
        batch = [leg for leg in batch if leg not in flat]
    elif pixels and len(spatial) + len(pixels) <= 3:  # a 1x1 kernel per pixel dimension, as PyTorch would run it
        batch = [leg for leg in batch if leg not in pixels]
        trivial = dict(stride=1, pad_left=0, pad_right=0, dilation=1)
        dims = list(zip(spatial, attrs)) + [((leg, leg, None), trivial) for leg in pixels]
        dims.sort(key=lambda d: legs["x"].index(d[0][0]))
        spatial, attrs = [d[0] for d in dims], [d[1] for d in dims]
    output_role = next(r for r, h in role_of.items() if h == "out")
    operands = tuple(next(r for r, h in role_of.items() if h == n) for n in (0, 1))
    return ConvTemplate(output_role, tuple(legs["x"]), tuple(legs["w"]), tuple(legs["y"]), operands,
                        tuple(batch), tuple(kinds[(True, True, True)]),
                        tuple(kinds[(True, True, False)]), tuple(kinds[(False, True, True)]),
                        tuple(spatial), tuple(attrs), tuple(summed), flat)


def _roles(spatial, holders):
    """Role -> holder, read off the patterns' ``(i, o, k)`` legs."""
    role_of = {}
    for names in spatial:
        for leg, role in zip(names, "xyw"):
            found = [h for h, legs in holders.items() if leg in legs]
            if len(found) != 1 or role_of.setdefault(role, found[0]) != found[0]:
                return None
    return role_of if len(set(role_of.values())) == 3 else None


def _pointwise_roles(holders):
    """Roles of a pattern-free term (a 1x1 convolution, a batched matrix product).

    Any assignment is correct; the pair sharing the most legs plays ``X`` and
    ``Y`` (pixels and batch), and the output plays ``Y`` when it can, since the
    forward kernel is PyTorch's fastest.
    """
    def shared(a, b):
        return len(set(holders[a]) & set(holders[b]) - set(holders[({0, 1, "out"} - {a, b}).pop()]))

    pairs = sorted([(0, "out"), (1, "out"), (0, 1)], key=lambda p: -shared(*p))
    a, b = pairs[0]
    if b == "out":
        return {"x": a, "y": "out", "w": 1 - a}
    return {"x": a, "y": b, "w": "out"}


#: Other kernels for a template (see :func:`variants`): label -> what it runs.
VARIANTS = {
    "flipped": "an input VJP of stride 1 as a forward convolution of the output gradient with the flipped kernel",
    "transposed": "a weight VJP as a forward convolution of the input, batch as channels, with the output gradient "
                  "as kernel (stride and dilation swap roles)",
}


def variants(template: ConvTemplate, sizes: dict, output: Tuple[str, ...]):
    """``(label, plan)`` of the other PyTorch kernels that compute ``template`` (:data:`VARIANTS`).

    PyTorch's kernels for a convolution's VJPs are not always its fastest way to
    compute them: ``Π(i, o, k)`` of stride 1 is ``Π'(o, i, K−1−k)`` with padding
    ``D(K−1) − P``, so the input VJP is a forward convolution with the flipped
    kernel; and ``Π(i, o, k)`` is symmetric in ``(o, S)`` and ``(k, D)``, so the
    weight VJP is a forward convolution whose kernel is the output gradient
    (one group only). The autotuner measures them.

    Example:
        >>> import tnconv
        >>> term = tnconv.compile(tnconv.diagrams.input_vjp(N=1, kernel_size=3, input_size=(8,))).network.terms[0]
        >>> sizes = {"n'": 2, "c_in'": 3, "c_out": 4, "i1'": 8, "o1": 6, "k1": 3}
        >>> [label for label, _ in variants(match(term), sizes, tuple(l.name for l in term.output_legs))]
        ['flipped']
    """
    t = template
    found = []
    if t.output_role == "x" and t.spatial and all(a["stride"] == 1 for a in t.attrs):
        found.append(("flipped", plan(t, sizes, output, "flipped")))
    if t.output_role == "w" and t.spatial and not t.group:
        found.append(("transposed", plan(t, sizes, output, "transposed")))
    return [(label, p) for label, p in found if p is not None]


def plan(template: ConvTemplate, sizes: dict, output: Tuple[str, ...], kernel: str = "default",
         presum: float = 0.0) -> Optional[Plan]:
    """A :class:`Plan` running ``template`` with PyTorch's convolution kernels (``kernel``: its own, or one of
    :data:`VARIANTS`; ``None`` if that variant cannot run these sizes). ``presum``: elements the sums of
    ``template.summed`` read, counted as FLOPs."""
    t = template
    size = lambda names: prod(sizes[n] for n in names)  # noqa: E731
    Bf, Gf, Ci, Co = size(t.batch), size(t.group), size(t.c_in), size(t.c_out)
    if t.spatial:
        N = len(t.spatial)
        I = tuple(sizes[i] for i, _, _ in t.spatial)
        O = tuple(sizes[o] for _, o, _ in t.spatial)
        K = tuple(sizes[k] if k else 1 for _, _, k in t.spatial)
        S = tuple(a["stride"] for a in t.attrs)
        D = tuple(a["dilation"] for a in t.attrs)
        left = tuple(a["pad_left"] for a in t.attrs)
    else:  # a 1x1 convolution over the flattened pixels
        N, I, O, K, S, D, left = 1, (size(t.flat),), (size(t.flat),), (1,), (1,), (1,), (0,)
    # the right padding that makes PyTorch's output exactly O long (negative: crop)
    right = tuple((o - 1) * s + (k - 1) * d + 1 - i - l for i, o, k, s, d, l in zip(I, O, K, S, D, left))
    # PyTorch pads symmetrically; that is enough when it yields exactly O outputs
    symmetric = all(l >= 0 and (i + 2 * l - d * (k - 1) - 1) // s + 1 == o
                    for i, o, k, s, d, l in zip(I, O, K, S, D, left))
    padding = left if symmetric else (0,) * N
    explicit = [p for l, r in zip(reversed(left), reversed(right)) for p in (l, r)]
    Ip = I if symmetric else tuple(i + l + r for i, l, r in zip(I, left, right))
    # PyTorch's half-precision CPU forward kernels (oneDNN, torch 2.13) go wrong on degenerate windows: off by up
    # to 1e32 when the innermost output has one position and a stride > 1 (pytorch/pytorch#169688), garbage or NaN
    # when the input is shorter than the dilated kernel, a segfault now and then when every window of a dimension
    # lies in the padding. The same convolution with the padding made explicit and the stride of a one-position
    # output set to 1 (which changes nothing) is right, so half precision runs such terms that way.
    fragile = t.output_role == "y" and (
        any(i < (k - 1) * d + 1 or pattern_empty(i, o, k, s, l, d) for i, o, k, s, d, l in zip(I, O, K, S, D, left))
        or O[-1] == 1 and S[-1] > 1)
    safe_stride = tuple(1 if o == 1 else s for s, o in zip(S, O))

    layouts = {  # role -> (leg order, canonical shape)
        "x": (t.batch + t.group + t.c_in + (tuple(i for i, _, _ in t.spatial) or t.flat), (Bf, Gf * Ci) + I),
        "w": (t.group + t.c_out + t.c_in + tuple(k for _, _, k in t.spatial if k), (Gf * Co, Ci) + K),
        "y": (t.batch + t.group + t.c_out + (tuple(o for _, o, _ in t.spatial) or t.flat), (Bf, Gf * Co) + O),
    }
    own = {"x": t.x, "w": t.w, "y": t.y}
    # per operand: (axes to pre-sum, permutation or None, canonical shape); plain tensors pass through untouched
    prepare = []
    for role, summed in zip(t.operands, t.summed):
        order, shape = layouts[role]
        perm = [own[role].index(leg) for leg in order]
        prepare.append((summed, None if perm == sorted(perm) else perm, shape))

    def canonical(array, summed, perm, shape):
        array = views.sum_axes(array, summed)
        if perm is not None:
            array = array.permute(perm)
        return array if array.shape == shape else array.reshape(shape)

    out_order, _ = layouts[t.output_role]
    out_shape = tuple(sizes[n] for n in out_order)
    to_output = [out_order.index(leg) for leg in output]
    if to_output == sorted(to_output):
        to_output = None
    groups = Gf
    first, second = t.operands

    if kernel == "flipped":  # the new convolution's padding: D(K-1) - P on each side, never negative
        padding_t = tuple(d * (k - 1) - p for k, d, p in zip(K, D, padding))
        if any(p < 0 for p in padding_t):
            return None

    def run(a, b):
        ops = {first: canonical(a, *prepare[0]), second: canonical(b, *prepare[1])}
        if kernel == "flipped":
            w = ops["w"].flip(tuple(range(2, 2 + N))).reshape((groups, Co, Ci) + K).transpose(1, 2)
            result = _CONV[N](ops["y"], w.reshape((groups * Ci, Co) + K), None, 1, padding_t, D, groups)
            if not symmetric:
                result = views.pad_crop(result, [-p for p in explicit])
        elif kernel == "transposed":
            x = ops["x"] if symmetric else views.pad_crop(ops["x"], explicit)
            result = _CONV[N](x.transpose(0, 1), ops["y"].transpose(0, 1), None, D, padding, S, 1)  # [Ci, Co, >= K]
            for axis, k in enumerate(K):
                if result.shape[2 + axis] != k:
                    result = result.narrow(2 + axis, 0, k)
            result = result.transpose(0, 1)
        elif t.output_role == "y":
            if fragile and ops["x"].dtype in _HALF:
                x = views.pad_crop(ops["x"], explicit).contiguous()
                result = _CONV[N](x, ops["w"], None, safe_stride, 0, D, groups)
            else:
                x = ops["x"] if symmetric else views.pad_crop(ops["x"], explicit)
                result = _CONV[N](x, ops["w"], None, S, padding, D, groups)
        elif t.output_role == "w":
            x = ops["x"] if symmetric else views.pad_crop(ops["x"], explicit)
            weight = x.new_empty(1).expand(layouts["w"][1])
            result = torch.ops.aten.convolution_backward(ops["y"], x, weight, None, S, padding, D, False,
                                                         (0,) * N, groups, (False, True, False))[1]
        else:
            y = ops["y"]
            x = y.new_empty(1).expand((Bf, Gf * Ci) + Ip)
            result = torch.ops.aten.convolution_backward(y, x, ops["w"], None, S, padding, D, False,
                                                         (0,) * N, groups, (True, False, False))[0]
            if not symmetric:
                result = views.pad_crop(result, [-p for p in explicit])
        if result.shape != out_shape:
            result = result.reshape(out_shape)
        return result if to_output is None else result.permute(to_output)

    flops = 2.0 * Bf * Gf * Co * Ci * prod(O) * prod(K) + presum
    largest = max(Bf * Gf * Ci * prod(Ip), Bf * Gf * Co * prod(O), Gf * Co * Ci * prod(K))
    name = {"y": "conv", "x": "conv_input_vjp", "w": "conv_weight_vjp"}[t.output_role] + \
        ("" if kernel == "default" else f" as {kernel} conv")
    out_elements = prod(out_shape)
    write = out_elements + (0 if symmetric else Bf * Gf * Ci * prod(Ip))
    if kernel == "transposed":  # the kernel copies both operands into its layout
        write += Bf * Gf * (Ci * prod(Ip) + Co * prod(O))
    if t.output_role == "w" and groups > 1 and Bf == 1:
        # a weight VJP with the batch among its groups (a per-sample gradient: one sample, B·G groups): PyTorch's
        # CPU kernel (oneDNN) computes it in a blocked layout and reorders it into PyTorch's, one more copy of the
        # result (aten::copy_ of its size in the profiler), which is most of what it writes. Counted, the strided
        # view with one batched product wins where it is faster: ResNet-18's last stages at 32x32, 2-4x.
        write += out_elements
    direct = kernel == "default" and symmetric and t.spatial and not any(t.summed) and to_output is None \
        and all(p[1] is None for p in prepare) and not fragile  # a caller running the kernel directly would not make the half-precision call safe
    call = NativeCall(t.output_role, t.operands, S, padding, D, groups,
                      tuple((role, layouts[role][1]) for role in "xwy")) if direct else None
    return Plan(run, f"native {name}{N}d(groups={groups}, stride={S}, padding={padding}, dilation={D})", flops, largest,
                write=write, native=call)


def broadcast_vector(term) -> Optional[Tuple[str, int]]:
    """``(name, axis)`` when ``term`` is one input vector broadcast along output axis ``axis``.

    That is a bias: the input's only axis carries exactly the legs of that output
    axis, in order, every other tensor is a constant 1, and the scale is 1, so the
    term's value at any output position is the vector's entry on that axis.

    Example:
        >>> from tnconv import diagrams
        >>> conv, bias = diagrams.conv(N=2, kernel_size=3, bias=True).terms
        >>> broadcast_vector(bias), broadcast_vector(conv)
        (('b', 1), None)
    """
    inputs = [t for t in term.tensors if t.kind == "input"]
    if len(inputs) != 1 or len(inputs[0].axes) != 1 or term.scale != 1:
        return None
    if any(t.kind != "constant" or t.attr["value"] != 1 for t in term.tensors if t is not inputs[0]):
        return None
    legs = tuple(leg.name for leg in inputs[0].axes[0])
    for axis, output in enumerate(term.output):
        if tuple(leg.name for leg in output) == legs:
            return inputs[0].name, axis
    return None


def applicable(template: Optional[ConvTemplate], dtype) -> bool:
    """Whether PyTorch has a kernel for ``template`` in ``dtype`` (N ≤ 3, floating dtypes)."""
    return template is not None and dtype in NATIVE_DTYPES and len(template.spatial) <= 3


__all__ = ["ConvTemplate", "NativeCall", "match", "plan", "variants", "applicable", "broadcast_vector", "NATIVE_DTYPES",
           "VARIANTS"]
