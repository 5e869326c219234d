"""The training loop of a pool: ``train_pool`` (checkpoints, metrics.jsonl, resuming) and ``load_pool``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from worldmodels import checkpoint
from worldmodels.config import GossipConfig
from worldmodels.gossip.data import FrameSequences, sequence_batch
from worldmodels.gossip.options import check_config
from worldmodels.gossip.pool import init_pool, pool_hparams
from worldmodels.gossip.step import init_opt_state, make_optimizer, make_pool_step
from worldmodels.models.joint import JointWorldModel


def _per_model_record(step: int, window: dict[str, list[np.ndarray]], items_per_s: float) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    for k, rows in window.items():
        mean = np.mean(np.stack(rows), axis=0)
        record[k] = float(np.mean(mean))
        for m, v in enumerate(mean):
            record[f"{k}/{m}"] = float(v)
    record["items_per_s"] = items_per_s
    return record


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines written after ``step`` (an interrupted run resumes from the checkpoint at ``step``)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in lines))


def train_pool(out_dir: Path, data: FrameSequences, cfg: GossipConfig) -> JointWorldModel:
    """Train the pool for ``cfg.steps`` updates; resumes from ``out_dir/ckpt``.

    Writes ``ckpt/`` (kind ``gossip_pool``, the stacked pool and the M optimiser states) every
    ``checkpoint_every`` updates and ``metrics.jsonl`` every ``log_every`` updates: for every metric of
    ``LOSS_KEYS`` the pool mean ``name`` and each model's ``name/m``.

    Returns:
        The trained pool.

    Raises:
        TrainingDiverged: at a non-finite loss, naming the step and the last good checkpoint (left intact).
        CheckpointError: when a checkpoint there was made with different sizes.
    """
    from worldmodels.metrics_log import append_jsonl
    from worldmodels.train import TrainingDiverged

    check_config(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, metrics_path = out_dir / "ckpt", out_dir / "metrics.jsonl"
    pool = init_pool(cfg)
    opt_state = init_opt_state(pool, make_optimizer(cfg))
    hparams = pool_hparams(cfg)
    start = 0
    if checkpoint.latest_step(ckpt_dir) is not None:
        pool, opt_state, meta = checkpoint.load(
            ckpt_dir, pool, kind="gossip_pool", opt_like=opt_state, expected=hparams
        )
        start = int(meta["step"])
    _truncate_metrics(metrics_path, start)
    if start >= cfg.steps:
        return pool
    step_fn = make_pool_step(cfg)
    base_key = jr.key(cfg.seed)
    last_good = checkpoint.latest_step(ckpt_dir)

    def save(step: int) -> None:
        nonlocal last_good
        checkpoint.save(ckpt_dir, step, pool, kind="gossip_pool", hparams=hparams, opt_state=opt_state)
        last_good = step

    window: dict[str, list[np.ndarray]] = {}
    t_window = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train gossip pool", unit="step")
    step = start
    try:
        for step in bar:
            batch = sequence_batch(data, step, cfg)
            new_pool, new_opt, out = step_fn(pool, opt_state, batch, jr.fold_in(base_key, step))
            metrics = {k: np.asarray(v) for k, v in out.items() if k != "active"}
            if not all(np.all(np.isfinite(v)) for v in metrics.values()):
                where = f"{ckpt_dir}/{last_good}" if last_good is not None else "none (no checkpoint yet)"
                bad = {k: v.tolist() for k, v in metrics.items() if not np.all(np.isfinite(v))}
                raise TrainingDiverged(f"gossip pool: non-finite loss at step {step + 1} ({bad}); last good: {where}")
            pool, opt_state = new_pool, new_opt
            for k, v in metrics.items():
                window.setdefault(k, []).append(v)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                n = len(window["total"])
                rate = cfg.models * cfg.batch_size * cfg.seq_len * n / max(time.perf_counter() - t_window, 1e-9)
                record = _per_model_record(done, window, rate)
                append_jsonl(metrics_path, record)
                bar.set_postfix(loss=f"{record['total']:.2f}", gossip=f"{record['consistency']:.3g}")
                window, t_window = {}, time.perf_counter()
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
    except KeyboardInterrupt:
        if step > (last_good or 0):
            save(step)
        raise
    finally:
        bar.close()
    return pool


def load_pool(out_dir: Path, cfg: GossipConfig) -> tuple[JointWorldModel, int]:
    """The trained pool in ``out_dir/ckpt`` (a run's ``gossip/``) and its step.

    Raises:
        CheckpointError: if there is none, or it was trained with other sizes (both named).
    """
    pool, _, meta = checkpoint.load(
        Path(out_dir) / "ckpt", init_pool(cfg), kind="gossip_pool", expected=pool_hparams(cfg)
    )
    return pool, int(meta["step"])
