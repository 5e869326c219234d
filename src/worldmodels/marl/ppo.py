"""Independent PPO (IPPO) on the Overcooked wrapper: self-play, or an ego agent trained beside a partner pool.

PPO's clipped objective (Schulman et al. 2017) with generalised advantage estimation (GAE, Schulman et al. 2016),
written as PureJaxRL's ``ppo.py`` and JaxMARL's ``ippo_ff_overcooked.py`` write it (Lu et al. 2022; Rutherford et
al. 2024): a rollout of ``num_steps`` in ``num_envs`` vmapped environments by ``lax.scan``, then ``epochs`` passes
of ``minibatches`` clipped updates, all in one jitted function. As in JaxMARL's Overcooked IPPO each agent's reward
is the shared sparse reward plus a shaped reward whose weight anneals linearly to zero.

Two modes share one update:

* self-play (``partners=None``): one network controls both agents and learns from both agents' transitions;
* with a ``PartnerPool`` (``worldmodels.marl.partners``): the network controls agent 0 only; each environment's
  teammate is a pool member drawn uniformly when that environment's episode starts.

The Python loop only calls the jitted update in chunks (several updates scanned per call; one compile) and draws a
tqdm bar between them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, UInt8
from tqdm.auto import tqdm

from worldmodels.config import PPOConfig
from worldmodels.marl import env as menv
from worldmodels.trainer import clipped_adam

_GAINS = (math.sqrt(2.0), math.sqrt(2.0))
"""Orthogonal gains of the two hidden layers; the heads use 0.01 (policy) and 1 (value)."""


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_weights(key: PRNGKeyArray, obs_size: int, num_actions: int, units: int) -> tuple[Array, ...]:
    """The six orthogonal (out, in) weights of actor then critic, in one jitted call (eager initialisers compile
    every op separately, which costs seconds)."""
    weights = []
    for (head, head_gain), k in zip(((num_actions, 0.01), (1, 1.0)), jr.split(key), strict=True):
        sizes = ((obs_size, units), (units, units), (units, head))
        for (fan_in, fan_out), gain, kl in zip(sizes, (*_GAINS, head_gain), jr.split(k, 3), strict=True):
            weights.append(jax.nn.initializers.orthogonal(gain)(kl, (fan_out, fan_in), jnp.float32))
    return tuple(weights)


def _linear(weight: Array) -> eqx.nn.Linear:
    """An ``eqx.nn.Linear`` holding ``weight`` (out, in) and a zero bias."""
    fan_out, fan_in = weight.shape
    skeleton = eqx.filter_eval_shape(eqx.nn.Linear, fan_in, fan_out, key=jr.PRNGKey(0))
    return eqx.tree_at(lambda m: (m.weight, m.bias), skeleton, (weight, jnp.zeros(fan_out, jnp.float32)))


class PolicyNet(eqx.Module):
    """Separate actor and critic MLPs on one flattened observation (PureJaxRL's ``ActorCritic``).

    Each is two hidden layers of ``units`` tanh units; weights are orthogonal with gain sqrt(2) in the hidden layers,
    0.01 in the policy head and 1 in the value head, biases zero (Andrychowicz et al. 2021's PPO defaults).
    """

    actor: tuple[eqx.nn.Linear, ...]
    critic: tuple[eqx.nn.Linear, ...]
    obs_size: int = eqx.field(static=True)
    num_actions: int = eqx.field(static=True)
    units: int = eqx.field(static=True)

    def __init__(self, obs_size: int, num_actions: int = menv.NUM_ACTIONS, units: int = 64, *, key: PRNGKeyArray):
        """Args:
        obs_size: H * W * C of one observation (``cramped_room``: 4 * 5 * 26 = 520).
        num_actions: the number of discrete actions (6).
        units: width of both hidden layers of both MLPs.
        key: initialisation key.
        """
        self.obs_size, self.num_actions, self.units = obs_size, num_actions, units
        layers = [_linear(w) for w in _init_weights(key, obs_size, num_actions, units)]
        self.actor, self.critic = tuple(layers[:3]), tuple(layers[3:])

    def __call__(self, obs: UInt8[Array, "H W C"]) -> tuple[Float[Array, " A"], Float[Array, ""]]:
        """One observation uint8 (H, W, C) -> (action logits float32 (num_actions,), value float32 ())."""
        x = jnp.reshape(obs, (-1,)).astype(jnp.float32)

        def run(layers: tuple[eqx.nn.Linear, ...]) -> Array:
            h = x
            for layer in layers[:-1]:
                h = jnp.tanh(layer(h))
            return layers[-1](h)

        return run(self.actor), run(self.critic)[0]


def policy_hparams(obs_size: int, num_actions: int = menv.NUM_ACTIONS, units: int = 64) -> dict[str, int]:
    """The JSON-able keyword arguments that rebuild a ``PolicyNet`` (stored in checkpoints)."""
    return {"obs_size": int(obs_size), "num_actions": int(num_actions), "units": int(units)}


def build_policy(obs_size: int, num_actions: int = menv.NUM_ACTIONS, units: int = 64) -> PolicyNet:
    """A ``PolicyNet`` skeleton from ``policy_hparams`` (its values are overwritten when a checkpoint loads)."""
    return PolicyNet(obs_size, num_actions, units, key=jr.PRNGKey(0))


def gae(
    rewards: Float[Array, "T ..."],
    values: Float[Array, "T ..."],
    dones: Bool[Array, "T ..."],
    last_value: Float[Array, "..."],
    gamma: float,
    lam: float,
) -> tuple[Float[Array, "T ..."], Float[Array, "T ..."]]:
    """Generalised advantage estimates (GAE(gamma, lambda), Schulman et al. 2016) by a reverse ``lax.scan``.

    ``delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t``; ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``.

    Args:
        rewards: float32 (T, ...) the reward of each step.
        values: float32 (T, ...) V(s_t) of each step's observation.
        dones: bool (T, ...) the episode ended with step t (V_{t+1} then belongs to the next episode and is cut).
        last_value: float32 (...) V of the observation after the last step.
        gamma: discount factor.
        lam: GAE's lambda.

    Returns:
        (advantages float32 (T, ...), value targets = advantages + values float32 (T, ...)).
    """
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    not_done = 1.0 - dones.astype(jnp.float32)
    deltas = rewards + gamma * next_values * not_done - values

    def back(adv: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        delta, nd = xs
        adv = delta + gamma * lam * nd * adv
        return adv, adv

    _, advantages = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, not_done), reverse=True)
    return advantages, advantages + values


class Transition(NamedTuple):
    """One step of the rollout for each acting agent (leading axes (T, E, A) after the scan).

    Attributes:
        obs: uint8 (H, W, C) the agent's observation.
        action: int32 () the action taken.
        log_prob: float32 () its log-probability under the behaviour policy.
        value: float32 () V(obs).
        reward: float32 () sparse reward + shaped weight * the agent's shaped reward.
        done: bool () the episode ended with this step.
    """

    obs: UInt8[Array, "H W C"]
    action: Int[Array, ""]
    log_prob: Float[Array, ""]
    value: Float[Array, ""]
    reward: Float[Array, ""]
    done: Bool[Array, ""]


class Runner(NamedTuple):
    """The carry of the training scan.

    Attributes:
        params: the array leaves of the ``PolicyNet`` (``eqx.partition``).
        opt_state: optax state.
        env_state: JaxMARL states, leading axis E.
        obs: uint8 (E, 2, H, W, C) both agents' current observations.
        ep_return: float32 (E,) the sparse return of each running episode so far.
        ep_shaped: float32 (E,) agent 0's (unscaled) shaped return of each running episode so far.
        member: int32 (E,) each environment's teammate in the pool (zeros in self-play).
        update: int32 () updates done.
        key: the training key.
    """

    params: Any
    opt_state: Any
    env_state: Any
    obs: UInt8[Array, "E 2 H W C"]
    ep_return: Float[Array, " E"]
    ep_shaped: Float[Array, " E"]
    member: Int[Array, " E"]
    update: Int[Array, ""]
    key: PRNGKeyArray


HISTORY_KEYS = ("env_steps", "return", "shaped_return", "entropy", "loss")
"""The per-update series ``train_ppo`` returns."""


def shaped_weight(cfg: PPOConfig, env_steps: Array | int) -> Array:
    """The shaped reward's weight after ``env_steps`` steps: shaped_scale falling linearly to 0 over
    shaped_anneal_steps (JaxMARL's ``rew_shaping_anneal``); constant when shaped_anneal_steps is 0."""
    if cfg.shaped_anneal_steps == 0:
        return jnp.asarray(cfg.shaped_scale, jnp.float32)
    frac = 1.0 - jnp.asarray(env_steps, jnp.float32) / cfg.shaped_anneal_steps
    return cfg.shaped_scale * jnp.clip(frac, 0.0, 1.0)


def _chunk_size(num_updates: int, target_calls: int = 50) -> int:
    """The largest divisor of ``num_updates`` not above ceil(num_updates / target_calls): equal chunks, one compile."""
    limit = max(1, math.ceil(num_updates / target_calls))
    return max(d for d in range(1, limit + 1) if num_updates % d == 0)


def make_update(
    cfg: PPOConfig, env: Any, static: Any, optimizer: optax.GradientTransformation, selfplay: bool
) -> Callable[[Runner, Any], tuple[Runner, dict[str, Array]]]:
    """``update(runner, partners) -> (runner, metrics)``: one rollout and its PPO epochs, pure and jittable.

    ``static`` is the non-array part of the ``PolicyNet`` (``eqx.partition``); ``partners`` is the ``PartnerPool``
    (an argument, not a constant, so that its networks are not folded into the compiled code), None in self-play.

    ``metrics`` holds float32 scalars ``return`` (mean sparse return of episodes finished in the rollout, NaN if
    none), ``shaped_return`` (the same for agent 0's unscaled shaped return), ``entropy`` and ``loss`` (means over
    the minibatches).
    """
    n_envs, n_steps = cfg.num_envs, cfg.num_steps
    vstep = jax.vmap(menv.step, (None, 0, 0, 0))

    def rollout_step(carry: tuple, key: PRNGKeyArray, net: PolicyNet, partners: Any, weight: Array):
        env_state, obs, ep_return, ep_shaped, member = carry
        k_act, k_mate, k_env, k_draw = jr.split(key, 4)
        own = obs if selfplay else obs[:, :1]  # (E, A, H, W, C): the agents the network plays (both, or agent 0)
        logits, value = jax.vmap(jax.vmap(net))(own)
        action = jr.categorical(k_act, logits)
        joint = action
        if not selfplay:
            mate = jax.vmap(partners.act)(member, obs[:, 1], jr.split(k_mate, n_envs))
            joint = jnp.concatenate([action, mate[:, None]], axis=1)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
        out, env_state = vstep(env, jr.split(k_env, n_envs), env_state, joint.astype(jnp.int32))
        n_agents = own.shape[1]
        reward = out.reward[:, None] + weight * out.shaped[:, :n_agents]
        done = jnp.broadcast_to(out.done[:, None], (n_envs, n_agents))
        ep_return = ep_return + out.reward
        ep_shaped = ep_shaped + out.shaped[:, 0]
        finished = (jnp.where(out.done, ep_return, 0.0), jnp.where(out.done, ep_shaped, 0.0), out.done)
        ep_return = jnp.where(out.done, 0.0, ep_return)
        ep_shaped = jnp.where(out.done, 0.0, ep_shaped)
        if not selfplay:
            member = jnp.where(out.done, jr.randint(k_draw, (n_envs,), 0, len(partners)), member)
        transition = Transition(own, action, log_prob, value, reward, done)
        return (env_state, out.obs, ep_return, ep_shaped, member), (transition, finished)

    def loss_fn(params: Any, batch: Transition, adv: Array, target: Array) -> tuple[Array, Array]:
        net = eqx.combine(params, static)
        logits, value = jax.vmap(net)(batch.obs)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, batch.action[:, None], -1)[:, 0]
        ratio = jnp.exp(logp - batch.log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip, 1 + cfg.clip) * adv).mean()
        value_clipped = batch.value + jnp.clip(value - batch.value, -cfg.clip, cfg.clip)
        value_loss = 0.5 * jnp.maximum((value - target) ** 2, (value_clipped - target) ** 2).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        total = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
        return total, entropy

    def minibatch_step(carry: tuple, mb: tuple) -> tuple[tuple, tuple[Array, Array]]:
        params, opt_state = carry
        (loss, entropy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *mb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, entropy)

    def update(runner: Runner, partners: Any) -> tuple[Runner, dict[str, Array]]:
        net = eqx.combine(runner.params, static)
        weight = shaped_weight(cfg, runner.update * cfg.steps_per_update)
        key, k_roll, k_epochs = jr.split(runner.key, 3)

        # Collect
        carry = (runner.env_state, runner.obs, runner.ep_return, runner.ep_shaped, runner.member)
        carry, (traj, (fin_ret, fin_shaped, fin)) = jax.lax.scan(
            lambda c, k: rollout_step(c, k, net, partners, weight), carry, jr.split(k_roll, n_steps)
        )
        env_state, obs, ep_return, ep_shaped, member = carry
        own_last = obs if selfplay else obs[:, :1]
        _, last_value = jax.vmap(jax.vmap(net))(own_last)
        adv, target = gae(traj.reward, traj.value, traj.done, last_value, cfg.gamma, cfg.gae_lambda)

        # Update
        batch_size = adv.size
        flat = jax.tree.map(lambda x: x.reshape((batch_size, *x.shape[3:])), (traj, adv, target))

        def epoch(carry: tuple, key: PRNGKeyArray) -> tuple[tuple, tuple[Array, Array]]:
            perm = jr.permutation(key, batch_size)
            mbs = jax.tree.map(lambda x: x[perm].reshape((cfg.minibatches, -1, *x.shape[1:])), flat)
            return jax.lax.scan(minibatch_step, carry, mbs)

        (params, opt_state), (losses, entropies) = jax.lax.scan(
            epoch, (runner.params, runner.opt_state), jr.split(k_epochs, cfg.epochs)
        )
        n_fin = fin.sum()
        metrics = {
            "return": jnp.where(n_fin > 0, fin_ret.sum() / jnp.maximum(n_fin, 1), jnp.nan),
            "shaped_return": jnp.where(n_fin > 0, fin_shaped.sum() / jnp.maximum(n_fin, 1), jnp.nan),
            "entropy": entropies.mean(),
            "loss": losses.mean(),
        }
        runner = Runner(params, opt_state, env_state, obs, ep_return, ep_shaped, member, runner.update + 1, key)
        return runner, metrics

    return update


def train_ppo(
    cfg: PPOConfig,
    env: Any,
    key: PRNGKeyArray,
    partners: Any = None,
    *,
    progress: bool = True,
) -> tuple[PolicyNet, dict[str, np.ndarray]]:
    """Train a ``PolicyNet`` by IPPO on ``env`` (a ``worldmodels.marl.env.make`` Overcooked).

    Args:
        cfg: hyperparameters; ``cfg.num_updates`` updates of ``cfg.steps_per_update`` environment steps each.
        env: the JaxMARL environment.
        key: the training key (initialisation, resets, actions, minibatch shuffles).
        partners: None for self-play (one network plays both agents and learns from both); a ``PartnerPool`` to
            train agent 0 beside pool members drawn uniformly per environment at each episode start.
        progress: draw a tqdm bar (updated after each jitted chunk of updates).

    Returns:
        (the trained network, history): numpy arrays of length ``cfg.num_updates``: ``env_steps`` int64 (steps
        done after each update), ``return`` float32 (mean sparse return of episodes finished in that update, NaN
        if none), ``shaped_return`` float32 (agent 0's unscaled shaped return of those episodes), ``entropy`` and
        ``loss`` float32 (means over the update's minibatches).
    """
    selfplay = partners is None
    k_net, k_reset, k_member, k_train = jr.split(key, 4)
    net = PolicyNet(menv.obs_size(env), menv.num_actions(env), cfg.units, key=k_net)
    params, static = eqx.partition(net, eqx.is_array)
    n_grad_steps = cfg.num_updates * cfg.epochs * cfg.minibatches
    lr = optax.linear_schedule(cfg.lr, 0.0, n_grad_steps) if cfg.anneal_lr else cfg.lr
    optimizer = clipped_adam(lr, cfg.max_grad_norm, eps=1e-5)

    obs, env_state = jax.jit(jax.vmap(lambda k: menv.reset(env, k)))(jr.split(k_reset, cfg.num_envs))
    n_members = 1 if partners is None else len(partners)
    member = jr.randint(k_member, (cfg.num_envs,), 0, n_members)
    zeros = jnp.zeros(cfg.num_envs, jnp.float32)
    runner = Runner(
        params, optimizer.init(params), env_state, obs, zeros, zeros, member, jnp.asarray(0, jnp.int32), k_train
    )

    update = make_update(cfg, env, static, optimizer, selfplay)
    chunk = _chunk_size(cfg.num_updates)

    @jax.jit
    def run_chunk(runner: Runner, partners: Any) -> tuple[Runner, dict[str, Array]]:
        return jax.lax.scan(lambda r, _: update(r, partners), runner, None, length=chunk)

    series: dict[str, list[np.ndarray]] = {k: [] for k in HISTORY_KEYS[1:]}
    total = cfg.num_updates * cfg.steps_per_update
    desc = "ippo self-play" if selfplay else "ippo with partners"
    with tqdm(total=total, desc=desc, unit="step", unit_scale=True, disable=not progress) as bar:
        for _ in range(cfg.num_updates // chunk):
            runner, metrics = run_chunk(runner, partners)
            metrics = jax.device_get(metrics)
            for k in series:
                series[k].append(np.asarray(metrics[k], np.float32))
            bar.update(chunk * cfg.steps_per_update)
            returns = np.concatenate(series["return"])
            recent = returns[~np.isnan(returns)][-4:]
            if recent.size:
                bar.set_postfix(ret=f"{recent.mean():.1f}", ent=f"{float(metrics['entropy'][-1]):.2f}")
    history = {k: np.concatenate(v) for k, v in series.items()}
    history = {"env_steps": np.arange(1, cfg.num_updates + 1, dtype=np.int64) * cfg.steps_per_update, **history}
    return eqx.combine(runner.params, static), history
