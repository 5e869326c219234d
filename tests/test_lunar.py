"""Vector observations: environment specs, the MLP autoencoder as V, the controller's squash and V-only mode, and
the whole pipeline on LunarLander-v3 (continuous) at the lunar_smoke preset's sizes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from worldmodels.config import CollectConfig, VAEConfig, load_preset
from worldmodels.env import ENVS, get_spec, make_env
from worldmodels.models.controller import LinearController, squash_action
from worldmodels.models.mlp_autoencoder import MLPAutoencoder

ROOT = Path(__file__).resolve().parents[1]


def test_env_specs_make_their_environments():
    lunar = make_env(50, env="lunarlander")
    obs, _ = lunar.reset(seed=3)
    assert obs.shape == (8,) and obs.dtype == np.float32 == get_spec("lunarlander").obs_dtype
    obs, *_ = lunar.step(np.zeros(2, np.float32))
    assert obs.shape == (8,)
    lunar.close()
    assert get_spec("carracing").obs_shape == (64, 64, 3) and get_spec("carracing").action_size == 3
    assert set(ENVS) == {"carracing", "lunarlander"} and get_spec("lunarlander").reward_threshold == 200
    with pytest.raises(ValueError, match="unknown environment 'pong'; available: carracing, lunarlander"):
        make_env(env="pong")


def test_collect_config_refuses_what_does_not_fit_the_environment():
    with pytest.raises(ValueError, match="collect.env: unknown environment"):
        CollectConfig(env="pong")
    with pytest.raises(ValueError, match="brownian_mean .* has 3 entries; lunarlander has 2 action dimensions"):
        CollectConfig(env="lunarlander")
    with pytest.raises(ValueError, match="policy 'recovery' does not apply to lunarlander"):
        CollectConfig(env="lunarlander", brownian_mean=(0.0, 0.0), policy="recovery")
    with pytest.raises(ValueError, match="policy 'aggressive' does not apply"):
        CollectConfig(env="lunarlander", brownian_mean=(0.0, 0.0), mix="brownian:2,aggressive:1")
    with pytest.raises(ValueError, match="vae.mlp_hidden"):
        VAEConfig(mlp_hidden=())
    assert VAEConfig(variational=False).loss_scales == {"recon": 1.0, "kl": 0.0}


def test_a_run_without_a_collection_record_is_of_its_datasets_environment(tmp_path):
    """Data collected elsewhere and copied in: no ``collect.env`` in config.json, so the datasets' ``env_id`` names
    the environment; datasets of two environments are refused, naming both; a run with neither is CarRacing."""
    from worldmodels.errors import DatasetError
    from worldmodels.run_dir import env_spec

    assert env_spec(tmp_path).name == "carracing"
    for name, env_id in (("brownian", "LunarLander-v3"), ("climb", "LunarLander-v3")):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "metadata.json").write_text(json.dumps({"env_id": env_id}))
    assert env_spec(tmp_path).name == "lunarlander"
    (tmp_path / "config.json").write_text(json.dumps({"collect": {"env": "carracing"}}))
    assert env_spec(tmp_path).name == "carracing"  # the record wins
    (tmp_path / "config.json").unlink()
    (tmp_path / "data" / "cars").mkdir()
    (tmp_path / "data" / "cars" / "metadata.json").write_text(json.dumps({"env_id": "CarRacing-v3"}))
    with pytest.raises(DatasetError, match="brownian holds LunarLander-v3; .*cars holds CarRacing-v3"):
        env_spec(tmp_path)


def test_lander_policies_act_in_the_box():
    from worldmodels.policies import LanderHeuristicPolicy, make_policy

    env = make_env(200, env="lunarlander")
    cfg = CollectConfig(env="lunarlander", brownian_mean=(0.0, 0.0), policy="heuristic", heuristic_noise=0.5)
    policy = make_policy(cfg)
    assert isinstance(policy, LanderHeuristicPolicy)
    for p in (policy, make_policy(CollectConfig(env="lunarlander", brownian_mean=(0.0, 0.0)))):
        obs, _ = env.reset(seed=1)
        p.reset(1, env)
        for _ in range(20):
            a = p.act(obs)
            assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
            obs, *_ = env.step(a)
    env.close()
    # Without noise, Gymnasium's heuristic lands: a positive return on a fixed seed.
    env = make_env(1000, env="lunarlander")
    clean = LanderHeuristicPolicy(0.0)
    obs, _ = env.reset(seed=0)
    clean.reset(0, env)
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(clean.act(obs))
        total, done = total + r, term or trunc
    env.close()
    assert total > 100


def test_mlp_autoencoder_shapes_and_fixed_statistics():
    model = MLPAutoencoder(8, 4, (32, 16), key=jr.key(0))
    x = np.random.default_rng(0).normal(3.0, 2.0, (50, 8)).astype(np.float32)
    model = model.with_statistics(x)
    np.testing.assert_allclose(np.asarray(model.obs_mean), x.mean(0), rtol=1e-5)
    mu, logvar = model.encode(jnp.asarray(x))
    assert mu.shape == logvar.shape == (50, 4)
    assert model.decode(mu).shape == (50, 8) and model.encode(jnp.asarray(x[0]))[0].shape == (4,)
    recon, mu, _ = model(jnp.asarray(x[:5]), key=jr.key(1))
    assert recon.shape == (5, 8)
    np.testing.assert_allclose(np.asarray(model.normalize(jnp.asarray(x))).mean(0), 0.0, atol=1e-4)
    plain = MLPAutoencoder(8, 4, (16,), variational=False, key=jr.key(0))
    assert float(plain.encode(jnp.zeros(8))[1].max()) == -30.0  # z = mu
    with pytest.raises(ValueError, match="must be positive"):
        MLPAutoencoder(8, 0, key=jr.key(0))


def test_mlp_autoencoder_reconstructs_better_than_the_mean_observation(tmp_path):
    """8-dim observations on a 2-dim manifold: V (Z 4) must beat predicting the mean observation by far."""
    from worldmodels import checkpoint
    from worldmodels.run_dir import load_vae
    from worldmodels.train import train_vae

    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, (3000, 2))
    x = np.concatenate([s, np.sin(2 * s), s**2, s[:, :1] * s[:, 1:], np.cos(s[:, :1])], axis=1)
    x = (x * [1, 2, 1, 1, 3, 1, 1, 1]).astype(np.float32)
    cfg = VAEConfig(z_size=4, mlp_hidden=(64, 64), beta=0.01, batch_size=64, steps=400, learning_rate=3e-3,
                    checkpoint_every=400, log_every=100)  # fmt: skip
    train_vae(tmp_path / "vae", x[:2500], cfg)
    assert checkpoint.newest_meta(tmp_path / "vae" / "ckpt")["kind"] == "mlp_autoencoder"
    assert (tmp_path / "vae" / "recon.png").is_file()
    model, _ = load_vae(tmp_path)
    held = x[2500:]
    recon = np.asarray(model.decode(model.encode(jnp.asarray(held))[0]))
    mse = np.mean((recon - held) ** 2)
    baseline = np.mean((held - x[:2500].mean(0)) ** 2)
    assert mse < 0.1 * baseline, (mse, baseline)


def test_controller_squash_and_latent_only_inputs():
    o = jnp.array([3.0, -3.0])
    np.testing.assert_allclose(squash_action(o, "tanh"), np.tanh([3.0, -3.0]), rtol=1e-6)
    car = squash_action(jnp.array([0.0, 0.0, -1.0]))
    np.testing.assert_allclose(car, [0.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="unknown action squash"):
        squash_action(o, "sigmoid")
    n = LinearController.num_params(16, 128, 2, "z")
    assert n == 2 * 16 + 2 and LinearController.num_params(16, 128, 2) == 2 * 144 + 2
    flat = jr.normal(jr.key(0), (n,))
    ctrl = LinearController.from_flat(flat, 16, 128, 2, "tanh", "z")
    z = jr.normal(jr.key(1), (16,))
    a = ctrl(z, jnp.ones(128))
    assert a.shape == (2,) and bool(jnp.all(jnp.abs(a) <= 1))
    np.testing.assert_allclose(a, ctrl(z, -jnp.ones(128)))  # h is not read
    np.testing.assert_array_equal(ctrl.to_flat(), flat)
    with pytest.raises(ValueError, match="expected \\(290,\\)"):
        LinearController.from_flat(flat, 16, 128, 2, "tanh", "zh")


def run(script, *args, check=True):
    """stdout of ``script`` (asserting it succeeded), or with ``check`` False its stdout and stderr after a failure."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    if not check:
        assert proc.returncode != 0, f"{script} succeeded where it should have failed:\n{proc.stdout[-3000:]}"
        return proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.heavy(seconds=350)
def test_lunar_smoke_end_to_end(tmp_path):
    """The whole pipeline on LunarLander with one Sim2Real2Sim iteration, then a V-only controller on its V and M."""
    from worldmodels import checkpoint

    rd = tmp_path / "run"
    out = run("pipeline.py", "--preset", "lunar_smoke", "--run-dir", str(rd), "--iterations", "1")
    assert "real LunarLander-v3 score over 2 episodes" in out
    meta = checkpoint.newest_meta(rd / "vae" / "ckpt")
    assert meta["kind"] == "mlp_autoencoder" and meta["hparams"]["obs_size"] == 8
    assert checkpoint.newest_meta(rd / "rnn" / "ckpt")["hparams"]["action_size"] == 2
    ctrl = checkpoint.newest_meta(rd / "controller" / "ckpt")["hparams"]
    assert ctrl["squash"] == "tanh" and ctrl["action_size"] == 2 and ctrl["inputs"] == "zh"
    results = json.loads((rd / "eval" / "results.json").read_text())
    assert results["n"] == 2 and results["offroad_steps"] == 0
    assert json.loads((rd / "iterations" / "1" / "results.json").read_text())["n"] == 2
    frames = iio.imread(next((rd / "eval").glob("*.mp4")))
    assert frames.shape[0] > 10 and frames.shape[2] % 16 == 0  # render | bar chart
    assert json.loads((rd / "config.json").read_text())["collect"]["env"] == "lunarlander"
    # The same command again runs nothing and keeps the first invocation's stage times ("done before").
    first = json.loads((rd / "pipeline.json").read_text())["stages"]
    run("pipeline.py", "--preset", "lunar_smoke", "--run-dir", str(rd), "--iterations", "1")
    again = json.loads((rd / "pipeline.json").read_text())["stages"]
    for name in ("collect", "vae", "rnn", "dream", "test"):
        assert first[name]["status"] == "ran"
        assert again[name] == {"status": "done before", "seconds": first[name]["seconds"]}
    assert again["iterations"]["status"] == "0 ran, 1 done before"
    assert again["iterations"]["seconds"] >= first["iterations"]["seconds"] > 0

    # RSSM + actor-critic on the same data and V (`lunar_dreamer_smoke`: its collect and V sections are
    # lunar_smoke's, so those stages are done): the actor acts in LunarLander's [-1, 1]^2 box through tanh, in the
    # test and in the on-policy episodes of a Sim2Real2Sim iteration.
    dreamer = tmp_path / "dreamer"
    dreamer.mkdir()
    for part in ("data", "vae"):
        shutil.copytree(rd / part, dreamer / part)
    out = run("pipeline.py", "--preset", "lunar_dreamer_smoke", "--run-dir", str(dreamer), "--iterations", "1")
    assert "real LunarLander-v3 score over 2 episodes" in out
    actor = checkpoint.newest_meta(dreamer / "controller" / "ckpt")
    assert actor["kind"] == "actor" and actor["hparams"]["squash"] == "tanh" and actor["hparams"]["action_size"] == 2
    assert checkpoint.newest_meta(dreamer / "rnn" / "ckpt")["kind"] == "rssm"
    stages = json.loads((dreamer / "pipeline.json").read_text())["stages"]
    assert stages["collect"]["status"] == stages["vae"]["status"] == "skipped (done)"
    assert json.loads((dreamer / "iterations" / "1" / "results.json").read_text())["n"] == 2

    # A CarRacing preset does not count LunarLander datasets as its collection.
    from worldmodels.stages import collect_done

    assert collect_done(rd, load_preset("lunar_smoke").collect)
    assert not collect_done(rd, CollectConfig(env="carracing", mix="brownian:2,heuristic:2"))

    # V only: a controller reading z alone, evolved in the same M's dream, tested on the same seeds. The data, V
    # and M are copied without config.json (data collected elsewhere): the run's environment is its datasets'.
    for name, flags, size in (("v_only", ["--controller-inputs", "z"], 2 * 4 + 2),  # A x Z + A, lunar_smoke's Z 4
                              ("mlp", ["--controller-units", "3"], None)):  # fmt: skip
        # The controller with a hidden layer (3 tanh units on [z, h]) is checkpointed with its units and loaded back
        # by test_agent.py.
        other = tmp_path / name
        other.mkdir()
        for part in ("data", "vae", "rnn"):
            shutil.copytree(rd / part, other / part)
        common = ["--preset", "lunar_smoke", "--run-dir", str(other)]
        run("train_dream.py", *common, *flags)
        run("test_agent.py", *common, "--no-video")
        ctrl = checkpoint.newest_meta(other / "controller" / "ckpt")["hparams"]
        assert (ctrl["inputs"], ctrl["units"]) == (("z", 0) if name == "v_only" else ("zh", 3))
        size = size or 3 * (4 + ctrl["hidden_size"] + 1) + 2 * (3 + 1)  # U (I + 1) + A (U + 1)
        with np.load(other / "controller" / "es_state.npz") as state:
            assert state["mean"].shape == (size,)
        assert json.loads((other / "eval" / "results.json").read_text())["n"] == 2
    # A second search with other units is refused before anything is written.
    before = (other / "config.json").read_text()
    out = run("train_dream.py", *common, "--controller-units", "5", "--generations", "99", check=False)
    assert "units=3 in the checkpoint, 5 in the config" in out and (other / "config.json").read_text() == before

    # What M predicts where the held-out episodes end (experiments/terminal_predictions.py): a row per kind.
    table = tmp_path / "terminal.json"
    out = run("experiments/terminal_predictions.py", "--run-dirs", str(rd), "--out", str(table))
    report = json.loads(table.read_text())[str(rd)]
    assert set(report) == {"high", "low", "other"} and "| termination |" in out

    # The controller in the dream and on the real environment, decoded into LunarLander's observation units.
    out = run("experiments/dream_vs_real.py", "--run-dir", str(rd), "--out", str(tmp_path / "dvr"), "--steps", "30")
    record = json.loads((tmp_path / "dvr" / "dream_vs_real.json").read_text())
    assert np.asarray(record["dream"]["obs"]).shape == (30, 8) and record["obs_names"][:2] == ["x", "y"]
    assert 1 <= len(record["real"]["obs"]) <= 30 and (tmp_path / "dvr" / "dream_vs_real.png").is_file()


def test_terminal_weight_scales_only_terminal_steps():
    """``RNNConfig.terminal_weight``: a terminal step's reward and done terms count w times; other steps as before."""
    from worldmodels.losses import rnn_step_loss
    from worldmodels.models.mdnrnn import MDNOutput

    out = MDNOutput(jnp.log(jnp.ones(2) / 2), jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.float32(1.0), jnp.float32(-2.0))
    for done in (0.0, 1.0):
        one = rnn_step_loss(out, jnp.zeros(3), jnp.float32(-100.0), jnp.float32(done), reward_overpredict_weight=1.0)
        w = rnn_step_loss(out, jnp.zeros(3), jnp.float32(-100.0), jnp.float32(done), reward_overpredict_weight=1.0,
                          terminal_weight=50.0)  # fmt: skip
        scale = 50.0 if done else 1.0
        for k in ("reward", "done"):
            np.testing.assert_allclose(w[k], scale * one[k], rtol=1e-6)
        np.testing.assert_allclose(w["mdn_nll"], one["mdn_nll"])
    with pytest.raises(ValueError, match="rnn.terminal_weight must be > 0"):
        from worldmodels.config import RNNConfig

        RNNConfig(terminal_weight=0.0)
