"""Diagnostics: reward delusion, and the off-road detector on the real environment."""

import numpy as np


def test_reward_delusion_counts_offroad_steps_predicted_rewarded():
    from worldmodels.diagnostics import reward_delusion

    pred = np.array([0.5, -0.1, 0.2, 3.0, 0.1])
    real = np.array([-0.1, -0.1, -0.1, 3.0, -0.1])
    off = np.array([True, True, True, True, False])
    out = reward_delusion(pred, real, off)
    # off-road with negative real reward: steps 0, 1, 2; predicted positive: 0 and 2
    assert out["offroad_steps"] == 3 and np.isclose(out["reward_delusion"], 2 / 3)
    assert reward_delusion(pred, real, np.zeros(5, bool))["reward_delusion"] is None  # no off-road steps


def test_off_road_detector_on_the_real_env():
    from worldmodels.diagnostics import off_road
    from worldmodels.env import make_env

    env = make_env(200)
    env.reset(seed=3)
    u = env.unwrapped
    agree = []
    for t in range(200):
        obs, *_ = env.step(np.array([0.0 if t < 60 else 1.0, 0.4, 0.0], np.float32))  # straight, then off
        truth = all(len(w.tiles) == 0 for w in u.car.wheels)
        agree.append(bool(off_road(obs)) == truth)
    env.close()
    assert np.mean(agree) > 0.9
