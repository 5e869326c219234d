"""The one training loop: a jitted update per step, resume, last good checkpoint, NaN stop, Ctrl-C save,
``metrics.jsonl`` and TensorBoard.

``fit`` trains any Equinox module (or stacked pool of modules) on deterministic batches: the VAE and
MDN-RNN stages (``worldmodels.train``) and gossip pools (``worldmodels.gossip.train``) all run it, so
resuming and logging behave the same everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from worldmodels import checkpoint
from worldmodels.errors import TrainingDiverged
from worldmodels.metrics_log import MetricsLog, trim_jsonl


def clipped_adam(
    learning_rate: float | optax.Schedule, max_norm: float, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) on gradients first clipped to global norm ``max_norm``: the optimiser every
    dynamics and policy learner here uses (MDN-RNN, RSSM, actor, critic, gossip pools, MARL learner, PPO; the VAE
    trains with plain Adam).

    Args:
        learning_rate: Adam's step size (> 0), or a schedule of it.
        max_norm: the largest global L2 norm of the gradient pytree before the update (> 0).
        eps: Adam's epsilon (PPO uses 1e-5, as PureJaxRL does).
    """
    return optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(learning_rate, eps=eps))


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One jitted update: ``step(model, opt_state, batch, key) -> (model, opt_state, metrics)``.

    ``loss_fn(model, batch, key) -> (total, metrics dict)``.
    """

    @eqx.filter_jit
    def step(model, opt_state, batch, key):
        (_, metrics), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        metrics["grad_norm"] = optax.tree.norm(grads)
        return eqx.apply_updates(model, updates), opt_state, metrics

    return step


def fit(
    *,
    model: eqx.Module,
    make_batch: Callable[[int], Any],
    steps: int,
    out_dir: Path,
    kind: str,
    hparams: dict[str, Any],
    seed: int,
    log_every: int,
    checkpoint_every: int,
    items_per_step: int,
    desc: str,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: Callable | None = None,
    step_fn: Callable | None = None,
    opt_state: Any = None,
    exclude: tuple[str, ...] = (),
    postfix: tuple[str, ...] = ("total",),
) -> eqx.Module:
    """Train ``model`` for ``steps`` updates, resuming from ``out_dir/ckpt`` when it holds a checkpoint.

    The one training loop of the project: the VAE, the MDN-RNN and gossip pools all train through it
    (resume, last good checkpoint, logging window, NaN stop, Ctrl-C save, metrics.jsonl and TensorBoard).
    Give either ``optimizer`` and ``loss_fn`` (the jitted update is ``make_step(loss_fn, optimizer)``) or
    a ready ``step_fn`` and its initial ``opt_state`` (a gossip pool's update of every model at once).

    Args:
        model: freshly initialised module (replaced by the checkpoint's when resuming).
        optimizer: optax transformation (with ``loss_fn``).
        loss_fn: ``loss_fn(model, batch, key) -> (total, metrics)``; metrics are float32 scalars.
        step_fn: ``step_fn(model, opt_state, batch, key) -> (model, opt_state, metrics)`` (instead of
            ``optimizer`` and ``loss_fn``); a metric may be a vector, e.g. (M,) one value per pool model:
            its row then holds the mean as ``name`` and each entry as ``name/m``.
        opt_state: ``step_fn``'s initial optimiser state (replaced by the checkpoint's when resuming).
        exclude: metric names ``step_fn`` returns that are neither checked nor logged.
        postfix: metrics shown on the progress bar.
        make_batch: ``make_batch(step)`` -> batch pytree; deterministic in ``step`` so resuming
            reproduces the data order.
        steps: total number of updates.
        out_dir: stage directory; writes ``ckpt/``, ``metrics.jsonl`` (a row every ``log_every`` updates:
            ``step``, the window's mean of each metric, ``items_per_s``) and ``tb/`` (the rows' scalars for
            TensorBoard, ``metrics_log.MetricsLog``). A resumed run first drops the rows written after the
            checkpoint it resumes from (an interrupted run's), so each step has one row.
        kind, hparams: stored in the checkpoint to rebuild the module.
        seed: base seed of the per-step keys (``fold_in(key(seed), step)``).
        log_every, checkpoint_every: cadences in updates.
        items_per_step: examples per update, for the throughput column.
        desc: progress-bar label.

    Returns:
        The trained module.

    Raises:
        TrainingDiverged: on a non-finite loss, naming the step and the last good checkpoint, which is
            left intact.
        ValueError: unless exactly one of (``optimizer`` and ``loss_fn``) or (``step_fn`` and ``opt_state``)
            is given.
    """
    given = tuple(x is not None for x in (optimizer, loss_fn, step_fn, opt_state))
    if given not in ((True, True, False, False), (False, False, True, True)):
        raise ValueError("fit needs either optimizer and loss_fn, or step_fn and opt_state")
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "ckpt"
    metrics_path = out_dir / "metrics.jsonl"
    if step_fn is None:
        opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
        step_fn = make_step(loss_fn, optimizer)
    start = 0
    if checkpoint.latest_step(ckpt_dir) is not None:
        model, opt_state, meta = checkpoint.load(
            ckpt_dir, model, kind=kind, opt_like=opt_state, expected=hparams, set_aside_damaged=True
        )
        start = int(meta["step"])
    trim_jsonl(metrics_path, start, "step")
    if start >= steps:
        return model
    base_key = jr.key(seed)
    last_good = checkpoint.latest_step(ckpt_dir)

    def save(step: int, metrics: dict[str, np.ndarray]) -> None:
        nonlocal last_good
        extra = {"metrics": {k: v.tolist() for k, v in metrics.items()}}
        checkpoint.save(ckpt_dir, step, model, kind=kind, hparams=hparams, opt_state=opt_state, extra=extra)
        last_good = step

    window: dict[str, list[np.ndarray]] = {}
    t_window = time.perf_counter()
    metrics: dict[str, np.ndarray] = {}
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, unit="step")
    log = MetricsLog(out_dir, step_key="step", start=start)
    step = start
    try:
        for step in bar:
            batch = make_batch(step)
            new_model, new_opt_state, out = step_fn(model, opt_state, batch, jr.fold_in(base_key, step))
            metrics = {k: np.asarray(v, np.float64) for k, v in out.items() if k not in exclude}
            bad = {k: v.tolist() for k, v in metrics.items() if not np.all(np.isfinite(v))}
            if bad:
                where = f"{ckpt_dir}/{last_good}" if last_good is not None else "none (no checkpoint yet)"
                raise TrainingDiverged(
                    f"{desc}: non-finite loss at step {step + 1} ({bad}); last good checkpoint: {where}"
                )
            model, opt_state = new_model, new_opt_state
            for k, v in metrics.items():
                window.setdefault(k, []).append(v)
            done = step + 1
            if done % log_every == 0 or done == steps:
                elapsed = time.perf_counter() - t_window
                rate = items_per_step * len(window["total"]) / max(elapsed, 1e-9)
                record = window_record(done, window, rate)
                log.log(record, done)
                bar.set_postfix({k: f"{record[k]:.4g}" for k in postfix if k in record})
                window, t_window = {}, time.perf_counter()
            if done % checkpoint_every == 0 or done == steps:
                save(done, metrics)
    except KeyboardInterrupt:
        if step > (last_good or 0):
            save(step, metrics)
        raise
    finally:
        bar.close()
        log.close()
    return model


def window_record(step: int, window: dict[str, list[np.ndarray]], items_per_s: float) -> dict[str, Any]:
    """The ``metrics.jsonl`` row of a logging window: ``step``, each metric's mean over the window's updates,
    and ``items_per_s``. A vector metric (one value per pool model, shape (M,)) gives its mean over models
    as ``name`` and each model's window mean as ``name/m``."""
    record: dict[str, Any] = {"step": step}
    for k, rows in window.items():
        mean = np.mean(np.stack(rows), axis=0)
        record[k] = float(np.mean(mean))
        if mean.ndim:
            for m, v in enumerate(mean.reshape(-1)):
                record[f"{k}/{m}"] = float(v)
    record["items_per_s"] = items_per_s
    return record
