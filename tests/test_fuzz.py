"""Fuzzing the public API with random, partly invalid arguments.

Every call either returns a tensor or raises ValueError/TypeError; no other
exception escapes. ``HYPOTHESIS_PROFILE=thorough`` runs 10,000 calls per function.
"""

import inspect

import pytest
import torch
from hypothesis import given, strategies as st

from tnconv import functional as F

DTYPES = [torch.float64, torch.float32, torch.int64, torch.bool]


@st.composite
def tensors(draw):
    rank = draw(st.integers(0, 5))
    shape = tuple(draw(st.integers(0, 4)) for _ in range(rank))
    dtype = draw(st.sampled_from(DTYPES))
    return torch.zeros(shape, dtype=dtype) if dtype == torch.bool else torch.randn(shape).to(dtype)


small = st.integers(-2, 4)
huge = st.sampled_from([10**9, -(10**9), 10**12])
ints = st.one_of(small, small, huge)
values = st.one_of(
    tensors(),
    ints,
    st.lists(ints, min_size=0, max_size=4).map(tuple),
    st.lists(st.tuples(small, small), min_size=1, max_size=3).map(tuple),
    st.sampled_from(["same", "valid", "full", "", None, 1.5, True, [1, 2], {"a": 1}]),
)

PUBLIC = [getattr(F, name) for name in F.__all__]


def sensible(name):
    """Plausible values for each parameter name, mixed into the fuzz so calls get deep."""
    x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 2, 3, 3)
    table = {
        "x": x, "weight": w, "bias": torch.randn(4), "grad_output": torch.randn(2, 4, 4, 4),
        "input_tangent": x, "weight_tangent": torch.randn(4, 4, 3, 3), "output_diag": torch.rand(2, 4, 4, 4),
        "sqrt_ggn": torch.randn(3, 2, 4, 4, 4), "kernel_size": 3, "input_size": (2, 4, 6, 6), "weight_size": (4, 4, 3, 3),
        "output_size": (6, 6), "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0,
        "x_sub": x[:, :, 1:4], "indices": [torch.tensor([[0, 1, 2, 3]]), torch.tensor([1, 2, 3]), torch.arange(6)],
        "crs_keep": (1.0, 0.5, 1.0), "generator": torch.Generator().manual_seed(0), "N": 2,
    }
    return table.get(name)


@pytest.mark.parametrize("fn", PUBLIC, ids=[f.__name__ for f in PUBLIC])
@given(data=st.data())
def test_fuzz_public_functionals(fn, data):
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("dtype", "device")]
    args, kwargs = [], {}
    for p in params:
        value = sensible(p.name)
        if value is None or data.draw(st.booleans(), label=f"fuzz {p.name}"):
            value = data.draw(values, label=p.name)
        if p.kind == p.KEYWORD_ONLY:  # N, output_size: fuzzed too, by name
            kwargs[p.name] = value
        else:
            args.append(value)
    try:
        result = fn(*args, **kwargs)
    except (ValueError, TypeError):
        return
    assert isinstance(result, (torch.Tensor, tuple)), f"{fn.__name__} returned {type(result).__name__}"
