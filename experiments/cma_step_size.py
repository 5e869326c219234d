"""CMA-ES step-size rules at the controller's real size: CSA against TPA on a noisy quadratic.

pycma switches from cumulative step-size adaptation (CSA, Hansen 2016, Sec. 4) to two-point adaptation
(TPA, Hansen et al. 2014) at 300 parameters; the paper's controller has 867. ``DreamConfig``'s
``step_size_adaptation`` makes that choice explicit; this experiment is the measurement behind its
default. The problem stands in for the dream (seconds, not hours): an ill-conditioned quadratic
``sum_i s_i (x_i - 0.3)^2`` with log-normal scales s_i, minimised from x = 0 with sigma 0.1 (the presets'
start), with and without additive Gaussian noise on every evaluation (dream fitness is a mean of R
noisy rollouts). Each row is the noise-free value at the final mean, over several seeds, with a 95 %
t interval.

    uv run python experiments/cma_step_size.py --json experiments/results/cma_step_size.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Args:
    dimension: int = 867
    """Search dimension (867: the paper's controller, (32 + 256) x 3 + 3)."""
    populations: tuple[int, ...] = (32, 64)
    """Population sizes to compare (the quick and paper presets)."""
    noise: tuple[float, ...] = (0.0, 5.0)
    """Standard deviations of the additive evaluation noise (the start value is about 130)."""
    generations: int = 150
    """CMA-ES generations per run (the quick preset's first round)."""
    seeds: int = 5
    """Independent runs per condition."""
    json: Path | None = None
    """Also write the rows as JSON here."""


def run(adaptation: str, dimension: int, population: int, noise: float, generations: int, seed: int) -> float:
    """One CMA-ES run; returns the noise-free objective at the final mean (lower is better)."""
    import cma

    from worldmodels.evolve import adapt_sigma

    scales = np.exp(np.random.default_rng(1234).normal(0.0, 1.0, dimension))
    rng = np.random.default_rng([seed, 1])

    def objective(x: np.ndarray) -> float:
        return float(np.sum(scales * (x - 0.3) ** 2))

    opts = {"popsize": population, "verbose": -9, "seed": seed + 1, "AdaptSigma": adapt_sigma(adaptation)}
    es = cma.CMAEvolutionStrategy(np.zeros(dimension), 0.1, opts)
    for _ in range(generations):
        xs = es.ask()
        es.tell(xs, [objective(x) + noise * rng.normal() for x in xs])
    return objective(np.asarray(es.mean))


def main() -> None:
    import tyro
    from scipy import stats

    args = tyro.cli(Args, description=__doc__)
    rows = []
    print(f"dimension {args.dimension}, {args.generations} generations, {args.seeds} seeds; final f (lower is better)")
    for population in args.populations:
        for noise in args.noise:
            for adaptation in ("csa", "tpa"):
                values = [
                    run(adaptation, args.dimension, population, noise, args.generations, s) for s in range(args.seeds)
                ]
                mean = float(np.mean(values))
                half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
                rows.append(
                    {"population": population, "noise": noise, "adaptation": adaptation, "final_f": values,
                     "mean": mean, "ci95": half}
                )  # fmt: skip
                print(f"P {population:3d}  noise {noise:4.1f}  {adaptation}: {mean:7.2f} +- {half:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {**vars(args), "json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
