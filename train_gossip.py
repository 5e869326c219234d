"""Train a pool of world models that read each other's dreams (gossip, issue 5); writes RUN_DIR/gossip/.

Every model (a ConvVAE and its dynamics, trained jointly) takes its ordinary losses on real sequences
plus gossip_weight x its consistency loss: how its decoded dream reads to a partner's encoder.
--gossip-weight 0 is the baseline (independent models, same data, same updates). Model --export-model of
the pool (either --flavour) is also written as RUN_DIR/vae and RUN_DIR/rnn for train_dream.py and test_agent.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import GossipConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "gossip_quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    gossip: tyro.conf.OmitArgPrefixes[GossipConfig] = field(default_factory=GossipConfig)


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.gossip import run_gossip

    args = parse(Args, __doc__)  # GossipConfig checks itself when built (config.check_gossip)
    run_main(lambda: run_gossip(args.run_dir, args.gossip))


if __name__ == "__main__":
    main()
