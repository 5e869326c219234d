"""Actor-critic learning on trajectories imagined in any world model (Hafner et al. 2020 DreamerV1; 2023 DreamerV3).

The CMA-ES learner (``dream.py``, ``evolve.py``) scores a linear controller by whole dreams; this module trains
an MLP actor and a critic by gradient descent on short imagined trajectories, as Dreamer does:

1. **Imagination** (``imagine``) goes through the ``Dynamics`` protocol only (``models.dynamics``): from a start
   (z_0, state_0) the actor samples a_t from [z_t, state_t.h], ``dynamics(z_t, a_t, state_t)`` returns the next
   state and an ``MDNOutput``, and z_{t+1} is sampled from that prediction at a temperature, with the same
   Gumbel-max / mu + sqrt(tau) sigma eps rule as the CMA-ES dream (``mdnrnn.sample_next_z_from_noise``). The
   reward is the prediction's ``reward`` and the continue probability 1 - sigmoid(done_logit). So the actor-critic
   trains in every world-model kind (MDN-RNN, GRU transition, RSSM) without knowing which. The sample of
   z_{t+1} is differentiable in the predicted mu and sigma (not in the mixture weights: the component is an
   argmax), which is the path the ``dynamics`` actor gradient takes.
2. **Returns** (``lambda_returns``): the lambda-return of DreamerV1 Eq. 6 (DreamerV3 Sec. 3, "Critic learning"),
   bootstrapped from the **slow critic** (an EMA of the critic, DreamerV2's target network and DreamerV3's
   regulariser), with the continue probabilities as per-step discounts.
3. **Actor** (``make_update``): either DreamerV1's analytic gradient of the returns through the imagined
   trajectory (``gradient="dynamics"``, Eq. 7: maximise sum_t V_lambda(s_t)) or DreamerV3's REINFORCE with the
   slow critic as baseline (``gradient="reinforce"``), each with an entropy bonus and DreamerV3's return
   normalisation (``ReturnNorm``: returns divided by max(1, S), S an EMA of their 5th-95th percentile range).
4. **Critic**: DreamerV3's symlog two-hot regression (``models.twohot``) of the lambda-returns (DreamerV1 Eq. 8
   with DreamerV3's loss), plus the same loss towards the slow critic's values; the slow critic follows the
   critic by an EMA after each update.

The world model is frozen: only the actor's and the critic's parameters are differentiated and updated.
The starts come from ``dream.warm_up`` states of replayed real sequences (every state of every sequence, as
``ActorCriticConfig.batch_size`` x ``seq_len`` starts): ``make_update`` takes any batch of N starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from worldmodels.config import ActorCriticConfig
from worldmodels.models import twohot
from worldmodels.models.actor import Actor, Critic
from worldmodels.models.dynamics import Dynamics
from worldmodels.models.mdnrnn import mixture_noise, sample_next_z_from_noise
from worldmodels.trainer import clipped_adam


def lambda_returns(
    rewards: Float[Array, " T"],
    continues: Float[Array, " T"],
    values: Float[Array, " T1"],
    discount: float | Array,
    lambda_: float | Array,
) -> Float[Array, " T"]:
    """The lambda-returns of one imagined trajectory (DreamerV1 Eq. 6; DreamerV3 Sec. 3, "Critic learning").

        R_t = r_t + gamma c_t ((1 - lambda) v_{t+1} + lambda R_{t+1}),   R_T = v_T,

    computed by a reverse ``lax.scan``. lambda = 0 gives one-step TD targets r_t + gamma c_t v_{t+1};
    lambda = 1 the discounted sum of the rewards bootstrapped by v_T.

    Args:
        rewards: float32 (T,); rewards[t] is the reward of action t (taken in state t).
        continues: float32 (T,); the probability (or 0/1 flag) that the episode continues after action t.
        values: float32 (T + 1,); values[t] is the value of state t (values[T] bootstraps the end).
        discount: gamma.
        lambda_: lambda in [0, 1].

    Returns:
        float32 (T,) R_0 .. R_{T-1}.
    """

    def step(next_return, inputs):
        r, c, v_next = inputs
        ret = r + discount * c * ((1.0 - lambda_) * v_next + lambda_ * next_return)
        return ret, ret

    _, returns = jax.lax.scan(step, values[-1], (rewards, continues, values[1:]), reverse=True)
    return returns


class Trajectory(NamedTuple):
    """One imagined trajectory of H steps (``imagine``); ``vmap`` adds a leading batch axis to every field.

    Attributes:
        z: float32 (H + 1, Z) latents z_0 .. z_H (z_0 the start).
        h: float32 (H + 1, Hd) the dynamics states' ``h`` at each of those steps (h_0 the start's).
        actions: float32 (H, A) squashed actions a_0 .. a_{H-1}.
        log_probs: float32 (H,) log pi(u_t | z_t, h_t) of the raw actions (``Actor.sample``).
        entropies: float32 (H,) entropies of the raw-action Gaussians.
        rewards: float32 (H,) predicted reward of each action.
        continues: float32 (H,) probability (or 0/1 flag) that the episode continues after each action.
    """

    z: Float[Array, "H1 Z"]
    h: Float[Array, "H1 Hd"]
    actions: Float[Array, "H 3"]
    log_probs: Float[Array, " H"]
    entropies: Float[Array, " H"]
    rewards: Float[Array, " H"]
    continues: Float[Array, " H"]


def imagine_step(
    actor: Actor,
    dynamics: Dynamics,
    z: Float[Array, " Z"],
    state: Any,
    key: PRNGKeyArray,
    noise: Any,
    temperature: float | Array,
    *,
    done_threshold: float | None = None,
    differentiable: bool = True,
) -> tuple[Float[Array, " Z"], Any, tuple[Array, ...]]:
    """One imagined step: sample a_t from the actor, advance the dynamics, sample z_{t+1} at ``temperature``.

    Args:
        actor: the policy.
        dynamics: any ``Dynamics`` (frozen).
        z: float32 (Z,) latent z_t.
        state: the dynamics state at t (``state.h`` float32 (Hd,)).
        key: the key of the actor's Gaussian noise.
        noise: ``mdnrnn.MixtureNoise`` of the step (``mixture_noise(k, K, Z)``), so z_{t+1} is exactly
            ``sample_next_z(out, k, temperature)``.
        temperature: tau of the latent sample.
        done_threshold: ``None``: the continue is the probability 1 - sigmoid(done_logit) (differentiable);
            a float: the continue is 0.0 where sigmoid(done_logit) > done_threshold, else 1.0 (the dream's rule,
            ``dream.dream_step``).
        differentiable: ``False`` feeds ``stop_gradient(a_t)`` to the dynamics, so the imagined states and
            rewards do not depend on the actor's parameters (REINFORCE); ``True`` keeps the reparameterised
            path (the ``dynamics`` gradient).

    Returns:
        (z_{t+1} (Z,), state_{t+1}, (action (3,), log_prob (), entropy (), reward (), continue ())).
    """
    action, log_prob, entropy = actor.sample(z, state.h, key)
    state, out = dynamics(z, action if differentiable else jax.lax.stop_gradient(action), state)
    z_next = sample_next_z_from_noise(out, noise, temperature)
    p_done = jax.nn.sigmoid(out.done_logit)
    cont = 1.0 - p_done if done_threshold is None else (p_done <= done_threshold).astype(jnp.float32)
    return z_next, state, (action, log_prob, entropy, out.reward, cont)


def imagine(
    actor: Actor,
    dynamics: Dynamics,
    z0: Float[Array, " Z"],
    state0: Any,
    key: PRNGKeyArray,
    horizon: int,
    temperature: float | Array,
    *,
    done_threshold: float | None = None,
    differentiable: bool = True,
) -> Trajectory:
    """Imagine ``horizon`` steps of the actor in the dynamics from one start (DreamerV1 Sec. 3, "imagination").

    The keys: ``k_act, k_noise = jr.split(key)``; step t samples the action with ``jr.split(k_act, horizon)[t]``
    and z_{t+1} with ``sample_next_z(out, jr.split(k_noise, horizon)[t], temperature)``, whose noise is drawn
    for all steps before the ``lax.scan`` (``mixture_noise``) as in ``dream.single_rollout``. Episode ends are
    not applied inside the trajectory; ``continues`` records them (the losses weight by their product).

    Args:
        actor: the policy.
        dynamics: any ``Dynamics`` (frozen: nothing here updates it).
        z0: float32 (Z,) start latent.
        state0: the dynamics state at the start (a pytree of unbatched arrays with ``h`` (Hd,)).
        key: PRNG key.
        horizon: H, static.
        temperature: tau.
        done_threshold, differentiable: as in ``imagine_step``.

    Returns:
        ``Trajectory`` with z (H + 1, Z), h (H + 1, Hd), actions (H, 3) and log_probs, entropies, rewards,
        continues (H,), float32.
    """
    k_act, k_noise = jr.split(key)
    draw = jax.vmap(mixture_noise, in_axes=(0, None, None))
    noise = draw(jr.split(k_noise, horizon), dynamics.num_mixtures, dynamics.z_size)

    def step(carry, inputs):
        z, state = carry
        k, n = inputs
        z_next, state, outs = imagine_step(
            actor, dynamics, z, state, k, n, temperature, done_threshold=done_threshold, differentiable=differentiable
        )
        return (z_next, state), (z_next, state.h) + outs

    _, (zs, hs, actions, log_probs, entropies, rewards, continues) = jax.lax.scan(
        step, (z0, state0), (jr.split(k_act, horizon), noise)
    )
    return Trajectory(
        z=jnp.concatenate([z0[None], zs]),
        h=jnp.concatenate([state0.h[None], hs]),
        actions=actions,
        log_probs=log_probs,
        entropies=entropies,
        rewards=rewards,
        continues=continues,
    )


class ReturnNorm(NamedTuple):
    """DreamerV3's return scale (Sec. 3, "Actor learning"): S = EMA of Per(R, 95) - Per(R, 5).

    Attributes:
        scale: float32 scalar S (0 before the first update). Returns (and advantages) are divided by
            ``divisor`` = max(1, S): large returns are scaled down, small ones are not scaled up.
    """

    scale: Float[Array, ""]

    @classmethod
    def init(cls) -> ReturnNorm:
        """S = 0."""
        return cls(jnp.zeros((), jnp.float32))

    @property
    def divisor(self) -> Float[Array, ""]:
        """max(1, S), float32 scalar."""
        return jnp.maximum(1.0, self.scale)


def update_return_norm(norm: ReturnNorm, returns: Float[Array, "..."], decay: float | Array) -> ReturnNorm:
    """S <- decay S + (1 - decay) (Per(R, 95) - Per(R, 5)) over all of the batch's returns (DreamerV3 Sec. 3).

    Args:
        norm: the current state.
        returns: float32 lambda-returns of any shape (the whole batch); gradients are stopped.
        decay: the EMA decay (``ActorCriticConfig.return_norm_decay``, DreamerV3: 0.99).

    Returns:
        The new ``ReturnNorm``.
    """
    r = jax.lax.stop_gradient(returns).reshape(-1)
    spread = jnp.percentile(r, 95.0) - jnp.percentile(r, 5.0)
    return ReturnNorm(decay * norm.scale + (1.0 - decay) * spread)


class ACState(eqx.Module):
    """Everything the actor-critic learner carries between updates.

    Attributes:
        actor: the policy (``Actor``).
        critic: the value model (``Critic``).
        slow_critic: EMA of the critic's parameters (``ActorCriticConfig.slow_critic_decay``); the lambda-returns
            bootstrap from it and the critic is regularised towards it.
        actor_opt_state, critic_opt_state: optax states of the two optimisers (``optimizers``).
        return_norm: ``ReturnNorm``.
        step: int32 scalar, updates done.
    """

    actor: Actor
    critic: Critic
    slow_critic: Critic
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    return_norm: ReturnNorm
    step: Int[Array, ""]


def optimizers(cfg: ActorCriticConfig) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(actor, critic) optimisers: clip_by_global_norm(cfg.grad_clip) then Adam at cfg.actor_lr / cfg.critic_lr."""
    return clipped_adam(cfg.actor_lr, cfg.grad_clip), clipped_adam(cfg.critic_lr, cfg.grad_clip)


def init_ac_state(
    z_size: int,
    hidden_size: int,
    cfg: ActorCriticConfig,
    key: PRNGKeyArray,
    action_size: int = 3,
    squash: str = "carracing",
) -> ACState:
    """A fresh ``ACState``: actor and critic of ``cfg.units`` x ``cfg.layers`` on [z (Z,), h (H,)], the slow critic
    a copy of the critic, zero optimiser moments, S = 0, step 0.

    Args:
        z_size, hidden_size, action_size: Z, H and A of the dynamics the learner will imagine in.
        squash: the actor's action squash (``controller.squash_action``; the run's ``env.EnvSpec.squash``).
        cfg: the actor-critic config.
        key: PRNG key of the initial parameters.
    """
    k_actor, k_critic = jr.split(key)
    actor = Actor(z_size, hidden_size, action_size, cfg.units, cfg.layers, squash, key=k_actor)
    critic = Critic(z_size, hidden_size, cfg.units, cfg.layers, key=k_critic)
    actor_tx, critic_tx = optimizers(cfg)
    return ACState(
        actor=actor,
        critic=critic,
        slow_critic=critic,
        actor_opt_state=actor_tx.init(eqx.filter(actor, eqx.is_inexact_array)),
        critic_opt_state=critic_tx.init(eqx.filter(critic, eqx.is_inexact_array)),
        return_norm=ReturnNorm.init(),
        step=jnp.zeros((), jnp.int32),
    )


def continue_weights(continues: Float[Array, "... H"]) -> Float[Array, "... H"]:
    """w_t = prod_{k < t} c_k (w_0 = 1): the probability that imagined state t is reached, stop-gradient.

    Args:
        continues: float32 (..., H) continue probabilities of the H actions.

    Returns:
        float32 (..., H), the weight of states 0 .. H-1 (DreamerV3 weights its actor and critic losses so).
    """
    c = jax.lax.stop_gradient(continues)
    return jnp.cumprod(jnp.concatenate([jnp.ones_like(c[..., :1]), c[..., :-1]], axis=-1), axis=-1)


def imagined_targets(
    rewards: Float[Array, "N H"],
    continues: Float[Array, "N H"],
    slow_values: Float[Array, "N H1"],
    cfg: Any,
    norm: ReturnNorm,
    norm_decay: float | Array,
) -> tuple[Float[Array, "N H"], ReturnNorm, Float[Array, "N H"]]:
    """What the actor and the critic learn from on N imagined trajectories: the lambda-returns bootstrapped from
    the slow critic's values (``lambda_returns``, with ``cfg.discount`` and ``cfg.lambda_``), the return scale
    updated on them (``update_return_norm``) and the continue weights of the states (``continue_weights``).

    Returns:
        (returns float32 (N, H), the new ``ReturnNorm``, weights float32 (N, H)).
    """
    returns = jax.vmap(lambda r, c, v: lambda_returns(r, c, v, cfg.discount, cfg.lambda_))(
        rewards, continues, slow_values
    )
    return returns, update_return_norm(norm, returns, norm_decay), continue_weights(continues)


def critic_loss(
    critic: Critic,
    z: Float[Array, "N H Z"],
    h: Float[Array, "N H Hd"],
    returns: Float[Array, "N H"],
    slow_values: Float[Array, "N H"],
    weights: Float[Array, "N H"],
) -> tuple[Float[Array, ""], Float[Array, "N H"]]:
    """The critic's loss (DreamerV1 Eq. 8 with DreamerV3's two-hot loss): mean_{n,t} w_t [twohot.loss(critic(s_t),
    R_t) + twohot.loss(critic(s_t), v_slow_t)], the second term DreamerV3's regulariser towards the slow critic.

    Returns:
        (loss float32 scalar, the critic's values float32 (N, H)).
    """
    logits = jax.vmap(jax.vmap(critic))(z, h)  # (N, H, B)
    per_state = jax.vmap(jax.vmap(twohot.loss))(logits, returns) + jax.vmap(jax.vmap(twohot.loss))(logits, slow_values)
    return jnp.mean(weights * per_state), jax.vmap(jax.vmap(twohot.decode))(logits)


def ema_update(slow: eqx.Module, new: eqx.Module, decay: float | Array) -> eqx.Module:
    """The slow critic's EMA step: its parameters become decay * slow + (1 - decay) * new (DreamerV3 Sec. 3); the
    rest of the module is ``new``'s."""
    slow_params = jax.tree.map(
        lambda s, c: decay * s + (1.0 - decay) * c,
        eqx.filter(slow, eqx.is_inexact_array),
        eqx.filter(new, eqx.is_inexact_array),
    )
    return eqx.combine(slow_params, eqx.filter(new, eqx.is_inexact_array, inverse=True))


def make_update(
    cfg: ActorCriticConfig, temperature: float, done_threshold: float | None = None
) -> Callable[..., tuple[ACState, dict[str, Array]]]:
    """The jitted actor-critic update: ``update(ac_state, dynamics, z_starts, state_starts, key)``.

    One call imagines ``cfg.horizon`` steps from each of the N starts (``imagine`` under ``vmap``), then

    * values v_t of the imagined states from the slow critic, lambda-returns R_t bootstrapped from them
      (``lambda_returns``, DreamerV1 Eq. 6), the return scale S updated on this batch (``update_return_norm``)
      and w_t the continue weights (``continue_weights``);
    * **actor**, ``cfg.gradient == "dynamics"`` (DreamerV1 Eq. 7): loss = -mean_{n,t}(w_t R_t / max(1, S))
      - eta mean_{n,t}(w_t H_t), differentiated through the returns, the slow critic's input states, the
      sampled latents and the rewards into the reparameterised actions (the dynamics' own parameters are a
      constant: only the actor is differentiated);
      ``"reinforce"`` (DreamerV3 Sec. 3, "Actor learning"; Williams 1992): the imagined states are constants
      (``differentiable=False``) and loss = -mean(w_t log pi(u_t) sg((R_t - v_t) / max(1, S))) - eta mean(w_t H_t),
      the slow critic's v_t the baseline; eta = ``cfg.entropy_scale``, H_t the raw Gaussian's entropy;
    * **critic** (DreamerV1 Eq. 8 with DreamerV3's two-hot loss): mean_{n,t} w_t [twohot.loss(critic(sg s_t),
      sg R_t) + twohot.loss(critic(sg s_t), sg v_slow_t)] over states 0 .. H-1, the second term DreamerV3's
      regulariser towards the slow critic;
    * both with ``optimizers(cfg)`` (clip_by_global_norm then Adam); then the slow critic moves to
      decay * slow + (1 - decay) * critic with decay = ``cfg.slow_critic_decay``.

    Args:
        cfg: ``ActorCriticConfig`` (horizon, discount, lambda_, entropy_scale, gradient, actor_lr, critic_lr,
            grad_clip, slow_critic_decay, return_norm_decay are read here; units and layers by ``init_ac_state``).
        temperature: tau of the imagined latents (as the CMA-ES dream's ``temperature``).
        done_threshold: ``None``: continues are the probabilities 1 - sigmoid(done_logit); a float: hard 0/1
            continues by the dream's rule (see ``imagine_step``).

    Returns:
        ``update(ac_state, dynamics, z_starts float32 (N, Z), state_starts (pytree, leading axis N), key)
        -> (ac_state, metrics)``, an ``eqx.filter_jit`` function (it retraces only for new shapes or a new
        dynamics structure). ``metrics`` maps actor_loss, critic_loss, imagined_return (mean R_0),
        imagined_reward (mean predicted reward per step), entropy (mean H_t), value (mean critic value of
        states 0 .. H-1), return_scale (S, before the max with 1), actor_grad_norm, critic_grad_norm (before
        clipping) to float32 scalars.
    """
    actor_tx, critic_tx = optimizers(cfg)
    reinforce = cfg.gradient == "reinforce"
    horizon = cfg.horizon

    def imagine_all(actor, dynamics, z_starts, state_starts, keys):
        kw = {"done_threshold": done_threshold, "differentiable": not reinforce}
        one = lambda z0, s0, k: imagine(actor, dynamics, z0, s0, k, horizon, temperature, **kw)
        return jax.vmap(one)(z_starts, state_starts, keys)  # Trajectory with a leading N axis

    def actor_loss_fn(actor, ac_state, dynamics, z_starts, state_starts, keys):
        traj = imagine_all(actor, dynamics, z_starts, state_starts, keys)
        slow_values = jax.vmap(jax.vmap(ac_state.slow_critic.value))(traj.z, traj.h)  # (N, H + 1)
        returns, norm, weights = imagined_targets(
            traj.rewards, traj.continues, slow_values, cfg, ac_state.return_norm, cfg.return_norm_decay
        )
        if reinforce:
            advantage = jax.lax.stop_gradient((returns - slow_values[:, :-1]) / norm.divisor)
            objective = traj.log_probs * advantage
        else:
            objective = returns / norm.divisor
        loss = -jnp.mean(weights * objective) - cfg.entropy_scale * jnp.mean(weights * traj.entropies)
        aux = (jax.lax.stop_gradient(traj), jax.lax.stop_gradient(returns), jax.lax.stop_gradient(slow_values))
        return loss, (aux, norm, weights)

    @eqx.filter_jit
    def update(ac_state: ACState, dynamics: Dynamics, z_starts, state_starts, key):
        keys = jr.split(key, z_starts.shape[0])
        (actor_loss, ((traj, returns, slow_values), norm, weights)), actor_grads = eqx.filter_value_and_grad(
            actor_loss_fn, has_aux=True
        )(ac_state.actor, ac_state, dynamics, z_starts, state_starts, keys)
        updates, actor_opt_state = actor_tx.update(
            actor_grads, ac_state.actor_opt_state, eqx.filter(ac_state.actor, eqx.is_inexact_array)
        )
        actor = eqx.apply_updates(ac_state.actor, updates)

        z, h = traj.z[:, :-1], traj.h[:, :-1]  # states 0 .. H-1, stop-gradient already
        (critic_loss_value, values), critic_grads = eqx.filter_value_and_grad(critic_loss, has_aux=True)(
            ac_state.critic, z, h, returns, slow_values[:, :-1], weights
        )
        updates, critic_opt_state = critic_tx.update(
            critic_grads, ac_state.critic_opt_state, eqx.filter(ac_state.critic, eqx.is_inexact_array)
        )
        critic = eqx.apply_updates(ac_state.critic, updates)

        slow_critic = ema_update(ac_state.slow_critic, critic, cfg.slow_critic_decay)

        new_state = ACState(
            actor=actor,
            critic=critic,
            slow_critic=slow_critic,
            actor_opt_state=actor_opt_state,
            critic_opt_state=critic_opt_state,
            return_norm=norm,
            step=ac_state.step + 1,
        )
        metrics = {
            "actor_loss": actor_loss,
            "critic_loss": critic_loss_value,
            "imagined_return": jnp.mean(returns[:, 0]),
            "imagined_reward": jnp.mean(traj.rewards),
            "entropy": jnp.mean(traj.entropies),
            "value": jnp.mean(values),
            "return_scale": norm.scale,
            "actor_grad_norm": optax.tree.norm(actor_grads),
            "critic_grad_norm": optax.tree.norm(critic_grads),
        }
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return update
