"""Baseline against gossip: seeds, an ablation grid, drift, and (optionally) controllers scored in the real env.

Every condition trains a pool with ``train_gossip``'s stage (``worldmodels.gossip.run_gossip``) on the same
datasets. The baseline is gossip_weight 0; the grid is every (gossip_weight, gossip_dream_steps) of
``--weights`` x ``--dream-steps``. A seed fixes the initialisation and the batch order, so the baseline and a
gossip run of the same seed see the same data in the same order from the same starting weights: the
comparison is paired by seed. With ``--controller``, model 0 of each pool (either flavour) is exported, a
controller is evolved in its dream (``train_dream.py``'s stage) and scored in the real environment
(``test_agent.py``'s).

Writes RUN_DIR/gossip_experiment/: one run directory per (condition, seed) (its data/ a link to RUN_DIR/data),
``results.json``, ``drift.png``, ``ablation.png``, ``baseline_vs_gossip.mp4`` / ``.gif`` and ``report.md`` (means
with 95 % t confidence intervals over seeds, and paired differences against the baseline).

    uv run collect_data.py --preset gossip_quick --run-dir runs/gx
    uv run experiments/gossip.py --preset gossip_quick --run-dir runs/gx --seeds 0 1 2 --weights 0.1 1 \
        --dream-steps 4 16
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from worldmodels.config import DreamConfig, GossipConfig, TestConfig


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory whose data/ holds the collected datasets; the experiment writes RUN_DIR/gossip_experiment/."""
    preset: str = "gossip_quick"
    """Preset in configs/ whose values are the defaults of the flags below."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds; every condition runs each of them (paired comparisons by seed); they replace ``--seed``."""
    weights: tuple[float, ...] = (1.0, 10.0)
    """gossip_weight values of the grid (the baseline, weight 0, always runs)."""
    dream_steps: tuple[int, ...] = (4, 16)
    """gossip_dream_steps values of the grid (the baseline uses the config's own)."""
    controller: bool = False
    """Also evolve a controller in model 0's dream of each run and score it in the real env (either flavour)."""
    report: Path | None = None
    """Where to write the markdown report (default RUN_DIR/gossip_experiment/report.md)."""
    gossip: tyro.conf.OmitArgPrefixes[GossipConfig] = field(default_factory=GossipConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    """CMA-ES in the dream, with ``--controller`` (flags ``--dream.NAME``)."""
    test: TestConfig = field(default_factory=TestConfig)
    """Real-env scoring, with ``--controller`` (flags ``--test.NAME``)."""


def conditions(args: Args) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, config changes), ...]``: the baseline first, then the grid."""
    out = [("baseline", {"gossip_weight": 0.0})]
    for w in args.weights:
        for d in args.dream_steps:
            out.append((f"w{w:g}_d{d}", {"gossip_weight": float(w), "gossip_dream_steps": int(d)}))
    return out


def _last_metrics(path: Path) -> dict[str, float]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return rows[-1] if rows else {}


def drift_setup(cfg: GossipConfig) -> dict[str, Any]:
    """The settings a drift measurement depends on; a cached result measured with others is re-measured."""
    return {
        "start": cfg.drift_start,
        "context": cfg.drift_context,
        "horizons": list(cfg.drift_horizons),
        "episodes": cfg.drift_episodes,
    }


def remeasure_drift(run_dir: Path, cfg: GossipConfig) -> dict[str, Any]:
    """``drift_metrics`` of a finished run's last pool checkpoint with ``cfg``'s drift settings."""
    from worldmodels import gossip as G

    print(f"re-measuring drift of {run_dir} (drift settings changed)")
    pool, step = G.load_pool(run_dir / "gossip", cfg)
    return {"step": step, **G.drift_metrics(pool, G.load_sequences(run_dir, cfg), cfg)}


def run_one(run_dir: Path, cfg: GossipConfig, args: Args) -> dict[str, Any]:
    """Train one pool (resuming), measure it, optionally evolve and score a controller; cached in result.json."""
    from worldmodels.gossip import run_gossip

    done = run_dir / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("drift_setup") != drift_setup(cfg):
            result["drift"], result["drift_setup"] = remeasure_drift(run_dir, cfg), drift_setup(cfg)
            done.write_text(json.dumps(result, indent=2))
        return result
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / "data"
    if not link.exists():
        link.symlink_to((args.run_dir / "data").resolve(), target_is_directory=True)
    drift = run_gossip(run_dir, cfg)
    last = _last_metrics(run_dir / "gossip" / "metrics.jsonl")
    result: dict[str, Any] = {
        "drift": drift,
        "drift_setup": drift_setup(cfg),
        "final": {k: last.get(k) for k in ("recon", "mdn_nll", "dynamics", "consistency", "total")},
        "real": None,
    }
    if args.controller:
        from worldmodels.stages import run_dream, run_test

        run_dream(run_dir, args.dream)
        result["real"] = run_test(run_dir, args.test)
    done.write_text(json.dumps(result, indent=2))
    return result


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, int]:
    """Mean and half-width of the two-sided t confidence interval (nan half-width for one value).

    Student's t interval: mean +- t_{(1 + level) / 2, n - 1} * s / sqrt(n), s the sample standard deviation.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(x[0]), float("nan"), 1
    half = stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return float(x.mean()), float(half), n


def fmt(mean: float, half: float, digits: int = 4) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}g}" + (f" ± {half:.2g}" if np.isfinite(half) else "")


def _at(result: dict, key: str, h: int) -> float | None:
    drift = result["drift"]
    if h not in drift["horizons"] or not drift[key]:
        return None
    return drift[key][drift["horizons"].index(h)]


def summarize(results: dict[str, dict[int, dict]], horizons: list[int]) -> dict[str, Any]:
    """Per condition and horizon: mean and CI of pixel and latent drift and disagreement; paired differences
    (condition - baseline, same seed) of the pixel drift; the final losses and the real score."""
    out: dict[str, Any] = {}
    base = results["baseline"]
    for name, by_seed in results.items():
        row: dict[str, Any] = {}
        for key in ("pixel_mean", "latent_mean", "disagreement"):
            row[key] = {h: mean_ci([_at(r, key, h) for r in by_seed.values()]) for h in horizons}
        row["pixel_diff"] = {
            h: mean_ci(
                [
                    _at(r, "pixel_mean", h) - _at(base[s], "pixel_mean", h)
                    for s, r in by_seed.items()
                    if s in base and _at(r, "pixel_mean", h) is not None and _at(base[s], "pixel_mean", h) is not None
                ]
            )
            for h in horizons
        }
        for key in ("recon", "mdn_nll", "consistency"):
            row[key] = mean_ci([r["final"].get(key) for r in by_seed.values()])
        row["real"] = mean_ci([r["real"]["mean"] for r in by_seed.values() if r.get("real")])
        out[name] = row
    return out


def plot(summary: dict[str, Any], horizons: list[int], out_dir: Path) -> list[str]:
    """``drift.png`` (pixel drift against the horizon, per condition, with CI bands) and ``ablation.png``
    (pixel drift at the longest horizon against the condition)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, row in summary.items():
        for ax, key in zip(axes, ("pixel_mean", "disagreement"), strict=True):
            m = np.array([row[key][h][0] for h in horizons])
            hw = np.nan_to_num(np.array([row[key][h][1] for h in horizons]))
            ax.plot(horizons, m, marker="o", label=name)
            ax.fill_between(horizons, m - hw, m + hw, alpha=0.15)
    for ax, title in zip(axes, ("open-loop pixel drift (MSE)", "disagreement between dreams (pixel MSE)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("horizon (dream steps)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "drift.png", dpi=90)
    plt.close(fig)

    h = horizons[-1]
    names = list(summary)
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names)), 3.2))
    means = [summary[n]["pixel_mean"][h][0] for n in names]
    errs = [np.nan_to_num(summary[n]["pixel_mean"][h][1]) for n in names]
    ax.bar(names, means, yerr=errs, capsize=3, color=["grey"] + ["tab:blue"] * (len(names) - 1))
    ax.set_title(f"pixel drift at horizon {h} (mean ± 95 % CI over seeds)", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ablation.png", dpi=90)
    plt.close(fig)
    return ["drift.png", "ablation.png"]


def verdict(summary: dict[str, Any], horizons: list[int]) -> list[str]:
    """One honest line per gossip condition: did it change pixel drift at the longest horizon, and by how much."""
    h = horizons[-1]
    lines = []
    base = summary["baseline"]["pixel_mean"][h][0]
    for name, row in summary.items():
        if name == "baseline":
            continue
        d, hw, n = row["pixel_diff"][h]
        if not np.isfinite(d):
            lines.append(f"- `{name}`: no paired seeds at horizon {h}.")
            continue
        rel = 100 * d / base if base else float("nan")
        if np.isfinite(hw) and (d + hw < 0 or d - hw > 0):
            word = "reduced" if d < 0 else "increased"
            lines.append(
                f"- `{name}` {word} pixel drift at horizon {h} by {abs(d):.3g} ({abs(rel):.0f} % of the baseline's "
                f"{base:.3g}); 95 % CI of the paired difference [{d - hw:.3g}, {d + hw:.3g}], {n} seeds."
            )
        else:
            ci = f"[{d - hw:.3g}, {d + hw:.3g}]" if np.isfinite(hw) else "(one seed: no interval)"
            lines.append(
                f"- `{name}`: no clear effect on pixel drift at horizon {h}: paired difference {d:+.3g} "
                f"({rel:+.0f} %), 95 % CI {ci}, {n} seeds."
            )
    return lines


def write_report(path: Path, args: Args, summary: dict[str, Any], horizons: list[int], pictures: list[Path]) -> None:
    """The markdown report: command, setup, tables (mean ± 95 % CI over seeds), verdicts, pictures."""
    import os

    g = args.gossip
    lines = [
        "# Gossip against the baseline",
        "",
        "Command:",
        "",
        "```",
        "uv run experiments/gossip.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Pool: {g.models} {g.flavour} models, Z {g.z_size}, H {g.hidden_size}, "
        f"{g.steps} updates of {g.batch_size} x {g.seq_len} steps; gossip compares "
        f"`{g.gossip_compare}` with `{g.gossip_distance}`, stop-gradient "
        f"`{g.gossip_stop_gradient}`. Seeds {list(args.seeds)}; every value is the mean over seeds ± the "
        "half-width of the 95 % t interval (no interval with one seed). Drift: open loop on held-out episodes from "
        f"{g.drift_context} real frame(s) at frame {g.drift_start}, then the real actions only; pixel MSE in [0, 1] "
        "units.",
        "",
        "## Verdict",
        "",
        *verdict(summary, horizons),
        "",
        "## Pixel drift by horizon",
        "",
        "| condition | " + " | ".join(f"h = {h}" for h in horizons) + " |",
        "|---|" + "---:|" * len(horizons),
    ]
    for name, row in summary.items():
        lines.append(f"| {name} | " + " | ".join(fmt(*row["pixel_mean"][h][:2]) for h in horizons) + " |")
    lines += [
        "",
        "## Paired difference against the baseline (pixel drift, condition - baseline, same seed)",
        "",
        "| condition | " + " | ".join(f"h = {h}" for h in horizons) + " |",
        "|---|" + "---:|" * len(horizons),
    ]
    for name, row in summary.items():
        if name != "baseline":
            lines.append(f"| {name} | " + " | ".join(fmt(*row["pixel_diff"][h][:2]) for h in horizons) + " |")
    lines += [
        "",
        "## Disagreement between the pool's dreams (pixel MSE) and final training losses",
        "",
        "| condition | "
        + " | ".join(f"disagree h = {h}" for h in horizons)
        + " | recon | mdn_nll | consistency | real score |",
        "|---|" + "---:|" * (len(horizons) + 4),
    ]
    for name, row in summary.items():
        cells = [fmt(*row["disagreement"][h][:2]) for h in horizons]
        cells += [fmt(*row[k][:2]) for k in ("recon", "mdn_nll", "consistency")]
        cells.append(fmt(*row["real"][:2], digits=3) if row["real"][2] else "not run")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Pictures", ""]
    for p in pictures:
        link = os.path.relpath(p, path.parent)
        lines.append(f"![{p.stem}]({link})" if p.suffix in (".png", ".gif") else f"[{p.name}]({link})")
    path.write_text("\n".join(lines) + "\n")


def side_by_side_video(base_dir: Path, gossip_dir: Path, data_run: Path, cfg: GossipConfig, out_dir: Path) -> list[str]:
    """Model 0 of the baseline next to model 0 of a gossip run, dreaming from the same held-out start."""
    from worldmodels import gossip as G

    base_cfg = dataclasses.replace(cfg, gossip_weight=0.0)
    base, _ = G.load_pool(base_dir / "gossip", base_cfg)
    other, _ = G.load_pool(gossip_dir / "gossip", cfg)
    pair = G.stack_models([G.model_at(base, 0), G.model_at(other, 0)])
    data = G.load_sequences(data_run, cfg)
    paths = G.dream_video(out_dir, pair, data, cfg, name="baseline_vs_gossip", labels=("baseline", "gossip"))
    return [p.name for p in paths]


def main() -> None:
    from worldmodels.cli import parse, run_main

    args = parse(Args, __doc__)

    def work() -> None:
        out = args.run_dir / "gossip_experiment"
        out.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[int, dict]] = {}
        for name, changes in conditions(args):
            for seed in args.seeds:
                cfg = dataclasses.replace(args.gossip, **changes, seed=seed)
                print(f"== {name}, seed {seed} ==")
                results.setdefault(name, {})[seed] = run_one(out / f"{name}_s{seed}", cfg, args)
        (out / "results.json").write_text(
            json.dumps({n: {str(s): r for s, r in v.items()} for n, v in results.items()})
        )
        horizons = sorted({h for v in results.values() for r in v.values() for h in r["drift"]["horizons"]})
        if not horizons:
            print("no held-out episode: nothing to compare (raise --holdout)")
            return
        summary = summarize(results, horizons)
        pictures = plot(summary, horizons, out)
        first = conditions(args)[1] if len(conditions(args)) > 1 else None
        if first is not None:
            seed = args.seeds[0]
            cfg = dataclasses.replace(args.gossip, **first[1], seed=seed)
            pictures += side_by_side_video(
                out / f"baseline_s{seed}", out / f"{first[0]}_s{seed}", args.run_dir, cfg, out
            )
        report = args.report or out / "report.md"
        write_report(report, args, summary, horizons, [out / p for p in pictures])
        for line in verdict(summary, horizons):
            print(line)
        print(f"report: {report}")

    run_main(work)


if __name__ == "__main__":
    main()
