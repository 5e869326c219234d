"""Shared test settings: keep JAX on the CPU and quiet."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Scripts enable JAX's persistent compilation cache; keep the tests' entries out of the user's cache.
if "WORLDMODELS_JAX_CACHE" not in os.environ:
    import tempfile

    os.environ["WORLDMODELS_JAX_CACHE"] = tempfile.mkdtemp(prefix="worldmodels-test-jax-cache-")


def pytest_collection_modifyitems(config, items):
    """The tests marked ``heavy(seconds=S)`` first, longest first, then the rest in their collected order.

    A stable sort, the same on both xdist workers; ``--maxschedchunk 1`` in pyproject hands the tests out one at
    a time. Started last, a five-minute test leaves the other worker idle until it ends; started first, the short
    tests fill in beside it (longest processing time first). S is the test's measured duration on the 2-core
    machine, loaded."""

    def seconds(item) -> float:
        marker = item.get_closest_marker("heavy")
        return -marker.kwargs.get("seconds", 60) if marker else 0.0

    items.sort(key=seconds)
