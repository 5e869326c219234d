"""Rollout datasets: parallel collection into a Minari dataset, and loading it back as arrays.

A dataset lives at ``RUN_DIR/data/NAME/`` in Minari's storage format, one episode per collection seed, raw
uint8 frames (or float32 vectors for a vector environment such as LunarLander); its metadata names the
environment (``env_id``), and a collection into a dataset of another environment is refused.
Every finished episode is written as soon as it arrives, so an interrupted collection keeps what finished and
a re-run continues with the seeds still missing.

New datasets use Minari's Arrow format: one file per episode, counted in ``metadata.json`` only once it is
complete, and ``metadata.json`` itself is replaced atomically, so a collection killed at any instant (even
``kill -9`` in the middle of a write) leaves a readable dataset, and the re-run rewrites the episode that
was in flight. (One HDF5 file, Minari's other format and this project's before, can be left unreadable by a
kill in the middle of an append: measured, 2 of 100 kills. Datasets collected in HDF5 are still read and
appended to.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing as mp
import os
import shutil
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from worldmodels.config import CollectConfig, parse_recipe
from worldmodels.env import get_spec, make_env
from worldmodels.errors import DatasetError
from worldmodels.policies import make_policy, seed_offset
from worldmodels.run_dir import dataset_dir


@dataclass(frozen=True)
class Episode:
    """One real episode.

    Attributes:
        seed: the reset seed.
        observations: (T + 1, *obs_shape), including the observation after the last action: uint8 (T + 1, 64, 64,
            3) frames, or float32 (T + 1, obs_size) vectors.
        actions: float32 (T, A).
        rewards: float32 (T,).
        terminations: bool (T,).
        truncations: bool (T,).
    """

    seed: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray

    @property
    def length(self) -> int:
        """Number of actions T."""
        return len(self.actions)


# Collect

_WORKER_ENV = None


def _collect_episode(seed: int, cfg: CollectConfig, run_dir: Path) -> Episode:
    """Run one episode of the collection policy (in a worker process)."""
    global _WORKER_ENV
    if _WORKER_ENV is None:
        _WORKER_ENV = make_env(cfg.max_steps, env=cfg.env)
    env = _WORKER_ENV
    policy = make_policy(cfg, run_dir)
    obs, _ = env.reset(seed=seed)
    policy.reset(seed, env)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    while True:
        action = policy.act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
        if terminated or truncated:
            break
    return Episode(
        seed=seed,
        observations=np.stack(observations).astype(get_spec(cfg.env).obs_dtype),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        terminations=np.asarray(terms, bool),
        truncations=np.asarray(truncs, bool),
    )


@contextmanager
def _defer_sigint():
    """Hold Ctrl-C until a dataset write has finished, so the file is never left half-written."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _preprocessing(spec) -> str:
    """The dataset metadata's note on what an observation is."""
    if spec.observation == "pixels":
        return "crop rows 0:84, resize 64x64 INTER_AREA, uint8"
    return f"raw float32 vector {spec.obs_shape}"


def open_for_collection(path: Path, cfg: CollectConfig):
    """Open the Minari storage at ``path`` for appending episodes, creating it first (atomically, in Arrow
    format) if it does not exist; the leftovers of an interrupted append are removed (``_drop_uncounted_episodes``).

    Raises:
        DatasetError: for a directory that holds files but no dataset, an unreadable dataset, or a dataset of
            another environment than ``cfg.env``.
    """
    from minari.dataset.minari_storage import MinariStorage

    spec = get_spec(cfg.env)
    if not (path / "metadata.json").exists():
        if path.is_dir() and any(path.iterdir()):
            raise DatasetError(
                f"{path} holds files but no metadata.json, so it is not a readable dataset; nothing was deleted: "
                f"move it aside (or restore its metadata.json) and collect again"
            )
        # Build the empty dataset beside its final place and rename it in, so an interruption
        # never leaves a half-created dataset behind.
        tmp = path.with_name(path.name + ".creating")
        shutil.rmtree(tmp, ignore_errors=True)
        env = make_env(cfg.max_steps, env=cfg.env)
        storage = MinariStorage.new(
            tmp,
            observation_space=env.observation_space,
            action_space=env.action_space,
            data_format="arrow",
            jpeg_encoding=False,
        )
        env.close()
        storage.update_metadata(
            {
                "dataset_id": f"{spec.name}/{cfg.policy}-v0",
                "algorithm_name": cfg.policy,
                "env_id": spec.gym_id,
                "preprocessing": _preprocessing(spec),
                "minari_version": _minari_version(),
            }
        )
        if path.is_dir():
            path.rmdir()  # an empty leftover directory (checked above)
        tmp.rename(path)
    try:
        storage = MinariStorage.read(path)
    except Exception as err:
        raise DatasetError(f"dataset {path} is unreadable ({err}); move it aside and collect again") from err
    stored = storage.metadata.get("env_id")
    if stored is not None and stored != spec.gym_id:
        raise DatasetError(
            f"dataset {path} holds {stored} episodes, not {spec.gym_id} (--collect.env {spec.name}); nothing was "
            f"changed: collect into another run directory"
        )
    storage.update_metadata = functools.partial(_update_metadata_atomically, storage)
    try:
        _drop_uncounted_episodes(storage)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise DatasetError(f"dataset {path} is unreadable ({err}); move it aside and collect again") from err
    return storage


def _update_metadata_atomically(storage, metadata: dict) -> None:
    """Minari's ``MinariStorage.update_metadata`` (merge ``metadata`` into ``metadata.json``), but written to a
    temporary file and renamed over the old one. Minari rewrites the file in place, so a kill during that
    write left an empty ``metadata.json`` and an unreadable dataset (13 of 60 kills, measured)."""
    from minari.dataset.minari_storage import METADATA_FILE_NAME, MinariStorage, _json_converter

    saved = MinariStorage.read_raw_metadata(storage.data_path)
    saved.update(metadata)
    path = Path(storage.data_path) / METADATA_FILE_NAME
    tmp = path.with_name("." + METADATA_FILE_NAME + ".tmp")
    with tmp.open("w") as f:
        json.dump(saved, f, default=_json_converter)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _drop_uncounted_episodes(storage) -> None:
    """Remove what a collection killed in the middle of an append left of the episode it was writing.

    An episode counts once ``metadata.json``'s ``total_episodes`` includes it, which Minari updates last. A kill
    before that leaves an uncounted episode ``N >= total_episodes``: in Arrow format a directory ``N/`` that
    may hold a truncated ``metadata.json`` (Minari merges into it, so the next append would fail on it); in HDF5
    a group ``episode_N`` that Minari would count with the next append, storing its seed twice. Both are
    removed, so the seed is collected again; nothing that was counted is touched."""
    data_path, counted = Path(storage.data_path), storage.total_episodes
    if storage.metadata.get("data_format") == "hdf5":
        import h5py

        path = data_path / "main_data.hdf5"
        if not path.exists() or path.stat().st_size == 0:  # no episode written yet (Minari creates it empty)
            return
        with h5py.File(path, "r") as f:
            extra = [k for k in f.keys() if k.startswith("episode_") and int(k.split("_")[1]) >= counted]
        if extra:
            with h5py.File(path, "a") as f:
                for k in extra:
                    del f[k]
    else:
        extra = [d for d in data_path.iterdir() if d.is_dir() and d.name.isdigit() and int(d.name) >= counted]
        for d in extra:
            shutil.rmtree(d)
    if extra:
        print(f"{data_path}: removed the partly written episode of an interrupted collection; it is collected again")


def _minari_version() -> str:
    import minari

    return minari.__version__


def stored_seeds(storage) -> list[int]:
    """Seeds of the episodes already in a Minari storage."""
    if storage.total_episodes == 0:
        return []
    return [int(m["seed"]) for m in storage.get_episode_metadata(range(storage.total_episodes))]


def episode_seeds(cfg: CollectConfig) -> range:
    """The reset seeds of a collection's episodes, in episode order: episode i uses ``cfg.seed +
    seed_offset(cfg.policy) + i``, for i < ``cfg.episodes``."""
    first = cfg.seed + seed_offset(cfg.policy)
    return range(first, first + cfg.episodes)


def collect(run_dir: Path, cfg: CollectConfig, name: str | None = None) -> Path:
    """Collect ``cfg.episodes`` episodes of ``cfg.policy`` with ``cfg.workers`` processes into ``RUN_DIR/data/NAME``.

    Episode i uses reset seed ``cfg.seed + seed_offset(cfg.policy) + i`` (``episode_seeds``); seeds already stored are
    skipped, so an interrupted collection resumes. Each finished episode is appended to the dataset at once.

    Returns:
        The dataset directory.

    Raises:
        DatasetError: if an existing dataset there cannot be read, or the directory holds files but no
            dataset (nothing is deleted).
    """
    path = dataset_dir(run_dir, name or cfg.policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = open_for_collection(path, cfg)
    done = set(stored_seeds(storage))
    todo = [seed for seed in episode_seeds(cfg) if seed not in done]
    workers = cfg.workers or mp.cpu_count()
    if not todo:
        return path
    bar = tqdm(total=cfg.episodes, initial=cfg.episodes - len(todo), desc=f"collect {name or cfg.policy}", unit="ep")
    ctx = mp.get_context("spawn")
    # Workers ignore Ctrl-C; the main process stops them at once (terminate), so the first Ctrl-C ends the
    # collection within a moment, keeping every episode already written.
    pool = ctx.Pool(min(workers, len(todo)), initializer=_ignore_sigint)
    job = functools.partial(_collect_episode, cfg=cfg, run_dir=Path(run_dir).resolve())
    try:
        for ep in pool.imap_unordered(job, todo):
            append_episode(storage, ep)
            bar.update(1)
            bar.set_postfix(ret=f"{float(ep.rewards.sum()):.0f}", steps=ep.length)
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C or a worker's error: the episodes in flight are dropped, the stored ones kept
        raise
    finally:
        pool.join()
        bar.close()
    return path


def append_episode(storage, ep: Episode) -> None:
    """Write one finished episode to a dataset opened by ``open_for_collection``; Ctrl-C waits for the write.

    The episode counts (``stored_seeds``) only once it is complete; a kill during the write leaves the dataset
    as it was before (Arrow format; see the module's docstring)."""
    from minari.data_collector import EpisodeBuffer

    buffer = EpisodeBuffer(
        seed=ep.seed,
        observations=ep.observations,
        actions=ep.actions,
        rewards=ep.rewards,
        terminations=ep.terminations,
        truncations=ep.truncations,
    )
    with _defer_sigint():
        storage.update_episodes([buffer])


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group; only the main process acts on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collection_plan(cfg: CollectConfig) -> list[CollectConfig]:
    """One config per dataset to collect: the entries of ``cfg.mix`` (``policy:episodes,...``), or ``cfg`` itself.
    ``CollectConfig`` has already refused a malformed mix, an unknown policy or a fractional episode count."""
    if not cfg.mix:
        return [cfg]
    return [
        dataclasses.replace(cfg, policy=name, episodes=int(count), mix="")
        for name, count in parse_recipe(cfg.mix, "episode count")
    ]


def mirror(frames: np.ndarray, actions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Left-right mirror image of frames (..., H, W, C) and, if given, actions (..., 3) with steer negated.

    CarRacing is symmetric under this flip: a left turn seen in a mirror is a right turn. Applying it
    twice is the identity.
    """
    flipped = frames[..., ::-1, :]
    if actions is None:
        return flipped, None
    actions = np.array(actions, copy=True)
    actions[..., 0] = -actions[..., 0]
    return flipped, actions


# One episode index for frame and sequence batches


def holdout_count(episodes: int, fraction: float) -> int:
    """How many of a dataset's ``episodes`` (its last ones) are held out of training for ``fraction``.

    ``min(n - 1, max(1, round(fraction * n)))`` when ``fraction`` > 0 and n >= 2, else 0: at least one
    episode is held out when any is asked for, and at least one always trains. The MDN-RNN's reward
    delusion and gossip's drift are both measured on these episodes.
    """
    if fraction <= 0 or episodes < 2:
        return 0
    return min(episodes - 1, max(1, round(fraction * episodes)))


def episode_windows(
    rng: np.random.Generator,
    lengths: np.ndarray,
    episode_p: np.ndarray,
    obs_start: np.ndarray,
    act_start: np.ndarray,
    seq_len: int,
    batch_size: int,
    windows: str = "inside",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays of a batch of training windows into episodes stored end to end.

    Episode e has ``lengths[e]`` = T_e actions and T_e + 1 observations, starting at ``act_start[e]`` and
    ``obs_start[e]`` of the concatenated arrays. B = ``batch_size`` episodes are drawn with probabilities
    ``episode_p``; each window is L = ``seq_len`` steps from a uniform offset in [0, T_e - L] for ``windows``
    ``inside`` (0 when the episode is not longer than L), or in [0, T_e - 1] for ``padded`` (``RNNConfig.windows``:
    every step from L - 1 on, the termination included, is then in L windows). Where a window runs past its
    episode's end, the tail repeats the last observation and action, masked.

    Raises:
        ValueError: ``windows`` neither ``inside`` nor ``padded``.

    Returns:
        (obs_idx int64 (B, L + 1), act_idx int64 (B, L), obs_mask float32 (B, L + 1), act_mask float32
        (B, L)): the masks are 1 where the window is inside its episode.
    """
    eps = rng.choice(len(lengths), batch_size, p=episode_p)
    lengths = lengths[eps]
    if windows not in ("inside", "padded"):
        raise ValueError(f"windows must be 'inside' or 'padded', got {windows!r}")
    span = lengths if windows == "padded" else np.maximum(lengths - seq_len + 1, 1)
    offsets = (rng.random(batch_size) * span).astype(np.int64)
    left = (lengths - offsets)[:, None]
    t = np.arange(seq_len)
    act_idx = act_start[eps, None] + offsets[:, None] + np.minimum(t[None, :], left - 1)
    obs_idx = obs_start[eps, None] + offsets[:, None] + np.minimum(np.arange(seq_len + 1)[None, :], left)
    obs_mask = (np.arange(seq_len + 1)[None, :] <= left).astype(np.float32)
    return obs_idx, act_idx, obs_mask, (t[None, :] < left).astype(np.float32)


# Load


def open_dataset(path: Path):
    """Open a Minari dataset directory.

    Raises:
        DatasetError: naming the path, if it is missing or unreadable.
    """
    import minari

    path = Path(path).resolve()
    if not (path / "metadata.json").is_file():
        raise DatasetError(f"no dataset at {path} (missing {path / 'metadata.json'})")
    try:
        return minari.MinariDataset(path)
    except Exception as err:
        raise DatasetError(f"dataset {path} is unreadable: {err}") from err


def _observations(stored) -> np.ndarray:
    """A stored episode's observations: uint8 frames stay uint8, vectors become float32."""
    obs = np.asarray(stored)
    return obs if obs.dtype == np.uint8 else obs.astype(np.float32)


def load_episodes(path: Path, limit: int | None = None) -> list[Episode]:
    """All episodes of a dataset (or the first ``limit`` stored) as arrays, in order of their reset seeds.

    Workers append episodes in the order they finish, which varies from run to run; sorting by seed makes
    what training reads (batch order, the held-out last episodes) the same for two runs with the same seeds.

    Raises:
        DatasetError: if the dataset is missing, unreadable or empty.
    """
    ds = open_dataset(path)
    n = ds.total_episodes if limit is None else min(limit, ds.total_episodes)
    if n == 0:
        raise DatasetError(f"dataset {path} has no episodes")
    meta = list(ds.storage.get_episode_metadata(range(n)))
    episodes = []
    try:
        for m, ep in zip(meta, ds.storage.get_episodes(range(n)), strict=True):
            episodes.append(
                Episode(
                    seed=int(m.get("seed", -1)),
                    observations=_observations(ep["observations"]),
                    actions=np.asarray(ep["actions"], np.float32),
                    rewards=np.asarray(ep["rewards"], np.float32),
                    terminations=np.asarray(ep["terminations"], bool),
                    truncations=np.asarray(ep["truncations"], bool),
                )
            )
    except Exception as err:
        raise DatasetError(f"dataset {path} is unreadable: {err}") from err
    return sorted(episodes, key=lambda ep: ep.seed)
