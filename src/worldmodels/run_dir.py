"""Run-directory access: paths, loaders of the trained parts, and the ``MissingInput`` error.

Every stage reads and writes one run directory (docs/ARCHITECTURE.md, "The run directory"):

    RUN_DIR/data/NAME/     rollout datasets (Minari)
    RUN_DIR/vae/ckpt/      V, kind ``vae``
    RUN_DIR/rnn/ckpt/      M, any dynamics kind (``mdnrnn``; ``gru`` from a gossip export). The directory
                           keeps its historical name ``rnn/`` so that existing runs load.
    RUN_DIR/controller/    C, kind ``controller``, and the CMA-ES state

Loaders rebuild each module from its checkpoint's own ``kind`` and ``hparams`` through the model registry
(``worldmodels.models.registry``), so they never need the training config. This module sits low in the
import graph (it imports models, checkpoints, config and errors only), so that collection policies,
trainers and experiments can load a run without importing the stage orchestrator (``worldmodels.stages``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from worldmodels import checkpoint
from worldmodels.agent import Agent
from worldmodels.config import DYNAMICS_KINDS, parse_recipe
from worldmodels.errors import DatasetError, MissingInput
from worldmodels.models.registry import kind_of

__all__ = [
    "MissingInput",
    "collect_cmd",
    "dataset_dir",
    "dynamics_meta",
    "env_spec",
    "export_agent",
    "fixed_export",
    "frozen",
    "keep_previous_results",
    "load_agent",
    "load_controller",
    "load_dynamics",
    "load_vae",
    "results_path",
    "recipe_paths",
    "results_plan",
    "require",
    "require_ckpt",
]


def dataset_dir(run_dir: Path, name: str = "brownian") -> Path:
    """Where the dataset ``name`` of a run lives (absolute)."""
    return (Path(run_dir) / "data" / name).resolve()


def env_spec(run_dir: Path):
    """The environment of a run (an ``env.EnvSpec``): ``collect.env`` recorded in ``RUN_DIR/config.json`` by the
    collection stage; else the environment of the datasets in ``RUN_DIR/data/`` (their ``env_id``: data collected
    elsewhere and copied in, whose collection stage never ran here); CarRacing for a run with neither (every run
    made before other environments existed).

    Raises:
        DatasetError: when the recorded name is not a known environment (naming the file), or when the run's
            datasets hold episodes of different or unknown environments (naming them).
    """
    from worldmodels.env import ENVS, get_spec

    path = Path(run_dir) / "config.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            record = {}
        collect = record.get("collect") if isinstance(record, dict) else None
        if isinstance(collect, dict) and "env" in collect:
            try:
                return get_spec(collect["env"])
            except ValueError as err:
                raise DatasetError(f"{path}: collect.env: {err}") from None
    by_id = {spec.gym_id: spec for spec in ENVS.values()}
    found = {}
    for meta in sorted((Path(run_dir) / "data").glob("*/metadata.json")):
        try:
            env_id = json.loads(meta.read_text()).get("env_id")
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            continue  # unreadable: the stage that reads this dataset names it
        if env_id is not None:
            found.setdefault(env_id, meta.parent)
    if len(found) > 1 or any(env_id not in by_id for env_id in found):
        listed = "; ".join(f"{d} holds {env_id}" for env_id, d in found.items())
        raise DatasetError(
            f"{listed}: a run's datasets must be of one known environment ({', '.join(by_id)}): move the others "
            "into their own run directory"
        )
    return by_id[next(iter(found))] if found else get_spec("carracing")


def collect_cmd(run_dir: Path) -> str:
    """The command that collects data into ``run_dir``, for messages."""
    return f"uv run collect_data.py --run-dir {run_dir}"


def require(path: Path, command: str) -> None:
    """Raise ``MissingInput`` naming ``path`` and the ``command`` that makes it, when it does not exist."""
    if not path.exists():
        raise MissingInput(f"missing {path}: run `{command}` first")


def require_ckpt(path: Path, command: str) -> None:
    """Raise ``MissingInput`` when the checkpoint directory ``path`` holds no checkpoint step."""
    if checkpoint.latest_step(path) is None:
        raise MissingInput(f"missing checkpoint in {path}: run `{command}` first")


def recipe_paths(run_dir: Path, recipe: str) -> list[tuple[Path, float]]:
    """The dataset directories and weights of a recipe ``name[:weight],...``.

    Raises:
        MissingInput: naming the first dataset of the recipe that was not collected, and the command.
        DatasetError: for a dataset directory that holds files but no ``metadata.json``.
        ValueError: for a malformed recipe (``config.parse_recipe``).
    """
    out = []
    for name, weight in parse_recipe(recipe):
        path = dataset_dir(run_dir, name)
        if not (path / "metadata.json").exists() and path.is_dir() and any(path.iterdir()):
            raise DatasetError(
                f"{path} holds files but no metadata.json, so it is not a readable dataset: move it aside (or "
                f"restore its metadata.json), then run `{collect_cmd(run_dir)} --policy {name}`"
            )
        require(path / "metadata.json", f"{collect_cmd(run_dir)} --policy {name}")
        out.append((path, weight))
    return out


def dynamics_meta(run_dir: Path) -> dict | None:
    """The metadata of ``RUN_DIR/rnn/ckpt``'s newest readable step; None when it holds no checkpoint."""
    return checkpoint.newest_meta(Path(run_dir) / "rnn" / "ckpt")


def fixed_export(run_dir: Path) -> dict | None:
    """The metadata of ``RUN_DIR/rnn/ckpt`` when it holds dynamics this project's stages do not train on (a
    ``gru`` gossip export, trained jointly with its V; the M stage trains the kinds in ``config.DYNAMICS_KINDS``,
    its own ``gru`` among them), else None. Such a run's ``vae/`` and ``rnn/`` are one exported pair: the VAE and
    M stages count both as done, so training the VAE on cannot move the latents the GRU was trained on."""
    meta = dynamics_meta(run_dir)
    if meta is None:
        return None
    gossip_gru = meta.get("kind") == "gru" and meta.get("extra", {}).get("source") == "gossip"
    return meta if gossip_gru or meta.get("kind") not in DYNAMICS_KINDS else None


def _load(path: Path, role: str, command: str, expected: dict | None, step: int | None = None) -> tuple[Any, dict]:
    require_ckpt(path, command)

    def load_step(step: int) -> tuple[Any, dict]:
        kind = kind_of(checkpoint.read_meta(path, step).get("kind"), role, f"{path}/{step}")
        return checkpoint.load_module(path, kind.build, kind=kind.name, expected=expected, step=step)

    if step is not None:
        return load_step(step)
    return checkpoint.newest_loadable(path, load_step)  # a damaged newest step falls back to the one before


def load_vae(run_dir: Path, expected: dict | None = None) -> tuple[Any, dict]:
    """The trained vision model V of a run (``RUN_DIR/vae/ckpt``), rebuilt from its checkpoint's own sizes.

    Args:
        run_dir: the run directory.
        expected: hparams that must match (e.g. ``{"z_size": 32}``).

    Returns:
        (module, meta).

    Raises:
        MissingInput: when the directory holds no checkpoint (the message names ``train_vae.py``).
        CheckpointError: for a kind that is not a vision model, differing hparams or shapes, or a damaged
            checkpoint.
    """
    return _load(Path(run_dir) / "vae" / "ckpt", "vision", f"uv run train_vae.py --run-dir {run_dir}", expected)


def same_weights(a: Any, b: Any) -> bool:
    """Whether two modules hold the same arrays, leaf for leaf (same count, shapes and values): e.g. two runs' V, so
    that M trained on one reads the other's latents (an ensemble of M across runs, ``stages.planner_of``)."""
    import equinox as eqx
    import jax
    import numpy as np

    ours, theirs = (jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (a, b))
    return len(ours) == len(theirs) and all(np.array_equal(x, y) for x, y in zip(ours, theirs, strict=True))


def load_dynamics(run_dir: Path, expected: dict | None = None, step: int | None = None) -> tuple[Any, dict]:
    """The trained dynamics M of a run: whichever registered dynamics kind ``RUN_DIR/rnn/ckpt`` holds.

    An ``MDNRNN`` (kind ``mdnrnn``, from ``train_rnn.py`` or a gossip export) or a ``GRUTransition`` (kind
    ``gru``, from a gossip export); both implement ``worldmodels.models.dynamics.Dynamics``, so the dream,
    the planners and the real-environment agent run either.

    Args:
        run_dir: the run directory.
        expected: hparams that must match (e.g. ``{"z_size": 32}``).
        step: which checkpoint step (default: the newest one that is not damaged).

    Returns:
        (module, meta).

    Raises:
        MissingInput: when ``RUN_DIR/rnn/ckpt`` holds no checkpoint.
        CheckpointError: for a kind that is not a dynamics, differing hparams or shapes, or a damaged
            checkpoint.
    """
    return _load(Path(run_dir) / "rnn" / "ckpt", "dynamics", f"uv run train_rnn.py --run-dir {run_dir}", expected, step)


def member_dir(run_dir: Path, k: int) -> Path:
    """The directory of member K of the run's ensemble of M (``RNNConfig.ensemble``): ``RUN_DIR/rnn`` for member 0,
    the run's own M, and ``RUN_DIR/rnn/members/K`` for K >= 1."""
    return Path(run_dir) / "rnn" / "members" / str(k) if k else Path(run_dir) / "rnn"


def load_members(run_dir: Path, count: int, expected: dict | None = None) -> list[Any]:
    """Members 1 .. ``count`` - 1 of the run's ensemble of M (``RUN_DIR/rnn/members/K/ckpt``), in order.

    Raises:
        MissingInput: for a member without a checkpoint (the message names ``train_rnn.py --ensemble``).
        CheckpointError: as ``load_dynamics``.
    """
    command = f"uv run train_rnn.py --run-dir {run_dir} --ensemble {count}"
    return [_load(member_dir(run_dir, k) / "ckpt", "dynamics", command, expected)[0] for k in range(1, count)]


def load_controller(run_dir: Path, expected: dict | None = None) -> tuple[Any, dict]:
    """The evolved controller C of a run (``RUN_DIR/controller/ckpt``), by its checkpoint's kind.

    Raises:
        MissingInput: when no controller was evolved yet (the message names ``train_dream.py``).
        CheckpointError: for a kind that is not a controller, differing sizes, or a damaged checkpoint.
    """
    path = Path(run_dir) / "controller" / "ckpt"
    return _load(path, "controller", f"uv run train_dream.py --run-dir {run_dir}", expected)


def _agent_parts(run_dir: Path) -> dict[str, tuple[Any, dict]]:
    """``{"vae", "rnn", "controller"}`` -> (module, checkpoint metadata), each part checked against the sizes
    of the part it feeds."""
    vae = load_vae(run_dir)
    dynamics = load_dynamics(run_dir, expected={"z_size": vae[0].z_size})
    expected = {"z_size": dynamics[0].z_size, "hidden_size": dynamics[0].hidden_size}
    return {"vae": vae, "rnn": dynamics, "controller": load_controller(run_dir, expected=expected)}


def load_agent(run_dir: Path) -> Agent:
    """V + M + C of a run, each checked against the sizes of the part it feeds.

    Raises:
        MissingInput, CheckpointError: as the three loaders.
    """
    parts = _agent_parts(run_dir)
    return Agent(parts["vae"][0], parts["rnn"][0], parts["controller"][0])


FROZEN = "pretrained.json"
"""A run directory holding this file is a shipped agent: evaluating it never writes into it."""


def frozen(run_dir: Path) -> bool:
    """True when ``run_dir`` must only be read: a shipped agent (it holds ``pretrained.json``) or a directory
    this process cannot write."""
    run_dir = Path(run_dir)
    return (run_dir / FROZEN).is_file() or (run_dir.is_dir() and not os.access(run_dir, os.W_OK))


def results_path(run_dir: Path, out: Path | None = None, runs: Path = Path("runs")) -> Path:
    """Where an evaluation of ``run_dir`` writes its ``results.json``.

    ``out`` when given; else ``RUN_DIR/eval/results.json``, except for a ``frozen`` run directory, whose
    results go to a fresh ``runs/NAME-eval-YYYYmmdd-HHMMSS/eval/results.json`` (``runs`` relative to the
    working directory), so a committed or read-only agent is never modified.
    """
    if out is not None:
        return Path(out)
    run_dir = Path(run_dir)
    if not frozen(run_dir):
        return run_dir / "eval" / "results.json"
    return runs / f"{run_dir.resolve().name}-eval-{time.strftime('%Y%m%d-%H%M%S')}" / "eval" / "results.json"


def results_plan(results: dict[str, Any]) -> dict[str, Any]:
    """The test plan a ``results.json`` was made with: ``{"n": episodes, "action_noise": std}`` (``n`` None when
    absent; ``action_noise`` 0.0 for results written before it was recorded). A test is done only when its
    results' plan equals the config's (``stages.test_done``)."""
    return {"n": results.get("n"), "action_noise": results.get("action_noise", 0.0)}


def keep_previous_results(out: Path, plan: dict[str, Any]) -> Path | None:
    """Move an earlier ``results.json`` at ``out`` aside when it was made with a different test plan.

    A test re-run because its plan changed (``plan``: the new ``results_plan``) must not destroy the earlier
    measurement: the old file is renamed (``os.replace``, atomic) to ``results.n{N}-noise{A}.json`` beside it, or
    ``...-2.json``, ``-3`` ... where that name is taken. An unreadable old file is also kept aside. Returns the new
    path of the old file, or None when there was none or its plan equals ``plan`` (then the new results simply
    replace results of the same plan).
    """
    out = Path(out)
    if not out.is_file():
        return None
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        old = {}
    previous = results_plan(old)
    if old and previous == plan:
        return None
    n = "unknown" if previous["n"] is None else previous["n"]
    stem = f"{out.stem}.n{n}-noise{previous['action_noise']}"
    aside, k = out.with_name(stem + out.suffix), 1
    while aside.exists():
        k += 1
        aside = out.with_name(f"{stem}-{k}{out.suffix}")
    os.replace(out, aside)
    return aside


def export_agent(run_dir: Path, out: Path, provenance: dict[str, Any], link: tuple[str, ...] = ()) -> dict[str, Any]:
    """Copy the agent of ``run_dir`` (V, M, C at their latest steps, without optimiser states, metrics or
    data) and its ``config.json`` into the new run directory ``out``, marked ``frozen`` by a
    ``pretrained.json`` that records ``provenance`` and each part's kind, step and hparams.

    The parts are written through ``checkpoint.save`` (float32, one step each), so ``load_agent(out)``
    rebuilds exactly the agent of ``run_dir``.

    Args:
        run_dir: a run directory with trained ``vae/``, ``rnn/`` and ``controller/`` checkpoints.
        out: the directory to create.
        provenance: JSON-able facts to record (the source, the score and the command that measured it).
        link: parts (``"vae"``, ``"rnn"``, ``"controller"``) that ``out`` links to (a relative symbolic link to
            ``run_dir``'s directory) instead of copying: for a part that stays as it is for as long as ``out``
            is used, such as V in a Sim2Real2Sim loop, which never retrains it.

    Returns:
        The contents of ``out/pretrained.json``.

    Raises:
        FileExistsError: when ``out`` exists (nothing is overwritten).
        ValueError: for a name in ``link`` that is not a part.
        MissingInput, CheckpointError: as ``load_agent``.
    """
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new --out (an existing agent is never overwritten)")
    loaded = _agent_parts(run_dir)  # every part loads and the sizes agree before anything is written
    unknown = sorted(set(link) - set(loaded))
    if unknown:
        raise ValueError(f"export_agent(link=...): unknown parts {unknown}; choose from {sorted(loaded)}")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own unfinished export (links in it are removed, never followed)
    parts = {}
    tmp.mkdir(parents=True)
    for name, (module, meta) in loaded.items():
        if name in link:  # relative, and tmp sits beside out, so the link holds after the rename
            os.symlink(os.path.relpath((run_dir / name).resolve(), out.parent.resolve() / out.name), tmp / name)
        else:
            checkpoint.save(tmp / name / "ckpt", meta["step"], module, kind=meta["kind"], hparams=meta["hparams"],
                            keep=1)  # fmt: skip
        parts[name] = {"kind": meta["kind"], "step": meta["step"], "hparams": meta["hparams"]}
    shutil.copy(run_dir / "config.json", tmp / "config.json")
    record = {"parts": parts, **provenance}
    (tmp / FROZEN).write_text(json.dumps(record, indent=2))
    tmp.rename(out)
    return record


def copy_world_model(source: Path, dest: Path, *, link_data: bool = False, latents: bool = True) -> None:
    """Make ``dest`` a run directory on the world model of ``source``: copies of its ``vae/`` and ``rnn/``
    (checkpoints; without metrics.jsonl and TensorBoard logs, and without ``rnn/latents`` when ``latents`` is
    False) and of its ``config.json``, and with ``link_data`` a symbolic link to its ``data/``. What ``dest``
    already holds is kept, so a stopped experiment resumes on its own copies; a part is copied beside its place and
    renamed into it, so a copy stopped half-way is redone; ``source`` is only read.

    Raises:
        FileNotFoundError: when ``source`` lacks one of the parts.
    """
    source, dest = Path(source), Path(dest)
    skip = ("metrics.jsonl", "tb") if latents else ("metrics.jsonl", "tb", "latents")
    for name in ("vae", "rnn"):
        if not (dest / name).exists():  # copied whole or not at all: a stopped copy is never taken for a part
            tmp = dest / f"{name}.partial"
            if tmp.exists():
                shutil.rmtree(tmp)  # our own unfinished copy, never a user's directory
            shutil.copytree(source / name, tmp, ignore=shutil.ignore_patterns(*skip))
            tmp.rename(dest / name)
    if link_data and not (dest / "data").exists():
        os.symlink((source / "data").resolve(), dest / "data")
    if not (dest / "config.json").exists():
        shutil.copy(source / "config.json", dest / "config.json")
