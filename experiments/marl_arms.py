"""Dreaming of Others (issue 17): the full model against its ablations and the PPO reference, over seeds.

Every arm is one ``train_marl.py`` run directory ``OUT/VARIANT_sSEED``; all of them share the teammate population
trained by the first run (``OUT/full_s0/partners``), so every arm meets the same training and held-out teammates.
Runs go two at a time (``--jobs``, the next starting when one ends); a run whose ``eval/results.json`` exists is
skipped and an interrupted one resumes, so rerunning the command continues where it stopped. Then
``OUT/summary.json``, ``OUT/report.md`` and ``OUT/curves.png`` (return with the training teammates and ToM top-1 /
cross-entropy on the real steps, per iteration) are written from the runs' files.

    uv run python experiments/marl_arms.py --out runs/marl --seeds 0 1 2
    uv run python experiments/marl_arms.py --out runs/marl_mpe --preset marl_mpe_quick
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from worldmodels.config import MARL_VARIANTS
from worldmodels.evaluate import ci95
from worldmodels.metrics_log import write_json

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = MARL_VARIANTS


@dataclass(frozen=True)
class Args:
    out: Path
    """Directory of the arms' run directories and the summary."""
    preset: str = "marl_quick"
    """Preset of every run."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every arm (``--marl.seed``)."""
    variants: tuple[str, ...] = VARIANTS
    """Arms to run (``--marl.variant``)."""
    jobs: int = 2
    """Runs at once."""
    extra: tuple[str, ...] = ()
    """Extra flags passed to every run (e.g. ``--marl.iterations 10``)."""
    skip: tuple[str, ...] = ()
    """Runs (``VARIANT_sSEED``) to leave alone, e.g. ones running in another process."""


def command(args: Args, variant: str, seed: int) -> list[str]:
    """The ``train_marl.py`` command of one arm."""
    cmd = [sys.executable, str(ROOT / "train_marl.py"), "--preset", args.preset]
    cmd += ["--run-dir", str(args.out / f"{variant}_s{seed}"), "--marl.variant", variant, "--marl.seed", str(seed)]
    first = args.out / f"full_s{args.seeds[0]}"
    if (variant, seed) != ("full", args.seeds[0]):
        cmd += ["--marl.partners-dir", str(first / "partners")]
    return cmd + list(args.extra)


def run_all(args: Args) -> None:
    """Run every arm not finished yet, ``args.jobs`` at a time, a new one starting as soon as one ends (the
    population's run first, alone: every other arm reads its teammates)."""
    todo = [(v, s) for s in args.seeds for v in args.variants if f"{v}_s{s}" not in args.skip]
    todo = [(v, s) for v, s in todo if not (args.out / f"{v}_s{s}" / "eval" / "results.json").is_file()]
    first = ("full", args.seeds[0])
    args.out.mkdir(parents=True, exist_ok=True)
    if first in todo:
        todo.remove(first)
        _wait(_start(command(args, *first), args.out))
    running: list = []
    while todo or running:
        while todo and len(running) < args.jobs:
            running.append(_start(command(args, *todo.pop(0)), args.out))
        time.sleep(5)
        for job in [j for j in running if j[1].poll() is not None]:
            _wait(job)
            running.remove(job)


def _start(cmd: list[str], out: Path) -> tuple:
    name = Path(cmd[cmd.index("--run-dir") + 1]).name
    log = (out / f"{name}.log").open("a")
    print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
    return name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log


def _wait(job: tuple) -> None:
    name, proc, log = job
    rc = proc.wait()
    log.close()
    print(f"[{time.strftime('%H:%M:%S')}] {name} finished, exit {rc}", flush=True)


def summarize(args: Args) -> dict:
    """Per arm: mean over seeds of the mean return with training and held-out teammates (95 % interval over
    seeds), the pooled episodes' mean, ToM top-1 and cross-entropy at evaluation, and per-seed values."""
    summary: dict = {}
    for variant in args.variants:
        rows = []
        for seed in args.seeds:
            path = args.out / f"{variant}_s{seed}" / "eval" / "results.json"
            if path.is_file():
                rows.append((seed, json.loads(path.read_text())))
        if not rows:
            continue
        arm: dict = {"seeds": [s for s, _ in rows], "env_steps": rows[0][1]["env_steps"]}
        for group in ("train", "heldout"):
            per_seed = [r[f"{group}_return"]["mean"] for _, r in rows]
            episodes = [x for _, r in rows for p in r["partners"].values() if p["group"] == group for x in p["returns"]]
            arm[group] = {
                "per_seed": per_seed,
                "mean": float(np.mean(per_seed)),
                "ci95_over_seeds": ci95(np.array(per_seed)),
                "episodes": len(episodes),
            }
        names = list(rows[0][1]["partners"])
        arm["per_partner"] = {
            n: {
                "group": rows[0][1]["partners"][n]["group"],
                "mean": float(np.mean([r["partners"][n]["mean"] for _, r in rows])),
                "ci95_over_seeds": ci95(np.array([r["partners"][n]["mean"] for _, r in rows])),
                **{
                    k: float(np.mean([r["partners"][n][k] for _, r in rows]))
                    for k in ("tom_top1", "tom_ce", "tom_policy_ce", "teammate_entropy")
                    if k in rows[0][1]["partners"][n]
                },
            }
            for n in names
        }
        summary[variant] = arm
    return summary


REFERENCES = {"random_agent": "random", "complement_agent": "complement"}
"""Summary arms scored without training: an agent acting uniformly at random (the floor), and, in MPE, the
scripted ``complement`` rule (heads for the landmark its teammate is not nearest to: what a perfect model of a
``nearest`` teammate allows)."""


def references(args: Args, arms: dict[str, str], episodes: int = 16) -> dict[str, dict]:
    """Summary arms (arm name -> arm) for agents that do not learn: ``random`` (uniform actions) or a scripted
    rule of the environment acting on the agent's own observation, beside each teammate of the shared population
    (``episodes`` per teammate, key ``PRNGKey(12345)``). ``arms`` maps each arm's name to its rule; the preset,
    the population and the environment are loaded once for all of them."""
    import jax.random as jr

    from worldmodels.config import load_preset
    from worldmodels.marl import env as menv
    from worldmodels.marl.partners import load_pool, make_pool
    from worldmodels.marl.train import score_partners

    cfg = dataclasses.replace(load_preset(args.preset).marl, eval_episodes=episodes)
    pool = load_pool(args.out / f"full_s{args.seeds[0]}" / "partners")
    env = menv.make(cfg.layout, cfg.max_steps, cfg.env)
    out = {}
    for name, rule in arms.items():
        if rule == "random":
            ego, kind = None, "random"
        else:
            ego, kind = make_pool([rule], obs_size=menv.obs_size(env), env=cfg.env), "scripted"
        per_partner, pooled = score_partners(cfg, env, pool, ego, kind, jr.PRNGKey(12345))
        arm: dict = {"seeds": [12345], "env_steps": 0, "per_partner": {}}
        for partner, r in per_partner.items():
            arm["per_partner"][partner] = {"group": r["group"], "mean": r["mean"], "ci95_over_seeds": r["ci95"]}
        for group, values in pooled.items():
            arm[group] = {"per_seed": [float(np.mean(values))], "mean": float(np.mean(values)),
                          "ci95_over_seeds": 0.0, "episodes": len(values)}  # fmt: skip
        out[name] = arm
    return out


def paired_lines(summary: dict) -> list[str]:
    """Markdown rows of each learning arm minus ``full``, seed by seed: a seed's runs share their teammates and
    evaluation keys, so the difference cancels what the seed's draws contribute. Mean over the seeds both arms
    ran, +- the 95 % Student-t interval of that mean; no rows when ``full`` or no other learning arm ran."""
    if "full" not in summary:
        return []
    full = summary["full"]
    rows = []
    for variant, arm in summary.items():
        common = [s for s in arm["seeds"] if s in full["seeds"]]
        if variant == "full" or len(common) < 2:
            continue
        cells = []
        for group in ("train", "heldout"):
            mine, base = arm[group]["per_seed"], full[group]["per_seed"]
            d = np.array([mine[arm["seeds"].index(s)] - base[full["seeds"].index(s)] for s in common])
            cells.append(f"{d.mean():+.2f} +- {ci95(d):.2f} (lower on {int((d < 0).sum())} of {len(d)})")
        rows.append(f"| {variant} - full | {len(common)} | {cells[0]} | {cells[1]} |")
    if not rows:
        return []
    head = ["", "Paired against `full`, seed by seed (same teammates and evaluation keys):", "",
            "| difference | seeds | training teammates | held-out teammates |", "|---|---:|---:|---:|"]  # fmt: skip
    return head + rows


def report(args: Args, summary: dict) -> str:
    """A markdown table of the arms."""
    from worldmodels.config import load_preset

    overcooked = load_preset(args.preset).marl.env == "overcooked"
    unit = "Sparse return per episode (20 per soup)" if overcooked else "Team return per episode (the agents' mean)"
    lines = [
        f"# Dreaming of Others: arms on `{args.preset}`, seeds {', '.join(map(str, args.seeds))}",
        "",
        f"{unit}, the mean over seeds of each seed's mean, +- the 95 % interval",
        "over seeds.",
        "",
        "| arm | env steps | training teammates | held-out teammates | ToM top-1 (train / held-out) |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, arm in summary.items():
        tom = {}
        for group in ("train", "heldout"):
            vals = [p["tom_top1"] for p in arm["per_partner"].values() if p["group"] == group and "tom_top1" in p]
            tom[group] = f"{np.mean(vals):.3f}" if vals else "-"
        lines.append(
            f"| {variant} | {arm['env_steps']} | {arm['train']['mean']:.1f} +- {arm['train']['ci95_over_seeds']:.1f} "
            f"| {arm['heldout']['mean']:.1f} +- {arm['heldout']['ci95_over_seeds']:.1f} "
            f"| {tom['train']} / {tom['heldout']} |"
        )
    lines += paired_lines(summary)
    lines += ["", "Per teammate (mean over seeds):", ""]
    names = list(next(iter(summary.values()))["per_partner"])
    lines.append("| arm | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for variant, arm in summary.items():
        lines.append(f"| {variant} | " + " | ".join(f"{arm['per_partner'][n]['mean']:.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(args: Args, path: Path) -> None:
    """Return with the training teammates and ToM top-1 / cross-entropy over iterations, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for variant in args.variants:
        for seed in args.seeds:
            path_m = args.out / f"{variant}_s{seed}" / "marl" / "metrics.jsonl"
            if variant == "ppo" or not path_m.is_file():
                continue
            rows = [json.loads(line) for line in path_m.read_text().splitlines()]
            it = [r["iteration"] for r in rows]
            label = variant if seed == args.seeds[0] else None
            axes[0].plot(it, [r["return"] for r in rows], color=colours[variant], alpha=0.7, label=label)
            if "real_tom_top1" in rows[0]:
                axes[1].plot(it, [r["real_tom_top1"] for r in rows], color=colours[variant], alpha=0.7, label=label)
                axes[2].plot(it, [r["real_tom_ce"] for r in rows], color=colours[variant], alpha=0.7, label=label)
    axes[0].set(title="return with training teammates (collection)", xlabel="iteration", ylabel="return")
    axes[1].set(title="ToM top-1 on real steps", xlabel="iteration")
    axes[2].set(title="ToM cross-entropy on real steps (nats)", xlabel="iteration")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"error: --variants {sorted(unknown)} unknown; choose from {', '.join(VARIANTS)}")
    run_all(args)
    summary = summarize(args)
    if (args.out / f"full_s{args.seeds[0]}" / "partners").is_dir():
        from worldmodels.config import load_preset, scripted_partners

        env = load_preset(args.preset).marl.env
        # `random` is a scripted rule of every environment
        summary.update(references(args, {a: r for a, r in REFERENCES.items() if r in scripted_partners(env)}))
    write_json(args.out / "summary.json", summary)
    text = report(args, summary)
    (args.out / "report.md").write_text(text)
    plot_curves(args, args.out / "curves.png")
    print(text)


if __name__ == "__main__":
    main()
