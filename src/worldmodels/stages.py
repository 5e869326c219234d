"""The pipeline's stages on a run directory: collect -> vae -> rnn -> dream -> test.

Each stage reads its inputs from ``RUN_DIR`` (DESIGN.md, "Data flow and the run directory"), checks
they exist, resumes its own outputs, and records its resolved config in ``RUN_DIR/config.json``. A
missing input is a ``MissingInput`` error whose message names the path and the command that makes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from worldmodels import checkpoint
from worldmodels.config import CollectConfig, DreamConfig, RNNConfig, TestConfig, VAEConfig, record_config
from worldmodels.data import collect, dataset_dir, load_episodes, open_dataset
from worldmodels.dream import DreamStart
from worldmodels.evaluate import Agent, run_episodes, summarize
from worldmodels.evolve import build_controller, controller_hparams, dream_fitness, evolve
from worldmodels.models import LinearController
from worldmodels.train import (
    LatentDataset,
    build_rnn,
    build_vae,
    encode_episodes,
    frames_of,
    train_rnn,
    train_vae,
)


class MissingInput(RuntimeError):
    """A stage's input does not exist; the message names it and the command that produces it."""


def _require(path: Path, command: str) -> None:
    if not path.exists():
        raise MissingInput(f"missing {path}: run `{command}` first")


def _require_ckpt(path: Path, command: str) -> None:
    if checkpoint.latest_step(path) is None:
        raise MissingInput(f"missing checkpoint in {path}: run `{command}` first")


# Completion checks (the pipeline skips finished stages)


def collect_done(run_dir: Path, cfg: CollectConfig) -> bool:
    path = dataset_dir(run_dir, cfg.policy)
    return (path / "metadata.json").is_file() and open_dataset(path).total_episodes >= cfg.episodes


def _ckpt_done(path: Path, steps: int) -> bool:
    step = checkpoint.latest_step(path)
    return step is not None and step >= steps


def vae_done(run_dir: Path, cfg: VAEConfig) -> bool:
    return _ckpt_done(Path(run_dir) / "vae" / "ckpt", cfg.steps)


def rnn_done(run_dir: Path, cfg: RNNConfig) -> bool:
    return _ckpt_done(Path(run_dir) / "rnn" / "ckpt", cfg.steps)


def dream_done(run_dir: Path, cfg: DreamConfig) -> bool:
    path = Path(run_dir) / "controller" / "es_state.npz"
    if not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as f:
        return int(f["generation"]) >= cfg.generations


def test_done(run_dir: Path, cfg: TestConfig) -> bool:
    path = Path(run_dir) / "eval" / "results.json"
    return path.is_file() and json.loads(path.read_text()).get("n") == cfg.episodes


# Stages


def run_collect(run_dir: Path, cfg: CollectConfig) -> Path:
    """Collect rollouts into ``RUN_DIR/data/POLICY``."""
    record_config(run_dir, "collect", cfg)
    path = collect(run_dir, cfg)
    ds = open_dataset(path)
    print(f"dataset {path}: {ds.total_episodes} episodes, {ds.total_steps} steps")
    return path


def _collect_cmd(run_dir: Path) -> str:
    return f"uv run collect_data.py --run-dir {run_dir}"


def run_vae(run_dir: Path, cfg: VAEConfig) -> None:
    """Train V on the frames of ``RUN_DIR/data/DATASET``; writes ``RUN_DIR/vae/``."""
    run_dir = Path(run_dir)
    data = dataset_dir(run_dir, cfg.dataset)
    _require(data / "metadata.json", _collect_cmd(run_dir))
    record_config(run_dir, "vae", cfg)
    if vae_done(run_dir, cfg):
        print(f"VAE already trained ({run_dir / 'vae'})")
        return
    frames = frames_of(load_episodes(data))
    print(f"training the VAE on {len(frames)} frames from {data}")
    train_vae(run_dir / "vae", frames, cfg)
    _finish(run_dir / "vae", ["total", "recon", "kl_raw"], "VAE training", "recon.png")


def load_vae(run_dir: Path, expected: dict | None = None):
    """The trained VAE of a run (rebuilt from its checkpoint's own sizes)."""
    path = Path(run_dir) / "vae" / "ckpt"
    _require_ckpt(path, f"uv run train_vae.py --run-dir {run_dir}")
    return checkpoint.load_module(path, build_vae, kind="vae", expected=expected)


def load_rnn(run_dir: Path, expected: dict | None = None):
    """The trained MDN-RNN of a run."""
    path = Path(run_dir) / "rnn" / "ckpt"
    _require_ckpt(path, f"uv run train_rnn.py --run-dir {run_dir}")
    return checkpoint.load_module(path, build_rnn, kind="mdnrnn", expected=expected)


def load_controller(run_dir: Path, expected: dict | None = None):
    """The evolved controller of a run."""
    path = Path(run_dir) / "controller" / "ckpt"
    _require_ckpt(path, f"uv run train_dream.py --run-dir {run_dir}")
    return checkpoint.load_module(path, build_controller, kind="controller", expected=expected)


def latents(run_dir: Path, dataset: str) -> LatentDataset:
    """The dataset encoded by the run's VAE, cached in ``RUN_DIR/rnn/latents.npz`` (keyed by VAE step)."""
    run_dir = Path(run_dir)
    vae_dir = run_dir / "vae" / "ckpt"
    _require_ckpt(vae_dir, f"uv run train_vae.py --run-dir {run_dir}")
    vae_step = checkpoint.latest_step(vae_dir)
    cache = run_dir / "rnn" / "latents.npz"
    if cache.is_file():
        data, extra = LatentDataset.load(cache)
        if int(extra["vae_step"]) == vae_step and str(extra["dataset"]) == dataset:
            return data
    path = dataset_dir(run_dir, dataset)
    _require(path / "metadata.json", _collect_cmd(run_dir))
    vae, meta = load_vae(run_dir)
    data = encode_episodes(vae, load_episodes(path))
    cache.parent.mkdir(parents=True, exist_ok=True)
    data.save(cache, vae_step=np.int64(meta["step"]), dataset=np.str_(dataset))
    return data


def run_rnn(run_dir: Path, cfg: RNNConfig) -> None:
    """Train M on the VAE's latent sequences; writes ``RUN_DIR/rnn/``."""
    run_dir = Path(run_dir)
    record_config(run_dir, "rnn", cfg)
    _require_ckpt(run_dir / "vae" / "ckpt", f"uv run train_vae.py --run-dir {run_dir}")
    if rnn_done(run_dir, cfg):
        print(f"MDN-RNN already trained ({run_dir / 'rnn'})")
        return
    data = latents(run_dir, cfg.dataset)
    print(f"training the MDN-RNN on {data.num_episodes} episodes, {len(data.actions)} steps")
    train_rnn(run_dir / "rnn", data, cfg)
    _finish(run_dir / "rnn", ["total", "mdn_nll", "reward", "done"], "MDN-RNN training")


def _finish(out_dir: Path, keys: list[str], title: str, *pictures: str, png: str = "losses.png") -> None:
    """Plot the stage's metrics to ``png`` and print its last logged values (the stage's summary)."""
    from worldmodels.viz import plot_metrics

    metrics = out_dir / "metrics.jsonl"
    if not metrics.is_file():
        return
    plot_metrics(metrics, out_dir / png, keys, title)
    last = json.loads(metrics.read_text().splitlines()[-1])
    xkey = "step" if "step" in last else "generation"
    values = ", ".join(f"{k} {last[k]:.4g}" for k in keys if k in last)
    print(f"{title}: {xkey} {last[xkey]}: {values} -> {out_dir} ({', '.join((png, *pictures))})")


def real_checker(run_dir: Path, episodes: int, seed: int, max_steps: int, workers: int):
    """A function flat_params -> mean real return over ``episodes`` episodes (for periodic checks)."""
    vae, _ = load_vae(run_dir)
    rnn, _ = load_rnn(run_dir)

    def check(flat: np.ndarray) -> float:
        ctrl = LinearController.from_flat(jnp.asarray(flat), rnn.z_size, rnn.hidden_size)
        res = run_episodes(
            Agent(vae, rnn, ctrl),
            list(range(seed, seed + episodes)),
            workers=workers,
            max_steps=max_steps,
            progress=False,
        )
        return float(np.mean([r.ret for r in res]))

    return check


def run_dream(run_dir: Path, cfg: DreamConfig, dataset: str = "brownian") -> None:
    """Evolve C with CMA-ES in M's dream; writes ``RUN_DIR/controller/``."""
    run_dir = Path(run_dir)
    record_config(run_dir, "dream", cfg)
    rnn, _ = load_rnn(run_dir)
    if dream_done(run_dir, cfg):
        print(f"controller already evolved ({run_dir / 'controller'})")
        return
    data = latents(run_dir, dataset)
    mu, logvar = data.initial()
    start = DreamStart(jnp.asarray(mu), jnp.asarray(logvar))
    check = None
    if cfg.eval_every:
        # Seeds between collection's and the final test's.
        check = real_checker(run_dir, cfg.eval_episodes, 500_000, cfg.eval_max_steps, 0)
    evolve(run_dir / "controller", dream_fitness(rnn, start, cfg), controller_hparams(rnn), cfg, real_check=check)
    _finish(run_dir / "controller", ["best", "mean", "kept_score", "sigma"], "CMA-ES in the dream", png="fitness.png")


def run_test(run_dir: Path, cfg: TestConfig) -> dict:
    """Score V + M + C in the real environment; writes ``RUN_DIR/eval/results.json`` (and videos)."""
    run_dir = Path(run_dir)
    vae, _ = load_vae(run_dir)
    rnn, _ = load_rnn(run_dir, expected={"z_size": vae.z_size})
    ctrl, _ = load_controller(run_dir, expected={"z_size": rnn.z_size, "hidden_size": rnn.hidden_size})
    record_config(run_dir, "test", cfg)
    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes))
    results = run_episodes(
        Agent(vae, rnn, ctrl),
        seeds,
        workers=cfg.workers,
        max_steps=cfg.max_steps,
        key=jr.key(cfg.seed),
        video_dir=run_dir / "eval" if cfg.video else None,
        video_episodes=cfg.video_episodes,
        fps=cfg.video_fps,
    )
    summary = summarize(results)
    out = run_dir / "eval" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(
        f"{summary['n']} real episodes: {summary['mean']:.1f} +- {summary['std']:.1f} "
        f"(min {summary['min']:.1f}, max {summary['max']:.1f}) -> {out}"
    )
    return summary
