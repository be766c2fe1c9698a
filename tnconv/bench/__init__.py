"""Benchmark of tnconv against PyTorch's standard implementations on the layers of real CNNs.

:mod:`.layers` holds the layers as data, :mod:`.ops` the operations in both
implementations, :mod:`.memory` the peak-memory helper, :mod:`.run` the
measurement loop and the ``tnconv bench`` command, :mod:`.report` the CSV,
tables and plots. Run it with ``tnconv bench`` or ``python benchmarks/run.py``.
"""
