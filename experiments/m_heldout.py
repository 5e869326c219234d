"""M's held-out loss at every checkpoint a run directory keeps: is M overfitting its episodes?

The M stage trains 600 updates of 32 whole 1,000-step episodes on `quick`'s 150 episodes (and their mirror
images): about 64 passes over the data. ``train_rnn.py`` now logs M's loss on the held-out episodes at every
checkpoint (``heldout_*`` in ``rnn/metrics.jsonl``); this script measures the same numbers (``train.heldout_loss``:
mixture NLL, reward and done terms, fixed key) for runs trained before that, at each step ``rnn/ckpt`` still holds
(the last two), so that runs stopped early and runs trained longer can be put on one curve. Every run directory is
only read (its cached latents ``rnn/latents`` are encoded only if missing).

    uv run python experiments/m_heldout.py --runs runs/early/m1 runs/swap/m1 --out heldout.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    runs: tuple[Path, ...]
    """Run directories with vae/, rnn/ckpt and the data/ M was trained on."""
    out: Path | None = None
    """JSON file for the table (default: print only)."""


def heldout_table(args: Args) -> list[dict]:
    """One row per (run, checkpoint step): M's held-out loss terms there, and the training loss logged at that step."""
    from worldmodels import checkpoint
    from worldmodels.run_dir import load_dynamics
    from worldmodels.stages import latents, recorded_rnn_config
    from worldmodels.train import heldout_loss, rnn_loss, rssm_loss

    rows = []
    for run in args.runs:
        cfg = recorded_rnn_config(run)
        data = latents(run, cfg)
        evaluate = heldout_loss(rssm_loss if cfg.kind == "rssm" else rnn_loss, data, cfg)
        if evaluate is None:
            raise SystemExit(f"{run}: no held-out episodes (rnn.holdout is 0): nothing to validate on")
        logged = {}
        metrics = run / "rnn" / "metrics.jsonl"
        for line in metrics.read_text().splitlines() if metrics.is_file() else []:
            row = json.loads(line)
            if "total" in row:
                logged[row["step"]] = row["total"]
        for step in checkpoint.all_steps(run / "rnn" / "ckpt"):
            model, _ = load_dynamics(run, step=step)
            held = {f"heldout_{k}": float(v) for k, v in evaluate(model).items()}
            rows.append({"run": str(run), "step": step, "train_total": logged.get(step), **held})
            print(
                f"{run} step {step}: held-out total {held['heldout_total']:.4f} "
                f"(mixture NLL {held.get('heldout_mdn_nll', float('nan')):.4f}, reward "
                f"{held['heldout_reward']:.4f}); training window {logged.get(step)}"
            )
    return rows


def main(args: Args) -> None:
    rows = heldout_table(args)
    if args.out is not None:
        from worldmodels.metrics_log import write_json

        write_json(args.out, {"rows": rows})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
