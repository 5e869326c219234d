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

**Ensembles of M** (``ensemble_generation_returns``): the R dreams of a candidate are dealt over K members
trained on the same data, dream r in member r mod K (each dream keeps its model, PETS's TS-inf, Chua et al.
2018). The agent's own M (member 0) is what the controller reads h from in the real environment, so in a dream
of member k > 0 the member is the world (it samples z_{t+1}, the reward and the done) and M only tracks it,
teacher-forced on the dreamed latents as it is on real frames (``tracked_rollout``). ``ensemble_fitness``
scores a candidate by the mean over members of its mean return minus ``pessimism`` times their spread, a lower
confidence bound that controllers exploiting one member's errors cannot climb (issue "A dream-trained driver
that beats the paper"; ensembles against model exploitation: Kurutach et al. 2018, ME-TRPO; Yu et al. 2020,
MOPO).

All candidates of a generation share the R keys (common random numbers), so their fitnesses differ
by the controller, not by the luck of the dream.

**Action noise** (``action_noise`` > 0): each dream adds to C's action the smooth Ornstein-Uhlenbeck noise that
drives the agent on the road with ``test.action_noise`` (``ou_path``), clipped to the action box, so the fitness
is the return of the policy that is deployed. The noise path of dream r comes from dream r's key, common to every
candidate like the rest of the dream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PRNGKeyArray

from worldmodels.config import OU_THETA
from worldmodels.models.controller import Controller, action_box, controller_from_flat, controller_num_params
from worldmodels.models.dynamics import Dynamics
from worldmodels.models.mdnrnn import MDNOutput, MixtureNoise, mixture_noise, sample_next_z_from_noise
from worldmodels.sharding import POP, ROLL, dream_mesh, shard_population


class DreamStart(NamedTuple):
    """Where dreams begin: E real frames, each a VAE posterior and the recurrent state M had there.

    Attributes:
        mu: float32 (E, Z) VAE posterior means of the start frames.
        logvar: float32 (E, Z) their log-variances.
        state: the dynamics' recurrent state at each start frame, a pytree of arrays with leading axis E
            (``LSTMState`` of float32 (E, H) each for an MDN-RNN), or ``None``: every start is an episode's
            first frame and begins from ``dynamics.initial_state()``. ``mid_episode_starts`` builds the
            states of frames inside episodes.
    """

    mu: Float[Array, "E Z"]
    logvar: Float[Array, "E Z"]
    state: Any = None


class DreamCarry(NamedTuple):
    """Scan carry of a dream: latent, recurrent state (LSTM or GRU), 1.0 while not done, accumulated return."""

    z: Float[Array, " Z"]
    state: Any
    alive: Float[Array, ""]
    total: Float[Array, ""]


def ou_path(
    key: PRNGKeyArray, steps: int, action_size: int, std: float, theta: float = OU_THETA
) -> Float[Array, "T A"]:
    """T steps of an Ornstein-Uhlenbeck process from zero with stationary standard deviation ``std``:
    n_t = (1 - theta) n_{t-1} + std sqrt(1 - (1 - theta)^2) eps_t, eps_t ~ N(0, I), n_{-1} = 0; the process of
    ``policies.ou_noise_step`` (the real episodes' noise; Uhlenbeck & Ornstein 1930), with JAX's generator.

    Args:
        key: the dream's noise key.
        steps, action_size: T and A (static).
        std: stationary standard deviation, in action units.
        theta: mean reversion per step, in (0, 1].

    Returns:
        float32 (T, A), the noise added to the action of each step.
    """
    sigma = std * np.sqrt(1.0 - (1.0 - theta) ** 2)
    eps = jr.normal(key, (steps, action_size))

    def step(n, e):
        n = (1.0 - theta) * n + sigma * e
        return n, n

    return jax.lax.scan(step, jnp.zeros(action_size), eps)[1]


def dream_step(
    controller: Controller,
    dynamics: Dynamics,
    carry: DreamCarry,
    noise: MixtureNoise,
    temperature: float | Array,
    done_threshold: float | None,
    action_noise: Float[Array, " A"] | None = None,
) -> tuple[DreamCarry, Float[Array, " 3"]]:
    """One dream step: act on [z_t, h_t], advance M, sample z_{t+1} at ``temperature``.

    With ``action_noise`` (this step's row of ``ou_path``) the action is C's plus that noise, clipped to the box of
    the controller's squash (``models.controller.action_box``), as on the road with ``test.action_noise``.

    The reward is added while the dream is alive; the done head (probability > ``done_threshold``)
    ends it, masking every later reward. With ``done_threshold`` ``None`` (``dream.termination expected``)
    the dream never ends: each reward is weighted by the probability that the episode is still running,
    alive_{t+1} = alive_t (1 - sigmoid(done_logit_t)), so the return is the expected return under M's
    termination hazard (DreamerV3's continue-weighted return, Hafner et al. 2023). ``noise`` is the step's
    ``mixture_noise(key, K, Z)``: the step then samples exactly as ``sample_next_z(out, key, temperature)`` would.

    Returns:
        (next carry, action (3,)).
    """
    action = _noisy(controller, controller(carry.z, carry.state.h), action_noise)
    state, out = dynamics(carry.z, action, carry.state)
    z_next = sample_next_z_from_noise(out, noise, temperature)
    alive, total = _accumulate(carry.alive, carry.total, out, done_threshold)
    return DreamCarry(z_next, state, alive, total), action


def _noisy(controller: Controller, action: Array, noise: Array | None) -> Array:
    """``action`` plus ``noise`` clipped to the controller's action box; ``action`` itself when ``noise`` is None."""
    if noise is None:
        return action
    low, high = action_box(controller.squash, action.shape[-1])
    return jnp.clip(action + noise, low, high)


def _accumulate(alive, total, out: MDNOutput, done_threshold: float | None):
    """(alive, total) after a step: its reward counts with weight alive; the done head (probability > threshold)
    ends the dream, or with ``done_threshold`` ``None`` scales alive by the probability of going on."""
    p_done = jax.nn.sigmoid(out.done_logit)
    cont = 1.0 - p_done if done_threshold is None else (p_done <= done_threshold).astype(jnp.float32)
    return alive * cont, total + alive * out.reward


def initial_carry(dynamics: Dynamics, start: DreamStart, key: PRNGKeyArray) -> DreamCarry:
    """Pick one of the E start frames uniformly, sample its latent z_0 ~ N(mu, sigma) and take its
    recurrent state (the dynamics' initial state when ``start.state`` is ``None``)."""
    k_ep, k_z = jr.split(key)
    e = jr.randint(k_ep, (), 0, start.mu.shape[0])
    z0 = start.mu[e] + jnp.exp(0.5 * start.logvar[e]) * jr.normal(k_z, start.mu.shape[1:])
    state = dynamics.initial_state() if start.state is None else jax.tree.map(lambda s: s[e], start.state)
    return DreamCarry(z0, state, jnp.float32(1.0), jnp.float32(0.0))


def warm_up(dynamics: Dynamics, z: Float[Array, "L Z"], actions: Float[Array, "L A"]) -> Any:
    """The recurrent states of M along a real episode, teacher-forced on its frames and actions.

    State t is M's state when frame t is seen, after consuming (z_0, a_0) ... (z_{t-1}, a_{t-1}): the
    state the agent (``agent.agent_step``) carries into frame t in the real environment, and the state
    a dream that starts at frame t begins from (Ha & Schmidhuber 2018, Sec. 3: h_t summarises the past).

    Args:
        dynamics: any ``Dynamics``.
        z: float32 (L, Z) latents of frames 0 .. L-1 (the VAE posterior means).
        actions: float32 (L, A) the action taken at each of those frames.

    Returns:
        The states of frames 0 .. L, a pytree with leading axis L + 1 (state 0 is ``initial_state()``).
    """
    init = dynamics.initial_state()
    states, _ = teacher_forced(dynamics, z, actions)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), init, states)


def teacher_forced(dynamics: Dynamics, z: Float[Array, "L Z"], actions: Float[Array, "L A"]) -> tuple[Any, MDNOutput]:
    """M stepped along a real sequence from ``initial_state()``, reading the real (z_t, a_t) at every step
    (teacher forcing, a ``lax.scan`` of the protocol step; any ``Dynamics``).

    Args:
        dynamics: any ``Dynamics``.
        z: float32 (L, Z) latents of frames 0 .. L-1.
        actions: float32 (L, A) the action taken at each of those frames.

    Returns:
        (the states after each step, a pytree with leading axis L (state t has consumed (z_t, a_t)); the
        ``MDNOutput`` of each step with leading axis L: its predictions for frame t + 1 and the reward of a_t).
    """

    def step(state, inputs):
        state, out = dynamics(inputs[0], inputs[1], state)
        return state, (state, out)

    return jax.lax.scan(step, dynamics.initial_state(), (z, actions))[1]


@eqx.filter_jit
def _warm_up_batch(dynamics, z, actions, times):
    """``warm_up`` of B padded episodes (B, L, .), each state gathered at its ``times`` (B,) -> leading B."""

    def one(z_e, a_e, t):
        return jax.tree.map(lambda s: s[t], warm_up(dynamics, z_e, a_e))

    return jax.vmap(one)(z, actions, times)


def mid_episode_starts(
    dynamics: Dynamics,
    mu: np.ndarray,
    logvar: np.ndarray,
    actions: np.ndarray,
    obs_start: np.ndarray,
    act_start: np.ndarray,
    episodes: np.ndarray,
    times: np.ndarray,
    chunk: int = 64,
) -> DreamStart:
    """Dream starts at real frames inside episodes, with M's recurrent state warmed up on the frames before.

    Start i is frame ``times[i]`` of episode ``episodes[i]``: its VAE posterior, and the state ``warm_up``
    gives there (teacher-forced on the posterior means and the actions taken). Dreams that begin mid-episode
    see the states the controller meets in the real environment (corners, the car off the road,
    recoveries), not only the start line (issue "A dream-trained driver that beats the paper").

    Args:
        dynamics: any ``Dynamics``.
        mu, logvar: float32 (F, Z) posteriors of every frame of every episode, concatenated
            (``train.LatentDataset`` layout).
        actions: float32 (S, A) every action, concatenated.
        obs_start, act_start: int (E,) each episode's offset into the frame and action arrays.
        episodes: int (N,) the episode of each start.
        times: int (N,) the frame of each start within its episode (0 is the first frame; at most the
            episode's number of actions).
        chunk: starts warmed up per jitted call (episodes are padded to the longest in the call).

    Returns:
        ``DreamStart`` of N starts whose ``state`` holds the warmed-up states (leading axis N).

    Raises:
        ValueError: if ``episodes`` and ``times`` differ in length or are empty.
    """
    episodes, times = np.asarray(episodes), np.asarray(times)
    if episodes.shape != times.shape or episodes.ndim != 1 or len(episodes) == 0:
        raise ValueError(f"episodes {episodes.shape} and times {times.shape} must be equal, non-empty 1-D arrays")
    longest = int(times.max())
    parts = []
    for i in range(0, len(episodes), chunk):
        ep, t = episodes[i : i + chunk], times[i : i + chunk]
        pad = chunk - len(ep)  # the last chunk is padded too, so one shape compiles
        ep, t = np.concatenate([ep, np.repeat(ep[:1], pad)]), np.concatenate([t, np.repeat(t[:1], pad)])
        frames = obs_start[ep][:, None] + np.arange(max(longest, 1))[None]
        steps = act_start[ep][:, None] + np.arange(max(longest, 1))[None]
        # Frames past each start are never consumed by the state at t; clip their indices into range.
        z = np.asarray(mu)[np.minimum(frames, len(mu) - 1)]
        a = np.asarray(actions)[np.minimum(steps, len(actions) - 1)]
        states = _warm_up_batch(dynamics, jnp.asarray(z), jnp.asarray(a), jnp.asarray(t))
        parts.append(jax.tree.map(lambda s, n=chunk - pad: np.asarray(s[:n]), states))
    state = jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *parts)
    idx = obs_start[episodes] + times
    return DreamStart(jnp.asarray(mu[idx]), jnp.asarray(logvar[idx]), state)


def _rollout_setup(
    params, agent: Dynamics, world: Dynamics, key: PRNGKeyArray, steps: int, squash: str, inputs: str,
    action_noise: float = 0.0, units: int = 0,
):  # fmt: skip
    """The controller of ``params`` (reading ``agent``'s h), the start key, and the scan's inputs: the sampling
    noise of every step of a dream in ``world`` (``mixture_noise`` of each step's key, drawn in one vectorised call
    before the scan), paired with the action noise (``ou_path`` of ``fold_in(key, 1)``) when ``action_noise`` > 0
    (else ``None``, and the dream is exactly the noise-free one)."""
    controller = controller_from_flat(params, agent.z_size, agent.hidden_size, agent.action_size, squash, inputs, units)
    k_start, k_steps = jr.split(key)
    draw = jax.vmap(mixture_noise, in_axes=(0, None, None))
    mixture = draw(jr.split(k_steps, steps), world.num_mixtures, world.z_size)
    actions = ou_path(jr.fold_in(key, 1), steps, agent.action_size, action_noise) if action_noise > 0 else None
    return controller, k_start, (mixture, actions)


def single_rollout(
    params: Float[Array, " N"],
    dynamics: Dynamics,
    start: DreamStart,
    key: PRNGKeyArray,
    *,
    steps: int,
    temperature: float | Array,
    done_threshold: float | None = 0.5,
    squash: str = "carracing",
    inputs: str = "zh",
    action_noise: float = 0.0,
    units: int = 0,
) -> Float[Array, ""]:
    """Return of one dream of ``steps`` steps for the flat controller ``params`` (N,), C with the environment's
    action ``squash`` reading ``inputs`` (``zh`` or ``z``), linear or with a hidden layer of ``units`` tanh units
    (``controller_from_flat``), its actions perturbed by Ornstein-Uhlenbeck noise of stationary std
    ``action_noise`` (static; 0: none; ``dream_step``).

    The sampling noise of all steps (``mixture_noise`` of each step's key) and the action noise are drawn in
    vectorised calls before the ``lax.scan``, so the scanned step runs no random-number hashing.
    """
    controller, k_start, xs = _rollout_setup(
        params, dynamics, dynamics, key, steps, squash, inputs, action_noise, units
    )

    def step(carry, x):
        n, a = x
        return dream_step(controller, dynamics, carry, n, temperature, done_threshold, a)[0], None

    carry, _ = jax.lax.scan(step, initial_carry(dynamics, start, k_start), xs)
    return carry.total


class TrackedCarry(NamedTuple):
    """Scan carry of a dream in a world member: latent, the world's state, the agent's M's state (teacher-forced
    on the dreamed latents), 1.0 while not done, accumulated return."""

    z: Float[Array, " Z"]
    world: Any
    agent: Any
    alive: Float[Array, ""]
    total: Float[Array, ""]


def tracked_rollout(
    params: Float[Array, " N"],
    agent: Dynamics,
    world: Dynamics,
    start: DreamStart,
    key: PRNGKeyArray,
    *,
    steps: int,
    temperature: float | Array,
    done_threshold: float | None = 0.5,
    squash: str = "carracing",
    inputs: str = "zh",
    action_noise: float = 0.0,
    units: int = 0,
) -> Float[Array, ""]:
    """Return of one dream of ``steps`` steps whose world is ``world`` while the controller reads ``agent``'s h
    (with ``action_noise`` as in ``single_rollout``).

    At every step the controller acts on [z_t, h_t] with h_t from ``agent`` (the run's own M), ``world`` (another
    member of an ensemble, same Z and A) consumes (z_t, a_t) and gives z_{t+1} (sampled at ``temperature``), the
    reward and the done, and ``agent`` consumes the same (z_t, a_t): M is teacher-forced on the dream as it is on
    the real frames. The keys are used as ``single_rollout`` uses them, so with ``world`` equal to ``agent`` the
    two return the same.

    Raises:
        ValueError: if ``start.state`` is not ``None`` (a mid-episode start has only the agent's state).
    """
    if start.state is not None:
        raise ValueError("a dream in another ensemble member starts from first frames only (start.state is None)")
    controller, k_start, xs = _rollout_setup(params, agent, world, key, steps, squash, inputs, action_noise, units)
    first = initial_carry(agent, start, k_start)

    def step(carry: TrackedCarry, x):
        n, a = x
        action = _noisy(controller, controller(carry.z, carry.agent.h), a)
        world_state, out = world(carry.z, action, carry.world)
        agent_state, _ = agent(carry.z, action, carry.agent)
        alive, total = _accumulate(carry.alive, carry.total, out, done_threshold)
        z_next = sample_next_z_from_noise(out, n, temperature)
        return TrackedCarry(z_next, world_state, agent_state, alive, total), None

    carry = TrackedCarry(first.z, world.initial_state(), first.state, first.alive, first.total)
    return jax.lax.scan(step, carry, xs)[0].total


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
    done_threshold: float | None,
    mesh: Mesh | None = None,
    squash: str = "carracing",
    inputs: str = "zh",
    action_noise: float = 0.0,
    units: int = 0,
) -> Float[Array, " P"]:
    """A whole CMA-ES generation, P x R x T dream steps, in one jitted call.

    Args:
        population: float32 (P, N) flat controllers.
        dynamics: the dynamics M (any ``Dynamics``: ``MDNRNN``, ``GRUTransition``).
        start: real first-frame posteriors.
        key: this generation's key; split into the R shared dream keys.
        temperature: tau (a traced scalar, so changing it does not recompile).
        rollouts, steps, done_threshold: static (``done_threshold`` ``None``: continue-weighted, ``dream_step``).
        mesh: static; ``None`` (one device) or a ``sharding.dream_mesh`` whose ``pop`` size divides P.
            With a mesh the (P, R) grid of returns is constrained to ``PartitionSpec("pop", "roll")``
            so XLA splits candidates and rollouts over the devices; the values are the same. Use
            ``sharded_generation_fitness``, which builds the mesh and pads P.
        squash, inputs, units: static; the controller's action squash, inputs and hidden units
            (``models.controller.controller_from_flat``; 0: linear).
        action_noise: static; stationary std of the actions' Ornstein-Uhlenbeck noise (``single_rollout``).

    Returns:
        float32 (P,) mean dream return per candidate.
    """
    keys = jr.split(key, rollouts)
    kw = {"steps": steps, "temperature": temperature, "done_threshold": done_threshold, "squash": squash,
          "inputs": inputs, "action_noise": action_noise, "units": units}  # fmt: skip
    if mesh is None:
        return population_rollout(population, dynamics, start, keys, **kw)
    population = jax.lax.with_sharding_constraint(population, NamedSharding(mesh, PartitionSpec(POP, None)))
    rollout = functools.partial(single_rollout, **kw)
    grid = jax.vmap(jax.vmap(rollout, in_axes=(None, None, None, 0)), in_axes=(0, None, None, None))
    returns = jax.lax.with_sharding_constraint(
        grid(population, dynamics, start, keys), NamedSharding(mesh, PartitionSpec(POP, ROLL))
    )
    return jnp.mean(returns, axis=1)


@eqx.filter_jit
def ensemble_generation_returns(
    population: Float[Array, "P N"],
    members: tuple[Dynamics, ...],
    start: DreamStart,
    key: PRNGKeyArray,
    temperature: Float[Array, ""],
    rollouts: int,
    steps: int,
    done_threshold: float | None,
    squash: str = "carracing",
    inputs: str = "zh",
    action_noise: float = 0.0,
    units: int = 0,
) -> Float[Array, "P K"]:
    """Each candidate's mean dream return in each of K ensemble members, one jitted call per generation.

    The R keys are ``generation_fitness``'s (``jr.split(key, R)``); dream r runs in member r mod K, so each
    member has R // K or R // K + 1 dreams, common to every candidate. Member 0 is the agent's own M
    (``single_rollout``); in the others it only tracks the world (``tracked_rollout``). With K = 1 the one
    column equals ``generation_fitness``. Cost: about 2 - 1/K times the single-model dream (the dreams of
    members k > 0 step two models).

    Args:
        population: float32 (P, N) flat controllers.
        members: K >= 1 dynamics of one Z and A (the run's M first), a static-length tuple.
        start: first-frame starts (``start.state`` None).
        key, temperature, rollouts, steps, done_threshold, squash, inputs, action_noise, units: as in
            ``generation_fitness``.

    Returns:
        float32 (P, K) mean return of each candidate over each member's dreams.

    Raises:
        ValueError: if ``rollouts`` < K (a member without dreams).
    """
    k = len(members)
    if rollouts < k:
        raise ValueError(f"{rollouts} dream rollouts cannot cover {k} ensemble members; use at least {k}")
    keys = jr.split(key, rollouts)
    kw = {"steps": steps, "temperature": temperature, "done_threshold": done_threshold, "squash": squash,
          "inputs": inputs, "action_noise": action_noise, "units": units}  # fmt: skip
    agent = members[0]
    columns = [population_rollout(population, agent, start, keys[0::k], **kw)]
    one = functools.partial(tracked_rollout, **kw)
    grid = jax.vmap(jax.vmap(one, in_axes=(None, None, None, None, 0)), in_axes=(0, None, None, None, None))
    for m, world in enumerate(members[1:], start=1):
        columns.append(jnp.mean(grid(population, agent, world, start, keys[m::k]), axis=1))
    return jnp.stack(columns, axis=1)


def ensemble_fitness(member_returns: Float[Array, "P K"], pessimism: float) -> Float[Array, " P"]:
    """Pessimistic fitness of each candidate: mean over members minus ``pessimism`` times their standard deviation
    (ddof 0): a lower confidence bound on the return (issue "A dream-trained driver that beats the paper"; MOPO,
    Yu et al. 2020, penalises the same disagreement per step). With one member or ``pessimism`` 0, the mean.

    Args:
        member_returns: float32 (P, K) from ``ensemble_generation_returns``.
        pessimism: beta >= 0, in units of the returns' spread.

    Returns:
        float32 (P,).
    """
    return jnp.mean(member_returns, axis=1) - pessimism * jnp.std(member_returns, axis=1)


def sharded_generation_fitness(
    population: Float[Array, "P N"],
    dynamics: Dynamics,
    start: DreamStart,
    key: PRNGKeyArray,
    temperature: Float[Array, ""],
    rollouts: int,
    steps: int,
    done_threshold: float | None,
    devices: Sequence[jax.Device] | None = None,
    squash: str = "carracing",
    inputs: str = "zh",
    action_noise: float = 0.0,
    units: int = 0,
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
        squash, inputs, units: the controller's action squash, inputs and hidden units (``models.controller``).
        action_noise: stationary std of the actions' Ornstein-Uhlenbeck noise (``single_rollout``; 0: none).

    Returns:
        float32 (P,) mean dream return per candidate, padding removed.
    """
    devices = list(jax.devices() if devices is None else devices)
    args = (dynamics, start, key, temperature, rollouts, steps, done_threshold)
    kw = {"squash": squash, "inputs": inputs, "action_noise": action_noise, "units": units}
    if len(devices) == 1:
        return generation_fitness(population, *args, **kw)
    p = population.shape[0]
    mesh = dream_mesh(p, rollouts, devices)
    fitness = generation_fitness(shard_population(population, mesh), *args, mesh, **kw)
    return fitness if fitness.shape[0] == p else fitness[:p]


def dream_flops_per_step(
    z_size: int, hidden_size: int, num_mixtures: int, action_size: int = 3, controller_units: int = 0
) -> int:
    """Multiply-add FLOPs (2 per MAC) of one dream step: controller, LSTM cell and MDN head.

    The controller reads [z, h]: linear with ``controller_units`` 0 (the paper's C), else through one hidden layer
    of that many units (``MLPController``); either way 2 FLOPs per weight, its parameters less its biases (U + A).
    Element-wise work (gates, tanh, the mixture's sampling) is not counted: the figure is the matmul work a
    roofline compares against.

    Raises:
        ValueError: ``controller_units`` below 0 (``controller_num_params``).
    """
    n = controller_num_params(z_size, hidden_size, action_size, units=controller_units)
    ctrl = 2 * (n - controller_units - action_size)
    lstm = 2 * 4 * hidden_size * (z_size + action_size + hidden_size)
    head = 2 * hidden_size * (num_mixtures + 2 * num_mixtures * z_size + 2)
    return ctrl + lstm + head
