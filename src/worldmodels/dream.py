"""Dreams: rollouts of a controller inside the dynamics M, fused into one jitted call per generation.

M is any ``Dynamics`` (``worldmodels.models.dynamics``; an ``MDNRNN`` or a ``GRUTransition`` today): each steps
as ``(z, a, state) -> (state, MDNOutput)`` with a state whose ``h`` the controller reads; the GRU's prediction
is a mixture of K = 1, which ``sample_next_z`` samples at the same temperature (mu + sqrt(tau) sigma eps).

Named vmap layers (evosax style):

``single_rollout``     one controller, one dream of T steps (``lax.scan`` over time)
``batch_rollout``      one controller, R dreams (vmap over keys) -> mean return
``population_rollout`` P controllers x R dreams (vmap over parameters) -> (P,) fitness

``generation_fitness`` jits a whole generation; ``sharded_generation_fitness`` spreads it over every
device (``worldmodels.sharding``).

All candidates of a generation share the R keys (common random numbers), so their fitnesses differ
by the controller, not by the luck of the dream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PRNGKeyArray

from worldmodels.models.controller import LinearController
from worldmodels.models.dynamics import Dynamics
from worldmodels.models.mdnrnn import MixtureNoise, mixture_noise, sample_next_z_from_noise
from worldmodels.sharding import POP, ROLL, dream_mesh, shard_population


class DreamStart(NamedTuple):
    """Where dreams begin: the VAE posterior of real first frames.

    Attributes:
        mu: float32 (E, Z).
        logvar: float32 (E, Z).
    """

    mu: Float[Array, "E Z"]
    logvar: Float[Array, "E Z"]


class DreamCarry(NamedTuple):
    """Scan carry of a dream: latent, recurrent state (LSTM or GRU), 1.0 while not done, accumulated return."""

    z: Float[Array, " Z"]
    state: Any
    alive: Float[Array, ""]
    total: Float[Array, ""]


def dream_step(
    controller: LinearController,
    dynamics: Dynamics,
    carry: DreamCarry,
    noise: MixtureNoise,
    temperature: float | Array,
    done_threshold: float,
) -> tuple[DreamCarry, Float[Array, " 3"]]:
    """One dream step: act on [z_t, h_t], advance M, sample z_{t+1} at ``temperature``.

    The reward is added while the dream is alive; the done head (probability > ``done_threshold``)
    ends it, masking every later reward. ``noise`` is the step's ``mixture_noise(key, K, Z)``: the
    step then samples exactly as ``sample_next_z(out, key, temperature)`` would.

    Returns:
        (next carry, action (3,)).
    """
    action = controller(carry.z, carry.state.h)
    state, out = dynamics(carry.z, action, carry.state)
    z_next = sample_next_z_from_noise(out, noise, temperature)
    total = carry.total + carry.alive * out.reward
    done = (jax.nn.sigmoid(out.done_logit) > done_threshold).astype(jnp.float32)
    return DreamCarry(z_next, state, carry.alive * (1.0 - done), total), action


def initial_carry(dynamics: Dynamics, start: DreamStart, key: PRNGKeyArray) -> DreamCarry:
    """Pick a real first frame uniformly and sample its latent z_0 ~ N(mu, sigma)."""
    k_ep, k_z = jr.split(key)
    e = jr.randint(k_ep, (), 0, start.mu.shape[0])
    z0 = start.mu[e] + jnp.exp(0.5 * start.logvar[e]) * jr.normal(k_z, start.mu.shape[1:])
    return DreamCarry(z0, dynamics.initial_state(), jnp.float32(1.0), jnp.float32(0.0))


def single_rollout(
    params: Float[Array, " N"],
    dynamics: Dynamics,
    start: DreamStart,
    key: PRNGKeyArray,
    *,
    steps: int,
    temperature: float | Array,
    done_threshold: float = 0.5,
) -> Float[Array, ""]:
    """Return of one dream of ``steps`` steps for the flat controller ``params`` (N,).

    The sampling noise of all steps (``mixture_noise`` of each step's key) is drawn in one vectorised
    call before the ``lax.scan``, so the scanned step runs no random-number hashing.
    """
    controller = LinearController.from_flat(params, dynamics.z_size, dynamics.hidden_size, dynamics.action_size)
    k_start, k_steps = jr.split(key)
    draw = jax.vmap(mixture_noise, in_axes=(0, None, None))
    noise = draw(jr.split(k_steps, steps), dynamics.num_mixtures, dynamics.z_size)

    def step(carry, n):
        return dream_step(controller, dynamics, carry, n, temperature, done_threshold)[0], None

    carry, _ = jax.lax.scan(step, initial_carry(dynamics, start, k_start), noise)
    return carry.total


def batch_rollout(params, dynamics, start, keys: PRNGKeyArray, **kw) -> Float[Array, ""]:
    """Mean return of one controller over R dreams, one per key in ``keys`` (R,)."""
    rollout = functools.partial(single_rollout, **kw)  # keyword arguments are not vmapped
    returns = jax.vmap(rollout, in_axes=(None, None, None, 0))(params, dynamics, start, keys)
    return jnp.mean(returns)


def population_rollout(
    population: Float[Array, "P N"], dynamics, start, keys: PRNGKeyArray, **kw
) -> Float[Array, " P"]:
    """Fitness (P,) of P controllers, each the mean over the same R dreams (``keys`` (R,))."""
    return jax.vmap(functools.partial(batch_rollout, **kw), in_axes=(0, None, None, None))(
        population, dynamics, start, keys
    )


@eqx.filter_jit
def generation_fitness(
    population: Float[Array, "P N"],
    dynamics: Dynamics,
    start: DreamStart,
    key: PRNGKeyArray,
    temperature: Float[Array, ""],
    rollouts: int,
    steps: int,
    done_threshold: float,
    mesh: Mesh | None = None,
) -> Float[Array, " P"]:
    """A whole CMA-ES generation, P x R x T dream steps, in one jitted call.

    Args:
        population: float32 (P, N) flat controllers.
        dynamics: the dynamics M (any ``Dynamics``: ``MDNRNN``, ``GRUTransition``).
        start: real first-frame posteriors.
        key: this generation's key; split into the R shared dream keys.
        temperature: tau (a traced scalar, so changing it does not recompile).
        rollouts, steps, done_threshold: static.
        mesh: static; ``None`` (one device) or a ``sharding.dream_mesh`` whose ``pop`` size divides P.
            With a mesh the (P, R) grid of returns is constrained to ``PartitionSpec("pop", "roll")``
            so XLA splits candidates and rollouts over the devices; the values are the same. Use
            ``sharded_generation_fitness``, which builds the mesh and pads P.

    Returns:
        float32 (P,) mean dream return per candidate.
    """
    keys = jr.split(key, rollouts)
    kw = {"steps": steps, "temperature": temperature, "done_threshold": done_threshold}
    if mesh is None:
        return population_rollout(population, dynamics, start, keys, **kw)
    population = jax.lax.with_sharding_constraint(population, NamedSharding(mesh, PartitionSpec(POP, None)))
    rollout = functools.partial(single_rollout, **kw)
    grid = jax.vmap(jax.vmap(rollout, in_axes=(None, None, None, 0)), in_axes=(0, None, None, None))
    returns = jax.lax.with_sharding_constraint(
        grid(population, dynamics, start, keys), NamedSharding(mesh, PartitionSpec(POP, ROLL))
    )
    return jnp.mean(returns, axis=1)


def sharded_generation_fitness(
    population: Float[Array, "P N"],
    dynamics: Dynamics,
    start: DreamStart,
    key: PRNGKeyArray,
    temperature: Float[Array, ""],
    rollouts: int,
    steps: int,
    done_threshold: float,
    devices: Sequence[jax.Device] | None = None,
) -> Float[Array, " P"]:
    """``generation_fitness`` spread over ``devices`` (default ``jax.devices()``).

    On one device this is exactly ``generation_fitness`` (no mesh, no padding, no copy). On D > 1
    devices the population is padded with zero candidates up to a multiple of the mesh's ``pop``
    size, split over the devices (``sharding.shard_population``; the mesh rule is in
    ``worldmodels.sharding``), scored in one jitted call, and the padding is dropped. Same keys give
    the same fitness on any device count, up to float32 rounding of the mean over R.

    Args:
        population: float32 (P, N) flat controllers (NumPy or JAX).
        dynamics, start, key, temperature, rollouts, steps, done_threshold: as in ``generation_fitness``.
        devices: the devices to use; default all of ``jax.devices()``.

    Returns:
        float32 (P,) mean dream return per candidate, padding removed.
    """
    devices = list(jax.devices() if devices is None else devices)
    args = (dynamics, start, key, temperature, rollouts, steps, done_threshold)
    if len(devices) == 1:
        return generation_fitness(population, *args)
    p = population.shape[0]
    mesh = dream_mesh(p, rollouts, devices)
    fitness = generation_fitness(shard_population(population, mesh), *args, mesh)
    return fitness if fitness.shape[0] == p else fitness[:p]


def dream_flops_per_step(z_size: int, hidden_size: int, num_mixtures: int, action_size: int = 3) -> int:
    """Multiply-add FLOPs (2 per MAC) of one dream step: controller, LSTM cell and MDN head."""
    ctrl = 2 * action_size * (z_size + hidden_size)
    lstm = 2 * 4 * hidden_size * (z_size + action_size + hidden_size)
    head = 2 * hidden_size * (num_mixtures + 2 * num_mixtures * z_size + 2)
    return ctrl + lstm + head
