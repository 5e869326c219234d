"""Run the whole World Models pipeline (collect -> VAE -> MDN-RNN -> CMA-ES in the dream -> real test)
on one run directory, skipping finished stages and resuming an interrupted one; optionally followed by
Sim2Real2Sim iterations that feed the agent's own real episodes back into the MDN-RNN."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory; every stage reads and writes here."""
    preset: str = "quick"
    """Preset in configs/: smoke (CI, minutes), quick (2-core CPU, about an hour), paper."""
    iterations: int | None = None
    """Sim2Real2Sim iterations after the pipeline (real test -> on-policy data from the controller -> MDN-RNN
    fine-tuning -> CMA-ES again); default: the preset's ``iterate.iterations``."""
    seed: int | None = None
    """Training seed of every stage (collection, V, M, the dream; ``config.with_seed``); default: the preset's.
    Test seeds stay the same. A run directory whose recorded seeds differ is refused: use a fresh --run-dir."""


def main() -> None:
    import tyro

    from worldmodels.cli import run_main
    from worldmodels.config import load_preset, seed_clash, with_seed
    from worldmodels.pipeline import run_pipeline

    args = tyro.cli(Args, description=__doc__)
    if args.iterations is not None and args.iterations < 0:
        raise SystemExit(f"error: --iterations must be >= 0, got {args.iterations}")
    try:
        preset = load_preset(args.preset)
        if args.seed is not None:
            preset = with_seed(preset, args.seed)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    clash = seed_clash(args.run_dir, preset)
    if clash:
        raise SystemExit(
            f"error: {args.run_dir} was made with other seeds ({', '.join(f'{k} {a}' for k, (a, _) in clash.items())}; "
            f"this command asks for {', '.join(f'{k} {b}' for k, (_, b) in clash.items())}): use a fresh --run-dir"
        )
    run_main(lambda: run_pipeline(args.run_dir, preset, args.iterations))


if __name__ == "__main__":
    main()
