"""Train an RSSM as the memory model M on latent sequences of the frozen VAE; writes RUN_DIR/rnn/.

The RSSM (Hafner et al. 2019) has a deterministic GRU state h, a stochastic latent s with a prior p(s | h) and a
posterior q(s | h, z), and decoders of the VAE latent z, the reward (symlog two-hot) and the continue flag; it is
trained with DreamerV3's KL balancing and free bits. This is train_rnn.py with --kind rssm: the same stage, data,
resume and run directory, and every later stage (train_dream.py, test_agent.py, pipeline.py) runs the RSSM."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import RNNConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "dreamer_quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    rnn: tyro.conf.OmitArgPrefixes[RNNConfig] = field(default_factory=lambda: RNNConfig(kind="rssm"))


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.stages import run_rnn

    args = parse(Args, __doc__)
    if args.rnn.kind != "rssm" and any(a == "--kind" or a.startswith("--kind=") for a in sys.argv[1:]):
        sys.exit(f"error: train_rssm.py trains an RSSM; for --kind {args.rnn.kind} run train_rnn.py")
    run_main(lambda: run_rnn(args.run_dir, dataclasses.replace(args.rnn, kind="rssm")))


if __name__ == "__main__":
    main()
