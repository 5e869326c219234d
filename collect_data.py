"""Collect CarRacing-v3 rollouts with a random policy into a Minari dataset in RUN_DIR/data/ (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import CollectConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see DESIGN.md: every stage reads and writes here)."""
    preset: str = "quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    collect: tyro.conf.OmitArgPrefixes[CollectConfig] = field(default_factory=CollectConfig)


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.stages import run_collect

    args = parse(Args, __doc__)
    run_main(lambda: run_collect(args.run_dir, args.collect))


if __name__ == "__main__":
    main()
