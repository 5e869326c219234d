"""Gossip's config check: the option values the trainer knows and ``check_config``, which refuses the rest."""

from __future__ import annotations

from worldmodels.config import GossipConfig
from worldmodels.models.joint import FLAVOURS

COMPARES = ("pixel", "latent", "dreams")
DISTANCES = ("l2", "l1", "kl")
STOP_GRADIENTS = ("readers", "partner", "none")
DREAMS = ("mean", "sample")


def check_config(cfg: GossipConfig) -> None:
    """Raise ``ValueError`` naming the field for a config the trainer cannot run."""
    problems = []
    if cfg.flavour not in FLAVOURS:
        problems.append(f"flavour={cfg.flavour!r} (known: {', '.join(FLAVOURS)})")
    for name, value, known in (
        ("gossip_compare", cfg.gossip_compare, COMPARES),
        ("gossip_distance", cfg.gossip_distance, DISTANCES),
        ("gossip_stop_gradient", cfg.gossip_stop_gradient, STOP_GRADIENTS),
        ("gossip_dream", cfg.gossip_dream, DREAMS),
    ):
        if value not in known:
            problems.append(f"{name}={value!r} (known: {', '.join(known)})")
    if cfg.gossip_distance == "kl" and cfg.gossip_compare == "pixel":
        problems.append("gossip_distance='kl' needs gossip_compare 'latent' or 'dreams' (pixels have no variance)")
    if cfg.models < 1:
        problems.append(f"models={cfg.models} (need at least 1)")
    if cfg.gossip_context < 1 or cfg.gossip_dream_steps < 1:
        problems.append("gossip_context and gossip_dream_steps must be >= 1")
    if cfg.gossip_context + cfg.gossip_dream_steps - 1 > cfg.seq_len:
        problems.append(
            f"gossip_context + gossip_dream_steps - 1 = {cfg.gossip_context + cfg.gossip_dream_steps - 1} "
            f"exceeds seq_len={cfg.seq_len}"
        )
    if not 1 <= cfg.gossip_batch <= cfg.batch_size:
        problems.append(f"gossip_batch={cfg.gossip_batch} must be in [1, batch_size={cfg.batch_size}]")
    if not 0 <= cfg.export_model < cfg.models:
        problems.append(f"export_model={cfg.export_model} is not a model of a pool of {cfg.models}")
    if problems:
        raise ValueError("gossip config: " + "; ".join(problems))
