"""Score V + M + C on real episodes (unseen seeds) of the run's environment (CarRacing-v3, or LunarLander-v3).

Writes RUN_DIR/eval/results.json and, with --video, side-by-side mp4 files; with --out, writes there instead and
leaves the run directory untouched (a read-only or shared run can be evaluated). A shipped agent (a run directory
with pretrained.json, such as pretrained/carracing) or a read-only one is never written: without --out its
results go to a fresh runs/NAME-eval-TIME/eval/.

With --policy cem (or cem-controller) a planner acts instead of C: at every step the cross-entropy method searches
M's dream for the next --cem.horizon actions (PlaNet's settings by default; --cem.candidates and --cem.iterations
trade score for speed) and the agent takes the first; --ensemble RUN,... adds other runs' M to score plans by mean
return minus --cem.uncertainty-weight times their disagreement. Results go to RUN_DIR/eval/POLICY/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import CEMConfig, TestConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    out: Path | None = None
    """Where to write results.json (videos and the test config go next to it); default RUN_DIR/eval/results.json,
    or runs/NAME-eval-TIME/eval/results.json for a shipped or read-only run. With --out the run directory is only
    read."""
    test: tyro.conf.OmitArgPrefixes[TestConfig] = field(default_factory=TestConfig)
    cem: CEMConfig = field(default_factory=CEMConfig)
    """The CEM planner's settings (``--policy cem`` or ``cem-controller``); PlaNet's defaults."""


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.stages import run_test

    args = parse(Args, __doc__)
    run_main(lambda: run_test(args.run_dir, args.test, args.out, args.cem))


if __name__ == "__main__":
    main()
