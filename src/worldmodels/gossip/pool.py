"""The pool as one stacked pytree: building it (``init_pool``), slicing and stacking models, and applying a
per-model function over the pool axis (``over_pool``)."""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray

from worldmodels.config import GossipConfig
from worldmodels.models.dynamics import module_at, stack_modules
from worldmodels.models.joint import JointWorldModel, joint_hparams


def pool_hparams(cfg: GossipConfig) -> dict[str, Any]:
    """What rebuilds the pool: the joint model's sizes and the pool size M."""
    return {**joint_hparams(cfg.flavour, cfg.z_size, cfg.hidden_size, cfg.num_mixtures), "models": cfg.models}


def init_pool(cfg: GossipConfig, key: PRNGKeyArray | None = None) -> JointWorldModel:
    """M fresh models stacked into one pytree: model m is initialised from ``fold_in(key, m)``.

    The constructor is vmapped over the M keys (``eqx.filter_vmap``), so every array has a leading axis M.
    ``key`` defaults to ``jr.key(cfg.seed)``.
    """
    key = jr.key(cfg.seed) if key is None else key
    hp = joint_hparams(cfg.flavour, cfg.z_size, cfg.hidden_size, cfg.num_mixtures)
    return _init_stacked(key, cfg.models, tuple(hp.items()))


@functools.partial(jax.jit, static_argnums=(1, 2), compiler_options={"xla_backend_optimization_level": 0})
def _init_stacked(key: PRNGKeyArray, num_models: int, hparams: tuple) -> JointWorldModel:
    # One jitted call (eagerly, the vmapped constructor dispatches hundreds of small ops), compiled without
    # XLA's backend optimisations: it runs once, and optimising its random-bit generators costs ~10 s on a CPU.
    keys = jax.vmap(lambda m: jr.fold_in(key, m))(jnp.arange(num_models))
    return eqx.filter_vmap(lambda k: JointWorldModel(**dict(hparams), key=k))(keys)


model_at = module_at
"""Model ``m`` of a stacked pool (its arrays without the M axis): ``models.dynamics.module_at``."""

stack_models = stack_modules
"""The inverse of ``model_at``, same-shaped models stacked into a pool: ``models.dynamics.stack_modules``."""


def over_pool(fn: Any, vmap: bool, *trees: Any) -> Any:
    """``fn`` applied to every model's slice of ``trees`` (each with a leading M axis), outputs stacked.

    ``vmap=True`` is ``eqx.filter_vmap(fn)(*trees)``; ``False`` unrolls a Python loop over the M slices
    (inside a jitted caller: one program with M copies of ``fn``), with the same values (``GossipConfig.vmap_pool``).
    """
    if vmap:
        return eqx.filter_vmap(fn)(*trees)
    size = jax.tree.leaves(eqx.filter(trees[0], eqx.is_array))[0].shape[0]
    outs = [fn(*(model_at(t, m) for t in trees)) for m in range(size)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def _stop(tree: Any, stop: bool) -> Any:
    """``tree`` with ``stop_gradient`` on every array when ``stop`` (a reader whose parameters do not learn)."""
    if not stop:
        return tree
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)
