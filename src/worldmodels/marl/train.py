"""The Dreaming-of-Others run on a run directory: teammates, collect-and-train iterations, zero-shot evaluation.

``run_marl(run_dir, cfg)`` (``train_marl.py``) writes::

    RUN_DIR/
      config.json           the resolved ``marl`` config
      partners/             the teammate population (kind partner_pool), unless --marl.partners-dir names one
      marl/ckpt/            the learner (world model, actor, critic, optimisers; kind marl_learner), per iteration
      marl/replay.npz       every collected episode (x_t, a^0_t, a^j_t, r_t, shaped_t, teammate), saved with it
      marl/metrics.jsonl    one row per iteration (returns with the training teammates, ToM accuracy, losses), tb/
      eval/results.json     returns per episode with each training and held-out teammate (mean, 95 % interval),
                            ToM accuracy against the teammates' real actions and true policies
      eval/episode.gif      one episode with the first held-out teammate (or the first training one)

Every stage resumes: a finished population is reused, the learner and replay continue from their last saved
iteration (both written atomically after each iteration), and a finished evaluation is kept unless the learner
changed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from worldmodels import checkpoint
from worldmodels.config import MARLConfig, record_config, to_dict
from worldmodels.errors import MissingInput, TrainingDiverged
from worldmodels.evaluate import ci95
from worldmodels.marl import env as menv
from worldmodels.marl import partners as mpartners
from worldmodels.marl.ppo import build_policy, policy_hparams, train_ppo
from worldmodels.marl.rollout import Episodes, Replay, run_episodes, tom_scores
from worldmodels.marl.social import Learner, init_learner, make_train_step, model_hparams
from worldmodels.metrics_log import MetricsLog, trim_jsonl, write_json

LEARNER_KIND = "marl_learner"
PPO_KIND = "ppo_policy"


def run_marl(run_dir: Path, cfg: MARLConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate the agent of ``cfg.variant`` in ``run_dir`` (module docstring); returns the results.

    Raises:
        MissingInput: ``--marl.partners-dir`` that holds no population, or one missing a named teammate.
        TrainingDiverged: a non-finite world-model or actor loss (the last saved iteration is intact).
    """
    run_dir = Path(run_dir)
    env = menv.make(cfg.layout, cfg.max_steps, cfg.env)
    pool = population(run_dir, cfg, env) if cfg.partners_dir else None  # checked before anything is written
    _check_recorded(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_config(run_dir, "marl", cfg)
    pool = pool or population(run_dir, cfg, env)
    if cfg.variant == "ppo":
        return run_ppo_reference(run_dir, cfg, env, pool)
    train_ids = np.array([pool.names.index(n) for n in cfg.train_partners], np.int32)

    out = run_dir / "marl"
    out.mkdir(exist_ok=True)
    obs_size = menv.obs_size(env)
    key = jr.PRNGKey(cfg.seed)
    learner = init_learner(cfg, obs_size, menv.num_actions(env), jr.fold_in(key, 0))
    hparams = model_hparams(cfg, obs_size, menv.num_actions(env))
    done_iters, replay = 0, Replay()
    if checkpoint.latest_step(out / "ckpt") is not None:
        learner, _, meta = checkpoint.load(out / "ckpt", learner, kind=LEARNER_KIND, expected=hparams)
        done_iters = int(meta["extra"]["iteration"])
        replay = Replay.load(out / "replay.npz")
        replay.data = {k: v[: meta["extra"]["episodes"]] for k, v in replay.data.items()}
        print(f"marl: resuming after iteration {done_iters} ({len(replay)} episodes in the replay)")
    trim_jsonl(out / "metrics.jsonl", done_iters, "iteration")

    rng = np.random.default_rng([cfg.seed, done_iters])
    if len(replay) == 0:
        members = _draw(rng, train_ids, cfg.prefill_episodes)
        eps, _ = run_episodes(env, None, pool, members, jr.fold_in(key, 1), ego_kind="random")
        replay.add(eps)
        _save(out, learner, hparams, replay, 0)

    train_step = make_train_step(cfg)
    with MetricsLog(out, step_key="iteration", start=done_iters) as log:
        bar = tqdm(range(done_iters + 1, cfg.iterations + 1), desc="marl", disable=not progress, unit="it")
        for it in bar:
            t0 = time.perf_counter()
            members = _draw(rng, train_ids, cfg.episodes_per_iteration)
            eps, _ = run_episodes(
                env, (learner.model, learner.actor), pool, members, jr.fold_in(key, 10 * it), ego_kind="dreamer"
            )
            replay.add(eps)
            collect_s = time.perf_counter() - t0
            sums: dict[str, float] = {}
            for u in range(cfg.updates_per_iteration):
                batch = replay.sample(rng, cfg.batch_size, cfg.seq_len, cfg.shaped_scale)
                learner, metrics = train_step(
                    learner, jax.tree.map(jnp.asarray, batch), jr.fold_in(key, 10 * it + 1 + u)
                )
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            means = {k: v / max(cfg.updates_per_iteration, 1) for k, v in sums.items()}
            for name in ("model_loss", "actor_loss", "critic_loss"):
                if name in means and not np.isfinite(means[name]):
                    raise TrainingDiverged(
                        f"marl iteration {it}: {name} is {means[name]}; the last good iteration is saved in {out}/ckpt"
                    )
            stats = episode_stats(eps, tom=False, soups=cfg.env == "overcooked")
            record = {
                "iteration": it,
                "env_steps": replay.steps,
                "return": stats["mean"],
                "shaped_return": float(np.asarray(eps.shaped).sum((-1, -2)).mean()),
                "own_shaped_return": stats["own_shaped_return"],
                **({f"real_{k}": v for k, v in tom_scores(eps).items()} if cfg.tom else {}),
                **means,
                "collect_s": collect_s,
                "iteration_s": time.perf_counter() - t0,
            }
            _save(out, learner, hparams, replay, it)
            log.log(record, it)
            bar.set_postfix(ret=f"{record['return']:.1f}", tom=f"{record.get('real_tom_top1', 0):.2f}")

    results = finished_results(run_dir, cfg)
    if results is None:
        results = evaluate(run_dir, cfg, env, pool, (learner.model, learner.actor), "dreamer", jr.fold_in(key, 2))
    print_summary(results)
    return results


def finished_results(run_dir: Path, cfg: MARLConfig) -> dict[str, Any] | None:
    """eval/results.json when it was written by this very config after the learner's last save, else None."""
    path = run_dir / "eval" / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if results.get("config") != json.loads(json.dumps(to_dict(cfg))) or results.get("env_steps") != _env_steps(run_dir):
        return None
    print(f"marl: {path} is up to date with the learner; kept")
    return results


def run_ppo_reference(run_dir: Path, cfg: MARLConfig, env: Any, pool: mpartners.PartnerPool) -> dict[str, Any]:
    """The model-free reference (``--marl.variant ppo``): independent PPO for agent 0 with the training teammates,
    for the environment steps a world-model run of the same config collects (``env_steps_budget``), with the
    ``partner_ppo`` settings and this run's seed; saved in RUN_DIR/marl/ppo_ckpt and evaluated as the agent is."""
    out = run_dir / "marl"
    out.mkdir(exist_ok=True)
    ppo_cfg = dataclasses.replace(cfg.partner_ppo, total_steps=env_steps_budget(cfg), seed=cfg.seed)
    obs_size = menv.obs_size(env)
    hparams = policy_hparams(obs_size, menv.num_actions(env), ppo_cfg.units)
    if checkpoint.latest_step(out / "ppo_ckpt") is not None:
        net, _ = checkpoint.load_module(out / "ppo_ckpt", build_policy, kind=PPO_KIND, expected=hparams)
        print(f"marl: reusing the trained PPO reference in {out / 'ppo_ckpt'}")
    else:
        train_pool = mpartners.subset(pool, cfg.train_partners)
        net, history = train_ppo(ppo_cfg, env, jr.PRNGKey(cfg.seed), train_pool)
        with MetricsLog(out, step_key="update") as log:
            for i in range(len(history["env_steps"])):
                row = {"update": i + 1, **{k: float(v[i]) for k, v in history.items()}}
                log.log(
                    {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}, i + 1
                )
        extra = {"env_steps": int(history["env_steps"][-1])}
        checkpoint.save(out / "ppo_ckpt", 0, net, kind=PPO_KIND, hparams=hparams, extra=extra)
    results = finished_results(run_dir, cfg)
    if results is None:
        results = evaluate(run_dir, cfg, env, pool, net, "ppo", jr.fold_in(jr.PRNGKey(cfg.seed), 2))
    print_summary(results)
    return results


def env_steps_budget(cfg: MARLConfig) -> int:
    """Environment steps a world-model run collects: (prefill + iterations x episodes per iteration) x max_steps."""
    return (cfg.prefill_episodes + cfg.iterations * cfg.episodes_per_iteration) * cfg.max_steps


def population(run_dir: Path, cfg: MARLConfig, env: Any) -> mpartners.PartnerPool:
    """The teammate population holding every training and held-out teammate the config names.

    Read from ``cfg.partners_dir`` when set; else RUN_DIR/partners, trained (and saved) if missing or if it lacks a
    named teammate.

    Raises:
        MissingInput: ``partners_dir`` holds no population or lacks a named teammate.
    """
    names = tuple(dict.fromkeys(cfg.train_partners + cfg.heldout_partners))
    if cfg.partners_dir:
        pool = mpartners.load_pool(
            Path(cfg.partners_dir), "uv run train_marl.py --run-dir DIR (it writes DIR/partners)"
        )
        if pool.env != cfg.env:
            raise MissingInput(
                f"--marl.partners-dir {cfg.partners_dir} holds {pool.env} teammates, not {cfg.env}; name a population "
                f"trained with --marl.env {cfg.env}"
            )
        missing = [n for n in names if n not in pool.names]
        if missing:
            raise MissingInput(
                f"--marl.partners-dir {cfg.partners_dir} lacks teammate(s) {missing}; it holds {list(pool.names)}"
            )
        return pool
    where = run_dir / "partners"
    if checkpoint.latest_step(where) is not None:
        pool = mpartners.load_pool(where, "uv run train_marl.py")
        if pool.env != cfg.env:
            raise MissingInput(f"{where} holds {pool.env} teammates, not {cfg.env}; use another --run-dir")
        if all(n in pool.names for n in names):
            return pool
        names = tuple(dict.fromkeys(pool.names + names))
        print(f"marl: {where} lacks some teammates; training the population {list(names)}")
    where.mkdir(parents=True, exist_ok=True)
    curves: dict[str, Any] = {}

    def keep_curve(name: str, history: dict[str, np.ndarray]) -> None:
        curves[name] = {k: np.asarray(v).tolist() for k, v in history.items()}
        last = history["return"][np.isfinite(history["return"])][-5:]
        print(f"marl: teammate {name} trained, last self-play returns {np.round(last, 1).tolist()}")

    seeds = [(n, int(n[4:]) if n.startswith("ppo_") else 0) for n in names]
    pool = mpartners.build_population(
        env, seeds, cfg.partner_ppo, jr.PRNGKey(cfg.partner_ppo.seed), on_trained=keep_curve
    )
    mpartners.save_pool(where, pool)
    write_json(where / "ppo_curves.json", curves, indent=None)
    return pool


def evaluate(
    run_dir: Path, cfg: MARLConfig, env: Any, pool: mpartners.PartnerPool, ego: Any, ego_kind: str, key: jax.Array
) -> dict[str, Any]:
    """``cfg.eval_episodes`` episodes with each training and each held-out teammate; writes eval/results.json and
    eval/episode.gif. ``ego`` and ``ego_kind`` as ``rollout.run_episodes``. Returns are the environment's team
    reward (Overcooked: sparse, 20 per soup);
    intervals are 95 % Student-t over episodes."""
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(exist_ok=True)
    per_partner, pooled = score_partners(cfg, env, pool, ego, ego_kind, key)
    results = {
        "variant": cfg.variant,
        "env": cfg.env,
        "layout": cfg.layout,
        "seed": cfg.seed,
        "env_steps": _env_steps(run_dir),
        "eval_seed_key": f"fold_in(PRNGKey({cfg.seed}), 2)",
        "partners": per_partner,
        **{f"{g}_return": _mean_ci(v) for g, v in pooled.items() if v},
        "config": to_dict(cfg),
    }
    write_json(eval_dir / "results.json", results)
    if cfg.gif:
        name = (cfg.heldout_partners or cfg.train_partners)[0]
        write_gif(eval_dir / "episode.gif", env, pool, ego, ego_kind, pool.names.index(name), jr.fold_in(key, 999))
    return results


def score_partners(
    cfg: MARLConfig, env: Any, pool: mpartners.PartnerPool, ego: Any, ego_kind: str, key: jax.Array
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """``cfg.eval_episodes`` episodes of ``ego`` (as ``rollout.run_episodes``) with each training and each held-out
    teammate, the episodes with teammate m keyed ``fold_in(key, m)``.

    Returns:
        (per teammate: its group and ``episode_stats``; per group, ``train`` and ``heldout``, every episode's
        return).
    """
    tom = ego_kind == "dreamer" and cfg.tom
    per_partner: dict[str, Any] = {}
    pooled: dict[str, list[float]] = {"train": [], "heldout": []}
    for group, names in (("train", cfg.train_partners), ("heldout", cfg.heldout_partners)):
        for name in names:
            member = pool.names.index(name)
            members = np.full((cfg.eval_episodes,), member, np.int32)
            eps, _ = run_episodes(env, ego, pool, members, jr.fold_in(key, member), ego_kind=ego_kind)
            per_partner[name] = {"group": group, **episode_stats(eps, tom, soups=cfg.env == "overcooked")}
            pooled[group] += per_partner[name]["returns"]
    return per_partner, pooled


def episode_stats(eps: Episodes, tom: bool, soups: bool = True) -> dict[str, Any]:
    """Per-episode returns (and, with ``soups``, Overcooked's soups), their mean with a 95 % interval, the agent's
    own shaped return (its onions into pots, plates and soups picked up; 0 in MPE), and the ToM scores
    (``tom_scores``)."""
    returns = np.asarray(eps.reward, np.float64).sum(-1)
    own = np.asarray(eps.shaped, np.float64)[..., 0].sum(-1)
    out = {
        "returns": returns.tolist(),
        **({"soups": (returns / menv.SOUP_REWARD).tolist()} if soups else {}),
        **_mean_ci(returns),
        "own_shaped_return": float(own.mean()),
    }
    if tom:
        out.update(tom_scores(eps))
    return out


def write_gif(
    path: Path, env: Any, pool: mpartners.PartnerPool, ego: Any, ego_kind: str, member: int, key: jax.Array
) -> None:
    """One evaluation episode with teammate ``member``, drawn frame by frame (JaxMARL's visualiser), as a GIF."""
    import imageio.v3 as iio

    members = np.array([member], np.int32)
    _, states = run_episodes(env, ego, pool, members, key, ego_kind=ego_kind, record_states=True)
    host = jax.tree.map(lambda x: np.asarray(x[:, 0]), states)
    frames = [menv.render(env, jax.tree.map(lambda x, t=t: x[t], host)) for t in range(menv.episode_steps(env))]
    tmp = path.with_name(path.name + ".tmp.gif")
    iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=100, loop=0)
    tmp.replace(path)


def print_summary(results: dict[str, Any]) -> None:
    """A table of return (mean +- 95 % interval) and ToM top-1 per teammate."""
    unit = "sparse return (20 per soup)" if results.get("env", "overcooked") == "overcooked" else "team return"
    print(f"\nDreaming of Others ({results['variant']}, {results.get('env', 'overcooked')}), {unit} per episode:")
    print(f"  {'teammate':<10} {'group':<8} {'return':>16} {'ToM top-1':>10}")
    for name, r in results["partners"].items():
        tom = f"{r['tom_top1']:.3f}" if "tom_top1" in r else "-"
        print(f"  {name:<10} {r['group']:<8} {r['mean']:>8.1f} +- {r['ci95']:<5.1f} {tom:>10}")
    for g in ("train", "heldout"):
        if f"{g}_return" in results:
            r = results[f"{g}_return"]
            print(f"  {'all':<10} {g:<8} {r['mean']:>8.1f} +- {r['ci95']:<5.1f}")


def _mean_ci(values: Any) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "ci95": ci95(v), "n": int(v.size)}


def _draw(rng: np.random.Generator, ids: np.ndarray, n: int) -> np.ndarray:
    """n teammates drawn uniformly (with replacement) from ``ids``."""
    return ids[rng.integers(0, len(ids), n)].astype(np.int32)


def _save(out: Path, learner: Learner, hparams: dict, replay: Replay, iteration: int) -> None:
    """Replay first, then the learner whose metadata says how many of the replay's episodes it has seen."""
    replay.save(out / "replay.npz")
    extra = {"iteration": iteration, "episodes": len(replay), "env_steps": replay.steps}
    checkpoint.save(out / "ckpt", iteration, learner, kind=LEARNER_KIND, hparams=hparams, extra=extra)


def _env_steps(run_dir: Path) -> int | None:
    for name in ("ckpt", "ppo_ckpt"):
        meta = checkpoint.newest_meta(run_dir / "marl" / name)
        if meta is not None:
            return int(meta["extra"]["env_steps"])
    return None


def _check_recorded(run_dir: Path, cfg: MARLConfig) -> None:
    """Refuse to continue a run directory whose recorded learner differs in variant or sizes (nothing is written).

    Raises:
        MissingInput: one line naming the differing field and what to do.
    """
    path = run_dir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("marl")
    except (ValueError, AttributeError):
        return
    if not old:
        return
    fields = ("env", "layout", "max_steps", "variant", "deter", "units", "env_groups", "team_groups", "classes", "seed")
    for name in fields:
        if name in old and old[name] != getattr(cfg, name) and (run_dir / "marl" / "ckpt").exists():
            raise MissingInput(
                f"{run_dir} holds a run with marl.{name}={old[name]!r}, not {getattr(cfg, name)!r}; "
                "use another --run-dir (or the recorded value)"
            )
