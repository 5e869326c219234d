"""Gossip: a pool of jointly trained world models that read each other's dreams (issue 5).

One training step of the pool (one jitted call, ``make_pool_step``):

1. **Ordinary losses.** Every model takes its own losses on the same real batch of sequences
   (``model_loss``): L2 reconstruction + KL with free bits (Ha & Schmidhuber 2018, Appendix A.1) on every
   frame, and the dynamics loss on the latents it encodes (mixture NLL of z_{t+1}, asymmetric reward MSE,
   done BCE; Appendix A.2), trained jointly: the dynamics' gradient reaches the encoder
   (``dynamics_to_encoder``).
2. **Gossip.** The pool is split into pairs (``pair_partners``). From shared real starts (the first
   ``gossip_batch`` windows of the batch: ``gossip_context`` real frames, then the windows' real actions)
   each model dreams ``gossip_dream_steps`` steps in its own latent space and decodes its final latent
   into an image, its dream x_i. The partner reads that image with its own encoder (cross-encoding).
   ``consistency_loss`` turns the readings into each model's consistency loss C_i.
3. Each model's total is ``ordinary_i + gossip_weight * C_i``; the pool's loss is the sum of the totals,
   and one vmapped optax update (one Adam state and one gradient clip per model) updates every model.

The pool is one stacked pytree: every array of a ``JointWorldModel`` has a leading model axis M, made by
vmapping the constructor over M keys (``init_pool``); losses, dreams and readings are
``eqx.filter_vmap``-ed over that axis (``over_pool``; ``vmap_pool = False`` unrolls the same per-model code
as a loop, faster on XLA:CPU), and the partner's dream is gathered with ``jnp.take`` inside the jitted step.
``gossip_weight = 0`` is the baseline: independent models, the same data order, the same updates (the
consistency is still measured, under ``stop_gradient``, for the logs).

Pairing (``pair_partners``): a random permutation pi of the M models each step, then pi[0] <-> pi[1],
pi[2] <-> pi[3], ... For M = 2 that is always the pair (0, 1). For an odd M the last model of the
permutation has no partner: its partner is itself and its consistency weight is 0 for that step, so
every model sits out 1 / M of the steps on average. M = 1 never gossips.
"""

# ruff: noqa: F401
# The package re-exports every name of the single-file module it replaced, so ``from worldmodels.gossip import X``
# and ``gossip.X`` keep working; each submodule owns one job (its docstring says which).

from __future__ import annotations

from worldmodels.gossip.consistency import consistency_loss, dream_images, gossip_inputs, pair_partners
from worldmodels.gossip.data import FrameSequences, load_sequences, sequence_batch
from worldmodels.gossip.drift import drift_metrics
from worldmodels.gossip.export import export_model
from worldmodels.gossip.losses import model_loss, pool_loss
from worldmodels.gossip.media import dream_video, plot_drift, plot_pool
from worldmodels.gossip.options import COMPARES, DISTANCES, DREAMS, STOP_GRADIENTS, check_config
from worldmodels.gossip.pool import init_pool, model_at, over_pool, pool_hparams, stack_models
from worldmodels.gossip.stage import run_gossip
from worldmodels.gossip.step import (
    LOSS_KEYS,
    init_opt_state,
    make_optimizer,
    make_pool_step,
    model_keys,
    model_update,
    pool_update,
)
from worldmodels.gossip.train import load_pool, train_pool
