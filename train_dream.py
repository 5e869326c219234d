"""Evolve the controller C with CMA-ES inside the dream of M; writes RUN_DIR/controller/.

M is whichever dynamics RUN_DIR/rnn holds: the MDN-RNN of train_rnn.py, or the MDN-RNN or GRU transition that
train_gossip.py exported."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import DreamConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    dream: tyro.conf.OmitArgPrefixes[DreamConfig] = field(default_factory=DreamConfig)


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.stages import run_dream

    args = parse(Args, __doc__)
    run_main(lambda: run_dream(args.run_dir, args.dream))


if __name__ == "__main__":
    main()
