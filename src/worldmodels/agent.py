"""The agent of World Models: V encodes the frame, C acts on [z, h], M updates its state (Sec. 2.4).

``Agent`` holds the three trained parts; ``agent_step`` and ``episode_step`` act in W environments at
once in one jitted call. Used by the real-environment evaluation (``worldmodels.evaluate``) and by the
``controller`` collection policy (``worldmodels.policies``); it depends on the models only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from worldmodels.models import ConvVAE
from worldmodels.models.actor import ActorCritic
from worldmodels.models.controller import Controller
from worldmodels.models.dynamics import Dynamics, broadcast_batch
from worldmodels.models.mdnrnn import most_likely_z
from worldmodels.models.mlp_autoencoder import MLPAutoencoder
from worldmodels.models.vae import to_float
from worldmodels.planners import CEMConfig, cem_plan, draw_noise, ensemble_initial_state, initial_mean, seed_mean


class Agent(eqx.Module):
    """The paper's agent: V encodes the frame, C acts on [z, h], M updates h (Sec. 2.4)."""

    vae: ConvVAE | MLPAutoencoder
    """The vision model V: the conv VAE (pixels) or the MLP autoencoder (vector observations)."""
    dynamics: Dynamics
    """The memory M: any ``Dynamics`` (an ``MDNRNN``, or a gossip pool's exported ``GRUTransition``)."""
    controller: Controller | ActorCritic
    """C: linear, with a hidden layer, or an actor-critic (anything callable as controller(z (Z,), h (H,)) -> (A,))."""


def explores(controller: Any) -> bool:
    """Whether a controller has its own exploration, a ``sample(z, h, key) -> action`` from its policy (the
    actor-critic's, ``ActorCritic.sample``), rather than a deterministic action that needs added noise (the
    linear controller)."""
    return callable(getattr(controller, "sample", None))


def _encode(agent: Agent, obs: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mu, z) of W frames: V's posterior mean and z = mu + sigma * eps, eps (W, Z) standard normal."""
    mu, logvar = agent.vae.encode(to_float(obs))
    return mu, mu + jnp.exp(0.5 * logvar) * eps


def _frames(agent: Agent, mu: jax.Array, out: Any, with_frames: bool):
    """``None``, or V's reconstruction of the frames and M's predicted next frames (decoded likeliest z)."""
    if not with_frames:
        return None
    return agent.vae.decode(mu), agent.vae.decode(jax.vmap(most_likely_z)(out))


def _act(agent: Agent, obs: jax.Array, state: Any, eps: jax.Array, with_frames: bool, action_key=None):
    """``agent_step`` given the standard normal noise ``eps`` (W, Z) of z ~ N(mu, sigma); with ``action_key``
    the actions are sampled from the controller's own policy (``explores``) instead of its deterministic action."""
    mu, z = _encode(agent, obs, eps)
    if action_key is None:
        actions = jax.vmap(agent.controller)(z, state.h)
    else:
        keys = jr.split(action_key, z.shape[0])
        actions = jax.vmap(agent.controller.sample)(z, state.h, keys)
    state, out = jax.vmap(agent.dynamics)(z, actions, state)
    return actions, state, out.reward, _frames(agent, mu, out, with_frames)


@eqx.filter_jit
def agent_step(
    agent: Agent, obs: jax.Array, state: Any, key: jax.Array, with_frames: bool = False, explore: bool = False
):
    """Act in W environments at once.

    Args:
        agent: V, M and C.
        obs: uint8 (W, 64, 64, 3) current frames.
        state: the dynamics' states with a leading W axis (``batched_initial_state``).
        key: PRNG key for z ~ N(mu, sigma) of all W environments (and, with ``explore``, the actions).
        with_frames: also decode the VAE reconstruction and the MDN-RNN's prediction of the next frame.
        explore: sample the actions from the controller's policy (only for a controller that ``explores``: the
            actor-critic's tanh-squashed Gaussian, DreamerV1 Sec. 3) instead of taking its deterministic action.

    Returns:
        (actions float32 (W, 3), next state, predicted rewards float32 (W,), frames) where frames is
        ``None`` or a pair of float32 (W, 64, 64, 3): reconstruction of ``obs`` and the predicted next frame.
    """
    k_action = None
    if explore:
        key, k_action = jr.split(key)
    eps = jr.normal(key, (obs.shape[0], agent.vae.z_size))
    return _act(agent, obs, state, eps, with_frames, k_action)


@eqx.filter_jit
def episode_step(
    agent: Agent,
    obs: jax.Array,
    state: Any,
    key: jax.Array,
    seeds: jax.Array,
    t: jax.Array,
    with_frames: bool = False,
):
    """``agent_step`` with the noise of each environment drawn from its episode's own key.

    Environment i draws its z ~ N(mu, sigma) with ``fold_in(fold_in(key, seeds[i]), t)``, so an
    episode's noise depends on its reset seed and step only, not on which batch it runs in.

    Args:
        agent, obs, state, with_frames: as in ``agent_step``.
        key: the evaluation's PRNG key.
        seeds: uint32 (W,) reset seeds of the W environments' episodes.
        t: int32 scalar, the step index within the episodes (0 at the reset frame).

    Returns:
        As ``agent_step``.
    """
    return _act(agent, obs, state, _episode_eps(agent, _episode_keys(key, seeds, t)), with_frames)


def _episode_keys(key: jax.Array, seeds: jax.Array, t: jax.Array) -> jax.Array:
    """One key per environment, ``fold_in(fold_in(key, seeds[i]), t)``: its episode's own stream at step t."""
    return jax.vmap(lambda s: jr.fold_in(jr.fold_in(key, s), t))(seeds)


def _episode_eps(agent: Agent, keys: jax.Array) -> jax.Array:
    """The standard normal noise (W, Z) of z ~ N(mu, sigma) drawn from each environment's key."""
    return jax.vmap(lambda k: jr.normal(k, (agent.vae.z_size,)))(keys)


class Planner(eqx.Module):
    """Model-predictive control in place of C: at every real step, CEM plans in M's dream (``planners.cem_plan``;
    Hafner et al. 2019, Sec. 3) and the agent takes the plan's first action.

    Attributes:
        dynamics: the model the plans are scored in: the agent's own M, or with ``ensemble`` a stacked ensemble
            (``models.dynamics.stack_modules``) whose member 0 is the agent's M.
        low, high: float32 (A,) the action box the candidates are clipped to.
        cfg: the planner's settings (``CEMConfig``).
        ensemble: whether ``dynamics`` is a stacked ensemble (the uncertainty-aware planner).
        seeded: start every step's search from the plan the agent's controller would follow in the dream
            (``planners.seed_mean``) instead of the last step's shifted plan (the warm start).
    """

    dynamics: Any
    low: jax.Array
    high: jax.Array
    cfg: CEMConfig = eqx.field(static=True)
    ensemble: bool = eqx.field(static=True, default=False)
    seeded: bool = eqx.field(static=True, default=False)

    def initial(self, agent: Agent, batch: int) -> PlanState:
        """The planning state of ``batch`` environments at an episode's first frame: the middle of the action box
        as every plan's mean (``planners.initial_mean``), and the ensemble members' initial states."""
        mean = initial_mean(self.cfg.horizon, self.low, self.high)
        members = None
        if self.ensemble:
            members = broadcast_batch(ensemble_initial_state(self.dynamics), batch)
        return PlanState(jnp.broadcast_to(mean, (batch,) + mean.shape), members)


class PlanState(NamedTuple):
    """What a planning agent carries between real steps, for W environments.

    Attributes:
        mean: float32 (W, H, A) each environment's last plan shifted one step (the next search's warm start).
        members: with an ensemble, every member's recurrent state on the real episode, a pytree with leading axes
            (W, E); ``None`` otherwise (the agent's own state is the planning state).
    """

    mean: jax.Array
    members: Any = None


class PlanStats(NamedTuple):
    """Per-environment figures of one planning step: the accepted elite's predicted return and ensemble
    disagreement, float32 (W,), and whether the off-road constraint rejected a candidate, bool (W,)."""

    predicted_return: jax.Array
    disagreement: jax.Array
    constraint_bound: jax.Array


@eqx.filter_jit
def plan_episode_step(
    agent: Agent,
    planner: Planner,
    obs: jax.Array,
    state: Any,
    plan: PlanState,
    key: jax.Array,
    seeds: jax.Array,
    t: jax.Array,
    with_frames: bool = False,
):
    """``episode_step`` with the action planned by CEM in M's dream instead of C's (one jitted call for W
    environments: V encodes, CEM plans for every environment at once, M and every ensemble member advance).

    The latent noise is ``episode_step``'s (the same key stream, so a planner and its controller see the same z);
    the planning keys are drawn from that stream too, so an episode's plan depends on its seed and step only.

    Args:
        agent: V, M and C (C only seeds the plans when ``planner.seeded``).
        planner: the CEM settings and planning model.
        obs: uint8 (W, 64, 64, 3) current frames.
        state: M's states with a leading W axis.
        plan: the planning state (``Planner.initial`` at an episode's first frame).
        key, seeds, t: as in ``episode_step``.
        with_frames: also decode V's reconstruction and M's predicted next frame.

    Returns:
        (actions float32 (W, A), next state, next ``PlanState``, predicted rewards float32 (W,), frames or
        ``None``, ``PlanStats``).
    """
    keys = _episode_keys(key, seeds, t)
    mu, z = _encode(agent, obs, _episode_eps(agent, keys))
    cfg = planner.cfg
    plan_keys = jax.vmap(lambda k: jr.fold_in(k, 1))(keys)
    mean = plan.mean
    if planner.seeded:

        def seed(z, s, k):
            noise = draw_noise(k, cfg.horizon, agent.dynamics.num_mixtures, agent.dynamics.z_size)
            return seed_mean(agent.controller, agent.dynamics, z, s, cfg.horizon, noise if cfg.sample_z else None, cfg)

        mean = jnp.clip(jax.vmap(seed)(z, state, jax.vmap(lambda k: jr.fold_in(k, 2))(keys)), planner.low, planner.high)
    planning_state = plan.members if planner.ensemble else state

    def one(z, s, m, k):
        return cem_plan(planner.dynamics, z, s, m, k, cfg, planner.low, planner.high, planner.ensemble)

    result = jax.vmap(one)(z, planning_state, mean, plan_keys)
    actions = result.action
    state, out = jax.vmap(agent.dynamics)(z, actions, state)
    members = None
    if planner.ensemble:

        def advance(z, a, s):  # every member consumes the real (z_t, a_t)
            return eqx.filter_vmap(lambda m, s: m(z, a, s)[0], in_axes=(eqx.if_array(0), 0))(planner.dynamics, s)

        members = jax.vmap(advance)(z, actions, plan.members)
    stats = PlanStats(result.predicted_return, result.disagreement, result.constraint_bound)
    return actions, state, PlanState(result.mean, members), out.reward, _frames(agent, mu, out, with_frames), stats
