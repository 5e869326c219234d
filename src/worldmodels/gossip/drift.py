"""Measurement on held-out episodes: open-loop drift of each model and disagreement between the models' dreams
(``drift_metrics``)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from worldmodels.config import GossipConfig
from worldmodels.gossip.data import FrameSequences
from worldmodels.models.joint import JointWorldModel, open_loop
from worldmodels.models.vae import to_float


@eqx.filter_jit
def _open_loop_at(
    pool: JointWorldModel, context: Array, actions: Array, targets: Array, index: Array
) -> tuple[Array, Array, Array, Array]:
    """Per model: open-loop dreams of E episodes and their errors at the given steps.

    Args:
        pool: stacked models.
        context: uint8 (E, k, 64, 64, 3) the real context frames.
        actions: float32 (E, T, 3) the real actions (padded).
        targets: uint8 (E, N, 64, 64, 3) the real frames the dream is compared with.
        index: int32 (N,) the open-loop step whose next latent predicts each target.

    Returns:
        (latent error (M, E, N) mean squared over Z against the model's encoding of the real frame, pixel
        error (M, E, N) mean squared over 64x64x3, dream frames float32 (M, E, N, 64, 64, 3), the dream
        latents (M, E, N, Z)).
    """

    def one(model):
        mu_ctx, _ = model.encode(to_float(context))
        z_next = jax.vmap(lambda zc, a: open_loop(model, zc, a).z_next)(mu_ctx, actions)
        z_pred = z_next[:, index]
        mu_real, _ = model.encode(to_float(targets))
        frames = model.decode(z_pred)
        latent = jnp.mean((z_pred - mu_real) ** 2, axis=-1)
        pixel = jnp.mean((frames - to_float(targets)) ** 2, axis=(-3, -2, -1))
        return latent, pixel, frames, z_pred

    return eqx.filter_vmap(one)(pool)


def drift_metrics(pool: JointWorldModel, data: FrameSequences, cfg: GossipConfig) -> dict[str, Any]:
    """Open-loop drift on held-out real episodes and disagreement between the models' dreams.

    From k = ``drift_context`` real frames, starting at frame s = ``drift_start`` of each of up to
    ``drift_episodes`` held-out episodes, each model steps on its own most likely latents and the episode's
    real actions only. At horizon h (h dream steps after the last real frame, i.e. frame s + k - 1 + h) it
    reports, averaged over the episodes long enough for h (horizons no episode reaches are dropped; episodes
    shorter than s + k are skipped):

    * ``latent``: mean over Z of (z_hat - mu(x))^2, against the model's own encoding of the real frame;
    * ``pixel``: mean over pixels and channels of (dec(z_hat) - x)^2, images in [0, 1];
    * ``disagreement``: mean over model pairs i < j of the pixel mean squared difference between the two
      models' decoded dreams of the same start and actions (latent spaces are not comparable; pixels are).

    Returns:
        dict with ``horizons`` (list of int), ``episodes`` (int), ``latent`` and ``pixel`` (per model: a list
        per horizon), ``latent_mean`` / ``pixel_mean`` (pool mean per horizon), ``disagreement`` (per horizon;
        empty for M = 1). Empty lists when there is no held-out episode.
    """
    k, s = cfg.drift_context, cfg.drift_start
    eps = [e for e in np.nonzero(data.heldout)[0] if data.lengths[e] >= s + k][: cfg.drift_episodes]
    eps = np.array(eps, np.int64)
    empty = {"horizons": [], "episodes": 0, "latent": [], "pixel": [], "latent_mean": [], "pixel_mean": []}
    if len(eps) == 0:
        return {**empty, "disagreement": []}
    lengths = data.lengths[eps] - s
    horizons = [h for h in cfg.drift_horizons if k - 1 + h <= lengths.max()]
    if not horizons:
        return {**empty, "disagreement": []}
    t_max = int(lengths.max())
    contexts, actions, targets = [], [], []
    hz = np.array(horizons)
    for e, n in zip(eps, lengths, strict=True):
        frames, acts = _episode_from(data, e, s)
        contexts.append(frames[:k])
        actions.append(np.concatenate([acts, np.repeat(acts[-1:], t_max - n, axis=0)]))
        targets.append(frames[np.minimum(k - 1 + hz, n)])
    latent, pixel, frames, _ = _open_loop_at(
        pool,
        jnp.asarray(np.stack(contexts)),
        jnp.asarray(np.stack(actions)),
        jnp.asarray(np.stack(targets)),
        jnp.asarray(k - 2 + hz, jnp.int32),
    )
    valid = (k - 1 + hz[None, :] <= lengths[:, None]).astype(np.float64)  # (E, N)
    count = valid.sum(axis=0)

    def avg(err: np.ndarray) -> list[float]:  # (E, N) -> (N,)
        return (np.sum(np.asarray(err) * valid, axis=0) / count).tolist()

    lat = [avg(latent[m]) for m in range(cfg.models)]
    pix = [avg(pixel[m]) for m in range(cfg.models)]
    frames = np.asarray(frames)
    pairs = [(i, j) for i in range(cfg.models) for j in range(i + 1, cfg.models)]
    disagreement = []
    if pairs:
        diffs = [np.mean((frames[i] - frames[j]) ** 2, axis=(-3, -2, -1)) for i, j in pairs]
        disagreement = avg(np.mean(diffs, axis=0))
    return {
        "horizons": horizons,
        "episodes": int(len(eps)),
        "latent": lat,
        "pixel": pix,
        "latent_mean": np.mean(lat, axis=0).tolist(),
        "pixel_mean": np.mean(pix, axis=0).tolist(),
        "disagreement": disagreement,
    }


def _episode_from(data: FrameSequences, e: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode ``e`` from frame ``start`` on: frames (T_e - start + 1, 64, 64, 3), actions (T_e - start, 3)."""
    frames, acts = data.episode(e)
    return frames[start:], acts[start:]
