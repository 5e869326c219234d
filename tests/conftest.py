"""Shared test settings: keep JAX on the CPU and quiet."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Scripts enable JAX's persistent compilation cache; keep the tests' entries out of the user's cache.
if "WORLDMODELS_JAX_CACHE" not in os.environ:
    import tempfile

    os.environ["WORLDMODELS_JAX_CACHE"] = tempfile.mkdtemp(prefix="worldmodels-test-jax-cache-")
