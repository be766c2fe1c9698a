"""A KFAC preconditioner for any ``torch.optim`` optimizer: ``.grad ← (KFAC + δ I)⁻¹ .grad`` in place."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .kfac import KFAC


def _every(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class KFACPreconditioner:
    """Precondition the covered parameters' gradients by the damped inverse of a running KFAC.

    A training step::

        pre = KFACPreconditioner(model, loss_func, damping=1e-3, update_every=1, inverse_every=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for x, y in loader:
            optimizer.zero_grad()
            loss = pre.backward(x, y)   # forward, loss.backward(), and (every update_every calls) the factors
            pre.precondition()          # .grad ← (KFAC + δ I)⁻¹ .grad for the covered parameters
            optimizer.step()

    :meth:`backward` shares one forward pass between the gradient and the
    factor update (and, for ``fisher_type="empirical"``, one backward pass).
    With a training loop of your own, call ``loss.backward()`` yourself and
    :meth:`update` (an extra forward and backward pass) when the factors are due.
    Parameters outside ``params`` (BatchNorm, ...) keep their gradients.

    Args:
        model, loss_func, params: as for :class:`~tnconv.curvature.KFAC`.
        approx: ``"expand"`` or ``"reduce"`` (default; the cheaper one).
        damping, pi_correction: as for :meth:`KFAC.inverse`.
        update_every: :meth:`backward` calls between factor updates.
        inverse_every: :meth:`precondition` calls between inverse recomputations
            (eigendecompositions); the first call always computes one.
        ema: the factors' moving-average decay (``None``: plain average of all batches).
        **kfac_options: the other arguments of :class:`~tnconv.curvature.KFAC`
            (``fisher_type``, ``mc_samples``, ``convention``, ``distributed``, ...).

    Attributes:
        kfac: the running :class:`~tnconv.curvature.KFAC`.
        inverse: the current :class:`~tnconv.curvature.KFACInverse` (``None`` before the first).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
        >>> pre = KFACPreconditioner(net, nn.CrossEntropyLoss(), damping=1e-2)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> x, y = torch.randn(8, 1, 6, 6), torch.randint(3, (8,))
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     loss = pre.backward(x, y)
        ...     pre.precondition()
        ...     opt.step()
        >>> pre.kfac.num_updates, pre.inverse is not None
        (3, True)
    """

    def __init__(self, model: nn.Module, loss_func, params: Optional[Sequence[torch.Tensor]] = None,
                 approx: str = "reduce", damping=1e-3, pi_correction: bool = False, update_every: int = 1,
                 inverse_every: int = 10, ema: Optional[float] = 0.95, **kfac_options):
        self._setup(KFAC(model, loss_func, params, approx=approx, ema=ema, **kfac_options), damping, pi_correction,
                    update_every, inverse_every)

    @classmethod
    def from_kfac(cls, kfac: KFAC, damping=1e-3, pi_correction: bool = False, update_every: int = 1,
                  inverse_every: int = 10) -> "KFACPreconditioner":
        """A preconditioner around an existing :class:`~tnconv.curvature.KFAC` (e.g. a subclass of it).

        Example:
            >>> kfac = KFAC(nn.Linear(3, 2), nn.MSELoss(), ema=0.9)
            >>> KFACPreconditioner.from_kfac(kfac, damping=0.1).kfac is kfac
            True
        """
        if not isinstance(kfac, KFAC):
            raise TypeError(f"kfac must be a tnconv.curvature.KFAC, got {type(kfac).__name__}")
        self = cls.__new__(cls)
        self._setup(kfac, damping, pi_correction, update_every, inverse_every)
        return self

    def _setup(self, kfac, damping, pi_correction, update_every, inverse_every):
        self.kfac = kfac
        self.model, self.loss_func = kfac.model, kfac.loss_func
        self.damping, self.pi_correction = damping, pi_correction
        self.update_every = _every(update_every, "update_every")
        self.inverse_every = _every(inverse_every, "inverse_every")
        # validate damping now rather than at the first inverse
        from .inverse import _positive

        if isinstance(damping, (tuple, list)):
            if len(damping) != 2 or pi_correction:
                raise ValueError(f"damping must be a positive float (or a pair without pi_correction), got {damping!r}")
            _positive(damping[0], "damping[0]"), _positive(damping[1], "damping[1]")
        else:
            _positive(damping, "damping")
        self.inverse = None
        self.num_backward = 0
        self.num_precondition = 0

    @property
    def params(self) -> list:
        """The preconditioned parameters."""
        return self.kfac.params

    def backward(self, inputs, targets) -> torch.Tensor:
        """Forward pass, ``loss.backward()`` (gradients accumulate into ``.grad``) and, when due, a factor update.

        Returns the loss (detached).
        """
        due = self.num_backward % self.update_every == 0
        self.num_backward += 1
        if due:
            return self.kfac._update(inputs, targets, loss_backward=True)
        loss = self.loss_func(self.model(inputs), targets)
        loss.backward()
        return loss.detach()

    def update(self, inputs, targets=None) -> None:
        """A factor update on a batch without touching ``.grad`` (:meth:`KFAC.update`)."""
        self.kfac.update(inputs, targets)

    @torch.no_grad()
    def precondition(self) -> None:
        """``.grad ← (KFAC + damping)⁻¹ .grad`` in place for the covered parameters with a gradient.

        The inverse is recomputed from the current factors every
        ``inverse_every`` calls. Before the first factor update the gradients
        are left as they are.
        """
        if self.kfac.num_updates == 0:
            return
        if self.inverse is None or self.num_precondition % self.inverse_every == 0:
            self.inverse = self.kfac.inverse(self.damping, self.pi_correction)
        self.num_precondition += 1
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p, new in zip(self.params, self.inverse @ grads):
            if p.grad is not None:
                p.grad.copy_(new)

    def state_dict(self) -> dict:
        """The KFAC state and the step counters (the inverse is recomputed after loading)."""
        return dict(kfac=self.kfac.state_dict(), num_backward=self.num_backward, num_precondition=self.num_precondition)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.kfac.load_state_dict(state["kfac"])
        self.num_backward, self.num_precondition = state["num_backward"], state["num_precondition"]
        self.inverse = None


__all__ = ["KFACPreconditioner"]
