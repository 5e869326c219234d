"""Social imagination and the learner of "Dreaming of Others": a world model, an actor and a critic updated in one
jitted step.

**Social imagination** (``imagine``): from a start state the dream runs H steps; at each, the actor samples the
agent's action a^0_t from the full factorised state (h_t, z^env_t, z^team_t), the **theory-of-mind head** samples
the teammate's action a^j_t ~ pi_hat(. | h_t, z^team_t), and the world model advances on the joint action
(a^0_t, a^j_t), its latents drawn from the prior. Two ablations replace the teammate: ``repeat`` (a^j_t = a^j_{t-1},
the teammate repeats its last real action) and ``none`` (a model that takes no teammate action).

**Learning** (``make_train_step``), DreamerV3 (Hafner et al. 2023) with discrete actions:

1. the world model's loss on a batch of replayed windows (``world_model.sequence_terms``): reconstruction, reward,
   continue, the two balanced KL terms summed over z^env and z^team, and tom_scale * L_ToM;
2. imagination from ``starts`` of the batch's posterior states (stop-gradient), rewards from the reward head;
3. lambda-returns bootstrapped from the slow critic (``imagination.lambda_returns``), DreamerV3's return
   normalisation, and the actor trained by REINFORCE with the critic as baseline plus an entropy bonus (the
   score-function gradient DreamerV3 uses for discrete actions);
4. the critic's symlog two-hot regression of the returns, regularised towards the slow critic, which then moves
   by an EMA.
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

from worldmodels.config import MARLConfig
from worldmodels.imagination import ReturnNorm, critic_loss, ema_update, imagined_targets
from worldmodels.losses import weighted_total
from worldmodels.marl.world_model import JointState, Sequence, SocialWorldModel, sequence_terms
from worldmodels.models.actor import Critic
from worldmodels.models.rssm import MLP
from worldmodels.trainer import clipped_adam

TEAMMATES = ("tom", "repeat", "none")
SLOW_CRITIC_DECAY = 0.98
RETURN_NORM_DECAY = 0.99
GRAD_CLIP = 100.0


class SocialActor(eqx.Module):
    """pi(a^0_t | h_t, z^env_t, z^team_t): logits over the agent's A actions from the full factorised state.

    Attributes:
        mlp: feature (F,) -> units -> units -> A logits (last layer zero-initialised: a uniform first policy).
    """

    mlp: MLP

    def __init__(self, feature_size: int, num_actions: int, units: int, *, key: PRNGKeyArray):
        self.mlp = MLP([feature_size, units, units, num_actions], key=key, zero_last=True)

    def __call__(self, features: Float[Array, " F"]) -> Float[Array, " A"]:
        """Logits float32 (A,) of the agent's action."""
        return self.mlp(features)


class Dream(NamedTuple):
    """One socially imagined trajectory of H steps (``vmap`` adds a leading axis).

    Attributes:
        features: float32 (H + 1, F) states 0 .. H as [h, z^env, z^team].
        a_self: int32 (H,) the actor's actions.
        a_team: int32 (H,) the teammate's imagined actions (the ToM head's samples, or repeats).
        log_probs: float32 (H,) log pi(a^0_t | s_t).
        entropies: float32 (H,) the actor's entropy at s_t.
        rewards: float32 (H,) the reward head at s_{t+1}.
        continues: float32 (H,) the continue head at s_{t+1}.
    """

    features: Float[Array, "H1 F"]
    a_self: Int[Array, " H"]
    a_team: Int[Array, " H"]
    log_probs: Float[Array, " H"]
    entropies: Float[Array, " H"]
    rewards: Float[Array, " H"]
    continues: Float[Array, " H"]


def teammate_action(
    model: SocialWorldModel, state: JointState, last_team: Int[Array, ""], key: PRNGKeyArray, teammate: str
) -> Int[Array, ""]:
    """The teammate's imagined action at ``state``: a sample of the ToM head (``tom``), ``last_team`` (``repeat``),
    or 0, unused by a model without the joint action (``none``).

    Raises:
        ValueError: an unknown ``teammate``, or ``tom`` on a model without the head.
    """
    if teammate == "tom":
        return jr.categorical(key, model.tom_logits(state)).astype(jnp.int32)
    if teammate == "repeat":
        return last_team.astype(jnp.int32)
    if teammate == "none":
        return jnp.zeros((), jnp.int32)
    raise ValueError(f"imagined teammate {teammate!r} is unknown; choose one of {', '.join(TEAMMATES)}")


def imagine(
    model: SocialWorldModel,
    actor: SocialActor,
    start: JointState,
    last_team: Int[Array, ""],
    key: PRNGKeyArray,
    horizon: int,
    teammate: str = "tom",
) -> Dream:
    """Social imagination of ``horizon`` steps from one start (module docstring), a ``lax.scan``.

    Args:
        model: the (frozen) world model.
        actor: the policy.
        start: the start state (no batch axis).
        last_team: int32 scalar, the teammate's last real action (read by ``repeat``).
        key: PRNG key (split per step into the actor's, the teammate's and the latent's keys).
        horizon: H.
        teammate: ``tom``, ``repeat`` or ``none`` (``teammate_action``).

    Returns:
        ``Dream`` of H steps.
    """

    def step(carry, k):
        state, last = carry
        k_act, k_team, k_dyn = jr.split(k, 3)
        feats = model.features(state)
        logits = actor(feats)
        a0 = jr.categorical(k_act, logits).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits)
        aj = teammate_action(model, state, last, k_team, teammate)
        nxt = model.imagine_step(state, a0, aj, k_dyn)
        out = (feats, a0, aj, logp[a0], -jnp.sum(jnp.exp(logp) * logp), model.reward(nxt), model.cont(nxt))
        return (nxt, aj), out

    (last_state, _), (feats, a0, aj, logp, ent, rew, cont) = jax.lax.scan(
        step, (start, jnp.asarray(last_team, jnp.int32)), jr.split(key, horizon)
    )
    features = jnp.concatenate([feats, model.features(last_state)[None]])
    return Dream(features, a0, aj, logp, ent, rew, cont)


class Learner(eqx.Module):
    """Everything the learner carries between updates (checkpointed as one pytree).

    Attributes:
        model: the world model.
        actor, critic, slow_critic: the policy, the value (``models.actor.Critic`` reading (z, h) as
            (features[D:], features[:D])) and its EMA.
        model_opt, actor_opt, critic_opt: optax states.
        return_norm: DreamerV3's return scale.
        step: int32 scalar, updates done.
    """

    model: SocialWorldModel
    actor: SocialActor
    critic: Critic
    slow_critic: Critic
    model_opt: optax.OptState
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    return_norm: ReturnNorm
    step: Int[Array, ""]


def optimizers(cfg: MARLConfig) -> tuple[optax.GradientTransformation, ...]:
    """(world model, actor, critic) optimisers: global-norm clip then Adam at each learning rate."""
    return tuple(clipped_adam(lr, GRAD_CLIP) for lr in (cfg.wm_lr, cfg.actor_lr, cfg.critic_lr))


def model_hparams(cfg: MARLConfig, obs_size: int, num_actions: int) -> dict[str, Any]:
    """The world model's constructor arguments from the config (what a checkpoint records)."""
    return {
        "obs_size": obs_size,
        "num_actions": num_actions,
        "deter": cfg.deter,
        "units": cfg.units,
        "env_groups": cfg.env_groups,
        "team_groups": cfg.team_groups,
        "classes": cfg.classes,
        "factorised": cfg.factorised,
        "joint_action": cfg.tom,
        "tom": cfg.tom,
    }


def init_learner(cfg: MARLConfig, obs_size: int, num_actions: int, key: PRNGKeyArray) -> Learner:
    """A fresh learner for observations of ``obs_size`` (flat) and ``num_actions`` actions per agent."""
    k_model, k_actor, k_critic = jr.split(key, 3)
    model = SocialWorldModel(**model_hparams(cfg, obs_size, num_actions), key=k_model)
    actor = SocialActor(model.feature_size, num_actions, cfg.units, key=k_actor)
    critic = Critic(model.z_size, model.deter, cfg.units, 2, key=k_critic)
    model_tx, actor_tx, critic_tx = optimizers(cfg)
    params = lambda m: eqx.filter(m, eqx.is_inexact_array)  # noqa: E731
    return Learner(
        model=model,
        actor=actor,
        critic=critic,
        slow_critic=critic,
        model_opt=model_tx.init(params(model)),
        actor_opt=actor_tx.init(params(actor)),
        critic_opt=critic_tx.init(params(critic)),
        return_norm=ReturnNorm.init(),
        step=jnp.zeros((), jnp.int32),
    )


def loss_scales(cfg: MARLConfig) -> dict[str, float]:
    """Scale of each world-model loss term (DreamerV3's 1 / 0.5 / 0.1 with the ToM term)."""
    return {
        "recon": 1.0,
        "reward": 1.0,
        "cont": 1.0,
        "kl_dyn": cfg.kl_dyn_scale,
        "kl_rep": cfg.kl_rep_scale,
        "tom": cfg.tom_scale if cfg.tom else 0.0,
    }


def make_train_step(cfg: MARLConfig) -> Callable[..., tuple[Learner, dict[str, Array]]]:
    """The jitted update ``train_step(learner, batch, key) -> (learner, metrics)`` (module docstring, steps 1-4).

    Args:
        cfg: the config (loss scales, free bits, horizon, discount, lambda, entropy, learning rates, starts and the
            variant's imagined teammate are read here).

    Returns:
        An ``eqx.filter_jit`` function; ``batch`` is a ``world_model.Sequence`` with a leading batch axis B
        (B * T >= ``cfg.starts``). ``metrics`` maps the world model's terms, ``model_loss``, ``actor_loss``,
        ``critic_loss``, ``imagined_return``, ``imagined_reward``, ``entropy``, ``value``, ``return_scale`` to
        float32 scalars.
    """
    model_tx, actor_tx, critic_tx = optimizers(cfg)
    scales = loss_scales(cfg)
    teammate = cfg.imagined_teammate
    params = lambda m: eqx.filter(m, eqx.is_inexact_array)  # noqa: E731

    def model_loss(model, batch, key):
        keys = jr.split(key, batch.a_self.shape[0])
        terms, observed = jax.vmap(lambda s, k: sequence_terms(model, s, k, cfg.free_nats))(batch, keys)
        terms = {k: jnp.mean(v) for k, v in terms.items()}
        return weighted_total({k: terms[k] for k in scales}, scales), (terms, observed.states)

    def actor_loss(actor, learner, model, starts, last_team, keys):
        dreams = jax.vmap(lambda s, a, k: imagine(model, actor, s, a, k, cfg.horizon, teammate))(
            starts, last_team, keys
        )
        d = model.deter
        slow = jax.vmap(jax.vmap(lambda f: learner.slow_critic.value(f[d:], f[:d])))(dreams.features)  # (N, H + 1)
        returns, norm, weights = imagined_targets(
            dreams.rewards, dreams.continues, slow, cfg, learner.return_norm, RETURN_NORM_DECAY
        )
        advantage = jax.lax.stop_gradient((returns - slow[:, :-1]) / norm.divisor)
        loss = -jnp.mean(weights * dreams.log_probs * advantage) - cfg.entropy_scale * jnp.mean(
            weights * dreams.entropies
        )
        return loss, (jax.lax.stop_gradient(dreams), returns, slow, norm, weights)

    @eqx.filter_jit
    def train_step(learner: Learner, batch: Sequence, key: PRNGKeyArray):
        k_model, k_starts, k_dream = jr.split(key, 3)
        # World model
        (m_loss, (terms, states)), grads = eqx.filter_value_and_grad(model_loss, has_aux=True)(
            learner.model, batch, k_model
        )
        updates, model_opt = model_tx.update(grads, learner.model_opt, params(learner.model))
        model = eqx.apply_updates(learner.model, updates)

        # Imagination starts: posterior states of the batch (stop-gradient), each with the teammate's last action
        n = batch.a_self.shape[0] * batch.a_self.shape[1]  # explicit: z^team may have no elements
        flat = jax.tree.map(lambda x: jax.lax.stop_gradient(x.reshape(n, *x.shape[2:])), states)
        last_team = jnp.concatenate([jnp.zeros_like(batch.a_team[:, :1]), batch.a_team[:, :-1]], axis=1).reshape(-1)
        idx = jr.choice(k_starts, last_team.shape[0], (cfg.starts,), replace=False)
        starts = jax.tree.map(lambda x: x[idx], flat)

        # Actor (REINFORCE on the frozen, just-updated world model)
        keys = jr.split(k_dream, cfg.starts)
        (a_loss, (dreams, returns, slow, norm, weights)), a_grads = eqx.filter_value_and_grad(actor_loss, has_aux=True)(
            learner.actor, learner, model, starts, last_team[idx], keys
        )
        updates, actor_opt = actor_tx.update(a_grads, learner.actor_opt, params(learner.actor))
        actor = eqx.apply_updates(learner.actor, updates)

        # Critic
        d = model.deter
        feats = dreams.features[:, :-1]  # states 0 .. H-1 as the critic's (z, h) = (features[D:], features[:D])
        (c_loss, values), c_grads = eqx.filter_value_and_grad(critic_loss, has_aux=True)(
            learner.critic, feats[..., d:], feats[..., :d], returns, slow[:, :-1], weights
        )
        updates, critic_opt = critic_tx.update(c_grads, learner.critic_opt, params(learner.critic))
        critic = eqx.apply_updates(learner.critic, updates)
        slow_critic = ema_update(learner.slow_critic, critic, SLOW_CRITIC_DECAY)

        new = Learner(model, actor, critic, slow_critic, model_opt, actor_opt, critic_opt, norm, learner.step + 1)
        metrics = dict(terms)
        metrics.update(
            model_loss=m_loss,
            actor_loss=a_loss,
            critic_loss=c_loss,
            imagined_return=jnp.mean(returns[:, 0]),
            imagined_reward=jnp.mean(dreams.rewards),
            entropy=jnp.mean(dreams.entropies),
            value=jnp.mean(values),
            return_scale=norm.scale,
        )
        return new, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step
