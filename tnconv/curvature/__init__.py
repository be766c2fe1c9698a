"""Model-level curvature: Kronecker-factored (KFAC) and diagonal approximations, per-sample gradients.

Built on :mod:`tnconv.functional`: hooks on a model's ``Linear``, ``Conv*d``
and ``ConvTranspose*d`` layers (:mod:`~tnconv.curvature.layers`,
:mod:`~tnconv.curvature.capture`) collect the inputs and the backpropagated
gradients or factorizations of the loss Hessian (:mod:`~tnconv.curvature.loss`),
and the functional operations reduce them: Kronecker factors (:class:`KFAC`),
per-sample gradients, their squared norms and the GGN diagonal (:class:`PerSample`).
The scaling conventions of every quantity are tabulated in ``docs/curvature.md``.
"""

# shared infrastructure and KFAC (owner: kfac)
from .capture import Capture
from .inverse import KFACInverse
from .kfac import KFAC
from .preconditioner import KFACPreconditioner
from .layers import Layer, find_layers, supported_parameters
from .per_sample import PerSample, PerSampleResult
from .loss import FISHER_TYPES, LossInfo, check_loss, empirical_sqrt, hessian_sqrt, output_sqrt, reduction_scale, sampled_sqrt

__all__ = [
    # shared infrastructure and KFAC (owner: kfac)
    "KFAC", "KFACInverse", "KFACPreconditioner", "Capture", "Layer", "find_layers", "supported_parameters", "FISHER_TYPES", "LossInfo", "check_loss",
    "empirical_sqrt", "hessian_sqrt", "output_sqrt", "reduction_scale", "sampled_sqrt",
    # per-sample gradients, their squared norms, the GGN diagonal (owner: model)
    "PerSample", "PerSampleResult",
]
