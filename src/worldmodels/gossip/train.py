"""The training loop of a pool: ``train_pool`` (checkpoints, metrics.jsonl, resuming) and ``load_pool``."""

from __future__ import annotations

from pathlib import Path

from worldmodels import checkpoint
from worldmodels.config import GossipConfig
from worldmodels.gossip.data import FrameSequences, sequence_batch
from worldmodels.gossip.pool import init_pool, pool_hparams
from worldmodels.gossip.step import init_opt_state, make_optimizer, make_pool_step
from worldmodels.models.joint import JointWorldModel
from worldmodels.trainer import fit


def train_pool(out_dir: Path, data: FrameSequences, cfg: GossipConfig) -> JointWorldModel:
    """Train the pool for ``cfg.steps`` updates; resumes from ``out_dir/ckpt``.

    Runs the project's one training loop (``train.fit``) with the pool's jitted update of every model
    (``make_pool_step``). Writes ``ckpt/`` (kind ``gossip_pool``, the stacked pool and the M optimiser
    states) every ``checkpoint_every`` updates, and ``metrics.jsonl`` (with its TensorBoard copy in ``tb/``)
    every ``log_every`` updates: for every metric of ``LOSS_KEYS`` the pool mean ``name`` and each model's
    ``name/m``.

    Returns:
        The trained pool.

    Raises:
        TrainingDiverged: at a non-finite loss, naming the step and the last good checkpoint (left intact).
        CheckpointError: when a checkpoint there was made with different sizes.
    """
    pool = init_pool(cfg)
    return fit(
        model=pool,
        step_fn=make_pool_step(cfg),
        opt_state=init_opt_state(pool, make_optimizer(cfg)),
        make_batch=lambda step: sequence_batch(data, step, cfg),
        steps=cfg.steps,
        out_dir=out_dir,
        kind="gossip_pool",
        hparams=pool_hparams(cfg),
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        items_per_step=cfg.models * cfg.batch_size * cfg.seq_len,
        desc="train gossip pool",
        exclude=("active",),
        postfix=("total", "consistency"),
    )


def load_pool(out_dir: Path, cfg: GossipConfig) -> tuple[JointWorldModel, int]:
    """The trained pool in ``out_dir/ckpt`` (a run's ``gossip/``) and its step.

    Raises:
        CheckpointError: if there is none, or it was trained with other sizes (both named).
    """
    pool, _, meta = checkpoint.load(
        Path(out_dir) / "ckpt", init_pool(cfg), kind="gossip_pool", expected=pool_hparams(cfg)
    )
    return pool, int(meta["step"])
