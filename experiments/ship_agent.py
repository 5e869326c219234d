"""Ship a trained agent: copy a run's V, M and C (latest steps, no optimiser states, data or logs) and its
config into a new, frozen run directory, such as the committed ``pretrained/carracing``.

The copy holds ``pretrained.json`` (each part's kind, step and sizes, the source run, and the score and the
command given here); ``test_agent.py`` never writes into such a directory (``run_dir.frozen``).

    uv run python experiments/ship_agent.py --source runs/quick --out pretrained/carracing \
        --score-command "uv run test_agent.py --run-dir pretrained/carracing --episodes 100" --score "..."
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    source: Path
    """Run directory with trained vae/, rnn/ and controller/ checkpoints."""
    out: Path
    """New directory for the shipped agent (must not exist)."""
    score: str = ""
    """The agent's measured real score, as text for pretrained.json (e.g. "470.9 +- 82.0 (95 % CI), 100 episodes")."""
    score_command: str = ""
    """The command that measured that score."""


def main() -> None:
    import tyro

    from worldmodels.run_dir import export_agent

    args = tyro.cli(Args, description=__doc__)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = export_agent(
        args.source,
        args.out,
        {
            "source": str(args.source),
            "commit": commit,
            "date": time.strftime("%Y-%m-%d"),
            "score": args.score,
            "score_command": args.score_command,
        },
    )
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(json.dumps(record["parts"], indent=1))
    print(f"shipped {args.source} -> {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
