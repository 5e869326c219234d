"""Real-environment episodes of V + M + C, pipelined over two groups of worker processes.

The W environments are split into two groups (one when W is 1), each a Gymnasium ``AsyncVectorEnv``
whose environments step in their own processes. While one group's environments step, the main
process runs the other group's frames through one jitted call (VAE encode, controller, MDN-RNN step)
and sends that group its actions (``step_async``) before it collects the first group's step
(``step_wait``). The agent's compute in the main process thus overlaps the environment steps in the
workers; with a single vector env the two would take turns and each core would idle half the time.

The noise of z ~ N(mu, sigma) in an episode is drawn from a key derived from (key, the episode's
reset seed, step index), and CarRacing is deterministic given its reset seed, so an episode's return
does not depend on the number of workers or on which group ran it.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from worldmodels.agent import Agent, Planner, PlanState, episode_step, plan_episode_step
from worldmodels.diagnostics import off_road
from worldmodels.env import make_env
from worldmodels.errors import TrainingDiverged
from worldmodels.models.dynamics import batched_initial_state


@dataclass(frozen=True)
class EpisodeResult:
    """One real episode: its reset seed, return and length in steps, the MDN-RNN's reward delusion
    counts (``diagnostics.reward_delusion``): off-road steps with negative real reward, and how many of
    them the MDN-RNN predicted as rewarded."""

    seed: int
    ret: float
    steps: int
    offroad_steps: int = 0
    deluded_steps: int = 0
    constraint_steps: int = 0
    """With a planner: the steps at which its off-road constraint rejected candidates (``agent.PlanStats``)."""
    model_return: float = 0.0
    """M's own estimate of this episode's return: its reward head's predictions summed over the real steps,
    teacher-forced on the real frames and actions (the calibration of the reward head against the road)."""


def group_sizes(workers: int) -> list[int]:
    """Environments per pipeline group for W workers: [1] for W 1, else [ceil(W / 2), floor(W / 2)]."""
    if workers == 1:
        return [1]
    return [(workers + 1) // 2, workers // 2]


def _vector_envs(
    workers: int, max_steps: int, env: str = "carracing", render: bool = False
) -> list[gym.vector.VectorEnv]:
    """The vector env of each pipeline group (``group_sizes``); W 1 is one in-process ``SyncVectorEnv``. With
    ``render`` the environments render RGB frames (``render_mode="rgb_array"``), for a vector environment's videos."""
    make = functools.partial(make_env, max_steps, "rgb_array" if render else None, env)
    if workers == 1:
        return [gym.vector.SyncVectorEnv([make])]
    envs: list[gym.vector.VectorEnv] = []
    try:
        for n in group_sizes(workers):
            envs.append(gym.vector.AsyncVectorEnv([make] * n, context="spawn"))
    except BaseException:
        for env in envs:
            env.close()
        raise
    return envs


@dataclass(eq=False)
class _Group:
    """One pipeline group: its vector env, the round of episodes it runs, and its call in flight.

    A round gives each of the group's W environments one episode (``index`` are the episodes'
    positions in ``run_episodes``'s seeds, ``seeds`` the W reset seeds, padding included); ``pending``
    is ``"reset"`` or ``"step"`` while the vector env works on that call, else ``None``. A
    ``SyncVectorEnv`` (W 1) has no asynchronous calls: it runs each call at once and ``wait`` hands
    over the result.
    """

    env: gym.vector.VectorEnv
    size: int
    index: list[int] = field(default_factory=list)
    seeds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    pending: str | None = None
    done: bool = False
    obs: np.ndarray | None = None
    state: Any = None
    t: int = 0
    plan: PlanState | None = None
    bound: np.ndarray | None = None
    returns: np.ndarray | None = None
    lengths: np.ndarray | None = None
    offroad: np.ndarray | None = None
    deluded: np.ndarray | None = None
    model_returns: np.ndarray | None = None
    noise: np.ndarray | None = None
    rngs: list = field(default_factory=list)
    active: np.ndarray | None = None
    record: np.ndarray | None = None
    videos: list[list[np.ndarray]] = field(default_factory=list)
    predicted: np.ndarray | None = None
    pred_reward: jax.Array | None = None
    _sync_result: tuple | None = None

    def reset_async(self, seeds: list[int]) -> None:
        if isinstance(self.env, gym.vector.AsyncVectorEnv):
            self.env.reset_async(seed=seeds)
        else:
            self._sync_result = self.env.reset(seed=seeds)
        self.pending = "reset"

    def step_async(self, actions: np.ndarray) -> None:
        if isinstance(self.env, gym.vector.AsyncVectorEnv):
            self.env.step_async(actions)
        else:
            self._sync_result = self.env.step(actions)
        self.pending = "step"

    def wait(self) -> tuple:
        """The result of the call in flight (``reset_wait`` or ``step_wait``)."""
        kind, self.pending = self.pending, None
        if not isinstance(self.env, gym.vector.AsyncVectorEnv):
            result, self._sync_result = self._sync_result, None
            return result
        return self.env.reset_wait() if kind == "reset" else self.env.step_wait()


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
    planner: Planner | None = None,
    timing: dict | None = None,
    env: str = "carracing",
    action_noise: float = 0.0,
) -> list[EpisodeResult]:
    """Run one real episode per seed with W parallel environments, pipelined in two groups.

    The W environments (default: one per CPU core, at most one per seed) form two groups of
    ceil(W / 2) and floor(W / 2) environments, each an ``AsyncVectorEnv`` (W 1: one in-process
    ``SyncVectorEnv``). Each step of a group is one jitted ``episode_step`` on its frames in the main
    process, then ``step_async``; the main process then collects the other group's step
    (``step_wait``) and acts for it, so the agent's compute for one group overlaps the other group's
    environment step and neither the main process nor the workers sit idle waiting for each other.

    Each group runs its own rounds of episodes: it takes the next seeds in order (one per
    environment), resets its environments and LSTM states, and runs until all its episodes have
    ended; a finished environment idles until its group's round ends. The groups never wait for
    each other. The noise of z ~ N(mu, sigma) is drawn from ``fold_in(fold_in(key, seed), t)``, so
    the results do not depend on ``workers``.

    With ``video_dir``, the first ``video_episodes`` episodes (in the order of ``seeds``) are written
    as ``episode_{seed}.mp4`` showing real frame | VAE reconstruction | MDN-RNN prediction side by side; for a
    vector environment, the rendered frame | a bar chart of the real observation against V's reconstruction
    and M's prediction of it (``viz.vector_panel``).

    Args:
        agent: V, M and C.
        seeds: reset seeds, one episode each.
        workers: environments W run at once (0: ``multiprocessing.cpu_count()``).
        max_steps: episode length cap in steps.
        key: PRNG key of the latent noise (default ``jr.key(0)``).
        video_dir, video_episodes, fps: where, how many and at what rate to write videos.
        progress: show a progress bar with the running mean return.
        planner: act by CEM planning in M's dream (``agent.plan_episode_step``) instead of with C's action.
        timing: a dict that receives ``wall_s`` (the whole call), ``act_s`` (the agent's jitted steps, planning
            included, waited for) and ``env_steps`` (steps of the episodes); with a planner also
            ``predicted_return`` and ``disagreement``, the means over those steps of ``agent.PlanStats``.
        env: the environment (an ``env.ENVS`` name); off-road steps are counted for CarRacing only.
        action_noise: stationary standard deviation of Ornstein-Uhlenbeck noise (``policies.ou_noise_step``)
            added to each action before it is clipped to the action box; each episode's noise is drawn from
            ``numpy.random.default_rng(seed)``, so it too is independent of ``workers``. 0: no noise.

    Returns:
        One ``EpisodeResult`` per seed, in the order of ``seeds``.

    Raises:
        TrainingDiverged: when the agent's action is NaN or inf (damaged parameters), naming the step and the
            episode's seed, before that action reaches the simulator.
    """
    from worldmodels.env import get_spec
    from worldmodels.policies import add_noise, ou_noise_step
    from worldmodels.viz import side_by_side, to_uint8, vector_panel, write_video

    spec = get_spec(env)
    pixels = spec.observation == "pixels"

    seeds = [int(s) for s in seeds]
    if not seeds:
        return []
    workers = min(workers or mp.cpu_count(), len(seeds))
    key = jr.key(0) if key is None else key
    results: list[EpisodeResult | None] = [None] * len(seeds)
    next_episode = 0
    bar = tqdm(total=len(seeds), desc="real episodes", unit="ep", disable=not progress)
    envs: list[gym.vector.VectorEnv] = []

    def start_round(g: _Group) -> None:
        """Reset ``g`` for the next seeds, or retire it when there are none left."""
        nonlocal next_episode
        g.index = list(range(next_episode, min(next_episode + g.size, len(seeds))))
        next_episode += len(g.index)
        if not g.index:
            g.done = True
            return
        round_seeds = [seeds[i] for i in g.index]
        round_seeds += [round_seeds[-1] + 10_000_000 + i for i in range(g.size - len(g.index))]
        g.seeds = np.array([s % 2**32 for s in round_seeds], np.uint32)
        g.reset_async(round_seeds)
        # The memory's own zero state (an LSTM's (h, c), a GRU transition's h) for each environment.
        g.state = batched_initial_state(agent.dynamics, g.size)
        g.t = 0
        g.returns = np.zeros(g.size)
        g.lengths = np.zeros(g.size, int)
        g.offroad = np.zeros(g.size, int)
        g.deluded = np.zeros(g.size, int)
        g.model_returns = np.zeros(g.size)
        g.active = np.arange(g.size) < len(g.index)
        g.record = np.array([i < len(g.index) and g.index[i] < video_episodes for i in range(g.size)])
        g.record &= video_dir is not None
        g.videos = [[] for _ in range(g.size)]
        g.predicted = None
        g.bound = np.zeros(g.size, int)
        g.noise = np.zeros((g.size, spec.action_size), np.float32)
        g.rngs = [np.random.default_rng(s) for s in round_seeds]
        if planner is not None:
            g.plan = planner.initial(agent, g.size)

    def end_round(g: _Group) -> None:
        for i, pos in enumerate(g.index):
            results[pos] = EpisodeResult(
                seeds[pos], float(g.returns[i]), int(g.lengths[i]), int(g.offroad[i]), int(g.deluded[i]),
                int(g.bound[i]), float(g.model_returns[i]),
            )  # fmt: skip
            if g.record[i]:
                write_video(video_dir / f"episode_{seeds[pos]}.mp4", g.videos[i], fps=fps)
        bar.update(len(g.index))
        bar.set_postfix(mean=f"{np.mean([r.ret for r in results if r is not None]):.1f}")

    def act(g: _Group) -> None:
        """One jitted agent step on ``g``'s frames, then send ``g`` its actions."""
        t0 = time.perf_counter()
        obs, t, with_frames = jnp.asarray(g.obs), np.asarray(g.t, np.int32), bool(g.record.any())
        if planner is None:
            actions, g.state, g.pred_reward, frames = episode_step(agent, obs, g.state, key, g.seeds, t, with_frames)
        else:
            actions, g.state, g.plan, g.pred_reward, frames, stats = plan_episode_step(
                agent, planner, obs, g.state, g.plan, key, g.seeds, t, with_frames
            )
            g.bound += np.asarray(stats.constraint_bound) & g.active
            clock["predicted_return"] += float(np.sum(np.asarray(stats.predicted_return) * g.active))
            clock["disagreement"] += float(np.sum(np.asarray(stats.disagreement) * g.active))
        actions = np.asarray(actions)
        clock["act_s"] += time.perf_counter() - t0
        if frames is not None:
            recon, nxt = (to_uint8(f) for f in frames) if pixels else (np.asarray(f) for f in frames)
            rendered = None if pixels else g.env.call("render")
            for i in np.flatnonzero(g.record & g.active):
                pred = g.predicted[i] if g.predicted is not None else np.zeros_like(recon[i])
                if pixels:
                    g.videos[i].append(side_by_side([g.obs[i], recon[i], pred], ["real", "VAE", "MDN-RNN"]))
                else:
                    g.videos[i].append(vector_panel(rendered[i], g.obs[i], recon[i], pred, spec.obs_names))
            g.predicted = nxt
        bad = ~np.isfinite(actions).all(axis=1) & g.active
        if bad.any():
            raise TrainingDiverged(
                f"the agent's action is not finite at step {g.t} of episode seed {int(g.seeds[np.argmax(bad)])}: "
                "its V, M or C checkpoint holds NaN or inf; train that stage again (no results were written)"
            )
        if action_noise > 0:
            for i in range(g.size):
                g.noise[i] = ou_noise_step(g.noise[i], g.rngs[i], action_noise)
            actions = add_noise(actions, g.noise, spec.low(), spec.high())
        g.step_async(actions)
        g.t += 1

    clock = {"act_s": 0.0, "predicted_return": 0.0, "disagreement": 0.0}
    start = time.perf_counter()
    try:
        envs = _vector_envs(workers, max_steps, env, render=not pixels and video_dir is not None and video_episodes > 0)
        groups = [_Group(env, env.num_envs) for env in envs]
        for g in groups:
            start_round(g)
        while not all(g.done for g in groups):
            for g in groups:
                if g.done:
                    continue
                if g.pending == "reset":
                    g.obs, _ = g.wait()
                else:
                    g.obs, reward, terminated, truncated, _ = g.wait()
                    g.returns += np.where(g.active, reward, 0.0)
                    g.lengths += g.active
                    off = g.active & off_road(g.obs) & (reward < 0)
                    g.offroad += off
                    g.deluded += off & (np.asarray(g.pred_reward) > 0)
                    g.model_returns += np.where(g.active, np.asarray(g.pred_reward, np.float64), 0.0)
                    g.active &= ~(terminated | truncated)
                    if not g.active.any():
                        end_round(g)
                        start_round(g)  # its reset runs while the other group is served
                        continue
                act(g)
    finally:
        bar.close()
        for env in envs:
            env.close()
    if timing is not None:
        steps = sum(r.steps for r in results if r is not None)
        timing.update(wall_s=time.perf_counter() - start, act_s=clock["act_s"], env_steps=steps)
        if planner is not None:
            timing.update(predicted_return=clock["predicted_return"] / max(steps, 1))
            timing.update(disagreement=clock["disagreement"] / max(steps, 1))
    return results


def ci95(returns: np.ndarray) -> float:
    """Half-width of the 95 % Student-t interval of the mean of ``returns`` (N,); 0 for N < 2."""
    from scipy import stats  # here, not at the top: scipy.stats costs seconds at every script's start

    returns = np.asarray(returns, np.float64)
    n = len(returns)
    return float(stats.t.ppf(0.975, n - 1) * returns.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def calibration_fit(predicted: np.ndarray, real: np.ndarray) -> dict | None:
    """Least-squares line ``real = slope * predicted + intercept`` and Pearson's r over N episodes.

    Args:
        predicted, real: float (N,) returns (M's predicted, summed along each real episode, and the real ones).

    Returns:
        ``{"slope", "intercept", "r"}`` as floats, or None when N < 3 or either has no spread.
    """
    predicted, real = np.asarray(predicted, np.float64), np.asarray(real, np.float64)
    if len(predicted) < 3 or predicted.std() == 0 or real.std() == 0:
        return None
    slope, intercept = np.polyfit(predicted, real, 1)
    return {"slope": float(slope), "intercept": float(intercept), "r": float(np.corrcoef(predicted, real)[0, 1])}


def summarize(results: list[EpisodeResult]) -> dict:
    """Per-episode seeds, returns and lengths plus mean (with ``ci95``, the half-width of its 95 % Student-t
    interval), std, min and max of the returns, the
    MDN-RNN's reward delusion over all the episodes' off-road steps (None when there were none), the steps at
    which a planner's off-road constraint bound (``constraint_steps``, 0 without one), and the reward head's
    calibration: ``model_return``, the mean over episodes of M's predicted rewards summed along each real
    episode, and ``model_return_fit``, the least-squares line real = slope x model + intercept with Pearson's r
    over the episodes (None for fewer than 3 episodes or no spread). A slope near 1 and r near 1: the dream's
    reward scale is the road's, so a better dream return means a better real one."""
    rets = np.array([r.ret for r in results])
    model = np.array([r.model_return for r in results])
    offroad = sum(r.offroad_steps for r in results)
    return {
        "reward_delusion": sum(r.deluded_steps for r in results) / offroad if offroad else None,
        "offroad_steps": offroad,
        "constraint_steps": sum(r.constraint_steps for r in results),
        "episodes": [
            {
                "seed": r.seed,
                "return": r.ret,
                "steps": r.steps,
                "offroad_steps": r.offroad_steps,
                "model_return": r.model_return,
            }
            for r in results
        ],  # fmt: skip
        "model_return": float(model.mean()),
        "model_return_fit": calibration_fit(model, rets),
        "mean": float(rets.mean()),
        "ci95": ci95(rets),
        "std": float(rets.std()),
        "min": float(rets.min()),
        "max": float(rets.max()),
        "n": len(results),
    }
