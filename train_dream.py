"""Learn the controller C inside the dream of M; writes RUN_DIR/controller/.

--learner cmaes (the paper, default) evolves the linear controller with CMA-ES; --learner actor-critic trains a
Dreamer actor and critic on imagined lambda-returns (the --actor-critic.* flags). M is whichever dynamics
RUN_DIR/rnn holds: the MDN-RNN of train_rnn.py, the RSSM of train_rssm.py, or the MDN-RNN or GRU transition that
train_gossip.py exported."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from worldmodels.config import ActorCriticConfig, DreamConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory (see docs/ARCHITECTURE.md, "The run directory": every stage reads and writes here)."""
    preset: str = "quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    dream: tyro.conf.OmitArgPrefixes[DreamConfig] = field(default_factory=DreamConfig)
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.stages import run_dream

    args = parse(Args, __doc__)
    run_main(lambda: run_dream(args.run_dir, args.dream, args.actor_critic))


if __name__ == "__main__":
    main()
