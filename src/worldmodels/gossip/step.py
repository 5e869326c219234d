"""The pool update step: the optimiser, one update of the whole pool (``pool_update``, jitted by
``make_pool_step``) and one model's update alone (``model_update``)."""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import optax
from jaxtyping import Array, PRNGKeyArray

from worldmodels.config import GossipConfig
from worldmodels.gossip.losses import model_loss, pool_loss
from worldmodels.models.joint import JointWorldModel
from worldmodels.trainer import clipped_adam

LOSS_KEYS = ("total", "recon", "kl", "kl_raw", "mdn_nll", "reward", "done", "dynamics", "consistency", "grad_norm")
"""Per-model metrics of a pool step, in the order they are plotted."""


def model_keys(key: PRNGKeyArray, num_models: int) -> PRNGKeyArray:
    """The per-model keys of ``pool_loss``'s ordinary losses for step key ``key``: (M,) keys."""
    return jr.split(jr.split(key, 3)[0], num_models)


def make_optimizer(cfg: GossipConfig) -> optax.GradientTransformation:
    """Global-norm clip then Adam, applied to one model (the pool vmaps it)."""
    return clipped_adam(cfg.learning_rate, cfg.grad_clip)


def init_opt_state(pool: JointWorldModel, optimizer: optax.GradientTransformation) -> Any:
    """One optimiser state per model, stacked (leading axis M)."""
    return eqx.filter_vmap(optimizer.init)(eqx.filter(pool, eqx.is_array))


def pool_update(
    pool: JointWorldModel,
    opt_state: Any,
    batch: dict[str, Array],
    key: PRNGKeyArray,
    cfg: GossipConfig,
    optimizer: optax.GradientTransformation,
) -> tuple[JointWorldModel, Any, dict[str, Array]]:
    """One update of the whole pool (pure; ``make_pool_step`` jits it).

    Gradients of ``pool_loss`` (pairs drawn and gathered inside), then one vmapped optax update: each model
    is clipped and Adam-updated with its own state, exactly as if it were trained alone.

    Returns:
        (new pool, new optimiser states, metrics: ``pool_loss``'s (M,) arrays plus ``grad_norm`` (M,),
        before clipping).
    """
    (_, metrics), grads = eqx.filter_value_and_grad(pool_loss, has_aux=True)(pool, batch, key, cfg)
    params = eqx.filter(pool, eqx.is_array)
    updates, opt_state = eqx.filter_vmap(optimizer.update)(grads, opt_state, params)
    metrics["grad_norm"] = jax.vmap(optax.tree.norm)(grads)
    return eqx.apply_updates(pool, updates), opt_state, metrics


def model_update(
    model: JointWorldModel,
    opt_state: Any,
    batch: dict[str, Array],
    key: PRNGKeyArray,
    cfg: GossipConfig,
    optimizer: optax.GradientTransformation,
) -> tuple[JointWorldModel, Any, dict[str, Array]]:
    """One model's update alone on its ordinary losses: what ``pool_update`` does to each model when
    ``gossip_weight`` = 0 (used by the tests)."""
    (_, metrics), grads = eqx.filter_value_and_grad(model_loss, has_aux=True)(model, batch, key, cfg)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, metrics


def make_pool_step(cfg: GossipConfig):
    """``pool_update`` jitted for ``cfg``: ``step(pool, opt_state, batch, key) -> (pool, opt_state, metrics)``.

    One call updates the whole pool; new batches and keys reuse the compiled program.
    """
    return eqx.filter_jit(functools.partial(pool_update, cfg=cfg, optimizer=make_optimizer(cfg)))
