"""The actor-critic in imagination: lambda-returns, the scanned imagination, the heads, and a known optimum."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jaxtyping import Array, Float

from worldmodels.config import ActorCriticConfig
from worldmodels.imagination import (
    ReturnNorm,
    continue_weights,
    imagine,
    init_ac_state,
    lambda_returns,
    make_update,
    update_return_norm,
)
from worldmodels.models import twohot
from worldmodels.models.actor import Actor, Critic, actor_hparams, build_actor, build_critic, critic_hparams
from worldmodels.models.controller import squash_action
from worldmodels.models.dynamics import Dynamics
from worldmodels.models.mdnrnn import MDNRNN, MDNOutput, sample_next_z

# ---------------------------------------------------------------- lambda-returns


def lambda_returns_loop(rewards, continues, values, discount, lambda_):
    """R_t = r_t + gamma c_t ((1 - lambda) v_{t+1} + lambda R_{t+1}), R_T = v_T, written as a Python loop."""
    rewards, continues, values = map(np.asarray, (rewards, continues, values))
    t_len = len(rewards)
    out = np.zeros(t_len)
    nxt = values[-1]
    for t in reversed(range(t_len)):
        nxt = rewards[t] + discount * continues[t] * ((1 - lambda_) * values[t + 1] + lambda_ * nxt)
        out[t] = nxt
    return out


@pytest.mark.parametrize("lambda_", [0.0, 0.5, 0.95, 1.0])
def test_lambda_returns_equal_python_loop(lambda_):
    k1, k2, k3 = jr.split(jr.key(0), 3)
    rewards = jr.normal(k1, (12,))
    continues = jr.uniform(k2, (12,))
    values = jr.normal(k3, (13,)) * 3.0
    got = lambda_returns(rewards, continues, values, 0.97, lambda_)
    np.testing.assert_allclose(
        got, lambda_returns_loop(rewards, continues, values, 0.97, lambda_), rtol=1e-5, atol=1e-5
    )


def test_lambda_returns_limits():
    rewards, continues, values = jnp.array([1.0, 2.0, 3.0]), jnp.ones(3), jnp.array([10.0, 20.0, 30.0, 40.0])
    # lambda = 0: one-step TD targets; lambda = 1: discounted rewards plus the discounted bootstrap.
    np.testing.assert_allclose(lambda_returns(rewards, continues, values, 0.5, 0.0), [11.0, 17.0, 23.0])
    np.testing.assert_allclose(
        lambda_returns(rewards, continues, values, 0.5, 1.0)[0], 1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 40
    )
    # An episode end cuts the bootstrap.
    np.testing.assert_allclose(lambda_returns(rewards, jnp.array([1.0, 1.0, 0.0]), values, 0.5, 1.0)[2], 3.0)


def test_continue_weights_and_return_norm():
    np.testing.assert_allclose(continue_weights(jnp.array([0.5, 0.5, 0.0, 1.0])), [1.0, 0.5, 0.25, 0.0])
    norm = update_return_norm(ReturnNorm.init(), jnp.linspace(0.0, 100.0, 1001), 0.9)
    np.testing.assert_allclose(norm.scale, 0.1 * 90.0, rtol=1e-5)
    assert float(norm.divisor) == 9.0 and float(ReturnNorm.init().divisor) == 1.0


# ---------------------------------------------------------------- actor and critic


def test_actor_and_critic_shapes_and_deterministic_action():
    actor = Actor(4, 8, units=16, layers=2, key=jr.key(0))
    critic = Critic(4, 8, units=16, layers=2, key=jr.key(1))
    zs, hs = jr.normal(jr.key(2), (5, 4)) * 3.0, jr.normal(jr.key(3), (5, 8)) * 3.0

    @eqx.filter_jit
    def heads(actor, critic, zs, hs, key):
        actions = jax.vmap(actor)(zs, hs)
        means, stds = jax.vmap(actor.mean_std)(zs, hs)
        samples = jax.vmap(actor.sample)(zs, hs, jr.split(key, zs.shape[0]))
        # The reparameterised action carries gradients into the actor.
        grads = eqx.filter_grad(lambda a: jnp.sum(a.sample(zs[0], hs[0], key)[0]))(actor)
        return actions, means, stds, samples, grads, jax.vmap(critic)(zs, hs), jax.vmap(critic.value)(zs, hs)

    actions, means, stds, (sampled, log_probs, entropies), grads, logits, values = heads(
        actor, critic, zs, hs, jr.key(4)
    )
    assert actions.shape == (5, 3) and actions.dtype == jnp.float32
    np.testing.assert_allclose(actions, jax.vmap(squash_action)(means), rtol=1e-6)
    assert sampled.shape == (5, 3) and log_probs.shape == (5,) and entropies.shape == (5,)
    for a in (actions, sampled):
        assert jnp.all(jnp.abs(a[:, 0]) <= 1.0) and jnp.all((a[:, 1:] >= 0.0) & (a[:, 1:] <= 1.0))
    assert jnp.all((stds > 0.1) & (stds < 1.0))
    # Entropy of a diagonal Gaussian: sum log std + A (1 + log 2 pi) / 2.
    np.testing.assert_allclose(entropies, jnp.sum(jnp.log(stds), -1) + 1.5 * (1 + np.log(2 * np.pi)), rtol=1e-5)
    assert float(jnp.sum(jnp.abs(grads.out.weight))) > 0.0

    assert logits.shape == (5, twohot.NUM_BINS)
    np.testing.assert_allclose(values, 0.0, atol=1e-6)  # zero-initialised output layer

    assert build_actor(**actor_hparams(4, 8, units=16, layers=2)).out.weight.shape == actor.out.weight.shape
    assert build_critic(**critic_hparams(4, 8, units=16, layers=2)).out.weight.shape == critic.out.weight.shape


def test_actor_squashes_into_its_environments_box():
    """A ``tanh`` actor (LunarLander: A = 2, every action in [-1, 1]) squashes its mean and its samples with tanh; a
    checkpoint's hparams without ``squash`` (written before it existed) rebuild CarRacing's actor; a squash that
    cannot fill the action size is refused."""
    actor = Actor(4, 8, action_size=2, units=16, layers=1, squash="tanh", key=jr.key(0))
    zs, hs = jr.normal(jr.key(2), (5, 4)) * 3.0, jr.normal(jr.key(3), (5, 8)) * 3.0
    actions = jax.vmap(actor)(zs, hs)
    np.testing.assert_allclose(actions, jnp.tanh(jax.vmap(actor.mean_std)(zs, hs)[0]), rtol=1e-6)
    sampled = jax.vmap(actor.sample)(zs, hs, jr.split(jr.key(4), 5))[0]
    assert actions.shape == sampled.shape == (5, 2) and bool(jnp.all(jnp.abs(sampled) <= 1.0))
    assert bool(jnp.any(sampled < 0.0))  # CarRacing's squash would clip the last dimension at 0
    hparams = actor_hparams(4, 8, 2, units=16, layers=1, squash="tanh")
    assert build_actor(**hparams).squash == "tanh"
    old = {k: v for k, v in actor_hparams(4, 8, units=16, layers=1).items() if k != "squash"}
    assert build_actor(**old).squash == "carracing"
    with pytest.raises(ValueError, match="squash 'carracing' with 2 actions"):
        Actor(4, 8, action_size=2, key=jr.key(0))


def test_on_policy_collection_samples_the_actors_own_policy():
    """The agent explores with an actor-critic by sampling its policy (in the box, varying with the key, not its
    deterministic action); a linear controller does not explore by itself. (One compilation of ``agent_step``:
    without ``explore`` it is the agent of tests/test_evaluate.py.)"""
    from worldmodels.agent import Agent, agent_step, explores
    from worldmodels.models import ConvVAE, LinearController
    from worldmodels.models.actor import ActorCritic

    z, h = 4, 8
    ac = ActorCritic(Actor(z, h, units=16, layers=1, key=jr.key(0)), *[Critic(z, h, 16, 1, key=jr.key(1))] * 2)
    agent = Agent(ConvVAE(z, key=jr.key(2)), MDNRNN(z, 3, h, 2, key=jr.key(3)), ac)
    assert explores(ac) and not explores(LinearController.from_flat(jnp.zeros(LinearController.num_params(z, h)), z, h))
    obs = jr.randint(jr.key(4), (3, 64, 64, 3), 0, 256).astype(jnp.uint8)
    state = jax.tree.map(lambda x: jnp.broadcast_to(x, (3,) + x.shape), agent.dynamics.initial_state())
    sampled = [agent_step(agent, obs, state, jr.key(k), explore=True)[0] for k in (5, 6)]
    mean_action = jax.vmap(ac)(agent.vae.encode(obs.astype(jnp.float32) / 255.0)[0], state.h)
    assert not np.allclose(sampled[0], sampled[1]) and not np.allclose(sampled[0], mean_action, atol=0.05)
    for a in sampled:
        assert jnp.all(jnp.abs(a[:, 0]) <= 1.0) and jnp.all((a[:, 1:] >= 0.0) & (a[:, 1:] <= 1.0))


# ---------------------------------------------------------------- imagination


def test_scanned_imagination_equals_python_loop():
    rnn = MDNRNN(z_size=4, action_size=3, hidden_size=8, num_mixtures=2, key=jr.key(0))
    actor = Actor(4, 8, units=16, layers=1, key=jr.key(1))
    z0, key, horizon, tau = jr.normal(jr.key(2), (4,)), jr.key(3), 6, 1.2
    state0 = rnn(z0, jnp.zeros(3), rnn.initial_state())[0]  # a state other than the initial one
    traj = eqx.filter_jit(imagine)(actor, rnn, z0, state0, key, horizon, tau)
    assert traj.z.shape == (horizon + 1, 4) and traj.h.shape == (horizon + 1, 8)
    assert traj.actions.shape == (horizon, 3) and traj.rewards.shape == (horizon,)

    k_act, k_noise = jr.split(key)
    z, state = z0, state0
    zs, hs, actions, log_probs, entropies, rewards, continues = [z0], [state0.h], [], [], [], [], []
    sample, step = eqx.filter_jit(Actor.sample), eqx.filter_jit(MDNRNN.__call__)  # jitted only to be quick
    for ka, kn in zip(jr.split(k_act, horizon), jr.split(k_noise, horizon), strict=True):
        action, log_prob, entropy = sample(actor, z, state.h, ka)
        state, out = step(rnn, z, action, state)
        z = eqx.filter_jit(sample_next_z)(out, kn, tau)
        zs.append(z), hs.append(state.h), actions.append(action), log_probs.append(log_prob)
        entropies.append(entropy), rewards.append(out.reward), continues.append(1.0 - jax.nn.sigmoid(out.done_logit))
    for got, want in zip(traj, [zs, hs, actions, log_probs, entropies, rewards, continues], strict=True):
        np.testing.assert_allclose(got, jnp.stack(want), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- a known optimum

TARGET = (0.5, -0.4)
TRACES: list[int] = []


class ToyState(NamedTuple):
    h: Float[Array, " 2"]


class ToyDynamics(eqx.Module):
    """z_{t+1} = z_t + 0.3 [steer, gas - brake], deterministic; reward -|z_{t+1} - target|; never done."""

    z_size: int = eqx.field(static=True, default=2)
    action_size: int = eqx.field(static=True, default=3)
    hidden_size: int = eqx.field(static=True, default=2)
    num_mixtures: int = eqx.field(static=True, default=1)

    def initial_state(self) -> ToyState:
        return ToyState(jnp.zeros(2))

    def __call__(self, z, action, state):
        TRACES.append(1)  # runs only while tracing
        z_next = z + 0.3 * jnp.stack([action[0], action[1] - action[2]])
        distance = jnp.sqrt(jnp.sum(jnp.square(z_next - jnp.asarray(TARGET))) + 1e-4)
        return ToyState(z_next), MDNOutput(
            log_pi=jnp.zeros(1),
            mu=z_next[None],
            log_sigma=jnp.full((1, 2), -10.0),
            reward=-distance,
            done_logit=jnp.float32(-10.0),
        )


@eqx.filter_jit
def final_distances(actor: Actor, starts: Float[Array, "N 2"], key, steps: int = 12) -> tuple[Array, Array]:
    """Mean distance to the target after ``steps`` steps of ``actor`` in the toy dynamics from each start:
    (imagined with sampled actions, deterministic actions ``actor(z, h)``)."""
    dyn = ToyDynamics()
    target = jnp.asarray(TARGET)

    def deterministic(z0):
        def step(carry, _):
            z, state = carry
            state, out = dyn(z, actor(z, state.h), state)
            return (out.mu[0], state), None

        (z, _), _ = jax.lax.scan(step, (z0, ToyState(z0)), None, length=steps)
        return jnp.linalg.norm(z - target)

    def sampled(z0, k):
        return jnp.linalg.norm(imagine(actor, dyn, z0, ToyState(z0), k, steps, 1.0).z[-1] - target)

    keys = jr.split(key, starts.shape[0])
    return jnp.mean(jax.vmap(sampled)(starts, keys)), jnp.mean(jax.vmap(deterministic)(starts))


def train_toy(gradient: str, updates: int, seed: int = 0) -> tuple[tuple[float, float], tuple[float, float], dict]:
    """Train on the toy problem from random starts in [-1, 1]^2; (sampled, deterministic) distances before and after."""
    cfg = ActorCriticConfig(
        horizon=12, discount=0.95, lambda_=0.95, gradient=gradient, actor_lr=3e-3, critic_lr=3e-3, units=32, layers=1
    )
    dyn = ToyDynamics()
    assert isinstance(dyn, Dynamics)
    k_init, k_eval, key = jr.split(jr.key(seed), 3)
    ac = init_ac_state(2, 2, cfg, k_init)
    update = make_update(cfg, temperature=1.0)
    evaluation = jr.uniform(jr.key(1), (256, 2), minval=-1.0, maxval=1.0)
    before = tuple(float(d) for d in final_distances(ac.actor, evaluation, k_eval))
    traces = None
    for i in range(updates):
        key, k_start, k_update = jr.split(key, 3)
        z0 = jr.uniform(k_start, (64, 2), minval=-1.0, maxval=1.0)
        ac, metrics = update(ac, dyn, z0, ToyState(z0), k_update)
        if i == 0:
            traces = len(TRACES)
    assert len(TRACES) == traces, "the update retraced for the same shapes"
    assert int(ac.step) == updates
    assert all(v.dtype == jnp.float32 and v.shape == () and jnp.isfinite(v) for v in metrics.values()), metrics
    after = tuple(float(d) for d in final_distances(ac.actor, evaluation, k_eval))
    return before, after, metrics


@pytest.mark.parametrize("gradient", ["dynamics", "reinforce"])
def test_actor_critic_drives_to_the_target(gradient):
    """The optimum of the toy problem is to reach the target (at most 5 steps from any start) and stay there.

    After training, the imagined (sampled) and the deterministic rollouts end within 0.25 of the target, less
    than one step's reach (0.3) and a fraction of where the initial actor ends (1.2 - 2.5 for these seeds).
    """
    before, after, metrics = train_toy(gradient, 600)
    assert after[0] < 0.25 and after[0] < 0.2 * before[0], (before, after, metrics)
    assert after[1] < 0.25 and after[1] < 0.2 * before[1], (before, after, metrics)
