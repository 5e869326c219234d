"""The losses of a pool step: each model's ordinary losses (``model_loss``) and the pool's loss, ordinary plus
weighted consistency (``pool_loss``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray

from worldmodels.config import GossipConfig
from worldmodels.gossip.consistency import consistency_loss, gossip_inputs, pair_partners
from worldmodels.gossip.pool import _stop, over_pool
from worldmodels.losses import kl_diag_normal, rnn_step_loss, vae_loss, weighted_total
from worldmodels.models.joint import JointWorldModel, teacher_forced
from worldmodels.models.vae import to_float


def model_loss(
    model: JointWorldModel, batch: dict[str, Array], key: PRNGKeyArray, cfg: GossipConfig
) -> tuple[Array, dict[str, Array]]:
    """One model's ordinary losses on a batch of windows (one example = one window; masked means).

    * VAE, every valid frame: ``recon`` = sum of squared errors over 64x64x3, ``kl`` = max(KL, kl_tolerance * Z)
      (free bits), ``kl_raw`` (Ha & Schmidhuber 2018, Appendix A.1; ``losses.vae_loss``);
    * dynamics, every valid step, on z sampled from the posterior (z = mu + sigma eps, Kingma & Welling
      2014): ``mdn_nll`` of z_{t+1} in nats per dimension, asymmetric ``reward`` MSE, ``done`` BCE
      (Appendix A.2; ``losses.rnn_step_loss``); ``dynamics`` is their weighted sum.

    total = recon + kl + dynamics_weight * dynamics. With ``cfg.dynamics_to_encoder`` the dynamics loss
    trains the encoder too (joint training); otherwise its input latents are constants.

    Args:
        model: one world model (no pool axis).
        batch: ``sequence_batch`` arrays (frames uint8 (B, L + 1, 64, 64, 3), ...).
        key: PRNG key of the posterior samples.
        cfg: loss weights.

    Returns:
        (total, dict of float32 scalars: ``total``, ``recon``, ``kl``, ``kl_raw``, ``mdn_nll``, ``reward``,
        ``done``, ``dynamics``).
    """
    x = to_float(batch["frames"])
    mu, logvar = model.encode(x)
    z = mu + jnp.exp(0.5 * logvar) * jr.normal(key, mu.shape)
    recon = model.decode(z)
    per_frame = jax.vmap(jax.vmap(vae_loss, in_axes=(0, 0, 0, 0, None)), in_axes=(0, 0, 0, 0, None))(
        recon, x, mu, logvar, cfg.kl_tolerance
    )
    fmask = batch["frame_mask"]

    def frame_mean(v):
        return jnp.sum(v * fmask) / jnp.maximum(fmask.sum(), 1.0)

    vae_terms = {k: frame_mean(v) for k, v in per_frame.items()}
    z_dyn = z if cfg.dynamics_to_encoder else jax.lax.stop_gradient(z)
    step_loss = functools.partial(rnn_step_loss, reward_overpredict_weight=cfg.reward_overpredict_weight)

    def one(z, actions, rewards, dones):
        out = teacher_forced(model, z[:-1], actions)
        return jax.vmap(step_loss)(out, z[1:], rewards, dones)

    per_step = jax.vmap(one)(z_dyn, batch["actions"], batch["rewards"], batch["dones"])
    mask = batch["mask"]
    dyn = {k: jnp.sum(v * mask) / jnp.maximum(mask.sum(), 1.0) for k, v in per_step.items()}
    dynamics = weighted_total(dyn, cfg.dynamics_loss_scales)
    total = weighted_total(vae_terms, cfg.vae_loss_scales) + cfg.dynamics_weight * dynamics
    metrics = {
        "total": total,
        **vae_terms,
        "kl_raw": frame_mean(jax.vmap(jax.vmap(kl_diag_normal))(mu, logvar)),
        **dyn,
        "dynamics": dynamics,
    }
    return total, metrics


def pool_loss(
    pool: JointWorldModel, batch: dict[str, Array], key: PRNGKeyArray, cfg: GossipConfig
) -> tuple[Array, dict[str, Array]]:
    """Sum over the pool of ``ordinary_m + gossip_weight * C_m``, with per-model metrics.

    ``key`` splits into (models, pairing, dream); model m's ordinary loss uses ``jr.split(models, M)[m]``
    (``model_keys``), so a model trained alone with that key takes the same step. With ``gossip_weight``
    = 0 the consistency is computed under ``stop_gradient`` (logged, not trained).

    Returns:
        (scalar pool loss, dict of float32 (M,) arrays: the ``model_loss`` metrics with ``total`` including
        the gossip term, ``consistency`` C_m, and ``active``).
    """
    k_models, k_pair, k_dream = jr.split(key, 3)
    m = cfg.models
    _, metrics = over_pool(
        lambda model, k: model_loss(model, batch, k, cfg), cfg.vmap_pool, pool, jr.split(k_models, m)
    )
    partner, active = pair_partners(k_pair, m)
    context, actions = gossip_inputs(batch, cfg)
    gossip_pool = pool if cfg.gossip_weight else _stop(pool, True)
    c = consistency_loss(gossip_pool, context, actions, partner, active, k_dream, cfg)
    metrics["total"] = metrics["total"] + cfg.gossip_weight * c
    metrics["consistency"] = c
    metrics["active"] = active
    return jnp.sum(metrics["total"]), metrics
