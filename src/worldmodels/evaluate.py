"""Real-environment episodes of V + M + C, vectorised over worker processes.

Each environment step, the frames of all W environments go through one jitted call (VAE encode,
controller, MDN-RNN step) and the actions go back to Gymnasium's ``AsyncVectorEnv``, which steps
the W environments in parallel processes.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import gymnasium as gym
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from worldmodels.diagnostics import off_road
from worldmodels.env import make_env
from worldmodels.models import MDNRNN, ConvVAE, LinearController
from worldmodels.models.mdnrnn import LSTMState, most_likely_z
from worldmodels.models.vae import to_float


class Agent(eqx.Module):
    """The paper's agent: V encodes the frame, C acts on [z, h], M updates h (Sec. 2.4)."""

    vae: ConvVAE
    rnn: MDNRNN
    controller: LinearController


@eqx.filter_jit
def agent_step(agent: Agent, obs: jax.Array, state: LSTMState, key: jax.Array, with_frames: bool = False):
    """Act in W environments at once.

    Args:
        agent: V, M and C.
        obs: uint8 (W, 64, 64, 3) current frames.
        state: LSTM states, (W, H) each.
        key: PRNG key for z ~ N(mu, sigma).
        with_frames: also decode the VAE reconstruction and the MDN-RNN's prediction of the next frame.

    Returns:
        (actions float32 (W, 3), next state, predicted rewards float32 (W,), frames) where frames is
        ``None`` or a pair of float32 (W, 64, 64, 3): reconstruction of ``obs`` and the predicted next frame.
    """
    mu, logvar = agent.vae.encode(to_float(obs))
    z = mu + jnp.exp(0.5 * logvar) * jr.normal(key, mu.shape)
    actions = jax.vmap(agent.controller)(z, state.h)
    state, out = jax.vmap(agent.rnn)(z, actions, state)
    frames = None
    if with_frames:
        frames = (agent.vae.decode(mu), agent.vae.decode(jax.vmap(most_likely_z)(out)))
    return actions, state, out.reward, frames


@dataclass(frozen=True)
class EpisodeResult:
    """One real episode: its reset seed, return and length in steps, and the MDN-RNN's reward delusion
    counts (``diagnostics.reward_delusion``): off-road steps with negative real reward, and how many of
    them the MDN-RNN predicted as rewarded."""

    seed: int
    ret: float
    steps: int
    offroad_steps: int = 0
    deluded_steps: int = 0


def _vector_env(workers: int, max_steps: int) -> gym.vector.VectorEnv:
    fns = [functools.partial(make_env, max_steps) for _ in range(workers)]
    if workers == 1:
        return gym.vector.SyncVectorEnv(fns)
    return gym.vector.AsyncVectorEnv(fns, context="spawn")


def run_episodes(
    agent: Agent,
    seeds: list[int],
    *,
    workers: int = 0,
    max_steps: int = 1000,
    key: jax.Array | None = None,
    video_dir: Path | None = None,
    video_episodes: int = 0,
    fps: int = 30,
    progress: bool = True,
) -> list[EpisodeResult]:
    """Run one real episode per seed with W parallel environments.

    Episodes run in rounds of W (one seed per environment); a finished environment idles until its
    round ends. With ``video_dir``, the first ``video_episodes`` episodes are written as mp4 files
    showing real frame | VAE reconstruction | MDN-RNN prediction side by side.

    Returns:
        One ``EpisodeResult`` per seed, in the order of ``seeds``.
    """
    from worldmodels.viz import side_by_side, to_uint8, write_video

    workers = min(workers or mp.cpu_count(), len(seeds))
    key = jr.key(0) if key is None else key
    env = _vector_env(workers, max_steps)
    results: list[EpisodeResult] = []
    bar = tqdm(total=len(seeds), desc="real episodes", unit="ep", disable=not progress)
    try:
        for first in range(0, len(seeds), workers):
            round_seeds = list(seeds[first : first + workers])
            n = len(round_seeds)
            pad = [round_seeds[-1] + 10_000_000 + i for i in range(workers - n)]
            obs, _ = env.reset(seed=round_seeds + pad)
            # The memory's own zero state (an LSTM's (h, c), a GRU transition's h) for each environment.
            state = jax.tree.map(lambda x: jnp.broadcast_to(x, (workers,) + x.shape), agent.rnn.initial_state())
            returns = np.zeros(workers)
            lengths = np.zeros(workers, int)
            offroad = np.zeros(workers, int)
            deluded = np.zeros(workers, int)
            active = np.arange(workers) < n
            record = [first + i < video_episodes and video_dir is not None for i in range(workers)]
            videos: list[list[np.ndarray]] = [[] for _ in range(workers)]
            predicted = None
            while active.any():
                key, sub = jr.split(key)
                actions, state, pred_reward, frames = agent_step(
                    agent, jnp.asarray(obs), state, sub, with_frames=any(record)
                )
                if frames is not None:
                    recon, nxt = to_uint8(frames[0]), to_uint8(frames[1])
                    for i in range(workers):
                        if record[i] and active[i]:
                            pred = predicted[i] if predicted is not None else np.zeros_like(obs[i])
                            videos[i].append(side_by_side([obs[i], recon[i], pred], ["real", "VAE", "MDN-RNN"]))
                    predicted = nxt
                obs, reward, terminated, truncated, _ = env.step(np.asarray(actions))
                returns += np.where(active, reward, 0.0)
                lengths += active
                off = active & off_road(obs) & (reward < 0)
                offroad += off
                deluded += off & (np.asarray(pred_reward) > 0)
                active &= ~(terminated | truncated)
            for i in range(n):
                results.append(
                    EpisodeResult(round_seeds[i], float(returns[i]), int(lengths[i]), int(offroad[i]), int(deluded[i]))
                )
                if record[i]:
                    write_video(video_dir / f"episode_{round_seeds[i]}.mp4", videos[i], fps=fps)
            bar.update(n)
            bar.set_postfix(mean=f"{np.mean([r.ret for r in results]):.1f}")
    finally:
        bar.close()
        env.close()
    return results


def summarize(results: list[EpisodeResult]) -> dict:
    """Per-episode seeds, returns and lengths plus mean, std, min and max of the returns, and the
    MDN-RNN's reward delusion over all the episodes' off-road steps (None when there were none)."""
    rets = np.array([r.ret for r in results])
    offroad = sum(r.offroad_steps for r in results)
    return {
        "reward_delusion": sum(r.deluded_steps for r in results) / offroad if offroad else None,
        "offroad_steps": offroad,
        "episodes": [
            {"seed": r.seed, "return": r.ret, "steps": r.steps, "offroad_steps": r.offroad_steps} for r in results
        ],
        "mean": float(rets.mean()),
        "std": float(rets.std()),
        "min": float(rets.min()),
        "max": float(rets.max()),
        "n": len(results),
    }
