"""Benchmark tnconv against PyTorch on the unique convolution layers of nine CNNs.

Run: ``python benchmarks/run.py [--quick] [--nets NET ...] [--ops OP ...] [--repeats N] [--threads N] [--out DIR] [--einconv]``

The same as ``tnconv bench``; see :mod:`tnconv.bench` and ``benchmarks/README.md``.
"""

import sys

from tnconv.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
