"""The gossip stage: ``run_gossip`` trains a pool on a run's data and writes ``RUN_DIR/gossip/`` (metrics,
plots, drift, videos) and the exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worldmodels import checkpoint
from worldmodels.config import GossipConfig, record_config
from worldmodels.gossip.data import load_sequences
from worldmodels.gossip.drift import drift_metrics
from worldmodels.gossip.export import export_model
from worldmodels.gossip.media import dream_video, plot_drift, plot_pool
from worldmodels.gossip.train import train_pool
from worldmodels.metrics_log import write_json


def run_gossip(run_dir: Path, cfg: GossipConfig) -> dict[str, Any]:
    """Train a gossip pool on ``RUN_DIR/data/`` and write ``RUN_DIR/gossip/``.

    Writes ``ckpt/`` (resumable), ``metrics.jsonl`` and ``losses.png`` (every loss per model),
    ``drift.json`` and ``drift.png`` (``drift_metrics`` on held-out episodes), ``dreams.mp4`` and
    ``dreams.gif`` (``dream_video``), then exports model ``export_model`` of the pool (either flavour) to the
    run's ``vae/`` and ``rnn/`` (``export_model``) so ``train_dream.py`` and ``test_agent.py`` use it.

    Returns:
        The drift dict (with ``step``).

    Raises:
        MissingInput: when a dataset of the recipe is missing.
    """
    run_dir = Path(run_dir)
    data = load_sequences(run_dir, cfg)
    record_config(run_dir, "gossip", cfg)
    out = run_dir / "gossip"
    n_train, n_held = int((~data.heldout).sum()), int(data.heldout.sum())
    print(
        f"gossip pool of {cfg.models} {cfg.flavour} models, gossip_weight {cfg.gossip_weight:g}: {n_train} training "
        f"episodes ({n_held} held out), {len(data.actions)} steps"
    )
    pool = train_pool(out, data, cfg)
    step = checkpoint.latest_step(out / "ckpt") or 0
    plot_pool(out / "metrics.jsonl", out / "losses.png", cfg.models)
    drift = {"step": step, **drift_metrics(pool, data, cfg)}
    write_json(out / "drift.json", drift)
    plot_drift(drift, out / "drift.png")
    videos = dream_video(out, pool, data, cfg)
    exported = cfg.export and export_model(run_dir, pool, cfg, step)
    if drift["horizons"]:
        h = drift["horizons"]
        print(
            "drift on held-out episodes, pixel MSE at horizons "
            + ", ".join(f"{a}: {b:.4f}" for a, b in zip(h, drift["pixel_mean"], strict=True))
        )
    files = ["metrics.jsonl", "losses.png", "drift.json", "drift.png", *(p.name for p in videos)]
    print(f"gossip pool: step {step} -> {out} ({', '.join(files)})")
    if exported:
        where = f"{run_dir / 'vae'} and {run_dir / 'rnn'}"
        print(f"model {cfg.export_model} exported to {where}: train_dream.py and test_agent.py use it")
    return drift
