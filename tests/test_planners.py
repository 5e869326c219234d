"""CEM planning in latent space (``worldmodels.planners``) on toy linear dynamics and a tiny MDN-RNN."""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from worldmodels.env import ACTION_HIGH, ACTION_LOW
from worldmodels.models import MDNRNN, LinearController, MDNOutput
from worldmodels.models.dynamics import Dynamics, batched_initial_state, broadcast_batch, module_at, stack_modules
from worldmodels.models.mdnrnn import MixtureNoise, sample_next_z_from_noise
from worldmodels.models.transition import GRUTransition
from worldmodels.planners import (
    CEMConfig,
    RolloutExtras,
    candidate_scores,
    cem_plan,
    draw_noise,
    ensemble_initial_state,
    initial_mean,
    plan_batch,
    plan_returns,
    seed_mean,
)


class ToyState(NamedTuple):
    h: jax.Array


class LinearToy(eqx.Module):
    """z_{t+1} = A z + B a, deterministic (one component, sigma ~ 0); reward -||z_{t+1} - target||^2 - c ||a||^2."""

    a_mat: jax.Array
    b_mat: jax.Array
    target: jax.Array
    cost: float = eqx.field(static=True)
    z_size: int = eqx.field(static=True)
    action_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True, default=1)
    num_mixtures: int = eqx.field(static=True, default=1)

    def initial_state(self):
        return ToyState(jnp.zeros((1,), jnp.float32))

    def __call__(self, z, action, state):
        zn = self.a_mat @ z + self.b_mat @ action
        reward = -jnp.sum((zn - self.target) ** 2) - self.cost * jnp.sum(action**2)
        return state, MDNOutput(jnp.zeros(1), zn[None], jnp.full((1, zn.shape[0]), -30.0), reward, jnp.float32(-30.0))


def linear_toy(a_mat, b_mat, target, cost):
    a_mat, b_mat = jnp.asarray(a_mat, jnp.float32), jnp.asarray(b_mat, jnp.float32)
    return LinearToy(a_mat, b_mat, jnp.asarray(target, jnp.float32), cost, a_mat.shape[0], b_mat.shape[1])


class InvestToy(eqx.Module):
    """z = (capital, time); z' = (capital + a, time + 1). Reward -a per step, plus 3 * capital at the last step:
    investing pays only at the end, so the best plan spends every early step at a negative (off-road) reward."""

    horizon: int = eqx.field(static=True)
    z_size: int = eqx.field(static=True, default=2)
    action_size: int = eqx.field(static=True, default=1)
    hidden_size: int = eqx.field(static=True, default=1)
    num_mixtures: int = eqx.field(static=True, default=1)

    def initial_state(self):
        return ToyState(jnp.zeros((1,), jnp.float32))

    def __call__(self, z, action, state):
        zn = jnp.stack([z[0] + action[0], z[1] + 1.0])
        reward = -action[0] + jnp.where(zn[1] > self.horizon - 0.5, 3.0 * zn[0], 0.0)
        return state, MDNOutput(jnp.zeros(1), zn[None], jnp.full((1, 2), -30.0), reward, jnp.float32(-30.0))


def test_toys_are_dynamics():
    assert isinstance(linear_toy(np.eye(2), np.eye(2), np.zeros(2), 0.1), Dynamics)
    assert isinstance(InvestToy(3), Dynamics)


def test_config_checks():
    with pytest.raises(ValueError, match="top_k"):
        CEMConfig(candidates=10, top_k=11)
    with pytest.raises(ValueError, match="discount"):
        CEMConfig(discount=0.0)
    with pytest.raises(ValueError, match="offroad_threshold"):
        CEMConfig(offroad_threshold=1.0)


def test_cem_finds_the_lqr_optimum():
    """Quadratic cost, linear dynamics, H = 3: the best first action is a ridge least-squares solution."""
    h = 3
    a_mat = np.array([[1.0, 0.2], [0.0, 0.9]])
    b_mat = np.array([[0.5, 0.0], [0.1, 0.4]])
    target, cost, z0 = np.array([0.8, -0.2]), 0.1, np.array([0.2, 0.3])
    # z_t = A^t z0 + sum_{s<t} A^{t-1-s} B a_s, t = 1..H; maximise -sum ||z_t - target||^2 - c sum ||a_s||^2.
    m, v = np.zeros((2 * h, 2 * h)), np.zeros(2 * h)
    for t in range(1, h + 1):
        v[2 * (t - 1) : 2 * t] = target - np.linalg.matrix_power(a_mat, t) @ z0
        for s in range(t):
            m[2 * (t - 1) : 2 * t, 2 * s : 2 * s + 2] = np.linalg.matrix_power(a_mat, t - 1 - s) @ b_mat
    best = np.linalg.solve(m.T @ m + cost * np.eye(2 * h), m.T @ v).reshape(h, 2)
    assert np.all(np.abs(best) < 1.5)  # inside the box below

    toy = linear_toy(a_mat, b_mat, target, cost)
    cfg = CEMConfig(horizon=h, candidates=400, top_k=40, iterations=12, init_std=1.0, min_std=0.0)
    low, high = jnp.full(2, -2.0), jnp.full(2, 2.0)
    plan = eqx.filter_jit(cem_plan)(
        toy, jnp.asarray(z0, jnp.float32), toy.initial_state(), initial_mean(h, low, high), jr.key(0), cfg, low, high
    )
    np.testing.assert_allclose(plan.action, best[0], atol=0.03)
    np.testing.assert_allclose(plan.mean[:-1], best[1:], atol=0.1)  # the warm start is the plan shifted
    true_return = -np.sum((m @ best.reshape(-1) - v) ** 2) - cost * np.sum(best**2)
    np.testing.assert_allclose(plan.predicted_return, true_return, atol=0.02)
    assert not plan.constraint_bound


def _loop_returns(model, z0, state0, actions, noise, cfg):
    """plan_returns one candidate and one step at a time, in Python."""

    @jax.jit
    def step(z, a, state, gumbel, normal):
        state, out = model(z, a, state)
        z = sample_next_z_from_noise(out, MixtureNoise(gumbel, normal), cfg.temperature)
        return z, state, out.reward, jax.nn.sigmoid(out.done_logit)

    returns, offroad = [], []
    for a in np.asarray(actions):
        z, state, alive, total, off = z0, state0, 1.0, 0.0, 0.0
        for t in range(a.shape[0]):
            z, state, reward, done_p = step(z, a[t], state, noise.gumbel[t], noise.normal[t])
            total += alive * cfg.discount**t * float(reward)
            off += alive * float(float(reward) < cfg.offroad_reward)
            alive *= 0.0 if float(done_p) > cfg.done_threshold else 1.0
        returns.append(total)
        offroad.append(off)
    return np.array(returns), np.array(offroad)


def test_plan_returns_equals_a_python_loop():
    rnn = MDNRNN(4, 3, 8, 2, key=jr.key(0))
    z0 = jr.normal(jr.key(1), (4,))
    state0 = rnn(z0, jnp.ones(3), rnn.initial_state())[0]
    actions = jr.uniform(jr.key(2), (5, 6, 3), minval=-1.0, maxval=1.0)
    noise = draw_noise(jr.key(3), 6, 2, 4)
    # The done head fires for some candidates (threshold near its values), and some rewards count as off-road.
    done_p = jax.nn.sigmoid(jax.vmap(lambda a: rnn(z0, a, state0)[1].done_logit)(actions[:, 0]))
    cfg = CEMConfig(horizon=6, temperature=0.7, discount=0.9, done_threshold=float(jnp.median(done_p)))
    returns, extras = jax.jit(lambda a: plan_returns(rnn, z0, state0, a, noise, cfg))(actions)
    want, want_off = _loop_returns(rnn, z0, state0, actions, noise, cfg)
    np.testing.assert_allclose(returns, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(extras.offroad_steps, want_off)
    np.testing.assert_array_equal(extras.disagreement, 0.0)

    # An ensemble of one member is the model itself.
    one = stack_modules([rnn])
    state1 = jax.tree.map(lambda x: x[None], state0)
    ret1, ext1 = eqx.filter_jit(plan_returns)(one, z0, state1, actions, noise, cfg, ensemble=True)
    np.testing.assert_allclose(ret1, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ext1.offroad_steps, want_off)
    np.testing.assert_allclose(ext1.disagreement, 0.0, atol=1e-10)


def test_uncertainty_penalty_prefers_the_agreeing_plan():
    """Two members agree on a0 (z' = z + a in both) and disagree on a1 (+a1 in one, -a1 in the other)."""
    h = 3
    members = [linear_toy(np.eye(2), np.diag([1.0, sign]), np.zeros(2), 0.5) for sign in (1.0, -1.0)]
    ens = stack_modules(members)
    assert ens.a_mat.shape == (2, 2, 2) and ens.z_size == 2
    state = ensemble_initial_state(ens)
    assert state.h.shape == (2, 1)
    agree = jnp.tile(jnp.array([1.0, 0.0]), (h, 1))
    disagree = jnp.tile(jnp.array([0.0, 1.0]), (h, 1))
    actions = jnp.stack([disagree, agree])
    returns, extras = plan_returns(ens, jnp.zeros(2), state, actions, None, CEMConfig(sample_z=False), ensemble=True)
    np.testing.assert_allclose(returns[0], returns[1])  # equal returns: -sum t^2 - 0.5 H in both members
    # Member means (0, t) and (0, -t): variance t^2 on one of Z = 2 dimensions, summed over t = 1..3.
    np.testing.assert_allclose(extras.disagreement, [(1 + 4 + 9) / 2, 0.0], atol=1e-5)
    plain, _ = candidate_scores(returns, extras, CEMConfig(horizon=h))
    assert plain[0] == plain[1]
    penalised, bound = candidate_scores(returns, extras, CEMConfig(horizon=h, uncertainty_weight=0.1))
    assert penalised[1] > penalised[0] and not bound

    # CEM with the penalty keeps a1 near 0; without it the reward alone does not care about a1's sign.
    cfg = CEMConfig(horizon=h, candidates=200, top_k=20, iterations=6, sample_z=False, uncertainty_weight=5.0)
    low, high = -jnp.ones(2), jnp.ones(2)
    mean0 = jnp.tile(jnp.array([0.0, 0.8]), (h, 1))
    plan = cem_plan(ens, jnp.zeros(2), state, mean0, jr.key(0), cfg, low, high, ensemble=True)
    assert abs(float(plan.action[1])) < 0.1
    assert float(plan.disagreement) < 0.1
    np.testing.assert_array_equal(module_at(ens, 1).b_mat, members[1].b_mat)


def test_offroad_constraint_rejects_negative_reward_plans():
    h = 3
    toy = InvestToy(h)
    z0, state = jnp.zeros(2), toy.initial_state()
    invest = jnp.ones((h, 1))  # rewards -1, -1, 8: return 6, 2 of 3 steps off-road
    cautious = jnp.array([[0.0], [1.0], [1.0]])  # rewards 0, -1, 5: return 4, 1 off-road step
    idle = jnp.zeros((h, 1))  # rewards 0, 0, 0
    actions = jnp.stack([invest, cautious, idle])
    cfg = CEMConfig(horizon=h, sample_z=False)
    returns, extras = plan_returns(toy, z0, state, actions, None, cfg)
    np.testing.assert_allclose(returns, [6.0, 4.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(extras.offroad_steps, [2.0, 1.0, 0.0])

    scores, bound = candidate_scores(returns, extras, CEMConfig(horizon=h, offroad_threshold=0.5))
    assert bool(bound) and scores[0] == -np.inf
    np.testing.assert_allclose(scores[1:], [4.0, 0.0], atol=1e-5)
    scores, bound = candidate_scores(returns, extras, CEMConfig(horizon=h, offroad_threshold=0.7))
    assert not bound  # 2/3 is allowed
    np.testing.assert_allclose(scores, returns)
    # Every candidate over the limit: none is rejected.
    scores, bound = candidate_scores(returns[:2], RolloutExtras(extras.offroad_steps[:2], jnp.zeros(2)),
                                     CEMConfig(horizon=h, offroad_threshold=0.2))  # fmt: skip
    assert not bound
    np.testing.assert_allclose(scores, returns[:2])

    # In CEM: unconstrained it invests every step (return 6); constrained it keeps an early step at exactly 0
    # (the box's floor) and its elite returns at most 4.
    low, high = jnp.zeros(1), jnp.ones(1)
    base = {"horizon": h, "candidates": 300, "top_k": 30, "iterations": 8, "sample_z": False}
    plan = cem_plan(toy, z0, state, initial_mean(h, low, high), jr.key(1), CEMConfig(**base), low, high)
    assert float(plan.predicted_return) > 5.5 and not plan.constraint_bound
    cfg = CEMConfig(**base, offroad_threshold=0.5)
    plan = cem_plan(toy, z0, state, initial_mean(h, low, high), jr.key(1), cfg, low, high)
    assert bool(plan.constraint_bound)
    assert 3.0 < float(plan.predicted_return) <= 4.0 + 1e-5


def test_real_models_vmapped_over_environments():
    low, high = jnp.asarray(ACTION_LOW), jnp.asarray(ACTION_HIGH)
    cfg = CEMConfig(horizon=5, candidates=32, top_k=4, iterations=3)
    w = 3
    z = jr.normal(jr.key(1), (w, 4))
    means = jnp.broadcast_to(initial_mean(5, low, high), (w, 5, 3))
    np.testing.assert_allclose(means[0, 0], [0.0, 0.5, 0.5])
    rnn = MDNRNN(4, 3, 8, 2, key=jr.key(0))
    gru = GRUTransition(4, 3, 8, key=jr.key(5))

    # A linear controller's dream plan seeds the search.
    ctrl = LinearController.from_flat(jr.normal(jr.key(4), (LinearController.num_params(4, 8),)), 4, 8)
    seed = lambda z, k: seed_mean(ctrl, rnn, z, rnn.initial_state(), 5, draw_noise(k, 5, 2, 4), cfg)
    seeds = jax.jit(jax.vmap(seed))(z, jr.split(jr.key(6), w))
    assert seeds.shape == (w, 5, 3) and np.all(seeds >= low) and np.all(seeds <= high)
    np.testing.assert_allclose(seeds[:, 0], jax.vmap(ctrl)(z, jnp.zeros((w, 8))), rtol=1e-6)

    plan = plan_batch(rnn, z, batched_initial_state(rnn, w), seeds, jr.key(2), cfg, low, high)
    assert plan.action.shape == (w, 3) and plan.mean.shape == (w, 5, 3)
    assert plan.predicted_return.shape == (w,) and plan.constraint_bound.shape == (w,)
    assert np.all(np.isfinite(plan.action)) and np.all(np.isfinite(plan.predicted_return))
    assert np.all(plan.action >= low) and np.all(plan.action <= high)
    np.testing.assert_array_equal(plan.mean[:, -1], plan.mean[:, -2])  # warm start repeats the last row

    # Any Dynamics: the GRU transition's candidates roll out the same way.
    roll = lambda z, s: plan_returns(gru, z, s, means[0, None], draw_noise(jr.key(8), 5, 1, 4), cfg)[0]
    assert np.all(np.isfinite(jax.jit(jax.vmap(roll))(z, batched_initial_state(gru, w))))

    # An ensemble of two MDN-RNNs, states (W, E, H), with the penalty and the constraint on.
    ens = stack_modules([rnn, MDNRNN(4, 3, 8, 2, key=jr.key(9))])
    states = broadcast_batch(ensemble_initial_state(ens), w)
    cfg2 = CEMConfig(horizon=5, candidates=32, top_k=4, iterations=3, uncertainty_weight=1.0, offroad_threshold=0.5)
    plan = plan_batch(ens, z, states, means, jr.key(3), cfg2, low, high, ensemble=True)
    assert plan.action.shape == (w, 3) and np.all(np.isfinite(plan.action))
    assert np.all(plan.disagreement > 0) and np.all(np.isfinite(plan.disagreement))

    with pytest.raises(ValueError, match="mean has shape"):
        cem_plan(rnn, z[0], rnn.initial_state(), seeds[0, :4], jr.key(7), cfg, low, high)
    with pytest.raises(ValueError, match="noise is required"):
        plan_returns(rnn, z[0], rnn.initial_state(), means[:1], None, cfg)
    with pytest.raises(ValueError, match="member 1"):
        stack_modules([rnn, MDNRNN(4, 3, 16, 2, key=jr.key(0))])


def test_agent_plan_step_acts_by_cem_and_every_member_follows_the_real_episode():
    """``agent.plan_episode_step``: the action is ``cem_plan``'s from the same latent and key; M and each ensemble
    member then consume the real (z_t, a_t), so members identical to M carry M's own state."""
    from worldmodels.agent import Agent, Planner, _encode, _episode_eps, _episode_keys, plan_episode_step
    from worldmodels.models import ConvVAE

    low, high = jnp.asarray(ACTION_LOW), jnp.asarray(ACTION_HIGH)
    rnn = MDNRNN(4, 3, 8, 2, key=jr.key(0))
    ctrl = LinearController.from_flat(jr.normal(jr.key(4), (LinearController.num_params(4, 8),)), 4, 8)
    agent = Agent(ConvVAE(4, key=jr.key(1)), rnn, ctrl)
    cfg = CEMConfig(horizon=4, candidates=16, top_k=4, iterations=2)
    w, key, seeds = 2, jr.key(3), jnp.array([7, 9], jnp.uint32)
    obs = jr.randint(jr.key(2), (w, 64, 64, 3), 0, 255).astype(jnp.uint8)
    state = batched_initial_state(rnn, w)
    for ensemble in (False, True):
        planner = Planner(stack_modules([rnn, rnn]) if ensemble else rnn, low, high, cfg, ensemble)
        plan = planner.initial(agent, w)
        actions, new_state, plan2, _, _, stats = plan_episode_step(agent, planner, obs, state, plan, key, seeds, 0)
        keys = _episode_keys(key, seeds, jnp.int32(0))
        _, z = _encode(agent, obs, _episode_eps(agent, keys))
        start = plan.mean[0]
        want = jax.vmap(lambda z, k: cem_plan(rnn, z, rnn.initial_state(), start, k, cfg, low, high))(  # noqa: B023
            z, jax.vmap(lambda k: jr.fold_in(k, 1))(keys)
        )
        np.testing.assert_allclose(actions, want.action, atol=1e-5)
        np.testing.assert_allclose(plan2.mean, want.mean, atol=1e-5)
        assert stats.predicted_return.shape == (w,) and stats.constraint_bound.dtype == jnp.bool_
        if ensemble:
            for member in range(2):
                np.testing.assert_allclose(plan2.members.h[:, member], new_state.h, atol=1e-6)
            np.testing.assert_allclose(stats.disagreement, 0.0, atol=1e-6)  # two copies of one M agree
