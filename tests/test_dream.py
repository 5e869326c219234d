"""The fused dream equals a Python loop of the same step and per-candidate rollouts, and traces once per shape."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import small_world

from worldmodels import dream
from worldmodels.dream import (
    DreamStart,
    batch_rollout,
    dream_step,
    generation_fitness,
    initial_carry,
    sharded_generation_fitness,
    single_rollout,
)
from worldmodels.models import MDNRNN, LinearController
from worldmodels.models.mdnrnn import mixture_noise


def test_scanned_dream_equals_python_loop():
    rnn, start, n = small_world()
    params = jr.normal(jr.key(2), (n,)) * 0.5
    key = jr.key(3)
    steps, tau = 25, 1.3
    scanned = single_rollout(params, rnn, start, key, steps=steps, temperature=tau, done_threshold=0.5)

    controller = LinearController.from_flat(params, 8, 16)
    k_start, k_steps = jr.split(key)
    carry = initial_carry(rnn, start, k_start)
    for k in jr.split(k_steps, steps):
        carry, _ = dream_step(controller, rnn, carry, mixture_noise(k, 3, 8), tau, 0.5)
    np.testing.assert_allclose(scanned, carry.total, rtol=1e-4, atol=1e-4)


def test_dream_of_a_controller_with_a_hidden_layer_equals_python_loop():
    """``units`` > 0: the scanned dream and the generation call use ``MLPController`` exactly as a Python loop does."""
    from worldmodels.models.controller import controller_from_flat, controller_num_params

    rnn, start, _ = small_world()
    n = controller_num_params(8, 16, 3, units=6)
    population = jr.normal(jr.key(2), (3, n)) * 0.5
    key, steps, tau = jr.key(3), 20, 1.0
    fitness = generation_fitness(population, rnn, start, key, jnp.float32(tau), 2, steps, 0.5, units=6)
    for p in range(3):
        controller = controller_from_flat(population[p], 8, 16, units=6)
        totals = []
        for k in jr.split(key, 2):
            k_start, k_steps = jr.split(k)
            carry = initial_carry(rnn, start, k_start)
            for ks in jr.split(k_steps, steps):
                carry, _ = dream_step(controller, rnn, carry, mixture_noise(ks, 3, 8), tau, 0.5)
            totals.append(carry.total)
        np.testing.assert_allclose(fitness[p], np.mean(totals), rtol=1e-4, atol=1e-4)


def test_flop_count_counts_the_controllers_weights_whatever_its_layers():
    """The roofline's FLOPs per dream step: 2 per weight of C (biases excluded) on top of the same LSTM and head."""
    from worldmodels.models.controller import controller_num_params

    z, h, k, a = 32, 256, 5, 3
    base = dream.dream_flops_per_step(z, h, k, a)
    assert base == 765_120  # the figure bench_dream.py prints for the quick preset's sizes
    linear_weights = controller_num_params(z, h, a) - a
    for units in (1, 8, 32):
        mlp_weights = controller_num_params(z, h, a, units=units) - units - a
        extra = dream.dream_flops_per_step(z, h, k, a, controller_units=units) - base
        assert extra == 2 * (mlp_weights - linear_weights), units
    with pytest.raises(ValueError, match="controller units must be >= 0"):
        dream.dream_flops_per_step(z, h, k, a, controller_units=-1)


def test_noisy_dream_equals_python_loop_with_the_ou_noise_clipped_to_the_box():
    """With action noise the scanned dream is the loop whose action is clip(C(z, h) + n_t, box), n = ``ou_path`` of
    ``fold_in(key, 1)``; the noise changes the return, and 0 is the noise-free dream exactly."""
    rnn, start, n = small_world()
    params = jr.normal(jr.key(2), (n,)) * 0.5
    key, steps, tau, std = jr.key(3), 25, 1.0, 0.4
    kw = {"steps": steps, "temperature": tau, "done_threshold": 0.5}
    noisy = single_rollout(params, rnn, start, key, **kw, action_noise=std)

    controller = LinearController.from_flat(params, 8, 16)
    k_start, k_steps = jr.split(key)
    carry = initial_carry(rnn, start, k_start)
    path = dream.ou_path(jr.fold_in(key, 1), steps, 3, std)
    low, high = np.array([-1.0, 0.0, 0.0]), np.ones(3)
    outside = 0
    for k, a in zip(jr.split(k_steps, steps), path, strict=True):
        raw = np.asarray(controller(carry.z, carry.state.h)) + np.asarray(a)
        outside += int(np.any((raw < low) | (raw > high)))
        carry, action = dream_step(controller, rnn, carry, mixture_noise(k, 3, 8), tau, 0.5, a)
        np.testing.assert_allclose(action, np.clip(raw, low, high), rtol=1e-5, atol=1e-6)
    assert outside > 0  # the clipping was exercised
    np.testing.assert_allclose(noisy, carry.total, rtol=1e-4, atol=1e-4)
    clean = single_rollout(params, rnn, start, key, **kw)
    assert float(noisy) != float(clean)
    assert float(single_rollout(params, rnn, start, key, **kw, action_noise=0.0)) == float(clean)


def test_ou_path_has_the_real_noises_stationary_std_and_correlation():
    """``dream.ou_path`` is the process of ``policies.ou_noise_step`` (same theta, same stationary std)."""
    from worldmodels.policies import OU_THETA

    assert dream.OU_THETA == OU_THETA
    path = np.asarray(dream.ou_path(jr.key(0), 40_000, 3, 0.2))[100:]
    np.testing.assert_allclose(path.std(axis=0), 0.2, rtol=0.03)
    lag1 = [np.corrcoef(path[:-1, d], path[1:, d])[0, 1] for d in range(3)]
    np.testing.assert_allclose(lag1, 1.0 - OU_THETA, atol=0.02)
    assert np.all(np.asarray(dream.ou_path(jr.key(0), 5, 3, 0.0)) == 0.0)


def constant_heads(rnn: MDNRNN, reward: float, done_logit: float) -> MDNRNN:
    """``rnn`` whose reward and done heads ignore their input: every step predicts ``reward`` and ``done_logit``."""
    bias = rnn.head.bias.at[-1].set(done_logit).at[-2].set(reward)
    weight = rnn.head.weight.at[-2:].set(0.0)
    return eqx.tree_at(lambda m: (m.head.weight, m.head.bias), rnn, (weight, bias))


def test_done_head_masks_later_rewards():
    rnn, start, n = small_world()
    rnn = constant_heads(rnn, reward=1.0, done_logit=50.0)  # done probability ~1: only the first step counts
    ret = single_rollout(jnp.zeros(n), rnn, start, jr.key(0), steps=10, temperature=1.0, done_threshold=0.5)
    np.testing.assert_allclose(ret, 1.0, rtol=1e-5)


def test_expected_termination_weights_rewards_by_the_probability_of_going_on():
    """dream.termination expected (done_threshold None): with a constant done probability p and reward 1 per step,
    a dream of T steps returns sum_t (1 - p)^t = (1 - (1 - p)^T) / p; the threshold rule at 0.5 ignores p = 0.1."""
    rnn, start, n = small_world()
    p, steps = 0.1, 30
    rnn = constant_heads(rnn, reward=1.0, done_logit=float(np.log(p / (1 - p))))
    expected = single_rollout(jnp.zeros(n), rnn, start, jr.key(0), steps=steps, temperature=1.0, done_threshold=None)
    np.testing.assert_allclose(expected, (1 - (1 - p) ** steps) / p, rtol=1e-5)
    thresholded = single_rollout(jnp.zeros(n), rnn, start, jr.key(0), steps=steps, temperature=1.0, done_threshold=0.5)
    np.testing.assert_allclose(thresholded, steps, rtol=1e-5)


def test_population_fitness_equals_per_candidate_rollouts():
    rnn, start, n = small_world()
    population = jr.normal(jr.key(4), (6, n)) * 0.3
    key = jr.key(5)
    fitness = generation_fitness(population, rnn, start, key, jnp.float32(1.0), 3, 15, 0.5)
    keys = jr.split(key, 3)
    for p in range(6):
        one = batch_rollout(population[p], rnn, start, keys, steps=15, temperature=1.0, done_threshold=0.5)
        np.testing.assert_allclose(fitness[p], one, rtol=1e-4, atol=1e-4)


def test_generation_call_does_not_retrace():
    rnn, start, n = small_world()
    traced = []

    @eqx.filter_jit
    def counted(population, key, tau):
        traced.append(1)
        return generation_fitness(population, rnn, start, key, tau, 2, 10, 0.5)

    for gen in range(4):
        counted(jr.normal(jr.key(gen), (4, n)), jr.key(gen), jnp.float32(1.0 + gen))
    assert len(traced) == 1
    # generation_fitness itself is cached per shape: new keys, populations and temperatures reuse it.
    before = generation_fitness._cached._cache_size()
    for gen in range(3):
        generation_fitness(jr.normal(jr.key(gen), (4, n)), rnn, start, jr.key(gen), jnp.float32(0.5 * gen), 2, 10, 0.5)
    assert generation_fitness._cached._cache_size() <= before + 1


def test_three_generations_trace_once(monkeypatch):
    """New populations, keys and temperatures each generation reuse one compiled program."""
    # Sizes no other test uses, so this jit cache entry is cold and the first generation must trace.
    rnn = MDNRNN(5, 3, 7, 2, key=jr.key(0))
    start = DreamStart(jr.normal(jr.key(1), (3, 5)), jnp.full((3, 5), -2.0))
    n = LinearController.num_params(5, 7)
    counted = eqx.debug.assert_max_traces(dream.single_rollout, max_traces=1)
    monkeypatch.setattr(dream, "single_rollout", counted)  # looked up at trace time by generation_fitness
    for gen in range(3):
        population = jr.normal(jr.key(10 + gen), (4, n))
        fitness = sharded_generation_fitness(population, rnn, start, jr.key(gen), jnp.float32(1.0 + gen), 2, 6, 0.5)
        assert fitness.shape == (4,) and bool(jnp.all(jnp.isfinite(fitness)))
    assert eqx.debug.get_num_traces(counted) == 1


def _episodes(rnn, lengths, seed=0):
    """Concatenated random episodes in the ``LatentDataset`` layout: (mu, logvar, actions, obs_start, act_start)."""
    rng = np.random.default_rng(seed)
    frames = sum(n + 1 for n in lengths)
    mu = rng.normal(size=(frames, rnn.z_size)).astype(np.float32)
    logvar = np.full_like(mu, -3.0)
    actions = rng.uniform(-1, 1, size=(sum(lengths), 3)).astype(np.float32)
    obs_start = np.cumsum([0] + [n + 1 for n in lengths[:-1]])
    act_start = np.cumsum([0] + list(lengths[:-1]))
    return mu, logvar, actions, obs_start, act_start


def test_warm_up_equals_python_loop():
    rnn, _, _ = small_world()
    mu, _, actions, _, _ = _episodes(rnn, [12])
    states = dream.warm_up(rnn, jnp.asarray(mu[:12]), jnp.asarray(actions))
    state = rnn.initial_state()
    np.testing.assert_array_equal(states.h[0], state.h)
    for t in range(12):
        state, _ = rnn(jnp.asarray(mu[t]), jnp.asarray(actions[t]), state)
        np.testing.assert_allclose(states.h[t + 1], state.h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(states.c[t + 1], state.c, rtol=1e-5, atol=1e-6)


def test_mid_episode_dream_equals_reference_loop():
    """A dream started at frame t of an episode: the chunked, padded warm-up gives the state of a plain loop
    over that episode's first t frames, and the scanned dream from there equals a stepped one."""
    rnn, _, n = small_world()
    lengths = [9, 14, 6]
    mu, logvar, actions, obs_start, act_start = _episodes(rnn, lengths)
    episodes, times = np.array([1, 0, 2, 1, 1]), np.array([13, 0, 5, 3, 7])
    start = dream.mid_episode_starts(rnn, mu, logvar, actions, obs_start, act_start, episodes, times, chunk=2)
    for i, (e, t) in enumerate(zip(episodes, times, strict=True)):
        state = rnn.initial_state()
        for k in range(t):
            state, _ = rnn(jnp.asarray(mu[obs_start[e] + k]), jnp.asarray(actions[act_start[e] + k]), state)
        np.testing.assert_allclose(start.state.h[i], state.h, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(start.mu[i], mu[obs_start[e] + t])

    # One start only: the dream is that frame's and that state's.
    one = dream.DreamStart(start.mu[:1], start.logvar[:1], jax.tree.map(lambda s: s[:1], start.state))
    params = jr.normal(jr.key(2), (n,)) * 0.5
    key, steps = jr.key(3), 20
    scanned = single_rollout(params, rnn, one, key, steps=steps, temperature=1.0, done_threshold=0.5)
    controller = LinearController.from_flat(params, 8, 16)
    k_start, k_steps = jr.split(key)
    carry = initial_carry(rnn, one, k_start)
    np.testing.assert_allclose(carry.state.h, start.state.h[0])
    for k in jr.split(k_steps, steps):
        carry, _ = dream_step(controller, rnn, carry, mixture_noise(k, 3, 8), 1.0, 0.5)
    np.testing.assert_allclose(scanned, carry.total, rtol=1e-4, atol=1e-4)


def test_mid_episode_starts_refuse_mismatched_indices():
    rnn, _, _ = small_world()
    mu, logvar, actions, obs_start, act_start = _episodes(rnn, [5])
    with pytest.raises(ValueError, match="equal, non-empty"):
        dream.mid_episode_starts(rnn, mu, logvar, actions, obs_start, act_start, np.array([0, 0]), np.array([1]))


def test_dream_starts_pool_mixes_first_frames_and_mid_episode_frames():
    from worldmodels.config import DreamConfig
    from worldmodels.stages import dream_starts
    from worldmodels.train import LatentDataset

    rnn, _, _ = small_world()
    lengths = [30, 50, 40]
    mu, logvar, actions, obs_start, act_start = _episodes(rnn, lengths)
    steps = sum(lengths)
    data = LatentDataset(
        mu, logvar, actions, np.zeros(steps, np.float32), np.zeros(steps, np.float32), np.zeros(steps, bool),
        obs_start, act_start, np.array(lengths), np.full(3, 1 / 3), np.zeros(3, bool),
    )  # fmt: skip
    paper = dream_starts(rnn, data, DreamConfig())
    assert paper.state is None and paper.mu.shape == (3, 8)
    np.testing.assert_array_equal(paper.mu, mu[obs_start])

    start = dream_starts(rnn, data, DreamConfig(mid_episode_starts=0.25, start_pool=40))
    assert start.mu.shape == (40, 8) and start.state.h.shape == (40, 16)
    first = np.isin(np.asarray(start.mu), mu[obs_start]).all(axis=1)
    initial = np.all(np.asarray(start.state.h) == 0, axis=1)
    assert first[10:].all() and initial[10:].all()  # 30 first frames from the initial state
    assert not initial[:10].any()  # 10 frames inside episodes, with warmed-up states (time 0 is unlikely here)
    again = dream_starts(rnn, data, DreamConfig(mid_episode_starts=0.25, start_pool=40))
    np.testing.assert_array_equal(start.mu, again.mu)  # drawn from the seed
