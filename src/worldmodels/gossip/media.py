"""Gossip's videos and plots: the side-by-side dream video (``dream_video``), the per-model losses
(``plot_pool``) and the drift curves (``plot_drift``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from worldmodels.config import GossipConfig
from worldmodels.gossip.data import FrameSequences
from worldmodels.gossip.drift import _episode_from, _open_loop_at
from worldmodels.gossip.step import LOSS_KEYS
from worldmodels.models.joint import JointWorldModel


def dream_video(
    out_dir: Path,
    pool: JointWorldModel,
    data: FrameSequences,
    cfg: GossipConfig,
    name: str = "dreams",
    labels: tuple[str, str] = ("model 0", "model 1"),
) -> list[Path]:
    """Side-by-side video of the first held-out episode: real | model 0's dream | model 1's dream.

    Both models read the same ``drift_context`` real frames from frame ``drift_start`` on, then dream on the
    episode's real actions for up
    to ``video_steps`` steps (most likely latents). Writes ``NAME.mp4`` and a half-size ``NAME.gif`` (every
    n-th frame for long videos). A pool of
    one model shows one dream; ``labels`` name the panels (``stack_models`` puts models of two pools side by
    side, e.g. a baseline model next to a gossip model).

    Returns:
        The written paths (empty when there is no held-out episode).
    """
    from worldmodels.viz import side_by_side, to_uint8, write_video

    held = np.nonzero(data.heldout)[0]
    k = cfg.drift_context
    held = [e for e in held if data.lengths[e] >= cfg.drift_start + k]
    if not held:
        return []
    frames, acts = _episode_from(data, held[0], cfg.drift_start)
    steps = min(cfg.video_steps, len(acts) - k + 1)
    index = np.arange(k - 1, k - 1 + steps)
    shown = list(range(min(jax.tree.leaves(pool)[0].shape[0], 2)))
    sub = _select(pool, shown)
    _, _, dreams, _ = _open_loop_at(
        sub,
        jnp.asarray(frames[None, :k]),
        jnp.asarray(acts[None, : k - 1 + steps]),
        jnp.asarray(frames[None, index + 1]),
        jnp.asarray(index, jnp.int32),
    )
    dreams = to_uint8(np.asarray(dreams)[:, 0])  # (models, steps, 64, 64, 3)
    video = [
        side_by_side([frames[i + 1]] + [d[t] for d in dreams], ["real", *labels[: len(shown)]])
        for t, i in enumerate(index)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    mp4, gif = out_dir / f"{name}.mp4", out_dir / f"{name}.gif"
    write_video(mp4, video, fps=cfg.video_fps)
    import imageio.v3 as iio

    every = max(1, len(video) // 300)  # a README-sized gif: at most ~300 half-size frames, same playing time
    iio.imwrite(gif, [f[::2, ::2] for f in video[::every]], duration=1000 * every / cfg.video_fps, loop=0)
    return [mp4, gif]


def _select(pool: JointWorldModel, models: list[int]) -> JointWorldModel:
    idx = jnp.asarray(models)
    return jax.tree.map(lambda x: x[idx] if eqx.is_array(x) else x, pool)


def plot_pool(metrics_path: Path, out_path: Path, num_models: int) -> None:
    """PNG of every loss in ``LOSS_KEYS``, one line per model, against the update step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    keys = [k for k in LOSS_KEYS if rows and k in rows[0]]
    if not keys:
        return
    cols = 5
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * 2), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for m in range(num_models):
            ax.plot([r["step"] for r in rows], [r[f"{key}/{m}"] for r in rows], label=f"model {m}")
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def plot_drift(drift: dict[str, Any], out_path: Path) -> None:
    """PNG of latent and pixel drift per model, and the models' disagreement, against the horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not drift["horizons"]:
        return
    h = drift["horizons"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for m, (lat, pix) in enumerate(zip(drift["latent"], drift["pixel"], strict=True)):
        axes[0].plot(h, lat, marker="o", label=f"model {m}")
        axes[1].plot(h, pix, marker="o", label=f"model {m}")
    if drift["disagreement"]:
        axes[2].plot(h, drift["disagreement"], marker="o")
    titles = ("latent error (MSE per dim)", "pixel error (MSE)", "disagreement between dreams (pixel MSE)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("horizon (dream steps)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
