"""Training loop: losses go down, NaN stops with the step named and the checkpoint intact, resume."""

import json

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from worldmodels import checkpoint
from worldmodels.config import RNNConfig, VAEConfig
from worldmodels.errors import TrainingDiverged
from worldmodels.models import MDNRNN
from worldmodels.train import FrameMix, LatentDataset, rnn_loss, sequence_batch, train_vae
from worldmodels.trainer import fit


def toy_latents(episodes=3, length=20, z=4):
    lengths = np.array([length] * (episodes - 1) + [length // 2])
    n_obs = int((lengths + 1).sum())
    n_act = int(lengths.sum())
    rng = np.random.default_rng(0)
    return LatentDataset(
        mu=rng.normal(size=(n_obs, z)).astype(np.float32),
        logvar=np.full((n_obs, z), -4.0, np.float32),
        actions=rng.uniform(size=(n_act, 3)).astype(np.float32),
        rewards=rng.normal(size=n_act).astype(np.float32),
        dones=np.zeros(n_act, np.float32),
        offroad=np.zeros(n_act, bool),
        obs_start=np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]),
        act_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        lengths=lengths,
        episode_p=np.full(episodes, 1.0 / episodes),
        heldout=np.zeros(episodes, bool),
    )


def test_sequence_batch_windows_and_mask():
    data = toy_latents()
    cfg = RNNConfig(seq_len=15, batch_size=16)
    batch = sequence_batch(data, 0, cfg)
    assert batch["mu"].shape == (16, 16, 4) and batch["actions"].shape == (16, 15, 3)
    # The short episode (10 steps) is masked after its end; full ones are not.
    assert set(batch["mask"].sum(axis=1).tolist()) <= {10.0, 15.0}
    again = sequence_batch(data, 0, cfg)
    np.testing.assert_array_equal(batch["mu"], again["mu"])  # deterministic in (seed, step)


def test_rnn_training_reduces_loss_and_resumes(tmp_path):
    data = toy_latents()
    cfg = RNNConfig(
        hidden_size=16, num_mixtures=2, seq_len=10, batch_size=8, steps=30, log_every=10, checkpoint_every=10
    )
    hp = {"z_size": 4, "action_size": 3, "hidden_size": 16, "num_mixtures": 2}

    def run(steps):
        return fit(
            model=MDNRNN(**hp, key=jr.key(0)),
            optimizer=optax.adam(1e-2),
            loss_fn=lambda m, b, k: rnn_loss(m, b, k, cfg),
            make_batch=lambda s: sequence_batch(data, s, cfg),
            steps=steps,
            out_dir=tmp_path / "rnn",
            kind="mdnrnn",
            hparams=hp,
            seed=0,
            log_every=10,
            checkpoint_every=10,
            items_per_step=80,
            desc="test",
        )

    run(20)
    assert checkpoint.latest_step(tmp_path / "rnn" / "ckpt") == 20
    run(30)  # resumes at 20
    rows = [json.loads(x) for x in (tmp_path / "rnn" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["total"] < rows[0]["total"]
    assert {"mdn_nll", "reward", "done", "grad_norm"} <= set(rows[0])


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    hp = {"z_size": 4, "action_size": 3, "hidden_size": 8, "num_mixtures": 2}

    def loss_fn(model, batch, key):
        loss = jnp.sum(model.head.bias**2) * batch  # batch becomes NaN at step 7
        return loss, {"total": loss}

    with pytest.raises(TrainingDiverged, match=r"step 7.*last good checkpoint: .*ckpt/5"):
        fit(
            model=MDNRNN(**hp, key=jr.key(0)),
            optimizer=optax.sgd(1e-3),
            loss_fn=loss_fn,
            make_batch=lambda s: jnp.float32(np.nan if s == 6 else 1.0),
            steps=10,
            out_dir=tmp_path / "x",
            kind="mdnrnn",
            hparams=hp,
            seed=0,
            log_every=1,
            checkpoint_every=5,
            items_per_step=1,
            desc="nan",
        )
    assert checkpoint.latest_step(tmp_path / "x" / "ckpt") == 5
    model, _, meta = checkpoint.load(tmp_path / "x" / "ckpt", MDNRNN(**hp, key=jr.key(1)), kind="mdnrnn")
    assert np.isfinite(np.asarray(model.head.bias)).all() and meta["step"] == 5


def test_vae_learns_a_tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    for i in range(8):  # coloured squares at different places
        r, c = rng.integers(0, 48, 2)
        frames[i, r : r + 16, c : c + 16] = rng.integers(60, 255, 3)
    cfg = VAEConfig(z_size=8, batch_size=8, steps=60, learning_rate=1e-3, log_every=20, checkpoint_every=60)
    train_vae(tmp_path / "vae", frames, cfg)
    rows = [json.loads(x) for x in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["recon"] < 0.5 * rows[0]["recon"]
    assert (tmp_path / "vae" / "recon.png").stat().st_size > 0


def test_recipe_weights_set_batch_frequencies():
    a, b = toy_latents(episodes=4), toy_latents(episodes=2)
    b = LatentDataset(**{**{k: getattr(b, k) for k in b.__dataclass_fields__}, "rewards": np.full_like(b.rewards, 7.0)})
    mix = LatentDataset.concat([a, b], [1.0, 3.0])
    assert mix.num_episodes == 6 and np.isclose(mix.episode_p.sum(), 1.0)
    np.testing.assert_allclose(mix.episode_p[4:].sum(), 0.75)
    cfg = RNNConfig(seq_len=5, batch_size=4000)
    batch = sequence_batch(mix, 0, cfg)
    from_b = (batch["rewards"][:, 0] == 7.0).mean()
    assert abs(from_b - 0.75) < 0.03
    # offsets line up: the second part's first frame is found where its episode starts
    np.testing.assert_array_equal(mix.mu[mix.obs_start[4]], b.mu[0])

    frames_a = np.zeros((100, 2, 2, 3), np.uint8)
    frames_b = np.full((10, 2, 2, 3), 255, np.uint8)
    pool = FrameMix.of([(frames_a, 1.0), (frames_b, 1.0)])
    drawn = pool.sample(np.random.default_rng(0), 4000)
    assert abs((drawn[:, 0, 0, 0] == 255).mean() - 0.5) < 0.03  # per-dataset weight, not per-frame


def test_heldout_episodes_never_train():
    data = toy_latents(episodes=4)
    held = np.array([False, False, False, True])
    p = np.where(held, 0.0, 1.0 / 3)
    data = LatentDataset(
        **{**{k: getattr(data, k) for k in data.__dataclass_fields__}, "episode_p": p, "heldout": held}
    )
    batch = sequence_batch(data, 3, RNNConfig(seq_len=5, batch_size=500))
    held_mu = data.mu[data.obs_start[3] : data.obs_start[3] + data.lengths[3] + 1]
    first = batch["mu"][:, 0]
    assert not any((first == m).all(axis=1).any() for m in held_mu)


def test_mirror_flips_frames_and_negates_steer():
    from worldmodels.data import mirror

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
    f1, a1 = mirror(frames, actions)
    np.testing.assert_array_equal(f1[:, :, 0], frames[:, :, -1])  # left column <- right column
    np.testing.assert_array_equal(a1[:, 0], -actions[:, 0])
    np.testing.assert_array_equal(a1[:, 1:], actions[:, 1:])
    f2, a2 = mirror(f1, a1)
    np.testing.assert_array_equal(f2, frames)
    np.testing.assert_array_equal(a2, actions)
    # In a VAE batch about half of the frames come out flipped.
    asym = np.zeros((1, 4, 4, 3), np.uint8)
    asym[0, :, 0] = 255
    drawn = FrameMix.of([(asym, 1.0)]).sample(np.random.default_rng(1), 1000, mirror=True)
    assert abs((drawn[:, 0, -1, 0] == 255).mean() - 0.5) < 0.05


def test_reward_delusion_counts_offroad_steps_predicted_rewarded():
    from worldmodels.diagnostics import reward_delusion

    pred = np.array([0.5, -0.1, 0.2, 3.0, 0.1])
    real = np.array([-0.1, -0.1, -0.1, 3.0, -0.1])
    off = np.array([True, True, True, True, False])
    out = reward_delusion(pred, real, off)
    # off-road with negative real reward: steps 0, 1, 2; predicted positive: 0 and 2
    assert out["offroad_steps"] == 3 and np.isclose(out["reward_delusion"], 2 / 3)
    assert np.isnan(reward_delusion(pred, real, np.zeros(5, bool))["reward_delusion"])


def test_parse_recipe():
    from worldmodels.config import parse_recipe

    assert parse_recipe("brownian") == [("brownian", 1.0)]
    assert parse_recipe("brownian:2, heuristic:0.5") == [("brownian", 2.0), ("heuristic", 0.5)]
    for bad in ("", "a:0", "a:x", "a,a", ":3"):
        with pytest.raises(ValueError):
            parse_recipe(bad)
