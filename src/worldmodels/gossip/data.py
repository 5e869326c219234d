"""Gossip's data: real episodes as frame sequences (``FrameSequences``), loaded from a run's datasets, and
the deterministic training windows of each step (``sequence_batch``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldmodels.config import GossipConfig
from worldmodels.data import Episode, episode_windows, holdout_count, load_episodes
from worldmodels.run_dir import recipe_paths


@dataclass(frozen=True)
class FrameSequences:
    """Real episodes as concatenated arrays with per-episode offsets (NumPy).

    Attributes:
        frames: uint8 (sum_e (T_e + 1), 64, 64, 3) every observation.
        actions: float32 (sum_e T_e, 3).
        rewards: float32 (sum_e T_e,).
        dones: float32 (sum_e T_e,) 1 where the episode terminated after the action.
        obs_start, act_start, lengths: int64 (E,) offsets into frames and actions, and T_e.
        episode_p: float64 (E,) probability of drawing each episode into a batch (0 when held out).
        heldout: bool (E,) episodes kept out of training (drift, disagreement, videos).
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    obs_start: np.ndarray
    act_start: np.ndarray
    lengths: np.ndarray
    episode_p: np.ndarray
    heldout: np.ndarray

    @classmethod
    def of(cls, groups: list[tuple[list[Episode], float]], holdout: float) -> FrameSequences:
        """Build from ``[(episodes, weight), ...]``; each group holds out its last episodes.

        Group g holds out ``data.holdout_count(n, holdout)`` of its n episodes (its last ones); its training
        episodes share probability weight_g / sum(weights) of a batch.

        Raises:
            ValueError: if a group has no training episode.
        """
        episodes, probs, held = [], [], []
        total = float(sum(w for _, w in groups))
        for eps, weight in groups:
            n_hold = holdout_count(len(eps), holdout)
            n_train = len(eps) - n_hold
            if n_train < 1:
                raise ValueError("every dataset of a gossip recipe needs at least one training episode")
            episodes += eps
            probs += [weight / total / n_train] * n_train + [0.0] * n_hold
            held += [False] * n_train + [True] * n_hold
        lengths = np.array([ep.length for ep in episodes], np.int64)
        return cls(
            frames=np.concatenate([ep.observations for ep in episodes]),
            actions=np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
            rewards=np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
            dones=np.concatenate([ep.terminations for ep in episodes]).astype(np.float32),
            obs_start=np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64),
            act_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
            lengths=lengths,
            episode_p=np.array(probs) / np.sum(probs),
            heldout=np.array(held),
        )

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 (T_e + 1, 64, 64, 3) and actions float32 (T_e, 3) of episode ``e``."""
        o, a, n = self.obs_start[e], self.act_start[e], self.lengths[e]
        return self.frames[o : o + n + 1], self.actions[a : a + n]


def load_sequences(run_dir: Path, cfg: GossipConfig) -> FrameSequences:
    """The episodes of the recipe ``cfg.dataset`` under ``RUN_DIR/data/`` (``data.load_episodes``).

    Raises:
        MissingInput: naming the dataset path and the command that collects it (``run_dir.recipe_paths``).
        DatasetError: for an unreadable or empty dataset.
    """
    groups = [(load_episodes(path), weight) for path, weight in recipe_paths(run_dir, cfg.dataset)]
    return FrameSequences.of(groups, cfg.holdout)


def sequence_batch(data: FrameSequences, step: int, cfg: GossipConfig) -> dict[str, np.ndarray]:
    """A batch of training windows of frames, deterministic in (cfg.seed, step).

    The windowing of ``train.sequence_batch`` (both are ``data.episode_windows``): episodes drawn with
    ``data.episode_p``; each window is L = ``cfg.seq_len`` steps from a uniform offset in [0, T_e - L] (0 when
    the episode is not longer than L, the tail then repeats the last frame and action and is masked).

    Returns:
        dict of NumPy arrays: ``frames`` uint8 (B, L + 1, 64, 64, 3); ``frame_mask`` float32 (B, L + 1);
        ``actions`` float32 (B, L, 3); ``rewards``, ``dones``, ``mask`` float32 (B, L).
    """
    rng = np.random.default_rng([cfg.seed, step])
    obs_idx, act_idx, obs_mask, act_mask = episode_windows(
        rng, data.lengths, data.episode_p, data.obs_start, data.act_start, cfg.seq_len, cfg.batch_size
    )
    return {
        "frames": data.frames[obs_idx],
        "frame_mask": obs_mask,
        "actions": data.actions[act_idx],
        "rewards": data.rewards[act_idx],
        "dones": data.dones[act_idx],
        "mask": act_mask,
    }
