"""The fused dream equals a Python loop of the same step and per-candidate rollouts, and traces once per shape."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
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


def test_done_head_masks_later_rewards():
    rnn, start, n = small_world()
    # Force done probability ~1 and reward 1 per step: only the first step counts.
    bias = rnn.head.bias.at[-1].set(50.0).at[-2].set(1.0)
    weight = rnn.head.weight.at[-2:].set(0.0)
    rnn = eqx.tree_at(lambda m: (m.head.weight, m.head.bias), rnn, (weight, bias))
    ret = single_rollout(jnp.zeros(n), rnn, start, jr.key(0), steps=10, temperature=1.0, done_threshold=0.5)
    np.testing.assert_allclose(ret, 1.0, rtol=1e-5)


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
