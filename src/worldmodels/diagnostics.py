"""Data diagnostics: off-road detection from frames, dataset statistics, and reward delusion.

Off-road: in a 64x64 frame the car sits at a fixed place (rows 50-59, columns 30-33, just under the
middle); the step is off-road when more than half of that patch is grass green. Checked against the
simulator's own wheel-tile contacts on brownian driving: the two agree on 98.8 % of steps.

Reward delusion (the "optimism" of a world model trained on narrow data, Ha & Schmidhuber 2018,
Sec. 4.5): among real off-road steps (the car on the grass, real reward negative), the fraction for
which the MDN-RNN predicts a positive reward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OFFROAD_ROWS = slice(50, 60)
OFFROAD_COLS = slice(30, 34)
"""Patch of a 64x64 frame around the car's rear wheels."""


def off_road(frames: np.ndarray) -> np.ndarray:
    """Whether the car is on the grass in each frame.

    Args:
        frames: uint8 (..., 64, 64, 3) preprocessed CarRacing frames; a vector environment's observations
            float (..., D) have no road, and give all False (...,).

    Returns:
        bool (...,): True where more than half of the patch under the car is green (G > R + 30).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-3:] != (64, 64, 3):
        return np.zeros(frames.shape[:-1], bool)
    patch = np.asarray(frames[..., OFFROAD_ROWS, OFFROAD_COLS, :], np.int16)
    green = patch[..., 1] > patch[..., 0] + 30
    return green.mean(axis=(-2, -1)) > 0.5


def reward_delusion(predicted: np.ndarray, real: np.ndarray, offroad: np.ndarray) -> dict[str, float | None]:
    """Fraction of real off-road steps with negative real reward for which the predicted reward is positive.

    Args:
        predicted: float (N,) the MDN-RNN's reward prediction for each step.
        real: float (N,) the real rewards.
        offroad: bool (N,) off-road flag of the frame after each step (``off_road``).

    Returns:
        ``{"reward_delusion": fraction (None without off-road steps, as in a real test's summary, so the
        JSON it is written to stays valid), "offroad_steps": count, "steps": N}``.
    """
    predicted, real, offroad = (np.asarray(a).reshape(-1) for a in (predicted, real, offroad))
    mask = offroad & (real < 0)
    n = int(mask.sum())
    frac = float((predicted[mask] > 0).mean()) if n else None
    return {"reward_delusion": frac, "offroad_steps": n, "steps": int(len(real))}


def delusion_text(delusion: float | None) -> str:
    """A reward delusion for printing: three decimals, or ``n/a`` where there were no off-road steps (None)."""
    return "n/a" if delusion is None else f"{delusion:.3f}"


def dataset_stats(path: Path) -> dict:
    """Per-dataset numbers: episodes, steps, return mean +- std, off-road fraction, and the returns.

    Raises:
        DatasetError: if the dataset is missing or unreadable.
    """
    from worldmodels.data import load_episodes

    episodes = load_episodes(path)
    returns = np.array([float(ep.rewards.sum()) for ep in episodes])
    steps = int(sum(ep.length for ep in episodes))
    offroad = sum(int(off_road(ep.observations[1:]).sum()) for ep in episodes)
    return {
        "dataset": Path(path).name,
        "episodes": len(episodes),
        "steps": steps,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "offroad_fraction": offroad / max(steps, 1),
        "returns": returns.tolist(),
    }


def print_stats(run_dir: Path) -> list[dict]:
    """Print a table of ``dataset_stats`` for every dataset of a run, and write ``data/stats.json`` and
    ``data/returns.png`` (a histogram of episode returns per dataset).

    Raises:
        DatasetError: if the run has no datasets or one of them is unreadable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.console import Console
    from rich.table import Table

    from worldmodels.data import DatasetError
    from worldmodels.metrics_log import write_json

    data_dir = Path(run_dir).resolve() / "data"
    paths = sorted(p for p in data_dir.glob("*") if (p / "metadata.json").is_file())
    if not paths:
        raise DatasetError(f"no datasets in {data_dir}: run `uv run collect_data.py --run-dir {run_dir}` first")
    stats = [dataset_stats(p) for p in paths]
    table = Table(title=f"datasets of {run_dir}")
    for col in ("dataset", "episodes", "steps", "return", "min .. max", "off-road steps"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for s in stats:
        table.add_row(
            s["dataset"],
            str(s["episodes"]),
            f"{s['steps']:,}",
            f"{s['return_mean']:.1f} +- {s['return_std']:.1f}",
            f"{s['return_min']:.0f} .. {s['return_max']:.0f}",
            f"{100 * s['offroad_fraction']:.1f} %",
        )
    Console().print(table)
    write_json(data_dir / "stats.json", stats)
    fig, ax = plt.subplots(figsize=(7, 4))
    lo = min(min(s["returns"]) for s in stats)
    hi = max(max(s["returns"]) for s in stats)
    bins = np.linspace(lo, hi + 1e-6, 30)
    for s in stats:
        ax.hist(s["returns"], bins=bins, alpha=0.5, label=f"{s['dataset']} ({s['episodes']})")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title("returns per dataset")
    ax.legend()
    fig.tight_layout()
    fig.savefig(data_dir / "returns.png", dpi=100)
    plt.close(fig)
    print(f"-> {data_dir / 'stats.json'}, {data_dir / 'returns.png'}")
    return stats
