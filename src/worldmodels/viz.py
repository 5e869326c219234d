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
    """Line plots of the given ``metrics.jsonl`` columns against ``step`` (or ``generation``)."""
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
        ax.plot([r[xkey] for r in rows if key in r], [r[key] for r in rows if key in r])
        ax.set_title(key)
        ax.set_xlabel(xkey)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
