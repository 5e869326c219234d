"""Collection policies: actions stay in the action box, Brownian noise is smooth, the heuristic drives."""

import numpy as np
import pytest

from worldmodels.config import CollectConfig
from worldmodels.policies import OU_THETA, BrownianPolicy, make_policy, ou_noise_step


def test_ou_noise_has_the_stationary_std_and_lag_one_correlation_it_claims():
    """n' = (1 - theta) n + std sqrt(1 - (1 - theta)^2) eps: stationary variance std^2, lag-1 correlation 1 - theta."""
    rng = np.random.default_rng(0)
    noise, trace = np.zeros(3, np.float32), []
    for _ in range(40_000):
        noise = ou_noise_step(noise, rng, 0.2)
        trace.append(noise)
    trace = np.array(trace[100:])  # past the start at zero
    np.testing.assert_allclose(trace.std(axis=0), 0.2, rtol=0.03)
    lag1 = [np.corrcoef(trace[:-1, d], trace[1:, d])[0, 1] for d in range(3)]
    np.testing.assert_allclose(lag1, 1.0 - OU_THETA, atol=0.02)


def test_brownian_actions_stay_in_bounds_and_are_smooth():
    policy = BrownianPolicy()
    policy.reset(0)
    actions = np.stack([policy.act() for _ in range(2000)])
    assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1
    assert actions[:, 1:].min() >= 0 and actions[:, 1:].max() <= 1
    # smooth: consecutive actions are strongly correlated, unlike white noise
    assert np.corrcoef(actions[:-1, 0], actions[1:, 0])[0, 1] > 0.3
    with pytest.raises(ValueError, match="unknown collection policy"):
        make_policy(CollectConfig(policy="nope"))


@pytest.mark.parametrize("name", ["brownian", "random_controller", "heuristic", "recovery", "aggressive"])
def test_policy_actions_stay_in_the_box_on_the_real_env(name):
    from worldmodels.env import make_env

    env = make_env(150)
    policy = make_policy(CollectConfig(policy=name, recovery_every=20.0))
    obs, _ = env.reset(seed=3)
    policy.reset(3, env)
    actions = []
    for _ in range(150):
        a = policy.act(obs)
        assert a.shape == (3,) and a.dtype == np.float32
        actions.append(a)
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            break
    env.close()
    actions = np.stack(actions)
    assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1
    assert actions[:, 1:].min() >= 0 and actions[:, 1:].max() <= 1
    assert actions.std(axis=0).max() > 0  # it does something


def test_heuristic_drives_along_the_track():
    from worldmodels.diagnostics import off_road
    from worldmodels.env import make_env

    env = make_env(300)
    policy = make_policy(CollectConfig(policy="heuristic"))
    obs, _ = env.reset(seed=11)
    policy.reset(11, env)
    total, frames = 0.0, []
    for _ in range(300):
        obs, reward, term, trunc, _ = env.step(policy.act(obs))
        total += reward
        frames.append(obs)
        if term or trunc:
            break
    env.close()
    assert total > 150  # > 1/4 of a lap's tiles in 300 steps
    assert off_road(np.stack(frames)).mean() < 0.1


def test_controller_policy_acts_within_the_box(tmp_path):
    import jax.numpy as jnp
    import jax.random as jr

    from worldmodels import checkpoint
    from worldmodels.env import make_env
    from worldmodels.models import MDNRNN, ConvVAE, LinearController
    from worldmodels.models.registry import controller_hparams

    vae = ConvVAE(32, key=jr.key(0))
    rnn_hp = {"z_size": 32, "action_size": 3, "hidden_size": 16, "num_mixtures": 2}
    rnn = MDNRNN(**rnn_hp, key=jr.key(1))
    flat = 0.01 * jr.normal(jr.key(2), (LinearController.num_params(32, 16),))
    ctrl = LinearController.from_flat(flat, 32, 16)
    checkpoint.save(tmp_path / "vae" / "ckpt", 1, vae, kind="vae", hparams={"z_size": 32})
    checkpoint.save(tmp_path / "rnn" / "ckpt", 1, rnn, kind="mdnrnn", hparams=rnn_hp)
    checkpoint.save(tmp_path / "controller" / "ckpt", 1, ctrl, kind="controller", hparams=controller_hparams(rnn))
    env = make_env(30)
    policy = make_policy(CollectConfig(policy="controller", controller_noise=0.5), tmp_path)
    obs, _ = env.reset(seed=0)
    policy.reset(0, env)
    actions = []
    for _ in range(30):
        a = policy.act(obs)
        actions.append(a)
        obs, *_ = env.step(a)
    env.close()
    actions = np.stack(actions)
    assert actions.dtype == np.float32 and actions.shape == (30, 3)
    assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1 and actions[:, 1:].min() >= 0
    # the noise is smooth (OU), not white: consecutive steer values correlate
    assert jnp.corrcoef(actions[:-1, 0], actions[1:, 0])[0, 1] > 0.2
    with pytest.raises(ValueError, match="run directory"):
        make_policy(CollectConfig(policy="controller"))
