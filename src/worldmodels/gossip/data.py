"""Gossip's data: real episodes as frame sequences (``pixels.FrameSequences``, without mirror images), loaded from
a run's datasets, and the deterministic training windows of each step (``sequence_batch``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldmodels.config import GossipConfig
from worldmodels.data import load_episodes
from worldmodels.pixels import FrameSequences, frame_batch
from worldmodels.run_dir import recipe_paths


def load_sequences(run_dir: Path, cfg: GossipConfig) -> FrameSequences:
    """The episodes of the recipe ``cfg.dataset`` under ``RUN_DIR/data/`` (``data.load_episodes``).

    Raises:
        MissingInput: naming the dataset path and the command that collects it (``run_dir.recipe_paths``).
        DatasetError: for an unreadable or empty dataset.
    """
    groups = [(load_episodes(path), weight) for path, weight in recipe_paths(run_dir, cfg.dataset)]
    return FrameSequences.of(groups, cfg.holdout, mirror=False)


def sequence_batch(data: FrameSequences, step: int, cfg: GossipConfig) -> dict[str, np.ndarray]:
    """A batch of training windows of frames, deterministic in (cfg.seed, step): ``pixels.frame_batch``, the
    windowing of ``train.sequence_batch`` (``train.window_indices``).

    Returns:
        dict of NumPy arrays: ``frames`` uint8 (B, L + 1, 64, 64, 3); ``frame_mask`` float32 (B, L + 1);
        ``actions`` float32 (B, L, 3); ``rewards``, ``dones``, ``mask`` float32 (B, L).
    """
    return frame_batch(data, step, cfg)
