"""Session-wide test settings for the doctests in tnconv/ and the tests in tests/."""

import atexit
import os
import shutil
import tempfile

# No test and no doctest may write to the user's real autotune cache: point it at a fresh folder,
# inherited by subprocesses too (examples, the benchmark's thread-count runs).
os.environ["TNCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="tnconv-test-cache-")
atexit.register(shutil.rmtree, os.environ["TNCONV_CACHE_DIR"], ignore_errors=True)
# Autotuning is opted into by the tests that test it; a user's environment must not switch it on for all.
os.environ.pop("TNCONV_AUTOTUNE", None)
