"""Dreams dealt over an ensemble of M: equal to a reference loop, to the single-model dream for one member or
copies, and pessimism lowers the fitness of a controller that exploits a member the others disagree with."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import small_world

from worldmodels.dream import (
    DreamStart,
    ensemble_fitness,
    ensemble_generation_returns,
    generation_fitness,
    initial_carry,
    single_rollout,
    tracked_rollout,
)
from worldmodels.models import MDNRNN, LinearController
from worldmodels.models.mdnrnn import mixture_noise, sample_next_z_from_noise


def _reference_return(params, agent, world, start, key, steps, tau, threshold=0.5):
    """One dream stepped in Python: ``world`` samples z, reward and done, ``agent`` is fed the same (z, a)."""
    controller = LinearController.from_flat(params, agent.z_size, agent.hidden_size)
    k_start, k_steps = jr.split(key)
    first = initial_carry(agent, start, k_start)
    z, agent_state, world_state = first.z, first.state, world.initial_state()
    alive, total = 1.0, 0.0
    for k in jr.split(k_steps, steps):
        action = controller(z, agent_state.h)
        world_state, out = world(z, action, world_state)
        agent_state, _ = agent(z, action, agent_state)
        total += alive * float(out.reward)
        alive *= 0.0 if float(jax.nn.sigmoid(out.done_logit)) > threshold else 1.0
        z = sample_next_z_from_noise(out, mixture_noise(k, world.num_mixtures, world.z_size), tau)
    return total


def test_ensemble_dream_equals_reference_loop():
    agent, start, n = small_world()
    other = MDNRNN(8, 3, 16, 2, key=jr.key(7))  # another member, even another mixture count
    population = jr.normal(jr.key(4), (3, n)) * 0.5
    key, rollouts, steps, tau = jr.key(5), 5, 12, 1.2
    tau32 = jnp.float32(tau)
    returns = ensemble_generation_returns(population, (agent, other), start, key, tau32, rollouts, steps, 0.5)
    assert returns.shape == (3, 2)
    keys = jr.split(key, rollouts)
    for p in range(3):
        per_member = [[], []]
        for r in range(rollouts):  # dream r in member r mod 2
            world = (agent, other)[r % 2]
            per_member[r % 2].append(_reference_return(population[p], agent, world, start, keys[r], steps, tau))
        np.testing.assert_allclose(returns[p], [np.mean(m) for m in per_member], rtol=1e-4, atol=1e-4)


def test_ensemble_of_one_or_of_copies_is_the_single_model_dream():
    agent, start, n = small_world()
    population = jr.normal(jr.key(4), (4, n)) * 0.5
    key, tau = jr.key(6), jnp.float32(1.0)
    single = generation_fitness(population, agent, start, key, tau, 4, 15, 0.5)
    one = ensemble_generation_returns(population, (agent,), start, key, tau, 4, 15, 0.5)
    np.testing.assert_allclose(one[:, 0], single, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ensemble_fitness(one, 3.0), single, rtol=1e-5, atol=1e-5)  # no spread, no penalty

    # A member that is a copy of M: tracking the world changes nothing, each dream is single_rollout's.
    copies = ensemble_generation_returns(population, (agent, agent), start, key, tau, 4, 15, 0.5)
    keys = jr.split(key, 4)
    for p in range(4):
        alone = [single_rollout(population[p], agent, start, k, steps=15, temperature=1.0) for k in keys]
        np.testing.assert_allclose(copies[p], [np.mean(alone[0::2]), np.mean(alone[1::2])], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        tracked_rollout(population[3], agent, agent, start, keys[1], steps=15, temperature=1.0), alone[1], rtol=1e-4
    )

    # With action noise too: a copy's dream is single_rollout's noisy dream (the same noise path from the same key).
    noisy = ensemble_generation_returns(population, (agent, agent), start, key, tau, 4, 15, 0.5, action_noise=0.3)
    alone = [single_rollout(population[0], agent, start, k, steps=15, temperature=1.0, action_noise=0.3) for k in keys]
    np.testing.assert_allclose(noisy[0], [np.mean(alone[0::2]), np.mean(alone[1::2])], rtol=1e-4, atol=1e-4)
    assert not np.allclose(noisy[0], copies[0])


def test_pessimism_lowers_the_fitness_of_a_controller_exploiting_a_disagreeing_member():
    """Member 1 is M with its reward head negated: every controller's dream return in it is minus its return in M.
    (One start with no spread and a near-zero temperature make every dream the same, whatever its key.)"""
    agent, start, n = small_world()
    agent = eqx.tree_at(lambda m: m.head.bias, agent, agent.head.bias.at[-1].set(-20.0))  # never done
    start = DreamStart(start.mu[:1], jnp.full((1, 8), -40.0))
    flip = eqx.tree_at(
        lambda m: (m.head.weight, m.head.bias),
        agent,
        (agent.head.weight.at[-2].multiply(-1.0), agent.head.bias.at[-2].multiply(-1.0)),
    )
    population = jr.normal(jr.key(8), (16, n))
    key, tau = jr.key(9), jnp.float32(1e-10)
    in_m = np.asarray(generation_fitness(population, agent, start, key, tau, 4, 30, 0.5))
    agree = ensemble_generation_returns(population, (agent, agent), start, key, tau, 4, 30, 0.5)
    disagree = ensemble_generation_returns(population, (agent, flip), start, key, tau, 4, 30, 0.5)
    np.testing.assert_allclose(agree, np.stack([in_m, in_m], 1), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(disagree, np.stack([in_m, -in_m], 1), rtol=1e-3, atol=1e-3)

    np.testing.assert_allclose(ensemble_fitness(agree, 2.0), in_m, rtol=1e-3, atol=1e-3)  # agreement: no cost
    pessimistic = np.asarray(ensemble_fitness(disagree, 1.0))
    np.testing.assert_allclose(pessimistic, -np.abs(in_m), rtol=1e-3, atol=1e-3)
    exploiter, modest = int(np.argmax(in_m)), int(np.argmin(np.abs(in_m)))
    assert in_m[exploiter] > 1.0 and abs(in_m[exploiter]) > abs(in_m[modest]) + 1.0
    # In M alone the exploiter is the best candidate; in the disagreeing ensemble it falls below the modest one.
    assert pessimistic[exploiter] < pessimistic[modest]
    assert pessimistic[exploiter] < in_m[exploiter] - 2.0


def test_too_few_rollouts_and_mid_episode_states_are_refused():
    agent, start, n = small_world()
    with pytest.raises(ValueError, match="cannot cover 3 ensemble members"):
        ensemble_generation_returns(jnp.zeros((2, n)), (agent,) * 3, start, jr.key(0), jnp.float32(1.0), 2, 5, 0.5)
    warm = DreamStart(start.mu, start.logvar, jax.tree.map(lambda s: jnp.stack([s] * 5), agent.initial_state()))
    with pytest.raises(ValueError, match="first frames only"):
        tracked_rollout(jnp.zeros(n), agent, agent, warm, jr.key(0), steps=3, temperature=1.0)
