"""tnconv.curvature.KFAC against curvlinops' KFACLinearOperator and BackPACK's KFLR, in float64, within 1e-10.

Skipped when the peers are not installed (``pip install -e ".[peers]"``).
"""

import warnings

import pytest
import torch
from torch import nn

from tnconv.curvature import KFAC
from tnconv.testing.models import curvature_cnn

DT = torch.float64
TOL = 1e-10


def close(ours, theirs, tol=TOL):
    """Equal relative to the largest entry of the peer's value."""
    scale = theirs.abs().max().clamp_min(1e-300)
    err = ((ours - theirs).abs().max() / scale).item()
    assert err < tol, f"relative error {err:.2e}"


def batches(loss_cls, sizes, N=2, size=8, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = []
    for B in sizes:
        x = torch.randn(B, 2, *[size] * N, dtype=DT, generator=gen)
        if loss_cls is nn.CrossEntropyLoss:
            y = torch.randint(classes, (B,), generator=gen)
        else:
            y = torch.randn(B, classes, dtype=DT, generator=gen)
        data.append((x, y))
    return data


# ----------------------------------------------------------------------------- curvlinops


def curvlinops_pair(loss_cls, reduction, approx, fisher_type, groups=1, separate=True, inplace=False, mc_samples=1):
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    net = curvature_cnn(groups=groups, inplace=inplace).to(DT)
    loss = loss_cls(reduction=reduction)
    data = batches(loss_cls, (3, 5))
    params = list(net.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = curvlinops.KFACLinearOperator(net, loss, params, data, fisher_type=fisher_type, kfac_approx=approx,
                                           mc_samples=mc_samples, separate_weight_and_bias=separate,
                                           check_deterministic=False)
        op.compute_kronecker_factors()
    ours = KFAC(net, loss, params, approx=approx, fisher_type=fisher_type, mc_samples=mc_samples,
                separate_weight_and_bias=separate)
    for x, y in data:
        ours.update(x, y)
    return curvlinops, net, op, ours


def check_against_curvlinops(curvlinops, net, op, ours):
    # every factor
    factors = ours.factors
    for layer in ours.layers:
        A, G = factors[layer.weight or layer.bias]
        close(G[0], op._gradient_covariances[layer.name])
        if layer.weight is not None:
            close(A[0], op._input_covariances[layer.name])
    # matrix-vector and matrix-matrix products, list and flat formats
    gen = torch.Generator().manual_seed(1)
    D = sum(p.numel() for p in ours.params)
    V = torch.randn(D, 3, dtype=DT, generator=gen)
    close(ours @ V, op @ V)
    v_list = [t.reshape(p.shape) for t, p in zip(V[:, 0].split([p.numel() for p in ours.params]), ours.params)]
    Kv = ours @ v_list
    assert [t.shape for t in Kv] == [p.shape for p in ours.params]
    close(torch.cat([t.reshape(-1) for t in Kv]), op @ V[:, 0])
    # inverse products, the three damping modes
    for kwargs, theirs in (
            (dict(damping=1e-2), dict(damping=1e-2, use_exact_damping=True)),
            (dict(damping=1e-2, pi_correction=True), dict(damping=1e-2, use_heuristic_damping=True)),
            (dict(damping=(1e-2, 1e-3)), dict(damping=(1e-2, 1e-3)))):
        inverse = curvlinops.KFACInverseLinearOperator(op, **theirs)
        close(ours.inverse(**kwargs) @ V, inverse @ V)


LOSSES = [nn.CrossEntropyLoss, nn.MSELoss]
FISHER = ["type-2", "mc", "empirical", "forward-only"]


@pytest.mark.parametrize("fisher_type", FISHER)
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss_cls", LOSSES)
def test_kfac_equals_curvlinops(loss_cls, reduction, approx, fisher_type):
    """Stride, padding, dilation, 1x1 and bias-free convolutions and a linear head, over two batches of 3 and 5."""
    check_against_curvlinops(*curvlinops_pair(loss_cls, reduction, approx, fisher_type))


@pytest.mark.parametrize("case", [
    dict(loss_cls=nn.CrossEntropyLoss, reduction="mean", approx="expand", fisher_type="type-2", groups=2),
    dict(loss_cls=nn.CrossEntropyLoss, reduction="mean", approx="reduce", fisher_type="type-2", groups=2,
         separate=False),
    dict(loss_cls=nn.MSELoss, reduction="sum", approx="expand", fisher_type="mc", groups=3, separate=False,
         mc_samples=3),
    dict(loss_cls=nn.MSELoss, reduction="mean", approx="reduce", fisher_type="empirical", separate=False),
    dict(loss_cls=nn.BCEWithLogitsLoss, reduction="mean", approx="expand", fisher_type="mc", mc_samples=2),
    dict(loss_cls=nn.CrossEntropyLoss, reduction="sum", approx="expand", fisher_type="type-2", inplace=True),
], ids=["groups", "groups-joint", "mc3-groups-joint", "joint", "bce", "inplace-relu"])
def test_kfac_equals_curvlinops_with_groups_joint_bias_and_more(case):
    """curvlinops' shared factor of grouped convolutions, joint weight and bias, several MC samples, BCE."""
    case = dict(case)
    if case["loss_cls"] is nn.BCEWithLogitsLoss:
        pytest.importorskip("curvlinops")
    check_against_curvlinops(*curvlinops_pair(**case))


def test_kfac_equals_curvlinops_on_a_subset_of_params():
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    net = curvature_cnn().to(DT)
    params = [net[2].weight, net[8].bias, net[0].bias]
    loss, data = nn.CrossEntropyLoss(), batches(nn.CrossEntropyLoss, (4,))
    op = curvlinops.KFACLinearOperator(net, loss, params, data, fisher_type="type-2", check_deterministic=False)
    ours = KFAC(net, loss, params, fisher_type="type-2")
    ours.update(*data[0])
    V = torch.randn(sum(p.numel() for p in params), 2, dtype=DT)
    close(ours @ V, op @ V)
    close(ours.inverse(0.1) @ V, curvlinops.KFACInverseLinearOperator(op, damping=0.1, use_exact_damping=True) @ V)


# ----------------------------------------------------------------------------- BackPACK


def backpack_pair(N, loss_cls, reduction, transpose=True):
    bp = pytest.importorskip("backpack")
    from backpack.extensions import KFLR

    torch.manual_seed(0)
    net = bp.extend(curvature_cnn(N=N, transpose=transpose, output_padding=0).to(DT))
    loss = bp.extend(loss_cls(reduction=reduction))
    (x, y), = batches(loss_cls, (3,), N=N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BackPACK's note on transposed kernels
        with bp.backpack(KFLR()):
            loss(net(x), y).backward()
    ours = KFAC(net, loss, convention="backpack", fisher_type="type-2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on BackPACK's module hooks, which our backward pass triggers
        ours.update(x, y)
    return net, ours


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("N", [1, 2, 3])
def test_kfac_equals_backpack_kflr(N, loss_cls, reduction):
    """BackPACK's pairing (kfc with the reduce-form gradient factor), incl. a transpose convolution, in 1d-3d."""
    net, ours = backpack_pair(N, loss_cls, reduction)
    factors = ours.factors
    blocks = []
    for name, p in net.named_parameters():
        A, G = factors[name]
        if name.endswith("weight"):
            G_bp, A_bp = p.kflr
            close(A[0], A_bp)
            close(G[0], G_bp)
            blocks.append(torch.kron(G_bp, A_bp))  # BackPACK's factors are for weight.transpose(0, 1) if transposed
        else:
            G_bp, = p.kflr
            close(G[0], G_bp)
            blocks.append(G_bp)
    # the dense matrix: KFAC's blocks in parameter order; a transpose convolution's weight in (c_out, c_in, k) order
    dense = ours.to_dense()
    offset = 0
    for (name, p), block in zip(net.named_parameters(), blocks):
        n = p.numel()
        ours_block = dense[offset:offset + n, offset:offset + n]
        if isinstance(dict(net.named_modules())[name.rsplit(".", 1)[0]], nn.modules.conv._ConvTransposeNd) \
                and name.endswith("weight"):
            perm = torch.arange(n).view(p.shape).transpose(0, 1).reshape(-1)
            ours_block = ours_block[perm][:, perm]
        close(ours_block, block)
        offset += n
    assert dense[:blocks[0].shape[0], blocks[0].shape[0]:].abs().max() == 0  # block-diagonal


def test_backpack_ignores_output_padding_of_transpose_convolutions():
    """With output_padding > 0 BackPACK 1.7.1's input factor misses the padded output positions; tnconv's does not."""
    bp = pytest.importorskip("backpack")
    from backpack.extensions import KFLR

    torch.manual_seed(0)
    net = bp.extend(nn.Sequential(nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1), nn.Flatten(),
                                  nn.Linear(3 * 8, 2)).to(DT))
    loss = bp.extend(nn.MSELoss())
    x, y = torch.randn(4, 2, 4, dtype=DT), torch.randn(4, 2, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with bp.backpack(KFLR()):
            loss(net(x), y).backward()
    ours = KFAC(net, loss, convention="backpack", fisher_type="type-2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.update(x, y)
    A = ours.factors["0.weight"][0][0]
    from tnconv.functional import unfold_transpose

    u = unfold_transpose(x, 3, stride=2, padding=1, output_padding=1, N=x.ndim - 2)  # [B, C·K, O] over all 8 output positions
    close(A, torch.einsum("bio,bjo->ij", u, u) / 4)
    assert (A - net[0].weight.kflr[1]).abs().max() > 1e-3


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_kfac_equals_curvlinops_on_weight_shared_linear_layers(approx):
    """A linear layer on [B, S, d] inputs shares its weight over S, like a convolution over positions."""
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4, 3)).to(DT)
    loss = nn.CrossEntropyLoss(reduction="sum")
    data = [(torch.randn(B, 4, 3, dtype=DT), torch.randint(3, (B,))) for B in (2, 3)]
    op = curvlinops.KFACLinearOperator(net, loss, list(net.parameters()), data, fisher_type="type-2",
                                       kfac_approx=approx, check_deterministic=False, separate_weight_and_bias=False)
    ours = KFAC(net, loss, approx=approx, fisher_type="type-2", separate_weight_and_bias=False)
    for x, y in data:
        ours.update(x, y)
    V = torch.randn(sum(p.numel() for p in net.parameters()), 2, dtype=DT)
    close(ours @ V, op @ V)
