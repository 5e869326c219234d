"""The pipeline's stages on a run directory: collect -> vae -> rnn -> dream -> test.

Each stage reads its inputs from ``RUN_DIR`` (docs/ARCHITECTURE.md, "The run directory"; paths and
loaders in ``worldmodels.run_dir``), checks they exist, resumes its own outputs, and records its resolved
config in ``RUN_DIR/config.json``. A missing input is a ``MissingInput`` error whose message names the
path and the command that makes it. Only ``pipeline.py`` and the top-level scripts import this module.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from worldmodels import checkpoint
from worldmodels.agent import Agent, Planner
from worldmodels.config import (
    ActorCriticConfig,
    CEMConfig,
    CollectConfig,
    DreamConfig,
    Preset,
    RNNConfig,
    TestConfig,
    VAEConfig,
    merge_config,
    parse_recipe,
    record_config,
)
from worldmodels.data import collect, collection_plan, episode_seeds, load_episodes, open_dataset
from worldmodels.diagnostics import delusion_text
from worldmodels.dream import DreamStart, mid_episode_starts
from worldmodels.env import get_spec
from worldmodels.evaluate import ci95, run_episodes, summarize
from worldmodels.evolve import dream_fitness, evolve, save_es_state, write_restart_state
from worldmodels.metrics_log import append_jsonl, write_json
from worldmodels.models.controller import controller_from_flat
from worldmodels.models.dynamics import stack_modules
from worldmodels.models.registry import controller_hparams
from worldmodels.run_dir import (
    dataset_dir,
    dynamics_meta,
    env_spec,
    export_agent,
    fixed_export,
    frozen,
    keep_previous_results,
    load_agent,
    load_dynamics,
    load_members,
    load_vae,
    member_dir,
    recipe_paths,
    require_ckpt,
    results_path,
    results_plan,
    same_weights,
)
from worldmodels.train import (
    DYNAMICS_NAMES,
    FrameMix,
    LatentDataset,
    bootstrap_episodes,
    encode_episodes,
    frames_of,
    rnn_hparams,
    train_rnn,
    train_rnn_ensemble,
    train_vae,
    vae_hparams,
)

# Completion checks (the pipeline skips finished stages)


def collect_done(run_dir: Path, cfg: CollectConfig) -> bool:
    """Every dataset of ``cfg``'s plan holds its episodes of ``cfg.env``. A dataset of another environment is not
    done: the collection stage then refuses it in one line (``data.open_for_collection``)."""
    gym_id = get_spec(cfg.env).gym_id
    for part in collection_plan(cfg):
        path = dataset_dir(run_dir, part.policy)
        if not (path / "metadata.json").is_file():
            return False
        ds = open_dataset(path)
        if ds.total_episodes < part.episodes or ds.storage.metadata.get("env_id", gym_id) != gym_id:
            return False
    return True


def _reached(step: int | None, steps: int) -> bool:
    """Whether a checkpoint at ``step`` (None: none yet) finishes a stage of ``steps`` updates."""
    return step is not None and step >= steps


def _ckpt_done(path: Path, steps: int) -> bool:
    return _reached(checkpoint.latest_step(path), steps)


def _check_sizes(ckpt_dir: Path, expected: dict) -> None:
    """Refuse a config whose sizes differ from the checkpoint already in ``ckpt_dir`` (both values named), before
    the stage records its config or counts itself done. Nothing to check without a checkpoint."""
    meta = checkpoint.newest_meta(ckpt_dir)
    if meta is not None:
        checkpoint.check_hparams(meta, expected, f"checkpoint {ckpt_dir}/{meta['step']}")


def vae_done(run_dir: Path, cfg: VAEConfig) -> bool:
    return fixed_export(run_dir) is not None or _ckpt_done(Path(run_dir) / "vae" / "ckpt", cfg.steps)


def rnn_done(run_dir: Path, cfg: RNNConfig) -> bool:
    if fixed_export(run_dir) is not None:
        return True
    return all(_ckpt_done(member_dir(run_dir, k) / "ckpt", cfg.steps) for k in range(cfg.ensemble))


def dream_done(run_dir: Path, cfg: DreamConfig, ac: ActorCriticConfig | None = None) -> bool:
    if cfg.learner == "actor-critic":
        return _ckpt_done(Path(run_dir) / "controller" / "ckpt", (ac or ActorCriticConfig()).steps)
    path = Path(run_dir) / "controller" / "es_state.npz"
    if not path.is_file():
        return False
    return int(checkpoint.read_npz(path, "CMA-ES state", ("generation",))["generation"]) >= cfg.generations


def test_done(run_dir: Path, cfg: TestConfig) -> bool:
    path = Path(run_dir) / "eval" / "results.json"
    if cfg.policy != "controller":  # a planner's results (run_test)
        path = path.parent / _policy_name(cfg) / "results.json"
    if not path.is_file():
        return False
    return results_plan(json.loads(path.read_text())) == {"n": cfg.episodes, "action_noise": cfg.action_noise}


def _policy_name(cfg: TestConfig) -> str:
    """The folder of a planner's results under ``RUN_DIR/eval/``: ``POLICY`` or ``POLICY-ensemble``."""
    return cfg.policy + ("-ensemble" if cfg.ensemble else "")


# Stages


def run_collect(run_dir: Path, cfg: CollectConfig) -> list[Path]:
    """Collect rollouts into ``RUN_DIR/data/POLICY`` (one dataset per policy of ``cfg.mix``)."""
    plan = collection_plan(cfg)
    record_config(run_dir, "collect", cfg)
    paths = []
    for part in plan:
        path = collect(run_dir, part)
        ds = open_dataset(path)
        print(f"dataset {path}: {ds.total_episodes} episodes, {ds.total_steps} steps")
        paths.append(path)
    return paths


def run_vae(run_dir: Path, cfg: VAEConfig) -> None:
    """Train V on the frames of ``RUN_DIR/data/DATASET``; writes ``RUN_DIR/vae/``.

    Does nothing (and says why) on a run whose ``rnn/ckpt`` is a GRU gossip export (``fixed_export``).
    """
    run_dir = Path(run_dir)
    export = fixed_export(run_dir)
    if export is not None:
        print(
            f"VAE not trained: {run_dir / 'vae'} and {run_dir / 'rnn'} are a {export.get('kind')!r} pair "
            f"{_rnn_origin(export)}, used as they are"
        )
        return
    sources = recipe_paths(run_dir, cfg.dataset)
    spec = env_spec(run_dir)
    if cfg.mirror and spec.observation != "pixels":
        raise ValueError(f"--mirror flips frames left-right; {spec.name}'s observations are vectors: drop --mirror")
    _check_sizes(run_dir / "vae" / "ckpt", vae_hparams(cfg, spec.obs_shape))
    record_config(run_dir, "vae", cfg)
    if vae_done(run_dir, cfg):
        print(f"VAE already trained ({run_dir / 'vae'})")
        return
    if (checkpoint.newest_meta(run_dir / "vae" / "ckpt") or {}).get("extra", {}).get("source") == "pixels":
        print(
            f"VAE not trained further: {run_dir / 'vae' / 'ckpt'} was trained end to end with the RSSM (rnn.obs "
            "pixels), alone it would move the latents the RSSM reads; train both with train_rssm.py --obs pixels"
        )
        return
    mix = FrameMix.of([(frames_of(load_episodes(path)), w) for path, w in sources])
    names = ", ".join(f"{p.name} (p {q:.2f})" for (p, _), q in zip(sources, mix.probs, strict=True))
    what = "the VAE" if spec.observation == "pixels" else "the MLP autoencoder"
    print(f"training {what} on {len(mix.frames)} observations from {names}" + (", mirrored" if cfg.mirror else ""))
    train_vae(run_dir / "vae", mix, cfg, spec.obs_names)
    _finish(run_dir / "vae", ["total", "recon", "kl_raw"], "VAE training", "recon.png")


def latents(run_dir: Path, cfg: RNNConfig) -> LatentDataset:
    """The recipe ``cfg.dataset`` encoded by the run's VAE (with ``cfg.mirror`` and ``cfg.holdout``).

    Each dataset is cached in ``RUN_DIR/rnn/latents/NAME.npz``, keyed by the VAE's step, the number of
    episodes and the mirror and hold-out settings, so a grown dataset re-encodes only itself.
    """
    run_dir = Path(run_dir)
    vae_dir = run_dir / "vae" / "ckpt"
    require_ckpt(vae_dir, f"uv run train_vae.py --run-dir {run_dir}")
    vae_step = checkpoint.latest_step(vae_dir)
    vae = None
    parts = []
    sources = recipe_paths(run_dir, cfg.dataset)
    for path, _ in sources:
        episodes = open_dataset(path).total_episodes
        key = json.dumps(
            {"vae_step": vae_step, "episodes": episodes, "mirror": cfg.mirror, "holdout": cfg.holdout, "order": "seed"}
        )
        cache = run_dir / "rnn" / "latents" / f"{path.name}.npz"
        data = None
        if cache.is_file():
            try:
                data, extra = LatentDataset.load(cache)
                data = data if str(extra["key"]) == key else None
            except (KeyError, checkpoint.CheckpointError):
                data = None  # an older or damaged cache: encode again
        if data is None:
            if vae is None:
                vae, _ = load_vae(run_dir)
            print(f"encoding {path.name} with the VAE" + (" (and its mirror image)" if cfg.mirror else ""))
            data = encode_episodes(vae, load_episodes(path), holdout=cfg.holdout, mirror=cfg.mirror)
            cache.parent.mkdir(parents=True, exist_ok=True)
            data.save(cache, key=np.str_(key))
        parts.append(data)
    return LatentDataset.concat(parts, [w for _, w in sources])


def _rnn_origin(meta: dict) -> str:
    """Who wrote an ``rnn/ckpt`` step, for messages."""
    extra = meta.get("extra", {})
    if extra.get("source") == "gossip":
        return f"exported from model {extra.get('model')} of a gossip pool by train_gossip.py"
    return "written by another stage"


def _check_trainable_rnn(run_dir: Path, kind: str) -> dict | None:
    """The metadata of ``RUN_DIR/rnn/ckpt`` (None when empty), refusing a checkpoint the M stage cannot continue
    as ``kind``: another dynamics kind (an RSSM when the config asks for an MDN-RNN, or a ``gru`` gossip export of a
    GRU pool) is neither resumed, retrained over, nor read as the asked kind.

    Raises:
        checkpoint.CheckpointError: naming the checkpoint, its kind, where it came from and what to do.
    """
    meta = dynamics_meta(run_dir)
    if meta is not None and meta.get("kind") != kind:
        other = meta.get("kind")
        hint = f" (or run with --kind {other} to go on training it)" if other in DYNAMICS_NAMES else ""
        raise checkpoint.CheckpointError(
            f"{run_dir / 'rnn' / 'ckpt'} holds a {other!r} dynamics {_rnn_origin(meta)}, not the "
            f"{DYNAMICS_NAMES[kind]} that train_rnn.py --kind {kind} would train; train_dream.py and test_agent.py use "
            f"it as it is. To train a {DYNAMICS_NAMES[kind]}, use another run directory{hint}"
        )
    return meta


def rnn_size_hparams(cfg: RNNConfig) -> dict:
    """The hparams of the M stage's checkpoint that the config fixes (checked before resuming or skipping): those of
    ``train.rnn_hparams`` except the sizes the VAE and the environment fix (z_size, action_size)."""
    return {k: v for k, v in rnn_hparams(cfg, z_size=0).items() if k not in ("z_size", "action_size")}


def _check_observation(run_dir: Path, meta: dict | None, cfg: RNNConfig) -> None:
    """Refuse to continue an RSSM trained on the other observation (``rnn.obs``: VAE latents or pixels)."""
    if meta is None or cfg.kind != "rssm":
        return
    trained = "pixels" if meta.get("extra", {}).get("source") == "pixels" else "latent"
    if trained != cfg.obs:
        raise checkpoint.CheckpointError(
            f"{run_dir / 'rnn' / 'ckpt'} holds an RSSM trained on {trained} observations, not {cfg.obs}; run with "
            f"--obs {trained} to go on training it, or use another run directory"
        )


def _train_on_pixels(run_dir: Path, cfg: RNNConfig):
    """The M stage with ``rnn.obs pixels``: the VAE stage's V and a new RSSM trained together, end to end, on frame
    windows (``pixels.train_pixel_rssm``, resumable in ``RUN_DIR/rnn/pixels/``); then the two parts are written
    as the run's V (``vae/ckpt`` at the VAE stage's step + ``cfg.steps``, ``extra.source = "pixels"``) and M
    (``rnn/ckpt`` at ``cfg.steps``, kind ``rssm``), so the dream, the controller and the test read them as they
    read any V and M. Returns the RSSM."""
    from worldmodels.pixels import FrameSequences, train_pixel_rssm

    vae_cfg = recorded_config(run_dir, "vae", VAEConfig)
    vae, vae_meta = load_vae(run_dir)
    extra = vae_meta.get("extra", {})
    pretrained_step = int(vae_meta["step"]) - (int(extra["rnn_step"]) if extra.get("source") == "pixels" else 0)
    sources = recipe_paths(run_dir, cfg.dataset)
    data = FrameSequences.of([(load_episodes(path), w) for path, w in sources], cfg.holdout, cfg.mirror)
    print(
        f"training V and the RSSM end to end on the frames of {int((~data.heldout).sum())} episodes "
        f"({int(data.heldout.sum())} held out), {len(data.actions)} steps"
    )
    model = train_pixel_rssm(run_dir / "rnn" / "pixels", data, cfg, vae.z_size, vae_cfg.kl_tolerance, init_vae=vae)
    extra = {"source": "pixels", "rnn_step": cfg.steps}
    checkpoint.save(run_dir / "vae" / "ckpt", pretrained_step + cfg.steps, model.vae, kind="vae",
                    hparams={"z_size": vae.z_size, "arch": vae.arch}, extra=extra)  # fmt: skip
    checkpoint.save(run_dir / "rnn" / "ckpt", cfg.steps, model.rssm, kind="rssm",
                    hparams=rnn_hparams(cfg, vae.z_size), extra=extra)  # fmt: skip
    _finish(run_dir / "rnn" / "pixels", ["total", "image", "recon", "obs", "kl", "reward"], "V + RSSM on pixels")
    return model.rssm


def run_rnn(run_dir: Path, cfg: RNNConfig) -> None:
    """Train M on the VAE's latent sequences; writes ``RUN_DIR/rnn/`` (and the held-out reward delusion).

    An MDN-RNN already in ``RUN_DIR/rnn/ckpt`` (this stage's or a gossip export) is resumed up to ``cfg.steps``.

    Raises:
        MissingInput: without a VAE checkpoint or a dataset of the recipe.
        checkpoint.CheckpointError: when ``RUN_DIR/rnn/ckpt`` holds another dynamics (a GRU gossip export; checked
            before anything is recorded or trained) or an MDN-RNN of other sizes.
    """
    run_dir = Path(run_dir)
    name = DYNAMICS_NAMES[cfg.kind]
    meta = _check_trainable_rnn(run_dir, cfg.kind)
    _check_observation(run_dir, meta, cfg)
    spec = env_spec(run_dir)
    if cfg.obs == "pixels" and spec.observation != "pixels":
        raise ValueError(f"--obs pixels trains on frames; {spec.name}'s observations are vectors: use --obs latent")
    require_ckpt(run_dir / "vae" / "ckpt", f"uv run train_vae.py --run-dir {run_dir}")
    recipe_paths(run_dir, cfg.dataset)  # every dataset of the recipe exists
    for k in range(cfg.ensemble):
        _check_sizes(member_dir(run_dir, k) / "ckpt", rnn_size_hparams(cfg))
    record_config(run_dir, "rnn", cfg)
    if rnn_done(run_dir, cfg):
        origin = "" if meta is None or meta.get("extra", {}).get("source") != "gossip" else f", {_rnn_origin(meta)}"
        members = f", an ensemble of {cfg.ensemble}" if cfg.ensemble > 1 else ""
        print(f"{name} already trained ({run_dir / 'rnn'}{origin}){members}")
        return
    if cfg.obs == "pixels":
        model = _train_on_pixels(run_dir, cfg)
        record_delusion(run_dir, model, latents(run_dir, cfg), cfg.steps)
        return
    data = latents(run_dir, cfg)
    keys = ["total", "obs", "kl", "reward", "cont"] if cfg.kind == "rssm" else ["total", "mdn_nll", "reward", "done"]
    latest = [checkpoint.latest_step(member_dir(run_dir, k) / "ckpt") for k in range(cfg.ensemble)]
    todo = [k for k, step in enumerate(latest) if not _reached(step, cfg.steps)]

    def member_data(k: int) -> LatentDataset:
        return bootstrap_episodes(data, cfg.seed + k) if cfg.bootstrap and k else data

    if len(todo) > 1 and len({latest[k] for k in todo}) == 1:
        seeds = [cfg.seed + k for k in todo]
        print(
            f"training {len(todo)} members of the ensemble of {cfg.ensemble} {name}s at once (vmapped; members "
            f"{todo}, seeds {seeds}) on {int((~data.heldout).sum())} episodes ({int(data.heldout.sum())} held "
            f"out), {len(data.actions)} steps" + (", members >= 1 on bootstrap resamples" if cfg.bootstrap else "")
        )
        log_dir = run_dir / "rnn" / "ensemble"
        member_dirs, datas = [member_dir(run_dir, k) for k in todo], [member_data(k) for k in todo]
        models = train_rnn_ensemble(log_dir, member_dirs, datas, cfg, seeds)
        _finish(log_dir, keys, f"{name} ensemble training (means over members; name/k in metrics.jsonl)")
        if todo[0] == 0:
            record_delusion(run_dir, models[0], data, cfg.steps)
        return
    if 0 in todo:
        print(
            f"training the {name} on {int((~data.heldout).sum())} episodes ({int(data.heldout.sum())} held out), "
            f"{len(data.actions)} steps"
        )
        model = train_rnn(run_dir / "rnn", data, cfg)
        _finish(run_dir / "rnn", keys, f"{name} training")
        record_delusion(run_dir, model, data, cfg.steps)
    for k in todo:
        if k:
            out = member_dir(run_dir, k)
            print(f"training ensemble member {k} of {cfg.ensemble - 1} (seed {cfg.seed + k}) into {out}")
            train_rnn(out, member_data(k), dataclasses.replace(cfg, seed=cfg.seed + k))
            _finish(out, keys, f"{name} training, ensemble member {k}")


def record_delusion(run_dir: Path, model, data: LatentDataset, step: int) -> dict:
    """Measure M's reward delusion on the held-out episodes; append it to ``rnn/metrics.jsonl``
    and write ``rnn/delusion.json``."""
    from worldmodels.train import heldout_delusion

    out = {"step": step, **heldout_delusion(model, data)}
    append_jsonl(Path(run_dir) / "rnn" / "metrics.jsonl", out)
    write_json(Path(run_dir) / "rnn" / "delusion.json", out)
    print(
        f"reward delusion on {out['episodes']} held-out episodes: {delusion_text(out['reward_delusion'])} of "
        f"{out['offroad_steps']} off-road steps predicted as rewarded"
    )
    return out


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


def real_checker(run_dir: Path, episodes: int, seed: int, max_steps: int, workers: int, hparams: dict):
    """A function flat_params -> mean real return over ``episodes`` episodes (for periodic checks) of the
    controller of ``hparams`` (``registry.controller_hparams``: its sizes, squash, inputs and hidden units) in the
    run's environment."""
    vae, _ = load_vae(run_dir)
    dynamics, _ = load_dynamics(run_dir, expected={"z_size": vae.z_size})
    spec = env_spec(run_dir)

    def check(flat: np.ndarray) -> float:
        ctrl = controller_from_flat(jnp.asarray(flat), **hparams)
        res = run_episodes(
            Agent(vae, dynamics, ctrl),
            list(range(seed, seed + episodes)),
            workers=workers,
            max_steps=max_steps,
            progress=False,
            env=spec.name,
        )
        return float(np.mean([r.ret for r in res]))

    return check


def recorded_config(run_dir: Path, section: str, cls: type):
    """The config of ``section`` (``"vae"``, ``"rnn"``, ...) recorded in ``RUN_DIR/config.json`` by its stage, as a
    ``cls``; the defaults when none is recorded."""
    path = Path(run_dir) / "config.json"
    rec = json.loads(path.read_text()).get(section) if path.is_file() else None
    return merge_config(cls, rec, str(path)) if rec else cls()


def recorded_rnn_config(run_dir: Path) -> RNNConfig:
    """The M config recorded in ``RUN_DIR/config.json`` by ``run_rnn`` (defaults if none)."""
    return recorded_config(run_dir, "rnn", RNNConfig)


def dream_starts(dynamics, data: LatentDataset, cfg: DreamConfig) -> DreamStart:
    """Where the dreams of ``run_dream`` begin.

    With ``cfg.mid_episode_starts`` 0: every episode's first frame, from the initial state (the paper).
    Otherwise a pool of ``cfg.start_pool`` frames drawn from ``cfg.seed``: ``round(fraction * pool)`` of
    them uniformly over every frame that has an action after it (time 0 included), with M's state warmed
    up on the episode before (``dream.mid_episode_starts``), the rest first frames drawn uniformly.

    Args:
        dynamics: the dynamics M the dreams run in.
        data: the latent episodes M was trained on.
        cfg: the dream config.

    Returns:
        ``DreamStart`` (its ``state`` is ``None`` in the first case).
    """
    mu, logvar = data.initial()
    if cfg.mid_episode_starts == 0:
        return DreamStart(jnp.asarray(mu), jnp.asarray(logvar))
    rng = np.random.default_rng([cfg.seed, 7])
    n_mid = round(cfg.mid_episode_starts * cfg.start_pool)
    lengths = data.lengths.astype(np.int64)
    # Uniform over frames: an episode with probability proportional to its length, then a time in it.
    episodes = rng.choice(len(lengths), size=cfg.start_pool, p=lengths / lengths.sum())
    times = np.floor(rng.random(cfg.start_pool) * lengths[episodes]).astype(np.int64)
    episodes[n_mid:] = rng.integers(0, len(lengths), size=cfg.start_pool - n_mid)  # the rest: first frames
    times[n_mid:] = 0
    return mid_episode_starts(
        dynamics, data.mu, data.logvar, data.actions, data.obs_start, data.act_start, episodes, times
    )


def _check_learner(run_dir: Path, cfg: DreamConfig) -> None:
    """Refuse to train one learner over the other's controller in ``RUN_DIR/controller/ckpt``, before anything is
    recorded (``checkpoint.CheckpointError`` naming both and what to do)."""
    meta = checkpoint.newest_meta(run_dir / "controller" / "ckpt")
    want = "actor" if cfg.learner == "actor-critic" else "controller"
    if meta is not None and meta.get("kind") != want:
        other = "actor-critic" if meta.get("kind") == "actor" else "cmaes"
        raise checkpoint.CheckpointError(
            f"{run_dir / 'controller' / 'ckpt'} holds a {meta.get('kind')!r} trained by --learner {other}, not what "
            f"--learner {cfg.learner} trains; run with --learner {other} or use another run directory"
        )


def _ensemble_members(run_dir: Path, rnn_cfg: RNNConfig, cfg: DreamConfig, dynamics) -> list:
    """The other members of the run's ensemble of M that CMA-ES dreams in (``cfg.ensemble`` - 1 of them; none for
    one M or the actor-critic), loaded before anything is recorded.

    Raises:
        ValueError: ``cfg.ensemble`` larger than the ensemble the M stage trained (``rnn_cfg.ensemble``).
        MissingInput, CheckpointError: a member missing, damaged or of another Z or A than the run's M.
    """
    if cfg.learner != "cmaes" or cfg.ensemble == 1:
        return []
    if cfg.ensemble > rnn_cfg.ensemble:
        raise ValueError(
            f"--ensemble {cfg.ensemble}: {run_dir} has {rnn_cfg.ensemble} M; train the members with "
            f"uv run train_rnn.py --run-dir {run_dir} --ensemble {cfg.ensemble}"
        )
    expected = {"z_size": dynamics.z_size, "action_size": dynamics.action_size}
    return load_members(run_dir, cfg.ensemble, expected)


def run_dream(run_dir: Path, cfg: DreamConfig, ac: ActorCriticConfig | None = None) -> None:
    """Learn C in M's dream; writes ``RUN_DIR/controller/``: CMA-ES evolves the linear controller (``cfg.learner``
    ``cmaes``, the paper), or an actor and a critic learn on imagined lambda-returns (``actor-critic``, with ``ac``;
    ``dreamer.train_actor_critic``).

    M is whichever dynamics ``RUN_DIR/rnn/ckpt`` holds (``run_dir.load_dynamics``: an MDN-RNN, an RSSM, or a GRU
    transition exported by train_gossip.py, whose one Gaussian is sampled at the same temperature). Dreams start from
    the episodes M was trained on (the recipe of the ``rnn`` section of ``RUN_DIR/config.json``).
    """
    run_dir = Path(run_dir)
    ac = ac or ActorCriticConfig()
    dynamics, _ = load_dynamics(run_dir)
    rnn_cfg = recorded_rnn_config(run_dir)
    recipe_paths(run_dir, rnn_cfg.dataset)  # the episodes dreams start from exist
    _check_learner(run_dir, cfg)
    spec = env_spec(run_dir)
    hparams = controller_hparams(dynamics, spec.squash, cfg.controller_inputs, cfg.controller_units)
    if cfg.learner == "cmaes":
        _check_sizes(run_dir / "controller" / "ckpt", hparams)
    members = _ensemble_members(run_dir, rnn_cfg, cfg, dynamics)
    record_config(run_dir, "dream", cfg)
    if cfg.learner == "actor-critic":
        record_config(run_dir, "actor_critic", ac)
    if dream_done(run_dir, cfg, ac):
        print(f"controller already trained in the dream ({run_dir / 'controller'})")
        return
    if cfg.learner == "actor-critic":
        from worldmodels.dreamer import train_actor_critic

        train_actor_critic(run_dir / "controller", dynamics, latents(run_dir, rnn_cfg), ac, cfg, spec.squash)
        _finish(run_dir / "controller", ["imagined_return", "value", "entropy", "actor_loss", "critic_loss"],
                "actor-critic in the dream")  # fmt: skip
        return
    start = dream_starts(dynamics, latents(run_dir, rnn_cfg), cfg)
    check = None
    if cfg.eval_every:
        # Seeds between collection's and the final test's.
        check = real_checker(run_dir, cfg.eval_episodes, 500_000, cfg.eval_max_steps, 0, hparams)
    fitness = dream_fitness(dynamics, start, cfg, spec.squash, members)
    if members:
        print(f"CMA-ES in an ensemble of {len(members) + 1} M, pessimism {cfg.pessimism:g}")
    evolve(run_dir / "controller", fitness, hparams, cfg, real_check=check)
    _finish(run_dir / "controller", ["best", "mean", "kept_score", "sigma"], "CMA-ES in the dream", png="fitness.png")


def planner_of(run_dir: Path, agent: Agent, cfg: TestConfig, cem: CEMConfig) -> Planner | None:
    """The CEM planner ``cfg.policy`` asks for (``None`` for ``controller``), scoring plans in the run's M or, with
    ``cfg.ensemble``, in an ensemble of the run's M (member 0) and the other runs' M.

    Raises:
        MissingInput, CheckpointError: an ensemble run without a dynamics checkpoint, or one whose M differs from
            this run's in kind or sizes (both named), or was trained on another V's latents.
    """
    if cfg.policy == "controller":
        return None
    members, ensemble = [agent.dynamics], bool(cfg.ensemble)
    if ensemble:
        meta = dynamics_meta(run_dir)  # the agent's M, already loaded: its kind and sizes
        for entry in cfg.ensemble_runs:
            other, other_meta = load_dynamics(Path(entry), expected=meta["hparams"])
            if other_meta["kind"] != meta["kind"]:
                raise checkpoint.CheckpointError(
                    f"--ensemble {entry}: its M is a {other_meta['kind']!r}, this run's a {meta['kind']!r}; an "
                    "ensemble needs one kind"
                )
            other_vae, _ = load_vae(Path(entry))
            if not same_weights(agent.vae, other_vae):
                raise checkpoint.CheckpointError(
                    f"--ensemble {entry}: its V differs from {run_dir}'s, so its M reads other latents; train it on "
                    "this run's V (link vae/ and rnn/latents/, as experiments/dynamics_compare.sh does)"
                )
            members.append(other)
    dynamics = stack_modules(members) if ensemble else agent.dynamics
    spec = env_spec(run_dir)
    low, high = jnp.asarray(spec.low()), jnp.asarray(spec.high())
    return Planner(dynamics, low, high, cem, ensemble, seeded=cfg.policy == "cem-controller")


TEST_NOISE_SEED = 1_000_000
"""Seed of the key every real test draws its latent noise from (folded with each episode's seed and step,
``evaluate.run_episodes``), whatever ``--seed`` starts the episodes at: an episode's return depends on its own
seed alone, so ``--seed 1000018 --episodes 1`` replays episode 1,000,018 of a 100-episode test from 1,000,000
(the default, whose results this constant leaves as they were)."""


def run_test(run_dir: Path, cfg: TestConfig, out: Path | None = None, cem: CEMConfig | None = None) -> dict:
    """Score V + M + C in the real environment; writes ``out`` (default ``RUN_DIR/eval/results.json``) and
    videos next to it. M is whichever dynamics ``RUN_DIR/rnn/ckpt`` holds (``run_dir.load_dynamics``).

    With ``cfg.policy`` ``cem`` or ``cem-controller`` a CEM planner acts instead of C (``planner_of``; ``cem`` its
    settings, default ``CEMConfig()``), and the default ``out`` is ``RUN_DIR/eval/POLICY[-ensemble]/results.json``;
    its summary adds the planner's settings, how often the off-road constraint bound and the planning time.

    The test config is recorded in ``RUN_DIR/config.json`` (section ``test``, or ``test_POLICY`` for a planner), or,
    when ``out`` is given, in a ``config.json`` next to ``out``: with ``out`` outside the run directory, the run
    directory is only read. A frozen run directory (a shipped agent, ``run_dir.frozen``) is always only read:
    without ``out`` its results go to a fresh ``runs/NAME-eval-TIME/eval/`` (``run_dir.results_path``)."""
    run_dir = Path(run_dir)
    cem = cem or CEMConfig()
    agent = load_agent(run_dir)
    planner = planner_of(run_dir, agent, cfg, cem)
    name = _policy_name(cfg)
    in_run = out is None and not frozen(run_dir)
    if planner is not None and out is None:
        out = results_path(run_dir).parent / name / "results.json"
    out = results_path(run_dir, out)
    record_config(run_dir if in_run else out.parent, "test" if planner is None else f"test_{name}", cfg)
    if planner is not None:
        record_config(run_dir if in_run else out.parent, f"cem_{name}", cem)
    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes))
    spec = env_spec(run_dir)
    timing: dict = {}
    results = run_episodes(
        agent,
        seeds,
        workers=cfg.workers,
        max_steps=cfg.max_steps,
        key=jr.key(TEST_NOISE_SEED),
        video_dir=out.parent if cfg.video else None,
        video_episodes=cfg.video_episodes,
        fps=cfg.video_fps,
        planner=planner,
        timing=timing,
        env=spec.name,
        action_noise=cfg.action_noise,
    )
    summary = summarize(results)
    summary["action_noise"] = cfg.action_noise
    summary["timing"] = {**timing, "env_steps_per_s": timing["env_steps"] / max(timing["wall_s"], 1e-9),
                         "agent_share": timing["act_s"] / max(timing["wall_s"], 1e-9)}  # fmt: skip
    if planner is not None:
        members = [str(run_dir), *cfg.ensemble_runs]
        bound = summary["constraint_steps"] / max(timing["env_steps"], 1)
        summary["planner"] = {"policy": cfg.policy, "ensemble": members, "cem": dataclasses.asdict(cem),
                              "constraint_fraction": bound}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    aside = keep_previous_results(out, results_plan(summary))
    if aside is not None:
        print(f"the earlier results of {out.parent} (another test plan) are kept as {aside}")
    write_json(out, summary)
    from worldmodels.viz import plot_returns  # here, not at the top: matplotlib costs a second at import

    plot_returns(
        out.parent / "returns.png",
        np.array([r.ret for r in results]),
        f"{spec.name}, {run_dir.name}, {name}, action noise {cfg.action_noise:g}",
        threshold=spec.reward_threshold,
        ci95=summary["ci95"],
    )
    print(
        f"{summary['n']} real episodes ({name}): {summary['mean']:.1f} +- {summary['std']:.1f} (std; 95 % CI of the "
        f"mean +- {summary['ci95']:.1f}; min {summary['min']:.1f}, max {summary['max']:.1f}); reward delusion "
        f"{delusion_text(summary['reward_delusion'])} over {summary['offroad_steps']} off-road steps; M's own "
        f"estimate of the return along the real episodes {summary['model_return']:.1f}; "
        f"{summary['timing']['env_steps_per_s']:.0f} env steps/s, the agent's share of the time "
        f"{100 * summary['timing']['agent_share']:.0f} % -> {out}"
    )
    if planner is not None and cem.offroad_threshold > 0:
        print(f"off-road constraint bound at {100 * summary['planner']['constraint_fraction']:.1f} % of the steps")
    return summary


# The Sim2Real2Sim loop


def iteration_configs(
    preset: Preset, k: int
) -> tuple[CollectConfig, RNNConfig, DreamConfig, ActorCriticConfig, TestConfig]:
    """The stage configs of loop iteration ``k`` >= 1 of ``preset``.

    Iteration k grows the on-policy ``controller`` dataset to k * ``iterate.episodes`` episodes (collected
    with the current controller), fine-tunes M to ``rnn.steps + k * iterate.rnn_steps`` updates on
    the preset's recipe plus ``controller:iterate.weight``, continues CMA-ES to ``dream.generations + k *
    iterate.generations`` generations (or the actor-critic to ``actor_critic.steps + k * iterate.ac_steps``
    updates), and scores the result on ``iterate.test_episodes`` real episodes.
    """
    it = preset.iterate
    collect = dataclasses.replace(preset.collect, policy="controller", mix="", episodes=k * it.episodes)
    recipe = ",".join(f"{n}:{w:g}" for n, w in parse_recipe(preset.rnn.dataset) if n != "controller")
    rnn = dataclasses.replace(
        preset.rnn, dataset=f"{recipe},controller:{it.weight:g}", steps=preset.rnn.steps + k * it.rnn_steps
    )
    dream = dataclasses.replace(preset.dream, generations=preset.dream.generations + k * it.generations)
    ac = dataclasses.replace(preset.actor_critic, steps=preset.actor_critic.steps + k * it.ac_steps)
    test = dataclasses.replace(preset.test, episodes=it.test_episodes, video=False)
    return collect, rnn, dream, ac, test


def iteration_steps(preset: Preset, j: int) -> tuple[int, int]:
    """(M's updates, the controller checkpoint's step) at the end of loop iteration ``j`` of ``preset`` (0: the
    first pipeline pass); the step is CMA-ES's generation or the actor-critic's update."""
    if j == 0:
        rnn, dream, ac = preset.rnn, preset.dream, preset.actor_critic
    else:
        _, rnn, dream, ac, _ = iteration_configs(preset, j)
    return rnn.steps, ac.steps if dream.learner == "actor-critic" else dream.generations


def agent_snapshot_dir(run_dir: Path, j: int) -> Path:
    """Where the loop keeps iteration ``j``'s agent: ``RUN_DIR/iterations/J/agent`` (``snapshot_agent``)."""
    return Path(run_dir) / "iterations" / str(j) / "agent"


def snapshot_agent(run_dir: Path, preset: Preset, j: int) -> Path | None:
    """Keep loop iteration ``j``'s agent (V, and M and C as iteration ``j`` left them) as the frozen run directory
    ``agent_snapshot_dir(run_dir, j)``, so that ``test_agent.py --run-dir RUN_DIR/iterations/J/agent`` drives it
    after later iterations replaced M and C (the loop keeps only their newest checkpoints). M and C are copied
    (``run_dir.export_agent``, a few MB), V is linked: the loop never retrains it.

    Done once (an existing snapshot is returned as it is). Skipped, returning None with a line that says why,
    when M or C is no longer at iteration ``j``'s step (``iteration_steps``): a loop resumed from a version of
    this program that kept no snapshots, or a run whose M is a fixed export.
    """
    run_dir = Path(run_dir)
    out = agent_snapshot_dir(run_dir, j)
    if out.is_dir():
        return out
    want = iteration_steps(preset, j)
    have = (checkpoint.latest_step(run_dir / "rnn" / "ckpt"), checkpoint.latest_step(run_dir / "controller" / "ckpt"))
    if have != want or fixed_export(run_dir) is not None:
        print(f"iteration {j}'s agent is not kept in {out}: M and C are at steps {have}, iteration {j}'s are {want}")
        return None
    export_agent(run_dir, out, {"source": str(run_dir), "preset": preset.name, "iteration": j}, link=("vae",))
    return out


def onpolicy_returns(run_dir: Path, preset: Preset, k: int) -> dict:
    """The real returns of the on-policy episodes loop iteration ``k`` >= 1 collected: iteration ``k - 1``'s
    controller driving with its exploration (``collect.controller_noise``, or an actor's own samples) on collection
    seeds, which no test uses. Free validation data: over a loop, the controller whose own episodes scored
    best is the one to keep (see the README's LunarLander section), and choosing by them looks at no test seed.

    Cached in ``RUN_DIR/iterations/K/onpolicy.json`` once all of the iteration's episodes are stored.

    Returns:
        dict with ``controller_iteration`` (k - 1), ``seeds``, ``returns`` (float, per episode, in seed order),
        ``n``, ``mean`` and ``ci95`` (half-width of the 95 % interval of the mean; None for fewer than 1 and 2
        episodes), ``exploration`` (the actor's own samples, or the linear controller's noise).

    Raises:
        DatasetError: when ``RUN_DIR/data/controller`` is missing or unreadable.
    """
    out = Path(run_dir) / "iterations" / str(k) / "onpolicy.json"
    if out.is_file():
        return json.loads(out.read_text())
    cfg = iteration_configs(preset, k)[0]
    wanted = episode_seeds(cfg)[(k - 1) * preset.iterate.episodes :]  # the last iterate.episodes of k * episodes
    ds = open_dataset(dataset_dir(run_dir, cfg.policy))
    seeds = [int(m["seed"]) for m in ds.storage.get_episode_metadata(range(ds.total_episodes))]
    index = sorted((s, i) for i, s in enumerate(seeds) if s in wanted)
    returns = [float(np.sum(ep["rewards"])) for ep in ds.storage.get_episodes([i for _, i in index])]
    rets = np.asarray(returns)
    summary = {
        "controller_iteration": k - 1,
        "seeds": [s for s, _ in index],
        "returns": returns,
        "n": len(returns),
        "mean": float(rets.mean()) if len(rets) else None,
        "ci95": ci95(rets) if len(rets) > 1 else None,
        "exploration": "the actor's own samples"
        if preset.dream.learner == "actor-critic"
        else f"noise {cfg.controller_noise:g}",
    }
    if len(returns) == len(wanted):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, summary)
    return summary


def collect_onpolicy(run_dir: Path, preset: Preset, k: int) -> dict:
    """The first step of loop iteration ``k`` >= 1: keep iteration ``k - 1``'s agent (``snapshot_agent``, before
    the iteration replaces M and C), grow ``data/controller`` by ``iterate.episodes`` episodes of its controller,
    and return their returns (``onpolicy_returns``). Resumes like every collection; episodes already stored are
    kept."""
    collect_cfg = iteration_configs(preset, k)[0]
    snapshot_agent(run_dir, preset, k - 1)
    print(f"== iteration {k}: on-policy collection ({collect_cfg.episodes} episodes in data/controller) ==")
    collect(run_dir, collect_cfg)
    return onpolicy_returns(run_dir, preset, k)


def _restart_kept_best(run_dir: Path, generation: int, restart_sigma: float = 0.0) -> None:
    """Forget the kept best controller's dream score before CMA-ES continues in a new MDN-RNN's dream
    (a score from the old dream is not comparable); only when no generation of the new round ran yet.

    With ``restart_sigma`` > 0 (``iterate.restart_sigma``) the round also restarts the search: the state keeps
    its mean, kept best and step-size rule, takes this step size, and loses its covariance and evolution paths,
    so ``evolve`` builds a fresh CMA-ES around the mean. Written atomically, once: a restarted state's sigma is
    the restart value and its covariance is gone, so running this again changes nothing."""
    path = Path(run_dir) / "controller" / "es_state.npz"
    state = checkpoint.read_npz(path, "CMA-ES state", ("generation", "best_score", "mean", "sigma", "best"))
    if int(state["generation"]) != generation:
        return
    if restart_sigma > 0 and "C" in state:
        adaptation = str(state["adaptation"]) if "adaptation" in state else None
        write_restart_state(path, state["mean"], restart_sigma, generation, adaptation, best=state["best"])
        return
    if np.isfinite(state["best_score"]):
        state["best_score"] = np.float64(-np.inf)
        state["mean_score"] = np.float64(-np.inf)
        save_es_state(path, state)


def run_iteration(run_dir: Path, preset: Preset, k: int) -> dict:
    """Loop iteration ``k`` (see ``iteration_configs``); every step resumes, a finished one is skipped.

    Writes ``RUN_DIR/iterations/K/results.json`` and returns its summary; keeps iteration ``k - 1``'s agent
    (before this iteration changes it) and iteration ``k``'s (``snapshot_agent``) and the returns of the on-policy
    episodes (``onpolicy_returns``).
    """
    run_dir = Path(run_dir)
    out = run_dir / "iterations" / str(k) / "results.json"
    if out.is_file():
        return json.loads(out.read_text())
    collect_onpolicy(run_dir, preset, k)
    _, rnn_cfg, dream_cfg, ac_cfg, test_cfg = iteration_configs(preset, k)
    if not rnn_done(run_dir, rnn_cfg):
        name = DYNAMICS_NAMES[rnn_cfg.kind]
        print(f"== iteration {k}: {name} fine-tuning to {rnn_cfg.steps} updates on {rnn_cfg.dataset} ==")
        run_rnn(run_dir, rnn_cfg)
    if not dream_done(run_dir, dream_cfg, ac_cfg):
        if dream_cfg.learner == "actor-critic":
            print(f"== iteration {k}: actor-critic to update {ac_cfg.steps} in the new dream ==")
        else:
            print(f"== iteration {k}: CMA-ES to generation {dream_cfg.generations} in the new dream ==")
            it = preset.iterate
            _restart_kept_best(run_dir, dream_cfg.generations - it.generations, it.restart_sigma)
        run_dream(run_dir, dream_cfg, ac_cfg)
    print(f"== iteration {k}: real test ({test_cfg.episodes} episodes) ==")
    summary = run_test(run_dir, test_cfg, out)
    snapshot_agent(run_dir, preset, k)
    return summary
