"""Self-describing orbax checkpoints of Equinox modules (and optimiser states).

A checkpoint directory holds numbered steps (``ckpt/<step>/``) written by an orbax
``CheckpointManager``; each step stores

* ``model``: the module's arrays as a flat dict ``{"a0000": array, ...}`` in tree order,
* ``opt``: the optimiser state's arrays the same way (optional),
* ``meta``: JSON with the module ``kind``, the ``hparams`` that rebuild it, the tree paths and shapes
  of every array, and any extra fields (the step, the metrics at save time, ...).

Loading never needs the training config: ``load_module`` rebuilds the module from ``hparams`` and
fills it in. A mismatch between a config and a checkpoint is a ``CheckpointError`` that names both
values (``z_size=64 in the checkpoint, 32 in the config``) or both shapes. Saves are atomic (orbax
writes a temporary directory and renames it), so an interrupted save leaves the previous step intact. A
step damaged later (unreadable metadata or arrays) is skipped with a warning and the step before it loads
(``newest_loadable``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp

from worldmodels.errors import CheckpointDamaged, CheckpointError
from worldmodels.models.registry import hparam_defaults

logging.getLogger("absl").setLevel(logging.ERROR)

T = TypeVar("T")


def _flatten(tree: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    leaves_with_path = jax.tree_util.tree_flatten_with_path(eqx.filter(tree, eqx.is_array))[0]
    arrays = {f"a{i:04d}": np.asarray(leaf) for i, (_, leaf) in enumerate(leaves_with_path)}
    paths = [jax.tree_util.keystr(p) for p, _ in leaves_with_path]
    return arrays, paths


def _fill(like: Any, arrays: dict[str, Any], paths: list[str], shapes: list[list[int]], where: str) -> Any:
    """Put ``arrays`` into the array leaves of ``like`` (arrays or ``jax.ShapeDtypeStruct``), checking paths and
    shapes."""
    params, static = eqx.partition(like, _is_array_or_shape)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    if len(leaves_with_path) != len(arrays):
        raise CheckpointError(
            f"{where}: checkpoint holds {len(arrays)} arrays but the model built from the config has "
            f"{len(leaves_with_path)}; the architecture differs"
        )
    new_leaves = []
    for i, (path, leaf) in enumerate(leaves_with_path):
        saved = arrays[f"a{i:04d}"]
        if tuple(saved.shape) != tuple(leaf.shape):
            raise CheckpointError(
                f"{where}: {jax.tree_util.keystr(path)} has shape {tuple(saved.shape)} in the checkpoint "
                f"({paths[i]} {tuple(shapes[i])}) but {tuple(leaf.shape)} in the model built from the config"
            )
        new_leaves.append(jax.numpy.asarray(saved, dtype=leaf.dtype))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new_leaves), static)


def _is_array_or_shape(x: Any) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _manager(directory: Path, keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.resolve(), options=options)


def save(
    directory: Path,
    step: int,
    model: eqx.Module,
    *,
    kind: str,
    hparams: dict[str, Any],
    opt_state: Any = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> None:
    """Save ``model`` (and ``opt_state``) as step ``step`` under ``directory``; keeps the last ``keep`` steps.

    Args:
        directory: checkpoint directory (created if missing).
        step: step number (int >= 0); saving an existing step replaces it.
        model: an Equinox module (or any pytree of arrays).
        kind: what the module is (``"vae"``, ``"mdnrnn"``, ``"controller"``), checked on load.
        hparams: JSON-able keyword arguments that rebuild the module.
        opt_state: optional optimiser state to resume training.
        extra: optional JSON-able fields stored in the metadata.
    """
    arrays, paths = _flatten(model)
    meta = {
        "kind": kind,
        "hparams": hparams,
        "step": int(step),
        "paths": paths,
        "shapes": [list(a.shape) for a in arrays.values()],
        "extra": extra or {},
    }
    items = {"model": ocp.args.StandardSave(arrays), "meta": ocp.args.JsonSave(meta)}
    opt_arrays, opt_paths = _flatten(opt_state) if opt_state is not None else ({}, [])
    if opt_arrays:  # stateless optimisers (plain SGD) have nothing to save
        meta["opt_paths"] = opt_paths
        meta["opt_shapes"] = [list(a.shape) for a in opt_arrays.values()]
        items["opt"] = ocp.args.StandardSave(opt_arrays)
    with _manager(directory, keep) as mngr:
        if step in mngr.all_steps():
            mngr.delete(step)
        mngr.save(step, args=ocp.args.Composite(**items))
        mngr.wait_until_finished()


def read_npz(path: Path, what: str, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of a NumPy ``.npz`` file (never with pickle), or one error naming the file.

    Args:
        path: the file.
        what: what the file should be, for the message (e.g. ``"CMA-ES state"``).
        required: array names the file must hold.

    Returns:
        dict of name -> array.

    Raises:
        CheckpointError: when the file cannot be read (missing, truncated, not a zip, pickled objects) or lacks
            one of ``required``; the message names the file.
    """
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"{path}: not a readable {what} (no {', '.join(missing)})")
    return data


def latest_step(directory: Path) -> int | None:
    """The newest complete step under ``directory``, or ``None`` when there is none."""
    if not directory.is_dir():
        return None
    with _manager(directory) as mngr:
        return mngr.latest_step()


def all_steps(directory: Path) -> list[int]:
    """The complete steps under ``directory``, oldest first (``[]`` when there is none)."""
    if not Path(directory).is_dir():
        return []
    with _manager(directory) as mngr:
        return sorted(mngr.all_steps())


def read_meta(directory: Path, step: int | None = None) -> dict[str, Any]:
    """The metadata of ``step`` (default: the latest).

    Raises:
        CheckpointError: if there is no checkpoint or its metadata cannot be read.
    """
    step = _resolve_step(directory, step)
    try:
        with _manager(directory) as mngr:
            return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    except Exception as err:  # orbax raises several types for a damaged directory
        raise CheckpointDamaged(f"{directory}/{step}: cannot read checkpoint metadata ({err})") from err


def newest_loadable(directory: Path, load_step: Callable[[int], T], *, set_aside: bool = False) -> T:
    """``load_step(step)`` of the newest step of ``directory`` that is not damaged.

    A step whose metadata or arrays cannot be read (``CheckpointDamaged``) is skipped with a warning on
    stderr naming it, and the step before it is tried; every other error (a wrong kind, differing sizes)
    propagates at once. With ``set_aside`` (a trainer about to save again) a damaged step is moved to
    ``directory/damaged/STEP-TIME`` (kept, never deleted), so that later saves do not collide with it.

    Raises:
        CheckpointError: when there is no step; ``CheckpointDamaged`` when every step is damaged.
    """
    directory = Path(directory)
    steps = all_steps(directory)[::-1]
    if not steps:
        raise CheckpointError(f"no checkpoint in {directory}")
    for i, step in enumerate(steps):
        try:
            return load_step(step)
        except CheckpointDamaged as err:
            if i + 1 == len(steps):
                raise
            note = f"warning: {err}; loading step {steps[i + 1]} instead"
            if set_aside:
                aside = directory / "damaged" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(exist_ok=True)
                (directory / str(step)).rename(aside)
                note += f" (the damaged step is kept in {aside})"
            print(note, file=sys.stderr)
    raise AssertionError("unreachable")


def newest_meta(directory: Path) -> dict[str, Any] | None:
    """The metadata of the newest step of ``directory`` whose metadata reads (``newest_loadable``); None when
    there is no step."""
    if latest_step(directory) is None:
        return None
    return newest_loadable(directory, lambda s: read_meta(directory, s))


def _resolve_step(directory: Path, step: int | None) -> int:
    if step is None:
        step = latest_step(directory)
    if step is None:
        raise CheckpointError(f"no checkpoint in {directory}")
    return step


def check_hparams(meta: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raise ``CheckpointError`` naming both values if ``expected`` disagrees with the checkpoint.

    A hyperparameter the checkpoint does not record takes its builder's default (``registry.hparam_defaults``):
    checkpoints written before it existed keep loading and matching."""
    saved = {**hparam_defaults(meta.get("kind")), **meta.get("hparams", {})}
    diffs = [
        f"{k}={saved.get(k)!r} in the checkpoint, {v!r} in the config" for k, v in expected.items() if saved.get(k) != v
    ]
    if diffs:
        raise CheckpointError(f"{where} does not match the config: " + "; ".join(diffs))


def load(
    directory: Path,
    like: Any,
    *,
    kind: str,
    step: int | None = None,
    opt_like: Any = None,
    expected: dict[str, Any] | None = None,
    set_aside_damaged: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """Restore a module (and optionally an optimiser state) into the structure of ``like``.

    Args:
        directory: checkpoint directory.
        like: a module of the right architecture (its values are ignored).
        kind: the expected ``kind``.
        step: which step (default: the newest that is not damaged, ``newest_loadable``).
        opt_like: an optimiser state of the right structure, to restore ``opt`` too.
        expected: hparams that must match (e.g. ``{"z_size": 32}``), for an error naming both values.
        set_aside_damaged: with ``step`` None, move damaged newer steps aside (``newest_loadable``).

    Returns:
        (model, opt_state, meta); ``opt_state`` is ``opt_like`` unchanged when the checkpoint stores
        none (a stateless optimiser) and ``None`` when ``opt_like`` is ``None``.

    Raises:
        CheckpointError: missing or corrupt checkpoint, wrong kind, differing hparams, or a shape that
            differs (both named).
    """
    if step is None:
        return newest_loadable(
            directory,
            lambda s: load(directory, like, kind=kind, step=s, opt_like=opt_like, expected=expected),
            set_aside=set_aside_damaged,
        )
    step, meta = _checked_meta(directory, step, kind, expected)
    return (*_restore(directory, step, meta, like, opt_like), meta)


def _checked_meta(
    directory: Path, step: int | None, kind: str, expected: dict[str, Any] | None
) -> tuple[int, dict[str, Any]]:
    """Read a step's metadata once and check its kind and hparams."""
    step = _resolve_step(directory, step)
    where = f"checkpoint {directory}/{step}"
    meta = read_meta(directory, step)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{where} holds a {meta.get('kind')!r}, expected a {kind!r}")
    if expected:
        check_hparams(meta, expected, where)
    return step, meta


def _restore(directory: Path, step: int, meta: dict[str, Any], like: Any, opt_like: Any) -> tuple[Any, Any]:
    """Read the arrays of ``step`` into the structures of ``like`` (and ``opt_like``)."""
    where = f"checkpoint {directory}/{step}"
    items = {"model": ocp.args.StandardRestore()}
    restore_opt = opt_like is not None and "opt_paths" in meta
    if restore_opt:
        items["opt"] = ocp.args.StandardRestore()
    try:
        with _manager(directory) as mngr:
            restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as err:
        raise CheckpointDamaged(f"{where}: cannot read arrays ({err})") from err
    model = _fill(like, restored["model"], meta["paths"], meta["shapes"], where)
    opt_state = opt_like
    if restore_opt:
        opt_state = _fill(opt_like, restored["opt"], meta["opt_paths"], meta["opt_shapes"], where + " (optimiser)")
    return model, opt_state


def load_module(
    directory: Path,
    build: Callable[..., Any],
    *,
    kind: str,
    expected: dict[str, Any] | None = None,
    step: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Rebuild a module from the checkpoint's own hparams and load its arrays.

    Args:
        directory: checkpoint directory.
        build: ``build(**hparams)`` returns a module skeleton; it is only traced (``equinox.filter_eval_shape``), so
            its initialisation costs nothing and its array values are never used.
        kind: the expected ``kind``.
        expected: hparams that must match (e.g. ``{"z_size": 32}``), for a clear error.
        step: which step (default: the latest).

    Returns:
        (module, meta).
    """
    if step is None:
        return newest_loadable(directory, lambda s: load_module(directory, build, kind=kind, expected=expected, step=s))
    step, meta = _checked_meta(directory, step, kind, expected)
    # The skeleton's shapes only: building it for real would run its random initialisation, a separate XLA
    # compile of the PRNG per parameter shape for values thrown away (pretrained V and M: 21.5 s against 2.0 s,
    # compile cache off, 2-core CPU with another job running).
    skeleton = eqx.filter_eval_shape(lambda: build(**meta["hparams"]))
    model, _ = _restore(directory, step, meta, skeleton, None)
    return model, meta
