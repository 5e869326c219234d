"""Train the memory model M (MDN-RNN) on latent sequences of the frozen VAE; writes RUN_DIR/rnn/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import RNNConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    rnn: tyro.conf.OmitArgPrefixes[RNNConfig] = field(default_factory=RNNConfig)


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.stages import run_rnn

    args = parse(Args, __doc__)
    run_main(lambda: run_rnn(args.run_dir, args.rnn))


if __name__ == "__main__":
    main()
