"""Gossip's option values and config check, re-exported from ``worldmodels.config`` (where every stage's
config is validated when built: ``GossipConfig.__post_init__`` runs ``check_gossip``)."""

from __future__ import annotations

from worldmodels.config import GOSSIP_COMPARES as COMPARES
from worldmodels.config import GOSSIP_DISTANCES as DISTANCES
from worldmodels.config import GOSSIP_DREAMS as DREAMS
from worldmodels.config import GOSSIP_STOP_GRADIENTS as STOP_GRADIENTS
from worldmodels.config import check_gossip as check_config

__all__ = ["COMPARES", "DISTANCES", "DREAMS", "STOP_GRADIENTS", "check_config"]
