"""Plain helpers shared by several test modules (``from helpers import ...``; pytest puts tests/ on sys.path)."""

import json

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from worldmodels.dream import DreamStart
from worldmodels.models import MDNRNN, LinearController
from worldmodels.train import LatentDataset


class Interrupted(Exception):
    """Stands for a crash (killed job, lost machine) that leaves no chance to save."""


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def scalars(out_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under ``out_dir/tb`` as TensorBoard shows it (restarts purged), by tag."""
    acc = EventAccumulator(str(out_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def toy_latents(episodes=3, length=20, z=4):
    lengths = np.array([length] * (episodes - 1) + [length // 2])
    n_obs = int((lengths + 1).sum())
    n_act = int(lengths.sum())
    rng = np.random.default_rng(0)
    return LatentDataset(
        mu=rng.normal(size=(n_obs, z)).astype(np.float32),
        logvar=np.full((n_obs, z), -4.0, np.float32),
        actions=rng.uniform(size=(n_act, 3)).astype(np.float32),
        rewards=rng.normal(size=n_act).astype(np.float32),
        dones=np.zeros(n_act, np.float32),
        offroad=np.zeros(n_act, bool),
        obs_start=np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]),
        act_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        lengths=lengths,
        episode_p=np.full(episodes, 1.0 / episodes),
        heldout=np.zeros(episodes, bool),
    )


def small_world():
    rnn = MDNRNN(8, 3, 16, 3, key=jr.key(0))
    start = DreamStart(jr.normal(jr.key(1), (5, 8)), jnp.full((5, 8), -2.0))
    n = LinearController.num_params(8, 16)
    return rnn, start, n


def linear_system(episodes: int = 6, length: int = 24, z_size: int = 4, action_size: int = 3) -> LatentDataset:
    """Latent episodes of z_{t+1} = 0.9 z_t + 0.5 [a_t, 0] (Z = A + 1), reward 1 + z_t[0]: a ``LatentDataset``
    whose dynamics and reward a trained M can learn (a known answer)."""
    Z, A = z_size, action_size
    assert Z == A + 1, "the system pads the action with one zero"
    rng = np.random.default_rng(0)
    mus, acts, rews = [], [], []
    for _ in range(episodes):
        a = rng.uniform(-1, 1, (length, A)).astype(np.float32)
        z = np.zeros((length + 1, Z), np.float32)
        z[0] = rng.normal(size=Z)
        for t in range(length):
            z[t + 1] = 0.9 * z[t] + 0.5 * np.concatenate([a[t], [0.0]])
        mus.append(z)
        acts.append(a)
        rews.append(1.0 + z[:-1, 0])
    lengths = np.full(episodes, length)
    return LatentDataset(
        mu=np.concatenate(mus),
        logvar=np.full(((length + 1) * episodes, Z), -6.0, np.float32),
        actions=np.concatenate(acts),
        rewards=np.concatenate(rews).astype(np.float32),
        dones=np.zeros(length * episodes, np.float32),
        offroad=np.zeros(length * episodes, bool),
        obs_start=np.arange(episodes) * (length + 1),
        act_start=np.arange(episodes) * length,
        lengths=lengths,
        episode_p=np.full(episodes, 1.0 / episodes),
        heldout=np.zeros(episodes, bool),
    )
