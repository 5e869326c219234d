"""Dreaming of Others: train a two-agent world model (joint-action RSSM, factorised latent z^env / z^team, a
theory-of-mind head) and an actor-critic in social imagination on JaxMARL's Overcooked, with a population of
teammates; score it zero-shot with held-out teammates. Writes RUN_DIR/partners, RUN_DIR/marl and RUN_DIR/eval
(results.json with returns and ToM accuracy, episode.gif). --marl.variant selects the ablations: no_tom,
no_factorisation, repeat_teammate, and ppo, the model-free reference. Rerunning the same command resumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from worldmodels.config import MARLConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory: partners/, marl/ and eval/ are written here."""
    preset: str = "marl_quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    marl: MARLConfig = field(default_factory=MARLConfig)


def main() -> None:
    from worldmodels.cli import parse, run_main
    from worldmodels.marl.train import run_marl

    args = parse(Args, __doc__)  # MARLConfig checks itself when built
    run_main(lambda: run_marl(args.run_dir, args.marl))


if __name__ == "__main__":
    main()
