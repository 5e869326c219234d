"""JaxMARL's Overcooked seen from one agent: stacked observations, joint actions, the team's reward.

JaxMARL (Rutherford et al. 2024) writes Overcooked (Carroll et al. 2019) in pure JAX, so steps are jitted and
vmapped. Its API is dictionaries keyed by agent name; this wrapper turns them into arrays with a leading agent
axis of 2, where index 0 is the agent we train ("ego") and index 1 its teammate:

* observations: uint8 (2, H, W, 26), each agent's own egocentric-channel grid (``cramped_room``: H 4, W 5);
* actions: int32 (2,), indices into the six actions (up, down, right, left, stay, interact);
* reward: float32 scalar, the shared sparse reward (20 per soup delivered);
* shaped: float32 (2,), each agent's shaped reward (3 per onion into a pot, 3 for a plate picked up with soup
  cooking, 5 per soup picked up), Carroll et al.'s reward shaping as JaxMARL writes it;
* done: bool scalar, the episode's end (only the 400-step time limit ends an Overcooked episode).

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

NUM_ACTIONS = 6
"""Overcooked's discrete actions: up, down, right, left, stay, interact (JaxMARL's ``action_set``)."""
ACTION_NAMES = ("up", "down", "right", "left", "stay", "interact")
STAY = 4
"""The index of the no-op action."""
SOUP_REWARD = 20.0
"""The sparse reward of one delivered soup."""
LAYOUTS = ("cramped_room", "asymm_advantages", "coord_ring", "forced_coord", "counter_circuit")


class Step(NamedTuple):
    """What one joint step returns (leading axes added by ``vmap`` / ``scan``).

    Attributes:
        obs: uint8 (2, H, W, C) both agents' next observations (the next episode's first ones where ``done``).
        reward: float32 () the shared sparse reward.
        shaped: float32 (2,) each agent's shaped reward.
        done: bool () the episode ended with this step.
    """

    obs: UInt8[Array, "2 H W C"]
    reward: Float[Array, ""]
    shaped: Float[Array, " 2"]
    done: Bool[Array, ""]


def make(layout: str = "cramped_room", max_steps: int = 400) -> Any:
    """A JaxMARL Overcooked environment.

    Args:
        layout: one of ``LAYOUTS`` (JaxMARL's ``overcooked_layouts``).
        max_steps: the episode length in steps (Overcooked's standard: 400).

    Raises:
        ValueError: an unknown layout or a non-positive ``max_steps``, named in one line.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--env.layout {layout!r} is not an Overcooked layout; choose one of {', '.join(LAYOUTS)}")
    if max_steps < 1:
        raise ValueError(f"--env.max-steps must be >= 1, got {max_steps}")
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


def obs_shape(env: Any) -> tuple[int, int, int]:
    """(H, W, C) of one agent's observation (from a reset's shape, traced only: JaxMARL's declared space has H and W
    swapped)."""
    obs, _ = jax.eval_shape(lambda k: reset(env, k), jax.random.PRNGKey(0))
    return tuple(int(d) for d in obs.shape[1:])  # type: ignore[return-value]


def obs_size(env: Any) -> int:
    """H * W * C, the flat size of one agent's observation (``obs_shape``)."""
    return math.prod(obs_shape(env))


def reset(env: Any, key: PRNGKeyArray) -> tuple[UInt8[Array, "2 H W C"], Any]:
    """A new episode: (observations uint8 (2, H, W, C), JaxMARL state)."""
    obs, state = env.reset(key)
    return stack(env, obs), state


def step(env: Any, key: PRNGKeyArray, state: Any, actions: Int[Array, " 2"]) -> tuple[Step, Any]:
    """One joint step of (ego, teammate) actions int32 (2,); returns (``Step``, next state)."""
    acts = {name: actions[i] for i, name in enumerate(env.agents)}
    obs, state, rewards, dones, info = env.step(key, state, acts)
    shaped = jnp.stack([jnp.asarray(info["shaped_reward"][a], jnp.float32) for a in env.agents])
    out = Step(
        obs=stack(env, obs),
        reward=jnp.asarray(rewards[env.agents[0]], jnp.float32),
        shaped=shaped,
        done=jnp.asarray(dones["__all__"]),
    )
    return out, state


def stack(env: Any, obs: dict[str, Array]) -> UInt8[Array, "2 H W C"]:
    """JaxMARL's per-agent observation dict -> uint8 (2, H, W, C) in the order of ``env.agents``."""
    return jnp.stack([jnp.asarray(obs[a], jnp.uint8) for a in env.agents])


def render(env: Any, state: Any, tile_size: int = 32) -> Any:
    """One RGB frame uint8 (h, w, 3) of a (host) state, drawn by JaxMARL's Overcooked visualiser."""
    import numpy as np

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
