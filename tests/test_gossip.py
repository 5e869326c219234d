"""Gossip pools: the consistency loss, its stop-gradients, the pool update, pairing, and the script."""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from worldmodels import gossip as G
from worldmodels import run_dir
from worldmodels.config import GossipConfig, load_preset
from worldmodels.dream import DreamStart, generation_fitness
from worldmodels.models.controller import LinearController
from worldmodels.models.joint import open_loop, teacher_forced
from worldmodels.models.mdnrnn import most_likely_z
from worldmodels.models.transition import GRUTransition

ROOT = Path(__file__).resolve().parents[1]
FAST = {"xla_backend_optimization_level": 0}
"""XLA:CPU compiles these programs about twice as fast at optimisation level 0; the tests run few steps."""


def fast_jit(fn, static_argnums=(), **kwargs):
    """``jax.jit`` at optimisation level 0 (the tests are mostly compilation); ``kwargs`` are bound first."""
    fn = functools.partial(fn, **kwargs) if kwargs else fn
    return jax.jit(fn, static_argnums=static_argnums, compiler_options=FAST)


# Tiny dynamics; the ConvVAE's size is fixed by the 64x64 frames.
CFG = GossipConfig(
    models=2,
    hidden_size=8,
    num_mixtures=2,
    seq_len=4,
    batch_size=2,
    gossip_batch=1,
    gossip_dream_steps=3,
    gossip_context=2,
)


def run_script(run_dir, script, *args, ok=True, timeout=900):
    """Run a script of the project with ``--preset smoke --run-dir RUN_DIR``; assert its exit status."""
    # Optimisation level 0 halves XLA's compile time on the CPU; the smoke runs are mostly compilation.
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), "--preset", "smoke", "--run-dir", str(run_dir), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert (proc.returncode == 0) == ok, f"{script}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def fake_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b, n = cfg.batch_size, cfg.seq_len
    return {
        "frames": rng.integers(0, 256, (b, n + 1, 64, 64, 3), dtype=np.uint8),
        "frame_mask": np.ones((b, n + 1), np.float32),
        "actions": rng.uniform(-1, 1, (b, n, 3)).astype(np.float32),
        "rewards": rng.normal(size=(b, n)).astype(np.float32),
        "dones": np.zeros((b, n), np.float32),
        "mask": np.ones((b, n), np.float32),
    }


def gossip_args(cfg, seed=0):
    context, actions = G.gossip_inputs(fake_batch(cfg, seed), cfg)
    partner, active = G.pair_partners(jr.key(0), cfg.models)
    return context, actions, partner, active


def leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def test_consistency_is_zero_for_identical_models():
    model = G.model_at(G.init_pool(CFG), 0)
    twins = G.stack_models([model, model])
    args = gossip_args(CFG)
    consistency = fast_jit(lambda pool, args, cfg: G.consistency_loss(pool, *args, jr.key(1), cfg), static_argnums=2)
    for compare, distance, dream in [("pixel", "l2", "mean"), ("latent", "kl", "sample"), ("dreams", "l1", "mean")]:
        cfg = dataclasses.replace(CFG, gossip_compare=compare, gossip_distance=distance, gossip_dream=dream)
        np.testing.assert_allclose(consistency(twins, args, cfg), 0.0, atol=1e-6, err_msg=compare)
    different = consistency(G.init_pool(CFG), args, CFG)
    assert bool(jnp.all(different > 0))


def test_gradients_reach_only_the_dreamer():
    """``readers``: C_0's gradient reaches model 0's dream path and nothing of the partner; model 0's reading
    path is a constant (the gradient equals that of the formula with a frozen copy of model 0 as reader)."""
    pool = G.init_pool(CFG)
    context, actions, partner, active = gossip_args(CFG)
    grad_c0 = fast_jit(
        jax.grad(lambda p, cfg: G.consistency_loss(p, context, actions, partner, active, jr.key(0), cfg)[0]),
        static_argnums=1,
    )
    grads = grad_c0(pool, CFG)
    g0, g1 = G.model_at(grads, 0), G.model_at(grads, 1)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in leaves(g1))  # nothing reaches the partner
    for part in (g0.vae.enc, g0.dynamics, g0.vae.dec):  # the start's encoder, the dynamics, the renderer
        assert any(float(jnp.abs(x).max()) > 0 for x in leaves(part))

    m0, m1 = G.model_at(pool, 0), G.model_at(pool, 1)
    judge0 = jax.lax.stop_gradient(m0)

    def by_hand(m0):
        x0 = G.dream_images(m0, context, actions, None)
        mine = judge0.decode(judge0.encode(x0)[0])
        theirs = m1.decode(m1.encode(x0)[0])
        return jnp.mean(jnp.sum((theirs - mine) ** 2, axis=(1, 2, 3)))

    expected = fast_jit(jax.grad(by_hand))(m0)
    for a, b in zip(leaves(g0), leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)

    grads = grad_c0(pool, dataclasses.replace(CFG, gossip_stop_gradient="none"))
    assert any(float(jnp.abs(x).max()) > 0 for x in leaves(G.model_at(grads, 1).vae))  # the partner learns


def test_pool_update_equals_separate_updates_without_gossip():
    cfg = dataclasses.replace(CFG, gossip_weight=0.0, flavour="gru")
    pool = G.init_pool(cfg)
    optimizer = G.make_optimizer(cfg)
    batch, key = fake_batch(cfg), jr.key(3)
    pool_step = fast_jit(G.pool_update, cfg=cfg, optimizer=optimizer)
    new_pool, _, metrics = pool_step(pool, G.init_opt_state(pool, optimizer), batch, key)
    model_step = fast_jit(G.model_update, cfg=cfg, optimizer=optimizer)
    for m, k in enumerate(G.model_keys(key, cfg.models)):
        model = G.model_at(pool, m)
        alone, _, alone_metrics = model_step(model, optimizer.init(eqx.filter(model, eqx.is_array)), batch, k)
        np.testing.assert_allclose(metrics["total"][m], alone_metrics["total"], rtol=1e-5)
        for a, b in zip(leaves(G.model_at(new_pool, m)), leaves(alone), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * cfg.learning_rate)  # Adam steps are ~lr
    assert bool(jnp.all(metrics["consistency"] > 0))  # measured for the log even when it does not train


def test_pool_loop_equals_pool_vmap():
    pool, batch = G.init_pool(CFG), fake_batch(CFG)
    loss = fast_jit(lambda p, cfg: G.pool_loss(p, batch, jr.key(2), cfg)[1], static_argnums=1)
    vmapped, looped = loss(pool, CFG), loss(pool, dataclasses.replace(CFG, vmap_pool=False))
    for key in ("total", "recon", "mdn_nll", "consistency"):
        np.testing.assert_allclose(vmapped[key], looped[key], rtol=1e-4, err_msg=key)


@pytest.mark.parametrize("num_models", [1, 2, 3, 4, 6])
def test_pair_selection_covers_the_pool(num_models):
    seen, sat_out = set(), set()
    for step in range(60):
        partner, active = map(np.asarray, G.pair_partners(jr.key(step), num_models))
        np.testing.assert_array_equal(partner[partner], np.arange(num_models))  # a pairing is an involution
        assert int(active.sum()) == num_models - num_models % 2
        assert all((partner[m] == m) == (active[m] == 0) for m in range(num_models))
        seen |= {(min(m, p), max(m, p)) for m, p in enumerate(partner) if m != p}
        sat_out |= {m for m in range(num_models) if active[m] == 0}
    pairs = {(i, j) for i in range(num_models) for j in range(i + 1, num_models)}
    assert seen == pairs  # every model meets every other one
    assert sat_out == (set(range(num_models)) if num_models % 2 else set())
    if num_models == 2:
        assert seen == {(0, 1)}


def test_open_loop_reads_context_then_dreams():
    model = G.model_at(G.init_pool(CFG), 0)
    z = jr.normal(jr.key(0), (5, CFG.z_size))
    actions = jr.uniform(jr.key(1), (5, 3))
    out = open_loop(model, z[:2], actions)
    forced = teacher_forced(model, z, actions)
    np.testing.assert_allclose(out.z[:2], z[:2])
    np.testing.assert_allclose(out.z_next[0], most_likely_z(jax.tree.map(lambda x: x[0], forced)), rtol=1e-5)
    np.testing.assert_allclose(out.z[2:], out.z_next[1:-1])  # after the context it steps on its own latents


def test_gru_model_runs_in_the_paper_dream():
    """The GRU dynamics speak the MDN-RNN's interface, so ``dream.generation_fitness`` runs it unchanged."""
    gru = GRUTransition(CFG.z_size, 3, CFG.hidden_size, key=jr.key(0))
    start = DreamStart(jr.normal(jr.key(1), (3, CFG.z_size)), jnp.full((3, CFG.z_size), -2.0))
    population = jr.normal(jr.key(2), (4, LinearController.num_params(CFG.z_size, gru.hidden_size))) * 0.1
    fitness = generation_fitness(population, gru, start, jr.key(3), jnp.float32(1.0), 2, 5, 0.5)
    assert fitness.shape == (4,) and bool(jnp.all(jnp.isfinite(fitness)))


def test_gru_model_drives_in_the_real_env():
    """``evaluate.run_episodes`` starts from the memory's own initial state, so a GRU transition drives too."""
    from worldmodels.agent import Agent
    from worldmodels.evaluate import run_episodes
    from worldmodels.models.registry import build_controller

    model = G.model_at(G.init_pool(CFG), 0)
    gru = GRUTransition(CFG.z_size, 3, CFG.hidden_size, key=jr.key(0))
    agent = Agent(model.vae, gru, build_controller(CFG.z_size, CFG.hidden_size))
    (result,) = run_episodes(agent, [1_000_000], workers=1, max_steps=4, progress=False)
    assert result.steps == 4 and np.isfinite(result.ret)


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="gossip_distance='kl'"):
        G.check_config(dataclasses.replace(CFG, gossip_distance="kl"))
    with pytest.raises(ValueError, match="exceeds seq_len"):
        G.check_config(dataclasses.replace(CFG, gossip_dream_steps=10))
    with pytest.raises(ValueError, match="flavour"):
        G.check_config(dataclasses.replace(CFG, flavour="lstm"))
    assert load_preset("smoke").gossip.models == 2


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """The ``data/`` folder of one ``collect_data.py --episodes 3 --max-steps 30`` run, shared by the script smokes
    (each copies it into its own run directory)."""
    rd = tmp_path_factory.mktemp("gossip_data") / "run"
    run_script(rd, "collect_data.py", "--episodes", "3", "--max-steps", "30")
    return rd / "data"


@pytest.mark.heavy(seconds=100)
def test_train_gossip_script_smoke_with_a_pool_of_four(tmp_path, collected):
    rd = tmp_path / "run"
    run = functools.partial(run_script, rd)

    shutil.copytree(collected, rd / "data")  # collect_data.py --episodes 3 --max-steps 30, run once per module
    run("train_gossip.py", "--models", "4", "--seq-len", "8", "--gossip-dream-steps", "4", "--video-steps", "10")
    out = rd / "gossip"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in G.LOSS_KEYS:
        assert {f"{key}/{m}" for m in range(4)} <= set(rows[-1]), key
    assert all(rows[-1][f"consistency/{m}"] > 0 for m in range(4))  # every model of the pool gossiped
    drift = json.loads((out / "drift.json").read_text())
    assert drift["horizons"] == [1, 10] and len(drift["pixel"]) == 4 and len(drift["disagreement"]) == 2
    video = iio.imread(out / "dreams.mp4")
    assert video.shape[0] == 10 and video.shape[2] == 3 * video.shape[1]  # real | model 0 | model 1
    for name in ("losses.png", "drift.png", "dreams.gif"):
        assert (out / name).is_file(), name
    from worldmodels import checkpoint

    assert checkpoint.latest_step(out / "ckpt") == 4
    assert checkpoint.read_meta(rd / "rnn" / "ckpt")["kind"] == "mdnrnn"  # exported for train_dream.py
    assert checkpoint.read_meta(rd / "vae" / "ckpt")["extra"]["source"] == "gossip"
    assert json.loads((rd / "config.json").read_text())["gossip"]["models"] == 4


@pytest.mark.parametrize("flavour", ["mdnrnn", "gru"])
def test_export_round_trips_through_the_stages(tmp_path, flavour):
    """``export_model`` writes either flavour as vae/ + rnn/; ``run_dir.load_dynamics`` rebuilds the matching module."""
    from worldmodels import checkpoint, stages
    from worldmodels.models.mdnrnn import MDNRNN

    cfg = dataclasses.replace(CFG, flavour=flavour, export_model=1)
    pool = G.init_pool(cfg)
    assert G.export_model(tmp_path, pool, cfg, step=7)
    rnn, meta = run_dir.load_dynamics(tmp_path, expected={"z_size": cfg.z_size})
    assert isinstance(rnn, GRUTransition if flavour == "gru" else MDNRNN)
    assert meta["kind"] == flavour and meta["extra"] == {"source": "gossip", "model": 1} and meta["step"] == 7
    for a, b in zip(leaves(rnn), leaves(G.model_at(pool, 1).dynamics), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (rnn.z_size, rnn.hidden_size, rnn.num_mixtures) == (cfg.z_size, 8, 1 if flavour == "gru" else 2)
    vae, _ = run_dir.load_vae(tmp_path, expected={"z_size": rnn.z_size})
    assert vae.z_size == cfg.z_size
    assert stages.recorded_rnn_config(tmp_path).num_mixtures == rnn.num_mixtures
    with pytest.raises(checkpoint.CheckpointError, match="z_size=32 in the checkpoint, 16 in the config"):
        run_dir.load_dynamics(tmp_path, expected={"z_size": 16})
    assert G.export_model(tmp_path, pool, dataclasses.replace(cfg, export_model=0), step=8)  # replaces its own


def test_load_dynamics_refuses_a_checkpoint_that_is_not_a_dynamics(tmp_path):
    from worldmodels import checkpoint
    from worldmodels.models.registry import build_controller

    ctrl = build_controller(CFG.z_size, CFG.hidden_size)
    hparams = {"z_size": CFG.z_size, "hidden_size": CFG.hidden_size, "action_size": 3}
    checkpoint.save(tmp_path / "rnn" / "ckpt", 1, ctrl, kind="controller", hparams=hparams)
    with pytest.raises(checkpoint.CheckpointError, match="holds a 'controller', not a world-model dynamics"):
        run_dir.load_dynamics(tmp_path)


def test_train_rnn_refuses_a_gru_export(tmp_path):
    """The MDN-RNN stage neither resumes, retrains over, nor re-records a GRU pool's exported dynamics."""
    from worldmodels import checkpoint, stages
    from worldmodels.config import RNNConfig

    cfg = dataclasses.replace(CFG, flavour="gru")
    assert G.export_model(tmp_path, G.init_pool(cfg), cfg, step=3)
    recorded = (tmp_path / "config.json").read_text()
    for steps in (2, 10):  # whether or not the export's step counts as "trained"
        with pytest.raises(checkpoint.CheckpointError, match="holds a 'gru' dynamics exported from model 0"):
            stages.run_rnn(tmp_path, RNNConfig(steps=steps))
    assert (tmp_path / "config.json").read_text() == recorded
    assert checkpoint.latest_step(tmp_path / "rnn" / "ckpt") == 3


def test_a_gru_export_counts_as_trained_vae_and_dynamics(tmp_path, capsys):
    """The pipeline skips the VAE and MDN-RNN stages of a run holding a GRU export (whatever its step), and the VAE
    stage does not train the exported VAE on (that would move the latents the GRU was trained on)."""
    from worldmodels import checkpoint, stages
    from worldmodels.config import RNNConfig, VAEConfig

    cfg = dataclasses.replace(CFG, flavour="gru")
    assert G.export_model(tmp_path, G.init_pool(cfg), cfg, step=3)
    assert run_dir.fixed_export(tmp_path)["kind"] == "gru"
    assert stages.vae_done(tmp_path, VAEConfig(steps=10)) and stages.rnn_done(tmp_path, RNNConfig(steps=10))
    stages.run_vae(tmp_path, VAEConfig(steps=10))
    assert "VAE not trained" in capsys.readouterr().out
    assert checkpoint.latest_step(tmp_path / "vae" / "ckpt") == 3
    mdn = dataclasses.replace(CFG, flavour="mdnrnn")
    assert G.export_model(tmp_path / "mdn", G.init_pool(mdn), mdn, step=3)
    assert run_dir.fixed_export(tmp_path / "mdn") is None  # an MDN-RNN export trains on as usual
    assert not stages.rnn_done(tmp_path / "mdn", RNNConfig(steps=10))


@pytest.mark.heavy(seconds=115)
def test_gru_pool_exports_to_the_dream_and_test_scripts(tmp_path, collected):
    """train_gossip.py --flavour gru, then train_dream.py and test_agent.py run the exported GRU transition."""

    rd = tmp_path / "run"
    run = functools.partial(run_script, rd)

    shutil.copytree(collected, rd / "data")  # collect_data.py --episodes 3 --max-steps 30, run once per module
    gossip_flags = ["--flavour", "gru", "--seq-len", "8", "--gossip-dream-steps", "4", "--video-steps", "5"]
    out = run("train_gossip.py", *gossip_flags)
    assert "model 0 exported to" in out.stdout
    rnn, meta = run_dir.load_dynamics(rd)
    assert isinstance(rnn, GRUTransition) and meta["kind"] == "gru" and rnn.hidden_size == 32
    run("train_dream.py", "--generations", "2")
    run("test_agent.py", "--episodes", "1", "--max-steps", "30", "--video-episodes", "1")
    assert json.loads((rd / "eval" / "results.json").read_text())["n"] == 1
    assert sorted((rd / "eval").glob("*.mp4"))
    run_dir.load_controller(rd, expected={"z_size": rnn.z_size, "hidden_size": rnn.hidden_size})
    proc = run("train_rnn.py", ok=False)
    assert "holds a 'gru' dynamics exported from model 0 of a gossip pool" in proc.stderr


@pytest.mark.heavy(seconds=160)
def test_gossip_experiment_script_smoke(tmp_path, collected):
    """experiments/gossip.py: baseline and one gossip condition, a controller each, the report; a changed drift
    setting re-measures the cached runs instead of retraining them."""
    rd = tmp_path / "run"
    run = functools.partial(run_script, rd)

    shutil.copytree(collected, rd / "data")  # collect_data.py --episodes 3 --max-steps 30, run once per module
    flags = ["--seeds", "0", "--weights", "1", "--dream-steps", "4", "--seq-len", "8", "--video-steps", "5"]
    controller = ["--controller", "--dream.generations", "1", "--test.episodes", "1", "--test.max-steps", "20"]
    run("experiments/gossip.py", *flags, *controller, "--test.no-video")
    out = rd / "gossip_experiment"
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"baseline", "w1_d4"}
    for name in results:
        r = results[name]["0"]
        assert r["drift"]["horizons"] == [1, 10] and r["drift_setup"]["start"] == 10
        assert r["real"]["n"] == 1  # a controller was evolved in the dream and scored in the real env
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "w1_d4" in report and "baseline_vs_gossip.gif" in report
    for name in ("drift.png", "ablation.png", "baseline_vs_gossip.mp4"):
        assert (out / name).is_file(), name

    proc = run("experiments/gossip.py", *flags, "--drift-start", "15")
    assert proc.stdout.count("re-measuring drift") == 2  # no retraining: both cached runs re-measured
    r = json.loads((out / "results.json").read_text())["w1_d4"]["0"]
    assert r["drift_setup"]["start"] == 15 and r["drift"]["horizons"] == [1, 10] and r["real"]["n"] == 1
