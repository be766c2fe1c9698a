"""Optional adapters to other libraries, each importing its library lazily (only when used).

- :mod:`tnconv.integrations.opacus`: tnconv's per-sample convolution gradients
  (and squared norms, for ghost clipping) as Opacus' grad and norm samplers.
"""
