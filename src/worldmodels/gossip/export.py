"""Export to the paper's stages: one model of the pool written as a run's ``vae/`` and ``rnn/`` checkpoints
(``export_model``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from worldmodels import checkpoint
from worldmodels.config import GossipConfig, record_config
from worldmodels.gossip.pool import model_at
from worldmodels.models.joint import JointWorldModel


def export_model(run_dir: Path, pool: JointWorldModel, cfg: GossipConfig, step: int) -> bool:
    """Write model ``cfg.export_model`` of the pool as ``RUN_DIR/vae/ckpt`` and ``RUN_DIR/rnn/ckpt`` (either flavour).

    The checkpoints have the kinds and hparams ``run_dir.load_vae`` / ``run_dir.load_dynamics`` rebuild: ``vae``
    (``z_size``) and the dynamics, ``mdnrnn`` (an ``MDNRNN``: ``z_size``, ``action_size``, ``hidden_size``,
    ``num_mixtures``) or ``gru`` (a ``GRUTransition``: ``z_size``, ``action_size``, ``hidden_size``), and carry
    ``extra.source = "gossip"`` and ``extra.model``. ``RUN_DIR/config.json`` records an ``rnn`` section naming the
    recipe (``num_mixtures`` 1 for the GRU), so the dream stage starts its dreams from the same datasets.
    Checkpoints written by another stage (no ``source = "gossip"``) are never replaced.

    Returns:
        True when exported; False when another stage's checkpoints are there.
    """
    from worldmodels.config import RNNConfig
    from worldmodels.models.registry import gru_hparams
    from worldmodels.train import rnn_hparams

    run_dir = Path(run_dir)
    targets = {"vae": run_dir / "vae" / "ckpt", "rnn": run_dir / "rnn" / "ckpt"}
    for path in targets.values():
        if checkpoint.latest_step(path) is not None:
            if checkpoint.read_meta(path).get("extra", {}).get("source") != "gossip":
                print(f"not exporting: {path} holds a checkpoint of another stage")
                return False
    model = model_at(pool, cfg.export_model)
    extra = {"source": "gossip", "model": cfg.export_model}
    rnn_cfg = RNNConfig(
        dataset=cfg.dataset,
        holdout=cfg.holdout,
        hidden_size=cfg.hidden_size,
        num_mixtures=cfg.num_mixtures if cfg.flavour == "mdnrnn" else 1,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        steps=step,
        seed=cfg.seed,
    )
    if cfg.flavour == "mdnrnn":
        kind, hparams = "mdnrnn", rnn_hparams(rnn_cfg, cfg.z_size)
    else:
        kind, hparams = "gru", gru_hparams(cfg.z_size, cfg.hidden_size)
    for path in targets.values():
        shutil.rmtree(path, ignore_errors=True)
    checkpoint.save(targets["vae"], step, model.vae, kind="vae", hparams={"z_size": cfg.z_size}, extra=extra)
    checkpoint.save(targets["rnn"], step, model.dynamics, kind=kind, hparams=hparams, extra=extra)
    record_config(run_dir, "rnn", rnn_cfg)
    return True
