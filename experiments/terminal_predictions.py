"""What M predicts at the steps where real episodes end: does the dream know how an episode terminates?

M (any dynamics in ``RUN_DIR/rnn/ckpt``) reads each held-out episode of its own training recipe (teacher forcing on
the latent means, ``dream.teacher_forced``). At every episode that terminated (done = 1 at its last step) we record
its done probability and predicted reward at that step, and the means of its done probability, its predicted reward
and the real reward over the 10 steps before. Terminations are split by the real reward of the last step: ``high``
(>= ``--threshold``, LunarLander's landing, +100), ``low`` (<= -``--threshold``, a crash, -100) and ``other``. A
dream ends where the done probability crosses ``dream.done_threshold`` (0.5), so an event M gives < 0.5 never ends a
dream; with a reward it does not predict, no controller is rewarded for reaching it.

    uv run python experiments/terminal_predictions.py --run-dirs runs/lunar_base runs/lunar_pad \\
        --out experiments/results/lunar/terminal_predictions.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    run_dirs: tuple[Path, ...]
    """Run directories with a trained M (and the data and V it was trained on)."""
    out: Path | None = None
    """JSON file for the table (default: print only)."""
    threshold: float = 50.0
    """A last-step reward at or above this is a ``high`` termination, at or below minus this a ``low`` one."""


def _mean_before_last(x) -> float:
    """Mean of an episode's per-step values over the 10 steps before its last (fewer in a short episode; NaN for
    an episode of one step)."""
    n = len(x)
    return float(x[max(n - 11, 0) : n - 1].mean()) if n > 1 else float("nan")


def terminal_table(run_dir: Path, threshold: float) -> dict:
    """Per kind of termination (``high``, ``low``, ``other``): the held-out episodes; M's median done probability,
    fraction above 0.5, median predicted reward and the median real reward at their last step; and the means of M's
    done probability and predicted reward, and of the real reward, over the 10 steps before it."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from worldmodels.dream import teacher_forced
    from worldmodels.run_dir import load_dynamics
    from worldmodels.stages import latents, recorded_rnn_config

    dynamics, _ = load_dynamics(run_dir)
    data = latents(run_dir, recorded_rnn_config(run_dir))
    rows: dict[str, list] = {"high": [], "low": [], "other": []}
    run = jax.jit(lambda z, a: teacher_forced(dynamics, z, a)[1])
    episodes = np.nonzero(data.heldout)[0]
    t = np.arange(int(data.lengths[episodes].max()) if len(episodes) else 0)
    for e in episodes:
        n = int(data.lengths[e])
        act = slice(int(data.act_start[e]), int(data.act_start[e]) + n)
        if data.dones[act][-1] < 0.5:
            continue  # cut by the time limit: no termination to predict
        # Padded to the longest held-out episode (its last step repeated) so M compiles once, as
        # train.heldout_delusion does; M is causal, so the first n outputs are the episode's own.
        obs_idx = int(data.obs_start[e]) + np.minimum(t, n - 1)
        act_idx = int(data.act_start[e]) + np.minimum(t, n - 1)
        out = run(jnp.asarray(data.mu[obs_idx]), jnp.asarray(data.actions[act_idx]))
        p_done = np.asarray(jax.nn.sigmoid(out.done_logit))[:n]
        predicted = np.asarray(out.reward)[:n]
        real = data.rewards[act]
        kind = "high" if real[-1] >= threshold else "low" if real[-1] <= -threshold else "other"
        rows[kind].append(
            (float(p_done[-1]), float(predicted[-1]), float(real[-1]), _mean_before_last(p_done),
             _mean_before_last(predicted), _mean_before_last(real))
        )  # fmt: skip
    table = {}
    for kind, items in rows.items():
        if not items:
            table[kind] = {"episodes": 0}
            continue
        a = np.asarray(items)
        table[kind] = {
            "episodes": len(items),
            "done_probability_median": float(np.median(a[:, 0])),
            "done_probability_above_half": float((a[:, 0] > 0.5).mean()),
            "predicted_reward_median": float(np.median(a[:, 1])),
            "real_reward_median": float(np.median(a[:, 2])),
            "done_probability_10_before_mean": float(np.nanmean(a[:, 3])),
            "predicted_reward_10_before_mean": float(np.nanmean(a[:, 4])),
            "real_reward_10_before_mean": float(np.nanmean(a[:, 5])),
        }
    return table


def main() -> None:
    import tyro

    args = tyro.cli(Args, description=__doc__)
    report = {}
    print("| run | termination | episodes | done prob. (median) | done prob. > 0.5 | predicted reward | real reward |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for run_dir in args.run_dirs:
        table = terminal_table(run_dir, args.threshold)
        report[str(run_dir)] = table
        for kind, r in table.items():
            if r["episodes"]:
                print(
                    f"| {run_dir} | {kind} | {r['episodes']} | {r['done_probability_median']:.3f} | "
                    f"{r['done_probability_above_half']:.0%} | {r['predicted_reward_median']:.1f} | "
                    f"{r['real_reward_median']:.1f} |"
                )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
