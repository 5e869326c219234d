"""The RSSM trained end to end from pixels (``models.pixel_rssm``): its data, windows, loss and training.

The data are the real episodes' frames (``FrameSequences``), held out and mirrored as the M stage's latents are
(``train.encode_episodes``, ``train.LatentDataset.concat``), and its batches are the M stage's windows
(``train.window_indices``) of uint8 frames instead of latents. Training runs the project's one loop
(``trainer.fit``, kind ``pixel_rssm``), so it resumes, stops on NaN and logs like every stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

from worldmodels.config import RNNConfig
from worldmodels.data import Episode
from worldmodels.losses import weighted_total
from worldmodels.models.pixel_rssm import PixelRSSM, pixel_rssm_sequence_loss
from worldmodels.models.vae import ConvVAE, to_float
from worldmodels.train import (
    episode_starts,
    frames_of,
    recipe_probs,
    rnn_hparams,
    training_copies,
    window_indices,
    window_means,
)
from worldmodels.trainer import clipped_adam, fit

PIXEL_SCALES = {"recon": 1.0, "vae_kl": 1.0, "image": 1.0}
"""Scales of the pixel path's own terms in the total, next to the RSSM's (``pixel_loss_scales``): the VAE's
plain sum of Ha & Schmidhuber 2018 (Appendix A.1) and the image decoder's term at the observation's scale."""


@dataclass(frozen=True)
class FrameSequences:
    """Real episodes as concatenated frames and actions with per-episode offsets (NumPy).

    The fields mean what ``train.LatentDataset``'s do, with the frames in place of their VAE posteriors.

    Attributes:
        frames: uint8 (sum_e (T_e + 1), 64, 64, 3) every observation.
        actions: float32 (sum_e T_e, 3).
        rewards: float32 (sum_e T_e,).
        dones: float32 (sum_e T_e,) 1 where the episode terminated after the action.
        obs_start, act_start, lengths: int64 (E,) offsets into frames and actions, and T_e.
        episode_p: float64 (E,) probability of drawing each episode into a batch (sums to 1; 0 when held out).
        heldout: bool (E,) episodes kept out of training.
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
    def of(cls, groups: list[tuple[list[Episode], float]], holdout: float, mirror: bool) -> FrameSequences:
        """Build from ``[(episodes, weight), ...]``, one group per dataset of a recipe.

        Each group is laid out as ``train.encode_episodes`` lays out a dataset (``train.training_copies``): its
        episodes in order, the last ``data.holdout_count(n, holdout)`` of them held out, then with ``mirror`` the
        mirror image of each training episode (``data.mirror``: frames flipped left-right, steer negated). Group
        g's training episodes share probability weight_g / sum(weights) of a batch, uniformly, as in
        ``train.LatentDataset.concat`` (``train.recipe_probs``).

        Raises:
            ValueError: if a group has no training episode.
        """
        episodes, held = [], []
        for eps, _ in groups:
            copies, h = training_copies(eps, holdout=holdout, mirror=mirror)
            episodes += copies
            held.append(h)
        episode_p = recipe_probs([(~h).astype(np.float64) for h in held], [w for _, w in groups])
        lengths = np.array([ep.length for ep in episodes], np.int64)
        obs_start, act_start = episode_starts(lengths)
        return cls(
            frames=frames_of(episodes),
            actions=np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
            rewards=np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
            dones=np.concatenate([ep.terminations for ep in episodes]).astype(np.float32),
            obs_start=obs_start,
            act_start=act_start,
            lengths=lengths,
            episode_p=episode_p,
            heldout=np.concatenate(held),
        )

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 (T_e + 1, 64, 64, 3) and actions float32 (T_e, 3) of episode ``e``."""
        o, a, n = self.obs_start[e], self.act_start[e], self.lengths[e]
        return self.frames[o : o + n + 1], self.actions[a : a + n]


def frame_batch(data: FrameSequences, step: int, cfg: Any) -> dict[str, np.ndarray]:
    """A batch of training windows of frames, deterministic in (cfg.seed, step); the batches of the pixel RSSM
    and of gossip pools (``gossip.data.sequence_batch``).

    The windows of ``train.sequence_batch`` (``train.window_indices``): B = ``cfg.batch_size`` episodes drawn
    with ``data.episode_p`` (held-out episodes never), each window L = ``cfg.seq_len`` steps from a uniform offset
    in [0, T_e - L] (0 when the episode is not longer than L: the tail repeats the last frame and action, masked).

    Args:
        data: the episodes.
        step: the update's index.
        cfg: anything with ``seed``, ``seq_len`` and ``batch_size`` (an ``RNNConfig``, a ``GossipConfig``).

    Returns:
        dict of NumPy arrays: ``frames`` uint8 (B, L + 1, 64, 64, 3) (converted to float in the loss, to keep the
        batch small); ``frame_mask`` float32 (B, L + 1); ``actions`` float32 (B, L, 3); ``rewards``, ``dones``,
        ``mask`` float32 (B, L).
    """
    obs_idx, act_idx, obs_mask, act_mask = window_indices(data, step, cfg)
    return {
        "frames": data.frames[obs_idx],
        "frame_mask": obs_mask,
        "actions": data.actions[act_idx],
        "rewards": data.rewards[act_idx],
        "dones": data.dones[act_idx],
        "mask": act_mask,
    }


def pixel_loss_scales(cfg: RNNConfig) -> dict[str, float]:
    """Scale of each term of ``pixel_rssm_sequence_loss`` in the total: the RSSM's (``RNNConfig.loss_scales`` of
    kind ``rssm``, whatever ``cfg.kind`` says) and ``PIXEL_SCALES``."""
    return {**dataclasses.replace(cfg, kind="rssm").loss_scales, **PIXEL_SCALES}


def pixel_loss(
    model: PixelRSSM, batch: dict[str, jax.Array], key: jax.Array, cfg: RNNConfig, kl_tolerance: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked mean pixel-RSSM loss over a batch of windows (``frame_batch``), like ``train.rssm_loss``.

    Each window's terms are ``models.pixel_rssm.pixel_rssm_sequence_loss`` (vmapped over the batch, one key per
    window) on the frames converted to float32 in [0, 1] (``models.vae.to_float``). Frame terms (recon, vae_kl,
    obs, KLs, image) are averaged over the valid frames, transition terms (reward, cont) over the valid
    transitions (``train.window_means``); the total is ``losses.weighted_total`` with ``pixel_loss_scales(cfg)``.
    ``kl`` (the RSSM's KL before free bits) is logged, not summed.

    Args:
        model: the ``PixelRSSM``.
        batch: ``frame_batch``'s arrays.
        key: PRNG key.
        cfg: the RSSM's settings (``free_nats``, the loss weights).
        kl_tolerance: the VAE's free bits per latent dimension.

    Returns:
        (total, metrics): float32 scalars, metrics with every term, ``total`` and ``kl``.
    """
    frames = to_float(batch["frames"])
    keys = jr.split(key, frames.shape[0])

    def one(x, actions, rewards, dones, k):
        return pixel_rssm_sequence_loss(model, x, actions, rewards, dones, k, cfg.free_nats, kl_tolerance)

    terms = jax.vmap(one)(frames, batch["actions"], batch["rewards"], batch["dones"], keys)
    metrics = window_means(terms, batch["mask"])
    diagnostics = {"kl": metrics.pop("kl")}
    metrics["total"] = weighted_total(metrics, pixel_loss_scales(cfg))
    return metrics["total"], {**metrics, **diagnostics}


def pixel_hparams(cfg: RNNConfig, z_size: int) -> dict[str, Any]:
    """Keyword arguments that rebuild the ``PixelRSSM``: its RSSM's (``train.rnn_hparams`` of kind ``rssm``),
    whose ``z_size`` is also the VAE's."""
    return rnn_hparams(dataclasses.replace(cfg, kind="rssm"), z_size)


def train_pixel_rssm(
    out_dir: Path,
    data: FrameSequences,
    cfg: RNNConfig,
    z_size: int,
    kl_tolerance: float,
    init_vae: ConvVAE | None = None,
) -> PixelRSSM:
    """Train a ``PixelRSSM`` end to end on frame windows (``pixel_loss``; Hafner et al. 2020, 2023) for
    ``cfg.steps`` updates with ``trainer.fit``: Adam at ``cfg.learning_rate`` after clipping the global gradient
    norm to ``cfg.grad_clip``, batches ``frame_batch``, checkpoints in ``out_dir/ckpt`` of kind ``pixel_rssm``.

    A checkpoint already in ``out_dir/ckpt`` is resumed (its hparams must match ``pixel_hparams(cfg, z_size)``),
    so a finished run is a no-op and a longer ``cfg.steps`` continues it.

    Args:
        out_dir: where ``ckpt/``, ``metrics.jsonl`` and ``tb/`` go.
        data: the episodes (``FrameSequences.of``).
        cfg: sizes, windows, optimiser and loss weights (``RNNConfig``; ``cfg.kind`` is not read).
        z_size: Z of the VAE and of the RSSM's observation.
        kl_tolerance: the VAE's free bits per latent dimension (``VAEConfig.kl_tolerance``).
        init_vae: a pretrained V to start the VAE from (ignored when resuming: the checkpoint's VAE wins).

    Returns:
        The trained model.

    Raises:
        ValueError: if ``init_vae``'s latent size is not ``z_size``.
        TrainingDiverged: on a non-finite loss (``trainer.fit``).
        CheckpointError: if the checkpoint in ``out_dir/ckpt`` is not a ``pixel_rssm`` of these hparams.
    """
    hparams = pixel_hparams(cfg, z_size)
    model = PixelRSSM(**hparams, key=jr.key(cfg.seed))
    if init_vae is not None:
        if init_vae.z_size != z_size:
            raise ValueError(f"init_vae has z_size {init_vae.z_size}, the pixel RSSM {z_size}")
        model = eqx.tree_at(lambda m: m.vae, model, init_vae)
    optimizer = clipped_adam(cfg.learning_rate, cfg.grad_clip)
    return fit(
        model=model,
        optimizer=optimizer,
        loss_fn=lambda m, b, k: pixel_loss(m, b, k, cfg, kl_tolerance),
        make_batch=lambda step: frame_batch(data, step, cfg),
        steps=cfg.steps,
        out_dir=out_dir,
        kind="pixel_rssm",
        hparams=hparams,
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        items_per_step=cfg.batch_size * cfg.seq_len,
        desc="train RSSM on pixels",
    )
