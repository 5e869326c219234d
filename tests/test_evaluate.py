"""``evaluate``: per-episode noise keys, and pipelined real episodes that do not depend on the worker count."""

import equinox as eqx
import imageio.v3 as iio
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from worldmodels.agent import Agent, episode_step
from worldmodels.evaluate import group_sizes, run_episodes
from worldmodels.models import MDNRNN, ConvVAE, LinearController
from worldmodels.models.mdnrnn import LSTMState

Z, H = 8, 16


@pytest.fixture(scope="module")
def agent():
    """A small random agent whose controller steers on z (so the noise matters) and mostly accelerates."""
    n = LinearController.num_params(Z, H)
    flat = jr.normal(jr.key(2), (n,)) * 0.5
    controller = LinearController.from_flat(flat, Z, H)
    controller = eqx.tree_at(lambda c: c.bias, controller, jnp.array([0.0, 2.0, -2.0]))
    return Agent(ConvVAE(Z, key=jr.key(0)), MDNRNN(Z, 3, H, 2, key=jr.key(1)), controller)


def test_group_sizes():
    assert group_sizes(1) == [1]
    assert group_sizes(2) == [1, 1]
    assert group_sizes(3) == [2, 1]
    assert group_sizes(16) == [8, 8]


def test_episode_noise_does_not_depend_on_the_batch(agent):
    """An environment's action depends on its episode's seed and step, not on its neighbours in the batch."""
    obs = jr.randint(jr.key(3), (3, 64, 64, 3), 0, 256).astype(jnp.uint8)
    zeros = jnp.zeros((3, H))
    seeds = np.array([7, 8, 9], np.uint32)
    t = np.asarray(5, np.int32)
    key = jr.key(4)
    together, *_ = episode_step(agent, obs, LSTMState(zeros, zeros), key, seeds, t)
    for i in range(3):
        alone, *_ = episode_step(agent, obs[i : i + 1], LSTMState(zeros[:1], zeros[:1]), key, seeds[i : i + 1], t)
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-5, atol=1e-6)
    other_step, *_ = episode_step(agent, obs, LSTMState(zeros, zeros), key, seeds, np.asarray(6, np.int32))
    assert not np.allclose(other_step, together)


def test_results_do_not_depend_on_workers(agent, tmp_path):
    """Same seeds, same episodes with 1 worker and with 2 or 3 in two pipelined groups; results come
    back in the order of the seeds and the first episode is filmed.

    3 seeds on 2 workers: one group of one env runs two rounds, the other one. 4 seeds on 3 workers:
    groups of 2 and 1 envs, so some round is padded with an idle env."""
    seeds = [1_000_002, 1_000_000, 1_000_001, 1_000_003]
    key = jr.key(5)

    def run(seeds, workers, **kw):
        results = run_episodes(agent, seeds, workers=workers, max_steps=30, key=key, progress=False, **kw)
        assert [r.seed for r in results] == seeds
        # M's return to 4 decimals: float32 sums differ in the last bits between batch sizes
        return [(r.ret, r.steps, r.offroad_steps, r.deluded_steps, round(r.model_return, 4)) for r in results]

    one = run(seeds, 1)
    assert all(steps == 30 for _, steps, *_ in one)
    assert len({ret for ret, *_ in one}) == len(seeds)  # the seeds' episodes differ, so the checks bite
    assert run(seeds[:3], 2, video_dir=tmp_path, video_episodes=1) == one[:3]
    assert run(seeds, 3) == one
    # Action noise is drawn from each episode's seed: it changes the episodes, not their independence of workers.
    noisy = run(seeds[:2], 1, action_noise=0.5)
    assert noisy != one[:2] and run(seeds[:2], 2, action_noise=0.5) == noisy
    (video,) = tmp_path.glob("*.mp4")
    assert video.name == f"episode_{seeds[0]}.mp4"
    frames = iio.imread(video)
    assert frames.shape[0] == 30 and frames.shape[2] == 3 * frames.shape[1]  # real | VAE | MDN-RNN


def test_model_return_sums_the_reward_head_along_the_real_episode(agent):
    """M's own estimate of a real episode's return is its reward head summed over the episode's steps: with a head
    that predicts 0.25 whatever it reads, 20 steps give 5.0; the calibration line recovers a known slope."""
    from worldmodels.evaluate import calibration_fit

    head = agent.dynamics.head
    weight = head.weight.at[-2].set(0.0)
    bias = head.bias.at[-2].set(0.25)
    constant = eqx.tree_at(lambda a: (a.dynamics.head.weight, a.dynamics.head.bias), agent, (weight, bias))
    (result,) = run_episodes(constant, [1_000_000], workers=1, max_steps=20, progress=False)
    assert result.steps == 20 and result.model_return == pytest.approx(5.0, rel=1e-5)

    model = np.array([100.0, 200.0, 300.0, 400.0])
    fit = calibration_fit(model, 2.0 * model - 50.0)
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(-50.0)
    assert fit["r"] == pytest.approx(1.0)
    assert calibration_fit(model[:2], model[:2]) is None and calibration_fit(np.ones(4), model) is None


def test_ci95_is_the_student_t_half_width():
    import numpy as np

    from worldmodels.evaluate import ci95

    # mean 2.5, sample std 1.291, t_{0.975, 3} = 3.1824: 3.1824 * 1.291 / 2 = 2.054
    assert abs(ci95(np.array([1.0, 2.0, 3.0, 4.0])) - 2.0543) < 1e-3
    assert ci95(np.array([7.0])) == 0.0


def test_non_finite_actions_stop_the_evaluation_with_one_named_error(agent):
    """A controller with NaN parameters is stopped before its action reaches the simulator, naming the seed."""
    from worldmodels.errors import TrainingDiverged

    broken = eqx.tree_at(lambda a: a.controller.bias, agent, jnp.array([jnp.nan, 0.0, 0.0]))
    with pytest.raises(TrainingDiverged, match="not finite at step 0 of episode seed 1000000"):
        run_episodes(broken, [1_000_000], workers=1, max_steps=5, progress=False)


def test_an_episode_replays_alone_whatever_seed_the_test_starts_at(agent, tmp_path):
    """``test_agent.py --seed S --episodes 1`` gives episode S of a longer test from an earlier seed: the latent
    noise's key does not depend on where the test starts (``stages.TEST_NOISE_SEED``)."""
    from worldmodels import checkpoint
    from worldmodels.config import TestConfig
    from worldmodels.models.registry import controller_hparams
    from worldmodels.stages import run_test

    run = tmp_path / "run"
    checkpoint.save(run / "vae" / "ckpt", 1, agent.vae, kind="vae", hparams={"z_size": Z})
    hp = {"z_size": Z, "action_size": 3, "hidden_size": H, "num_mixtures": 2}
    checkpoint.save(run / "rnn" / "ckpt", 1, agent.dynamics, kind="mdnrnn", hparams=hp)
    ctrl_hp = controller_hparams(agent.dynamics)
    checkpoint.save(run / "controller" / "ckpt", 1, agent.controller, kind="controller", hparams=ctrl_hp)
    # The videos show M's prediction, which reads the noisy z: the noise, not only the track, must be the same.
    test = TestConfig(episodes=3, max_steps=25, workers=1, video=True, video_episodes=3)
    three = run_test(run, test, out=tmp_path / "three" / "results.json")["episodes"]
    one = TestConfig(**{**test.__dict__, "seed": 1_000_002, "episodes": 1, "video_episodes": 1})
    alone = run_test(run, one, out=tmp_path / "one" / "results.json")["episodes"][0]
    assert alone == three[2] and alone["seed"] == 1_000_002
    video = "episode_1000002.mp4"
    np.testing.assert_array_equal(iio.imread(tmp_path / "one" / video), iio.imread(tmp_path / "three" / video))
