"""Pictures people would rather look at than read: reconstruction grids, side-by-side videos, loss plots."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float images in [0, 1] -> uint8."""
    return (np.clip(np.asarray(images), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale of an HWC uint8 frame."""
    return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def label(frame: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of an HWC uint8 frame (a copy)."""
    out = np.ascontiguousarray(frame.copy())
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_recon_grid(path: Path, model, frames: np.ndarray) -> None:
    """PNG with real frames (top row) over their VAE reconstructions (bottom row), 4x upscaled.

    Args:
        path: output PNG.
        model: a ``ConvVAE``.
        frames: uint8 (N, 64, 64, 3).
    """
    import imageio.v3 as iio
    import jax.numpy as jnp

    from worldmodels.models.vae import to_float

    mu, _ = model.encode(to_float(jnp.asarray(frames)))
    recon = to_uint8(model.decode(mu))
    top = np.concatenate(list(frames), axis=1)
    bottom = np.concatenate(list(recon), axis=1)
    grid = upscale(np.concatenate([top, bottom], axis=0), 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid)


def save_vector_recon(path: Path, model, observations: np.ndarray, names: tuple[str, ...] = ()) -> None:
    """PNG of an MLP autoencoder's reconstruction, one panel per observation dimension: the decoded value of V's
    posterior mean against the real one (the diagonal is perfect), titled with that dimension's MSE.

    Args:
        path: output PNG.
        model: an ``MLPAutoencoder``.
        observations: float32 (N, D) real observations.
        names: optional names of the D dimensions.
    """
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = np.asarray(observations, np.float32)
    mu, _ = model.encode(jnp.asarray(obs))
    recon = np.asarray(model.decode(mu))
    d = obs.shape[1]
    cols = min(d, 4)
    rows = -(-d // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= d:
            ax.axis("off")
            continue
        lo, hi = float(min(obs[:, i].min(), recon[:, i].min())), float(max(obs[:, i].max(), recon[:, i].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.scatter(obs[:, i], recon[:, i], s=3, alpha=0.5)
        name = names[i] if i < len(names) else f"dim {i}"
        ax.set_title(f"{name}: MSE {np.mean((obs[:, i] - recon[:, i]) ** 2):.2g}", fontsize=9)
        ax.set_xlabel("real", fontsize=8)
        ax.set_ylabel("decoded", fontsize=8)
    fig.suptitle(f"V's reconstruction of {len(obs)} observations (z = posterior mean)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def vector_panel(
    rendered: np.ndarray,
    real: np.ndarray,
    recon: np.ndarray,
    predicted: np.ndarray,
    names: tuple[str, ...] = (),
    height: int = 256,
    scale: float = 2.0,
) -> np.ndarray:
    """One video frame of a vector environment: the rendered frame | a bar chart of the observation.

    Each dimension gets three bars: the real value (white), V's reconstruction (blue) and M's prediction of it
    made one step before (orange), each of height value / ``scale`` of the half panel (clipped), around a zero line.

    Args:
        rendered: uint8 (H, W, 3) the environment's RGB render.
        real, recon, predicted: float (D,) the observation, its decoding and M's predicted decoding.
        names: optional names of the D dimensions, written under the bars.
        height: the frame's height in pixels (the render is resized to it).
        scale: observation units at the full half-height of a bar.

    Returns:
        uint8 (height, W', 3).
    """
    frame = np.asarray(rendered, np.uint8)
    width = int(round(frame.shape[1] * height / frame.shape[0]))
    frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    d = len(real)
    slot = 36
    chart_width = -(-(width + slot * d + 8) // 16) * 16 - width  # the whole frame a multiple of 16 wide (H.264)
    chart = np.zeros((height, chart_width, 3), np.uint8)
    mid = height // 2
    cv2.line(chart, (0, mid), (chart.shape[1], mid), (90, 90, 90), 1)
    colours = ((255, 255, 255), (80, 160, 255), (255, 150, 40))
    for i in range(d):
        for j, (value, colour) in enumerate(zip((real[i], recon[i], predicted[i]), colours, strict=True)):
            v = float(np.clip(value / scale, -1.0, 1.0)) if np.isfinite(value) else 0.0
            x = 4 + i * slot + j * 10
            top, bottom = sorted((mid, int(mid - v * (mid - 24))))
            cv2.rectangle(chart, (x, top), (x + 8, max(bottom, top + 1)), colour, -1)
        name = names[i] if i < len(names) else str(i)
        cv2.putText(chart, name[:5], (4 + i * slot, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (220, 220, 220), 1)
    chart = label(chart, "real | V | M")
    return np.concatenate([frame, chart], axis=1)


def side_by_side(panels: list[np.ndarray], names: list[str], factor: int = 4) -> np.ndarray:
    """One video frame: HWC uint8 panels upscaled and labelled, left to right."""
    return np.concatenate([label(upscale(p, factor), n) for p, n in zip(panels, names, strict=True)], axis=1)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    """Write HWC uint8 frames as an H.264 mp4 (imageio + ffmpeg)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # ffmpeg is started with fork+exec; JAX's warning about forking a multithreaded process does
        # not apply to a child that immediately execs.
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=16) as writer:
            for frame in frames:
                writer.append_data(frame)


def video_to_gif(video: Path, gif: Path, every: int = 3, scale: float = 0.5, fps: int = 30) -> int:
    """An animated GIF of an mp4 (for a README): every ``every``-th frame, resized by ``scale`` (INTER_AREA),
    played at ``fps / every`` frames per second so it runs at the video's speed; loops forever.

    Returns:
        The number of frames written.

    Raises:
        ValueError: for ``every`` < 1 or ``scale`` outside (0, 1].
    """
    import imageio.v3 as iio

    if every < 1 or not 0 < scale <= 1:
        raise ValueError(f"every must be >= 1 and scale in (0, 1], got {every} and {scale}")
    frames = []
    for i, frame in enumerate(iio.imiter(video)):
        if i % every == 0:
            h, w = frame.shape[:2]
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if scale < 1 else frame)
    gif.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(gif, np.stack(frames), duration=1000 * every / fps, loop=0)
    return len(frames)


def plot_metrics(metrics_path: Path, out_path: Path, keys: list[str], title: str) -> None:
    """Line plots of the given ``metrics.jsonl`` columns against ``step`` (or ``generation``); where the rows also
    hold ``heldout_<key>`` (``trainer.fit``'s validation), it is drawn on the same panel, labelled held out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    xkey = "step" if "step" in rows[0] else "generation"
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot([r[xkey] for r in rows if key in r], [r[key] for r in rows if key in r], label="training")
        held = f"heldout_{key}"
        if any(held in r for r in rows):
            ax.plot([r[xkey] for r in rows if held in r], [r[held] for r in rows if held in r], "o--", label="held out")
            ax.legend(fontsize=7)
        ax.set_title(key)
        ax.set_xlabel(xkey)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def plot_returns(
    out_path: Path, returns: np.ndarray, title: str, threshold: float | None = None, ci95: float | None = None
) -> None:
    """A histogram of real episode returns with their mean, its 95 % interval and the task's "solved" line.

    Args:
        out_path: the PNG to write (its folder must exist).
        returns: float (N,) returns, one per real episode (N >= 1).
        title: the plot's title (the agent and its test plan).
        threshold: the environment's reward threshold (``env.EnvSpec.reward_threshold``: 900 for CarRacing, 200
            for LunarLander), drawn as a dashed line; None draws none.
        ci95: half-width of the 95 % interval of the mean (``evaluate.ci95``), shaded around the mean; None or 0
            shades nothing.

    Raises:
        ValueError: for an empty ``returns``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    returns = np.asarray(returns, np.float64).ravel()
    if returns.size == 0:
        raise ValueError(f"plot_returns: no returns to plot for {out_path}")
    mean = float(returns.mean())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(returns, bins=min(30, max(5, returns.size // 3)), color="tab:blue", alpha=0.75)
    label = f"mean {mean:.1f}" + (f" +- {ci95:.1f} (95 %)" if ci95 else "")
    if ci95:
        ax.axvspan(mean - ci95, mean + ci95, color="tab:orange", alpha=0.25)
    ax.axvline(mean, color="tab:orange", label=label)
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"solved ({threshold:g})")
    ax.set_xlabel("real return per episode")
    ax.set_ylabel("episodes")
    ax.set_title(f"{title} ({returns.size} episodes)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
