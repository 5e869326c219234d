"""The agent of World Models: V encodes the frame, C acts on [z, h], M updates its state (Sec. 2.4).

``Agent`` holds the three trained parts; ``agent_step`` and ``episode_step`` act in W environments at
once in one jitted call. Used by the real-environment evaluation (``worldmodels.evaluate``) and by the
``controller`` collection policy (``worldmodels.policies``); it depends on the models only.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from worldmodels.models import ConvVAE, LinearController
from worldmodels.models.dynamics import Dynamics
from worldmodels.models.mdnrnn import most_likely_z
from worldmodels.models.vae import to_float


class Agent(eqx.Module):
    """The paper's agent: V encodes the frame, C acts on [z, h], M updates h (Sec. 2.4)."""

    vae: ConvVAE
    dynamics: Dynamics
    """The memory M: any ``Dynamics`` (an ``MDNRNN``, or a gossip pool's exported ``GRUTransition``)."""
    controller: LinearController


def explores(controller: Any) -> bool:
    """Whether a controller has its own exploration, a ``sample(z, h, key) -> action`` from its policy (the
    actor-critic's, ``ActorCritic.sample``), rather than a deterministic action that needs added noise (the
    linear controller)."""
    return callable(getattr(controller, "sample", None))


def _act(agent: Agent, obs: jax.Array, state: Any, eps: jax.Array, with_frames: bool, action_key=None):
    """``agent_step`` given the standard normal noise ``eps`` (W, Z) of z ~ N(mu, sigma); with ``action_key``
    the actions are sampled from the controller's own policy (``explores``) instead of its deterministic action."""
    mu, logvar = agent.vae.encode(to_float(obs))
    z = mu + jnp.exp(0.5 * logvar) * eps
    if action_key is None:
        actions = jax.vmap(agent.controller)(z, state.h)
    else:
        keys = jr.split(action_key, z.shape[0])
        actions = jax.vmap(agent.controller.sample)(z, state.h, keys)
    state, out = jax.vmap(agent.dynamics)(z, actions, state)
    frames = None
    if with_frames:
        frames = (agent.vae.decode(mu), agent.vae.decode(jax.vmap(most_likely_z)(out)))
    return actions, state, out.reward, frames


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
    keys = jax.vmap(lambda s: jr.fold_in(jr.fold_in(key, s), t))(seeds)
    eps = jax.vmap(lambda k: jr.normal(k, (agent.vae.z_size,)))(keys)
    return _act(agent, obs, state, eps, with_frames)
