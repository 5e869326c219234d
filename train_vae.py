"""Train the vision model V on the collected observations (a convolutional VAE on CarRacing's frames, an MLP
autoencoder on a vector environment's observations); writes RUN_DIR/vae/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import VAEConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    vae: tyro.conf.OmitArgPrefixes[VAEConfig] = field(default_factory=VAEConfig)


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.stages import run_vae

    args = parse(Args, __doc__)
    run_main(lambda: run_vae(args.run_dir, args.vae))


if __name__ == "__main__":
    main()
