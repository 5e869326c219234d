"""Spread a CMA-ES generation's (P candidates x R rollouts) grid over every device with ``jax.sharding``.

The devices (``jax.devices()`` by default) form one mesh viewed as ``(pop, roll)``: the candidate
axis P is split over ``pop`` and the rollout axis R over ``roll``. The rule, from ``mesh_shape``:

1. ``pop`` first takes ``gcd(P, D)`` devices, which split P with no padding;
2. the rest of the devices go to ``roll`` where they divide R (``gcd(R, D / pop)``);
3. whatever is still left over also goes to ``pop``, and P is padded up to a multiple of ``pop``
   (``pad_population``); the padded candidates are scored and then dropped from the result.

So P = 64 on 8 devices is ``(8, 1)``; P = 6, R = 4 on 4 devices is ``(2, 2)`` (no padding); P = 5,
R = 3 on 4 devices is ``(4, 1)`` with P padded to 8. On one device the mesh is ``(1, 1)`` and callers
skip sharding entirely, so a single-device run is the same program as before.

Every candidate of a generation shares the same R dream keys (common random numbers), so sharding
changes which device computes a (candidate, rollout) pair, not its value; only the order of the
mean's sum over R may differ (float32 rounding).

Testable on a CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

POP, ROLL = "pop", "roll"


def mesh_shape(population: int, rollouts: int, num_devices: int) -> tuple[int, int]:
    """Devices ``(pop, roll)`` with ``pop * roll == num_devices`` for a (P, R) generation (rule in the module doc).

    Raises:
        ValueError: if any argument is < 1.
    """
    if min(population, rollouts, num_devices) < 1:
        raise ValueError(f"need population, rollouts, num_devices >= 1, got {population}, {rollouts}, {num_devices}")
    pop = math.gcd(population, num_devices)
    roll = math.gcd(rollouts, num_devices // pop)
    return num_devices // roll, roll


def dream_mesh(population: int, rollouts: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` of ``devices`` (default ``jax.devices()``) with axes ``("pop", "roll")`` shaped by ``mesh_shape``."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(population, rollouts, len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), (POP, ROLL))


def padded_size(population: int, mesh: Mesh) -> int:
    """P rounded up to a multiple of the mesh's ``pop`` size."""
    pop = mesh.shape[POP]
    return -(-population // pop) * pop


def pad_population(population: Float[Array, "P N"], mesh: Mesh) -> Float[Array, "Pp N"]:
    """Append zero candidates so that P is a multiple of the mesh's ``pop`` size (``padded_size``)."""
    extra = padded_size(population.shape[0], mesh) - population.shape[0]
    return population if extra == 0 else jnp.pad(population, ((0, extra), (0, 0)))


def candidate_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (candidates) split over ``pop``, columns whole (and copied over ``roll``)."""
    return NamedSharding(mesh, PartitionSpec(POP, None))


def shard_population(population: Float[Array, "P N"], mesh: Mesh) -> Float[Array, "Pp N"]:
    """Pad (``pad_population``) and place the population on the mesh, candidates split over ``pop``.

    Returns:
        float32 (Pp, N), Pp = ``padded_size(P, mesh)``; its ``.sharding`` is ``candidate_sharding(mesh)``.
    """
    return jax.device_put(pad_population(jnp.asarray(population), mesh), candidate_sharding(mesh))
