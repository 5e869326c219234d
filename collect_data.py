"""Collect rollouts of CarRacing-v3 (--env carracing) or LunarLander-v3 (--env lunarlander) into Minari datasets in
RUN_DIR/data/POLICY (resumable), with one policy or a mix; or, with --stats, print statistics of the datasets already
there."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import CollectConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    stats: bool = False
    """Instead of collecting: print episodes, steps, return mean +- std and the off-road fraction of every
    dataset in RUN_DIR/data, and write RUN_DIR/data/stats.json and a return histogram RUN_DIR/data/returns.png."""
    collect: tyro.conf.OmitArgPrefixes[CollectConfig] = field(default_factory=CollectConfig)


def typed(argv: list[str], flag: str) -> bool:
    """Whether the user typed ``flag`` (as ``--flag VALUE`` or ``--flag=VALUE``)."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def resolve_policy_flags(cfg: CollectConfig, argv: list[str]) -> CollectConfig:
    """A typed ``--policy`` wins over the preset's ``mix`` (which would otherwise collect the whole mix and
    ignore it); typing both ``--policy`` and ``--mix`` is refused with one line."""
    if typed(argv, "--policy") and typed(argv, "--mix"):
        raise SystemExit("error: --policy and --mix contradict each other: give one policy, or a mix")
    if typed(argv, "--policy") and cfg.mix:
        return dataclasses.replace(cfg, mix="")
    return cfg


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.diagnostics import print_stats
    from worldmodels.stages import run_collect

    args = parse(Args, __doc__)
    args = dataclasses.replace(args, collect=resolve_policy_flags(args.collect, sys.argv[1:]))
    if args.stats:
        run_main(lambda: print_stats(args.run_dir))
    else:
        run_main(lambda: run_collect(args.run_dir, args.collect))


if __name__ == "__main__":
    main()
