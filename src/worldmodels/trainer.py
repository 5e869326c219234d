"""The one training loop: a jitted update per step, resume, last good checkpoint, NaN stop, Ctrl-C save,
``metrics.jsonl`` and TensorBoard.

``fit`` trains any Equinox module (or stacked pool of modules) on deterministic batches: the VAE and
MDN-RNN stages (``worldmodels.train``) and gossip pools (``worldmodels.gossip.train``) all run it, so
resuming and logging behave the same everywhere. Its checkpoints go to one directory (``CheckpointDir``), or,
for an ensemble trained as one stacked module (``make_ensemble_step``), one directory per member
(``MemberCheckpoints``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import equinox as eqx
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from worldmodels import checkpoint
from worldmodels.errors import TrainingDiverged
from worldmodels.metrics_log import MetricsLog, trim_jsonl
from worldmodels.models.dynamics import module_at, stack_modules


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


def _update(loss_fn: Callable, optimizer: optax.GradientTransformation, model, opt_state, batch, key):
    """One optimiser update of one module: gradients of ``loss_fn``, optax update, ``grad_norm`` added."""
    (_, metrics), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    metrics["grad_norm"] = optax.tree.norm(grads)
    return eqx.apply_updates(model, updates), opt_state, metrics


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One jitted update: ``step(model, opt_state, batch, key) -> (model, opt_state, metrics)``.

    ``loss_fn(model, batch, key) -> (total, metrics dict)``.
    """
    return eqx.filter_jit(functools.partial(_update, loss_fn, optimizer))


def make_ensemble_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One jitted update of E independent members at once, ``vmap`` of ``make_step``'s update over the members.

    ``step(model, opt_state, batch, key) -> (model, opt_state, metrics)`` where ``model`` is E modules stacked
    (``models.dynamics.stack_modules``), ``opt_state`` the E optimiser states stacked (``optimizer.init``
    vmapped), ``batch`` a dict with ``member`` (member k's batch at index k of every leaf) and ``keys`` ((E,) PRNG
    keys, member k's key of this step), and every metric is (E,) float32. ``key`` is ignored: each member draws
    from its own key in ``batch``, so member k follows exactly the random stream it has when trained alone with
    seed s_k (``fit``'s ``fold_in(key(s_k), step)``), and the ensemble equals its members trained one by one up to
    float rounding. One update costs about one member's on a GPU (a sequence model's update is a scan of small
    dependent kernels), and about E members' on a CPU.
    """
    one = eqx.filter_vmap(functools.partial(_update, loss_fn, optimizer), in_axes=(eqx.if_array(0), 0, 0, 0))

    @eqx.filter_jit
    def step(model, opt_state, batch, key):
        del key
        return one(model, opt_state, batch["member"], batch["keys"])

    return step


class Checkpoints(Protocol):
    """Where ``fit`` resumes from and saves to."""

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""

    def load(self, model: Any, opt_state: Any) -> tuple[Any, Any, int]:
        """(model, opt_state, step) of the newest loadable step, into the structures given."""

    def save(self, step: int, model: Any, opt_state: Any, metrics: dict[str, np.ndarray]) -> None:
        """Save ``step`` (with the last update's metrics in the metadata)."""

    def where(self, step: int) -> str:
        """How messages name a saved ``step``."""


class CheckpointDir:
    """``fit``'s checkpoints in one directory (``checkpoint.save`` / ``checkpoint.load``; damaged newer steps are set
    aside on load)."""

    def __init__(self, directory: Path, kind: str, hparams: dict[str, Any]):
        self.directory, self.kind, self.hparams = Path(directory), kind, hparams

    def latest_step(self) -> int | None:
        return checkpoint.latest_step(self.directory)

    def load(self, model: Any, opt_state: Any) -> tuple[Any, Any, int]:
        model, opt_state, meta = checkpoint.load(
            self.directory, model, kind=self.kind, opt_like=opt_state, expected=self.hparams, set_aside_damaged=True
        )
        return model, opt_state, int(meta["step"])

    def save(self, step: int, model: Any, opt_state: Any, metrics: dict[str, np.ndarray]) -> None:
        extra = {"metrics": {k: v.tolist() for k, v in metrics.items()}}
        checkpoint.save(self.directory, step, model, kind=self.kind, hparams=self.hparams, opt_state=opt_state,
                        extra=extra)  # fmt: skip

    def where(self, step: int) -> str:
        return f"{self.directory}/{step}"


class MemberCheckpoints:
    """``fit``'s checkpoints of E members trained as one stacked module (``make_ensemble_step``): member k in its own
    directory ``directories[k]``, exactly as when it is trained alone, so every reader of a member (and a later
    training of it alone) sees an ordinary checkpoint; loading stacks the members' checkpoints of one step.

    Raises (``latest_step``, ``load``):
        CheckpointError: when the members' newest steps differ (train them one by one), or as ``checkpoint.load``.
    """

    def __init__(self, directories: Sequence[Path], kind: str, hparams: dict[str, Any]):
        self.directories, self.kind, self.hparams = [Path(d) for d in directories], kind, hparams

    def latest_step(self) -> int | None:
        steps = [checkpoint.latest_step(d) for d in self.directories]
        if len(set(steps)) > 1:
            listed = ", ".join(f"{d}: {s}" for d, s in zip(self.directories, steps, strict=True))
            raise checkpoint.CheckpointError(f"ensemble members at different steps ({listed}); train them one by one")
        return steps[0]

    def load(self, model: Any, opt_state: Any) -> tuple[Any, Any, int]:
        step = self.latest_step()
        loaded = [
            checkpoint.load(
                d,
                module_at(model, k),
                kind=self.kind,
                step=step,
                opt_like=module_at(opt_state, k),
                expected=self.hparams,
            )
            for k, d in enumerate(self.directories)
        ]
        return stack_modules([m for m, _, _ in loaded]), stack_modules([o for _, o, _ in loaded]), int(step)

    def save(self, step: int, model: Any, opt_state: Any, metrics: dict[str, np.ndarray]) -> None:
        for k, d in enumerate(self.directories):
            extra = {"metrics": {name: np.asarray(v)[k].tolist() for name, v in metrics.items()}}
            checkpoint.save(d, step, module_at(model, k), kind=self.kind, hparams=self.hparams,
                            opt_state=module_at(opt_state, k), extra=extra)  # fmt: skip

    def where(self, step: int) -> str:
        return f"step {step} of {', '.join(map(str, self.directories))}"


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
    checkpoints: Checkpoints | None = None,
    evaluate: Callable[[eqx.Module], dict[str, Any]] | None = None,
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
        out_dir: stage directory; writes ``ckpt/`` (unless ``checkpoints`` says otherwise), ``metrics.jsonl``
            (a row every ``log_every`` updates:
            ``step``, the window's mean of each metric, ``items_per_s``) and ``tb/`` (the rows' scalars for
            TensorBoard, ``metrics_log.MetricsLog``). A resumed run first drops the rows written after the
            checkpoint it resumes from (an interrupted run's), so each step has one row.
        kind, hparams: stored in the checkpoint to rebuild the module.
        checkpoints: where to resume from and save (default ``CheckpointDir(out_dir / "ckpt", kind, hparams)``;
            ``MemberCheckpoints`` for an ensemble trained stacked).
        seed: base seed of the per-step keys (``fold_in(key(seed), step)``).
        log_every, checkpoint_every: cadences in updates.
        items_per_step: examples per update, for the throughput column.
        desc: progress-bar label.
        evaluate: optional ``evaluate(model) -> {name: value}`` run after every checkpoint's update (validation
            on held-out data): its values go into that step's ``metrics.jsonl`` row (and TensorBoard) as
            ``heldout_<name>``, a vector value (one per ensemble member) as ``heldout_<name>`` (the mean) and
            ``heldout_<name>/k``; a row of its own when the step is not a logging step.

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
    ckpts = checkpoints if checkpoints is not None else CheckpointDir(out_dir / "ckpt", kind, hparams)
    metrics_path = out_dir / "metrics.jsonl"
    if step_fn is None:
        opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
        step_fn = make_step(loss_fn, optimizer)
    start = 0
    if ckpts.latest_step() is not None:
        model, opt_state, start = ckpts.load(model, opt_state)
    trim_jsonl(metrics_path, start, "step")
    if start >= steps:
        return model
    base_key = jr.key(seed)
    last_good = ckpts.latest_step()

    def save(step: int, metrics: dict[str, np.ndarray]) -> None:
        nonlocal last_good
        ckpts.save(step, model, opt_state, metrics)
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
                where = ckpts.where(last_good) if last_good is not None else "none (no checkpoint yet)"
                raise TrainingDiverged(
                    f"{desc}: non-finite loss at step {step + 1} ({bad}); last good checkpoint: {where}"
                )
            model, opt_state = new_model, new_opt_state
            for k, v in metrics.items():
                window.setdefault(k, []).append(v)
            done = step + 1
            at_checkpoint = done % checkpoint_every == 0 or done == steps
            heldout = heldout_record(evaluate(model)) if evaluate is not None and at_checkpoint else {}
            if done % log_every == 0 or done == steps:
                elapsed = time.perf_counter() - t_window
                rate = items_per_step * len(window["total"]) / max(elapsed, 1e-9)
                record = {**window_record(done, window, rate), **heldout}
                log.log(record, done)
                bar.set_postfix({k: f"{record[k]:.4g}" for k in postfix if k in record})
                window, t_window = {}, time.perf_counter()
            elif heldout:
                log.log({"step": done, **heldout}, done)
            if at_checkpoint:
                save(done, metrics)
    except KeyboardInterrupt:
        if step > (last_good or 0):
            save(step, metrics)
        raise
    finally:
        bar.close()
        log.close()
    return model


def metric_columns(name: str, value: Any) -> dict[str, float]:
    """One metric's ``metrics.jsonl`` columns: ``name``, the value (a vector's mean over its entries), and for a
    vector (one value per pool model or ensemble member, shape (M,)) each entry as ``name/m``."""
    v = np.asarray(value, np.float64)
    columns = {name: float(np.mean(v))}
    if v.ndim:
        columns.update({f"{name}/{m}": float(x) for m, x in enumerate(v.reshape(-1))})
    return columns


def heldout_record(values: dict[str, Any]) -> dict[str, float]:
    """``evaluate``'s values as ``metrics.jsonl`` columns ``heldout_<name>`` (``metric_columns``)."""
    record: dict[str, float] = {}
    for k, v in values.items():
        record.update(metric_columns(f"heldout_{k}", v))
    return record


def window_record(step: int, window: dict[str, list[np.ndarray]], items_per_s: float) -> dict[str, Any]:
    """The ``metrics.jsonl`` row of a logging window: ``step``, each metric's mean over the window's updates,
    and ``items_per_s``. A vector metric (one value per pool model, shape (M,)) gives its mean over models
    as ``name`` and each model's window mean as ``name/m``."""
    record: dict[str, Any] = {"step": step}
    for k, rows in window.items():
        record.update(metric_columns(k, np.mean(np.stack(rows), axis=0)))
    record["items_per_s"] = items_per_s
    return record
