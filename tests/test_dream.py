"""The fused dream equals a Python loop of the same step; CMA-ES through the same plumbing finds an optimum."""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from worldmodels import dream
from worldmodels.cli import default_cache_dir, enable_compilation_cache
from worldmodels.config import DreamConfig
from worldmodels.dream import (
    DreamStart,
    batch_rollout,
    dream_step,
    generation_fitness,
    initial_carry,
    sharded_generation_fitness,
    single_rollout,
)
from worldmodels.evolve import dream_fitness, evolve
from worldmodels.models import MDNRNN, LinearController
from worldmodels.models.mdnrnn import mixture_noise
from worldmodels.models.registry import controller_hparams


def small_world():
    rnn = MDNRNN(8, 3, 16, 3, key=jr.key(0))
    start = DreamStart(jr.normal(jr.key(1), (5, 8)), jnp.full((5, 8), -2.0))
    n = LinearController.num_params(8, 16)
    return rnn, start, n


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


# A script that compiles one generation under run_main and prints how many compilations were cache hits.
CACHED_SCRIPT = """
import json
import jax, jax.numpy as jnp, jax.random as jr
from worldmodels.cli import run_main

hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event == "/jax/compilation_cache/cache_hits"))

def work():
    from worldmodels.dream import DreamStart, generation_fitness
    from worldmodels.models import MDNRNN, LinearController
    rnn = MDNRNN(6, 3, 10, 2, key=jr.key(0))
    start = DreamStart(jnp.zeros((2, 6)), jnp.zeros((2, 6)))
    pop = jnp.zeros((3, LinearController.num_params(6, 10)))
    generation_fitness(pop, rnn, start, jr.key(1), jnp.float32(1.0), 2, 5, 0.5).block_until_ready()
    print(json.dumps({"cache_dir": jax.config.jax_compilation_cache_dir, "hits": sum(hits)}))

run_main(work)
"""


def test_scripts_reuse_compilations_across_runs(tmp_path):
    cache = tmp_path / "jax-cache"
    env = dict(os.environ, JAX_PLATFORMS="cpu", WORLDMODELS_JAX_CACHE=str(cache))

    def run():
        proc = subprocess.run(
            [sys.executable, "-c", CACHED_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run()
    assert first["cache_dir"] == str(cache) and first["hits"] == 0
    entries = {p.name for p in cache.iterdir()}
    assert any(name.startswith("jit_generation_fitness") for name in entries), entries
    second = run()
    assert second["hits"] >= 1  # the generation (and any other cached program) came from disk
    # The generation was not compiled and stored again (programs near the 0.1 s threshold may be, on a busy machine).
    new = {p.name for p in cache.iterdir()} - entries
    assert not any(name.startswith("jit_generation_fitness") for name in new), new


def test_compilation_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLDMODELS_JAX_CACHE", "")
    assert enable_compilation_cache() is None  # empty disables, and leaves JAX's config alone
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "worldmodels" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "worldmodels" / "jax"


def test_dream_fitness_plumbing_runs_on_the_mdnrnn(tmp_path):
    rnn, start, _ = small_world()
    cfg = DreamConfig(population=4, rollouts=2, dream_steps=8, generations=2, checkpoint_every=1)
    best = evolve(tmp_path / "c", dream_fitness(rnn, start, cfg), controller_hparams(rnn), cfg)
    assert best.shape == (LinearController.num_params(8, 16),)
    assert (tmp_path / "c" / "ckpt").is_dir()
