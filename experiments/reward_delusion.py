"""Reward delusion of several runs' MDN-RNNs on the same real episodes.

For each run, the last ``--episodes`` episodes of each dataset given are encoded with that run's VAE
and read by its MDN-RNN with teacher forcing (real latents and actions); the reward delusion is the
fraction of real off-road steps (car on the grass, real reward negative) whose reward the MDN-RNN
predicts positive (``worldmodels.diagnostics``). Use episodes that none of the runs trained on (for
example the held-out tail of another run's datasets) to compare runs on equal terms.

    uv run python experiments/reward_delusion.py --runs runs/quick runs/mix \
        --datasets runs/mix/data/heuristic runs/mix/data/recovery runs/mix/data/aggressive --episodes 2
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Args:
    runs: tuple[Path, ...]
    """Run directories with trained vae/ and rnn/ checkpoints."""
    datasets: tuple[Path, ...]
    """Minari dataset directories whose last episodes are read."""
    episodes: int = 2
    """Episodes taken from the end of each dataset."""
    json: Path | None = None
    """Also write the table as JSON here."""


def delusion_of(run_dir: Path, datasets: tuple[Path, ...], episodes: int) -> dict:
    """Reward delusion of ``run_dir``'s MDN-RNN on the last ``episodes`` episodes of each dataset."""
    from worldmodels.data import load_episodes
    from worldmodels.run_dir import load_dynamics, load_vae
    from worldmodels.train import LatentDataset, encode_episodes, heldout_delusion

    vae, _ = load_vae(run_dir)
    dynamics, _ = load_dynamics(run_dir, expected={"z_size": vae.z_size})
    eps = [ep for path in datasets for ep in load_episodes(path)[-episodes:]]
    data = encode_episodes(vae, eps)
    fields = {k: getattr(data, k) for k in LatentDataset.__dataclass_fields__}
    fields["heldout"] = np.ones(data.num_episodes, bool)
    return heldout_delusion(dynamics, LatentDataset(**fields))


def main() -> None:
    import tyro

    from worldmodels.diagnostics import delusion_text

    args = tyro.cli(Args, description=__doc__)
    rows = {}
    for run in args.runs:
        rows[str(run)] = delusion_of(run, args.datasets, args.episodes)
        r = rows[str(run)]
        print(
            f"{run}: reward delusion {delusion_text(r['reward_delusion'])} over {r['offroad_steps']} off-road steps "
            f"({r['episodes']} episodes, {r['steps']} steps)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
