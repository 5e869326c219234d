"""Two-agent JaxMARL environments seen from one agent: stacked observations, joint actions, the team's reward.

JaxMARL (Rutherford et al. 2024) writes its environments in pure JAX, so steps are jitted and vmapped. Its API is
dictionaries keyed by agent name; this wrapper turns them into arrays with a leading agent axis of 2, where index 0
is the agent we train ("ego") and index 1 its teammate. Two environments (``ENVS``):

``overcooked`` (Carroll et al. 2019), a grid kitchen:

* observations: uint8 (2, H, W, 26), each agent's own egocentric-channel grid (``cramped_room``: H 4, W 5);
* actions: int32 (2,), indices into the six actions (up, down, right, left, stay, interact);
* reward: float32 scalar, the shared sparse reward (20 per soup delivered);
* shaped: float32 (2,), each agent's shaped reward (3 per onion into a pot, 3 for a plate picked up with soup
  cooking, 5 per soup picked up), Carroll et al.'s reward shaping as JaxMARL writes it;
* done: bool scalar, the episode's end (only the 400-step time limit ends an Overcooked episode).

``mpe_spread``, the particle world's cooperative navigation (Lowe et al. 2017, ``simple_spread`` with two agents and
two landmarks):

* observations: float32 (2, 12), each agent's own velocity (2) and position (2), the landmarks' positions relative
  to it (2 x 2), the teammate's relative position (2) and its (silent, zero) communication (2);
* actions: int32 (2,), indices into the five actions (stay, left, right, down, up), each an acceleration;
* reward: float32 scalar, the two agents' mean reward: half the team's negative summed distance from each landmark
  to its nearest agent, half the agent's own collisions (-1 each; JaxMARL's ``local_ratio`` 0.5);
* shaped: zeros (MPE has no shaped reward);
* done: the 25-step time limit (JaxMARL's ``max_steps`` counts one step more, so it is given ``max_steps - 1``).

The environment resets itself when an episode ends (JaxMARL's ``MultiAgentEnv.step``): the observations returned
with ``done`` are the next episode's first.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, UInt8

from worldmodels.config import MARL_ENVS

ENVS = MARL_ENVS
"""The environments this wrapper knows (``MARLConfig.env``, ``config.MARL_ENVS``)."""
NUM_ACTIONS = 6
"""Overcooked's discrete actions: up, down, right, left, stay, interact (JaxMARL's ``action_set``)."""
ACTION_NAMES = ("up", "down", "right", "left", "stay", "interact")
STAY = 4
"""The index of Overcooked's no-op action."""
MPE_ACTION_NAMES = ("stay", "left", "right", "down", "up")
"""MPE's discrete actions (JaxMARL's ``_decode_discrete_action``: 1/2 push along -x/+x, 3/4 along -y/+y)."""
MPE_STAY = 0
"""The index of MPE's no-op action."""
NUM_ACTIONS_OF = {"overcooked": NUM_ACTIONS, "mpe_spread": len(MPE_ACTION_NAMES)}
"""One agent's number of discrete actions in each of ``ENVS``."""
SOUP_REWARD = 20.0
"""The sparse reward of one delivered soup."""
LAYOUTS = ("cramped_room", "asymm_advantages", "coord_ring", "forced_coord", "counter_circuit")


class Step(NamedTuple):
    """What one joint step returns (leading axes added by ``vmap`` / ``scan``).

    Attributes:
        obs: (2, *obs_shape) both agents' next observations (the next episode's first ones where ``done``): uint8
            in Overcooked, float32 in MPE.
        reward: float32 () the shared sparse reward.
        shaped: float32 (2,) each agent's shaped reward.
        done: bool () the episode ended with this step.
    """

    obs: UInt8[Array, "2 H W C"]
    reward: Float[Array, ""]
    shaped: Float[Array, " 2"]
    done: Bool[Array, ""]


def make(layout: str = "cramped_room", max_steps: int = 400, name: str = "overcooked") -> Any:
    """A JaxMARL environment for two agents.

    Args:
        layout: one of ``LAYOUTS`` (JaxMARL's ``overcooked_layouts``); unused for ``mpe_spread``.
        max_steps: the episode length in steps (Overcooked's standard: 400; MPE's: 25).
        name: one of ``ENVS``.

    Raises:
        ValueError: an unknown environment or layout, or a ``max_steps`` below 1 (2 for MPE), named in one line.
    """
    if name not in ENVS:
        raise ValueError(f"--marl.env {name!r} is unknown; choose one of {', '.join(ENVS)}")
    if max_steps < (2 if name == "mpe_spread" else 1):
        raise ValueError(f"--marl.max-steps must be >= {2 if name == 'mpe_spread' else 1}, got {max_steps}")
    if name == "mpe_spread":
        return _import_jaxmarl().make("MPE_simple_spread_v3", num_agents=2, num_landmarks=2, max_steps=max_steps - 1)
    if layout not in LAYOUTS:
        raise ValueError(f"--marl.layout {layout!r} is not an Overcooked layout; choose one of {', '.join(LAYOUTS)}")
    jaxmarl = _import_jaxmarl()
    from jaxmarl.environments.overcooked import overcooked_layouts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Overcooked v1's deprecation notice
        return jaxmarl.make("overcooked", layout=overcooked_layouts[layout], max_steps=max_steps)


def _import_jaxmarl() -> Any:
    """``import jaxmarl`` without its banner. Its import prints to file descriptor 1 and, on the way, resets
    ``sys.stdout`` / ``sys.stderr`` to the interpreter's originals (its MABrax module does), so the descriptor is
    pointed at /dev/null and both streams are put back afterwards."""
    if "jaxmarl" in sys.modules:
        return sys.modules["jaxmarl"]
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jaxmarl
    finally:
        sys.__stdout__.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
        sys.stdout, sys.stderr = streams
    return jaxmarl


def env_name(env: Any) -> str:
    """Which of ``ENVS`` a JaxMARL environment made by ``make`` is."""
    return "overcooked" if hasattr(env, "layout") else "mpe_spread"


def episode_steps(env: Any) -> int:
    """Steps of one episode (``make``'s ``max_steps``)."""
    return env.max_steps + 1 if env_name(env) == "mpe_spread" else env.max_steps


def num_actions(env: Any) -> int:
    """The number of discrete actions of one agent (6 in Overcooked, 5 in MPE; ``NUM_ACTIONS_OF``)."""
    return NUM_ACTIONS_OF[env_name(env)]


def obs_shape(env: Any) -> tuple[int, ...]:
    """One agent's observation shape: (H, W, C) in Overcooked (from a reset's shape, traced only: JaxMARL's declared
    space has H and W swapped), (12,) in MPE."""
    obs, _ = jax.eval_shape(lambda k: reset(env, k), jax.random.PRNGKey(0))
    return tuple(int(d) for d in obs.shape[1:])


def obs_size(env: Any) -> int:
    """The flat size of one agent's observation (``obs_shape``)."""
    return math.prod(obs_shape(env))


def reset(env: Any, key: PRNGKeyArray) -> tuple[Array, Any]:
    """A new episode: (observations (2, *obs_shape): uint8 in Overcooked, float32 in MPE; JaxMARL state)."""
    obs, state = env.reset(key)
    return stack(env, obs), state


def step(env: Any, key: PRNGKeyArray, state: Any, actions: Int[Array, " 2"]) -> tuple[Step, Any]:
    """One joint step of (ego, teammate) actions int32 (2,); returns (``Step``, next state)."""
    acts = {name: actions[i] for i, name in enumerate(env.agents)}
    obs, state, rewards, dones, info = env.step(key, state, acts)
    if env_name(env) == "overcooked":
        reward = jnp.asarray(rewards[env.agents[0]], jnp.float32)
        shaped = jnp.stack([jnp.asarray(info["shaped_reward"][a], jnp.float32) for a in env.agents])
    else:
        reward = jnp.mean(jnp.stack([jnp.asarray(rewards[a], jnp.float32) for a in env.agents]))
        shaped = jnp.zeros((2,), jnp.float32)
    out = Step(obs=stack(env, obs), reward=reward, shaped=shaped, done=jnp.asarray(dones["__all__"]))
    return out, state


def stack(env: Any, obs: dict[str, Array]) -> Array:
    """JaxMARL's per-agent observation dict -> (2, *obs_shape) in the order of ``env.agents``: uint8 in Overcooked,
    float32 in MPE."""
    dtype = jnp.uint8 if env_name(env) == "overcooked" else jnp.float32
    return jnp.stack([jnp.asarray(obs[a], dtype) for a in env.agents])


def render(env: Any, state: Any, tile_size: int = 32) -> Any:
    """One RGB frame uint8 (h, w, 3) of a (host) state: JaxMARL's Overcooked visualiser, or ``render_mpe``."""
    import numpy as np

    if env_name(env) == "mpe_spread":
        return render_mpe(state, np.asarray(env.rad), size=8 * tile_size)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from jaxmarl.viz.overcooked_visualizer import OvercookedVisualizer

    pad = env.agent_view_size - 2
    grid = np.asarray(state.maze_map[pad:-pad, pad:-pad, :])
    frame = OvercookedVisualizer._render_grid(
        grid,
        tile_size=tile_size,
        highlight_mask=None,
        agent_dir_idx=np.asarray(state.agent_dir_idx),
        agent_inv=np.asarray(state.agent_inv),
    )
    return np.asarray(frame, np.uint8)


MPE_COLOURS = ((66, 133, 244), (234, 134, 0), (90, 90, 90))
"""RGB of the ego agent, its teammate and the landmarks in ``render_mpe``."""


def render_mpe(state: Any, radii: Any, size: int = 256, extent: float = 2.0) -> Any:
    """One RGB frame uint8 (size, size, 3) of an MPE (host) state: every entity a disc of its radius ``radii``
    (float (N,), JaxMARL's ``env.rad``: agents 0.15, landmarks 0.05), ego blue, teammate orange, landmarks grey, on
    the square [-extent, extent]^2 with y up."""
    import numpy as np

    frame = np.full((size, size, 3), 255, np.uint8)
    scale = size / (2 * extent)
    yy, xx = np.mgrid[0:size, 0:size]
    pos = np.asarray(state.p_pos)
    for i in range(len(pos) - 1, -1, -1):  # landmarks first, agents on top
        cx, cy = (pos[i, 0] + extent) * scale, (extent - pos[i, 1]) * scale
        colour = MPE_COLOURS[min(i, 2)]
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= (radii[i] * scale) ** 2] = colour
    return frame
