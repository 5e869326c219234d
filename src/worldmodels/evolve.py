"""CMA-ES (Hansen 2016, pycma) around one jitted fitness call per generation.

Each generation: ``ask`` P candidates, score them with ``dream.sharded_generation_fitness`` (P x R x T
dream steps in one call, spread over every device), ``tell`` the negated fitness. The generation's best
candidate and the CMA-ES mean are then re-scored on R fresh dreams (as the paper re-evaluates on new
rollouts, Appendix A.4); the best of those re-scores is kept as the controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from worldmodels import checkpoint
from worldmodels.config import DreamConfig
from worldmodels.dream import DreamStart, ensemble_fitness, ensemble_generation_returns, sharded_generation_fitness
from worldmodels.errors import TrainingDiverged
from worldmodels.metrics_log import MetricsLog, trim_jsonl, write_json
from worldmodels.models.controller import controller_from_flat, controller_num_params
from worldmodels.models.dynamics import Dynamics

if TYPE_CHECKING:
    import cma


def adapt_sigma(rule: str) -> type:
    """pycma's step-size adaptation class for a ``DreamConfig.step_size_adaptation`` ("csa" or "tpa").

    It is passed as pycma's ``AdaptSigma`` option so that pycma's own rule (TPA from 300 parameters on, CSA
    below) never decides. pycma is imported here, not at the module's top: it pulls in scipy.stats and
    matplotlib (seconds per process), which the scripts that never evolve (collection, V, M, tests) skip.

    Raises:
        KeyError: for a rule other than "csa" or "tpa".
    """
    import cma

    return {"csa": cma.sigma_adaptation.CMAAdaptSigmaCSA, "tpa": cma.sigma_adaptation.CMAAdaptSigmaTPA}[rule]


def dream_fitness(
    dynamics: Dynamics,
    start: DreamStart,
    cfg: DreamConfig,
    squash: str = "carracing",
    members: Sequence[Dynamics] = (),
) -> Callable:
    """``fitness(population float32 (P, N), key) -> float32 (P,)``: mean dream return of each flat controller
    (C with the environment's action ``squash``, reading ``cfg.controller_inputs``, with ``cfg.controller_units``
    hidden units (0: linear); its actions
    perturbed by ``cfg.action_noise``, ``dream.single_rollout``).

    The dream ends by ``cfg.termination`` (``dream.dream_step``: at M's done threshold, or continue-weighted).
    One jitted call per generation over every device (``dream.sharded_generation_fitness``: candidates,
    and rollouts where they divide, split over ``jax.devices()``; P padded and the padding dropped).
    With ``members`` (other M trained on the same data), the dreams are dealt over the ensemble of ``dynamics``
    and ``members`` and the fitness is ``dream.ensemble_fitness`` with ``cfg.pessimism`` (one device).
    """
    tau = jnp.float32(cfg.temperature)
    ensemble = (dynamics, *members)
    done_threshold = cfg.done_threshold if cfg.termination == "threshold" else None  # None: continue-weighted

    kw = {"squash": squash, "inputs": cfg.controller_inputs, "action_noise": cfg.action_noise,
          "units": cfg.controller_units}  # fmt: skip

    def fitness(population, key):
        dream = (start, key, tau, cfg.rollouts, cfg.dream_steps, done_threshold)
        if members:
            return ensemble_fitness(ensemble_generation_returns(population, ensemble, *dream, **kw), cfg.pessimism)
        return sharded_generation_fitness(population, dynamics, *dream, **kw)

    return fitness


def evolve(
    out_dir: Path,
    fitness: Callable,
    hparams: dict,
    cfg: DreamConfig,
    real_check: Callable[[np.ndarray], float] | None = None,
) -> np.ndarray:
    """Evolve the controller (linear, or with ``hparams["units"]`` hidden units) with CMA-ES; resumes from
    ``out_dir/es_state.npz``.

    Writes ``metrics.jsonl`` (per generation: best, mean, std of the dream fitness, sigma, the
    re-scored best, seconds; a resumed run first drops the rows an interrupted one wrote after the saved
    generation, so each generation has one row), ``tb/`` (those columns for TensorBoard against the
    generation, ``metrics_log.MetricsLog``), ``ckpt/`` (the kept controller, ``cfg.keep``) and ``es_state.npz``: the
    CMA-ES state (mean, step size sigma, covariance C, evolution paths p_c and p_sigma, iteration and evaluation
    counts; Hansen 2016, Sec. 3), the step-size rule and its state (``cfg.step_size_adaptation``: CSA's
    path p_sigma, or TPA's previous mean and cumulated rank difference s; Hansen et al. 2014) with the
    generation and the kept best, as plain arrays. Each generation samples from its own generator
    (seeded by ``cfg.seed`` and the generation), so a run interrupted and resumed evolves exactly as an
    uninterrupted one, with either rule and at any dimension (tested at 867, the paper's controller). A
    state file without C (written before C was kept) resumes from its mean and sigma with a fresh
    covariance; one without the rule's name (written before it was recorded) resumes with the configured
    rule (see ``_restore_cma_state``).

    Args:
        out_dir: the run's ``controller/`` directory.
        fitness: ``fitness(population float32 (P, N), key) -> (P,)`` higher is better; one jitted call
            per generation (``dream_fitness`` for the MDN-RNN's dream).
        hparams: the controller's sizes (``registry.controller_hparams``), stored with the checkpoint.
        cfg: CMA-ES settings (population, generations, sigma_init, seed, cadences).
        real_check: optional ``real_check(flat_params) -> mean real return``, called every
            ``cfg.eval_every`` generations.

    ``cfg.keep`` picks the controller written to ``ckpt/`` and returned: ``best``, the generation's best or mean
    with the highest single re-score so far (R dreams each; the highest of up to 2 x generations noisy scores, so
    its score is optimistic), or ``mean``, CMA-ES's mean at the last saved generation (with its re-score as the
    checkpoint's ``dream_score``).

    Returns:
        The kept controller's flat parameters, float32 (N,).

    Raises:
        CheckpointError: for an unreadable state file, one of another dimension, or one evolved with the
            other step-size rule.
        TrainingDiverged: when a generation's fitness is NaN or infinite; the state and controller saved
            last are left as they were.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    n = controller_num_params(**hparams)
    state_path = out_dir / "es_state.npz"
    mean, sigma, first_gen = np.zeros(n), cfg.sigma_init, 0
    best, best_score, mean_score = np.zeros(n, np.float32), -np.inf, -np.inf
    saved = load_es_state(state_path, n, cfg.step_size_adaptation)
    if saved:
        mean, sigma, first_gen = saved["mean"], float(saved["sigma"]), int(saved["generation"])
        best, best_score = saved["best"], float(saved["best_score"])
        mean_score = float(saved.get("mean_score", -np.inf))
    trim_jsonl(out_dir / "metrics.jsonl", first_gen, "generation")
    if first_gen >= cfg.generations:
        return best if cfg.keep == "best" else np.asarray(mean, np.float32)
    import cma

    normals = _GenerationNormals(cfg.seed)
    es = cma.CMAEvolutionStrategy(
        mean,
        sigma,
        {
            "popsize": cfg.population,
            "randn": normals,
            "verbose": -9,
            "AdaptSigma": adapt_sigma(cfg.step_size_adaptation),
        },
    )
    if "C" in saved:
        _restore_cma_state(es, saved, state_path)
    key = jr.key(cfg.seed)

    def score(pop: np.ndarray, k) -> np.ndarray:
        return np.asarray(fitness(jnp.asarray(pop, jnp.float32), k))

    def kept() -> tuple[np.ndarray, float]:
        return (best, best_score) if cfg.keep == "best" else (np.asarray(es.mean, np.float32), mean_score)

    def save_state(gen: int) -> None:
        # The controller first, the state last: the state's generation is what marks the stage done, so a
        # crash in between leaves an older state that resumes, never a newer state with an older controller.
        params, score = kept()
        checkpoint.save(
            out_dir / "ckpt",
            gen,
            controller_from_flat(jnp.asarray(params), **hparams),
            kind="controller",
            hparams=hparams,
            extra={"dream_score": score, "generation": gen, "keep": cfg.keep},
        )
        state = _cma_state(es) | {"generation": gen, "best": best, "best_score": best_score, "mean_score": mean_score}
        save_es_state(state_path, state)

    def check_finite(values: np.ndarray, gen: int, what: str) -> None:
        if not np.all(np.isfinite(values)):
            last = int(checkpoint.read_npz(state_path, "CMA-ES state")["generation"]) if state_path.is_file() else 0
            raise TrainingDiverged(
                f"CMA-ES: non-finite {what} at generation {gen + 1} ({int(np.sum(~np.isfinite(values)))} of "
                f"{values.size}); nothing of it was kept, the last good state is {state_path} at generation {last}"
            )

    bar = tqdm(range(first_gen, cfg.generations), initial=first_gen, total=cfg.generations, desc="CMA-ES", unit="gen")
    with MetricsLog(out_dir, step_key="generation", start=first_gen) as log:
        for gen in bar:
            t0 = time.perf_counter()
            k_gen, k_check = jr.split(jr.fold_in(key, gen))
            normals.start_generation(gen)
            population = np.asarray(es.ask())
            scores = score(population, k_gen)
            check_finite(scores, gen, "dream fitness")
            es.tell(list(population), list(-scores.astype(np.float64)))
            # Re-score the generation's best and the mean on fresh dreams (a (2, N) call, compiled once).
            check = np.stack([population[int(np.argmax(scores))], es.mean])
            rescored = score(check, k_check)
            check_finite(rescored, gen, "re-scored fitness")
            cand = (float(rescored[0]), check[0]), (float(rescored[1]), check[1])
            mean_score = cand[1][0]  # the re-score of CMA-ES's mean after this generation's update
            for s, params in cand:
                if s > best_score:
                    best_score, best = s, params.astype(np.float32)
            record = {
                "generation": gen + 1,
                "best": float(scores.max()),
                "mean": float(scores.mean()),
                "std": float(scores.std()),
                "sigma": float(es.sigma),
                "rescored_best": cand[0][0],
                "rescored_mean": cand[1][0],
                "kept_score": best_score,
                "seconds": time.perf_counter() - t0,
            }
            if real_check is not None and cfg.eval_every and (gen + 1) % cfg.eval_every == 0:
                record["real_mean"] = float(real_check(best))
            log.log(record, gen + 1)
            bar.set_postfix(best=f"{record['best']:.1f}", mean=f"{record['mean']:.1f}", kept=f"{best_score:.1f}")
            if (gen + 1) % cfg.checkpoint_every == 0 or gen + 1 == cfg.generations:
                save_state(gen + 1)
    bar.close()
    params, score = kept()
    summary = {"dream_score": score, "generations": cfg.generations, "keep": cfg.keep, "best_score": best_score}
    write_json(out_dir / "summary.json", summary, indent=None)
    return params


class _GenerationNormals:
    """pycma's ``randn`` option: standard normals (lam, N) from a generator reseeded at each generation.

    Generation g draws from ``numpy.random.default_rng([seed, g])``, so what a generation samples does
    not depend on whether the run was resumed before it.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng([seed, 0])

    def start_generation(self, generation: int) -> None:
        self.rng = np.random.default_rng([self.seed, generation])

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


def write_restart_state(
    path: Path, mean: np.ndarray, sigma: float, generation: int, adaptation: str | None, best: np.ndarray | None = None
) -> None:
    """Write, atomically, an ``es_state.npz`` from which ``evolve`` starts a fresh CMA-ES at ``mean`` (N,) with step
    size ``sigma`` and no covariance or paths, at ``generation``, with ``best`` (default ``mean``) kept but its
    score forgotten. ``adaptation`` None leaves the step-size rule unrecorded (``evolve`` then uses the configured)."""
    state = {"mean": np.asarray(mean, np.float64), "sigma": np.float64(sigma), "generation": np.int64(generation),
             "best": np.asarray(mean if best is None else best, np.float32), "best_score": np.float64(-np.inf),
             "mean_score": np.float64(-np.inf)}  # fmt: skip
    if adaptation is not None:
        state["adaptation"] = np.str_(adaptation)
    save_es_state(path, state)


def save_es_state(path: Path, state: dict[str, Any]) -> None:
    """Write a CMA-ES state (arrays by name, as ``load_es_state`` reads them) to ``path`` atomically: into
    ``es_state.tmp.npz`` beside it, then renamed over it, so a kill leaves the old state or the new one."""
    tmp = Path(path).with_name("es_state.tmp.npz")
    np.savez(tmp, **state)
    tmp.replace(path)


def load_es_state(path: Path, n: int, adaptation: str) -> dict[str, np.ndarray]:
    """Read and check a saved CMA-ES state (``evolve``'s ``es_state.npz``); ``{}`` when there is none.

    Args:
        path: the state file.
        n: the controller's number of parameters (the search dimension).
        adaptation: the configured step-size rule (``DreamConfig.step_size_adaptation``).

    Raises:
        CheckpointError: when the file is not a readable state, its mean is not of dimension ``n``, or it
            records another step-size rule than ``adaptation``.
    """
    if not path.is_file():
        return {}
    saved = checkpoint.read_npz(path, "CMA-ES state", ("mean", "sigma", "generation", "best", "best_score"))
    if saved["mean"].shape != (n,):
        raise checkpoint.CheckpointError(
            f"{path}: CMA-ES mean has shape {saved['mean'].shape}, the MDN-RNN's controller needs ({n},)"
        )
    recorded = str(saved["adaptation"]) if "adaptation" in saved else adaptation
    if recorded != adaptation:
        raise checkpoint.CheckpointError(
            f"{path}: this CMA-ES run uses step-size adaptation {recorded!r}, the config says {adaptation!r}; "
            f"pass --dream.step-size-adaptation {recorded} to continue it, or evolve in a new run directory"
        )
    return saved


def _cma_state(es: cma.CMAEvolutionStrategy) -> dict[str, np.ndarray]:
    """The state of pycma's full-covariance CMA-ES that the next generation depends on, as arrays.

    Besides the distribution (mean, sigma, C, p_c, and the eigendecomposition B D^2 B^T of C that sampling
    uses until pycma's next lazy update) and the isotropic path p_sigma (CSA's state, and the
    h_sigma stall test of both rules), it keeps the mean before the last update: TPA's next two samples
    lie along +-(mean - mean_old) (Hansen et al. 2014), and ``s``, TPA's smoothed rank difference.
    """
    adapt = es.adapt_sigma
    tpa = isinstance(adapt, adapt_sigma("tpa"))
    state = {
        "adaptation": np.str_("tpa" if tpa else "csa"),
        "mean": np.asarray(es.mean),
        "mean_old": np.asarray(es.mean_old),
        "sigma": np.float64(es.sigma),
        "C": np.asarray(es.sm.C),
        # pycma samples from the eigendecomposition of C made at its last lazy update (every few
        # generations at large dimension), not from C itself: keep that decomposition and its counters
        "B": np.asarray(es.sm.B),
        "D": np.asarray(es.sm.D),
        "sm_counts": np.array([es.sm.count_tell, es.sm.last_update, es.sm.count_eigen], np.int64),
        "pc": np.asarray(es.pc),
        "ps": np.asarray(adapt.ps),
        "countiter": np.int64(es.countiter),
        "countevals": np.int64(es.countevals),
    }
    if tpa:
        state["tpa_s"] = np.float64(adapt.s)
        state["tpa_delta"] = np.float64(adapt.delta)
    return state


def _restore_cma_state(es: cma.CMAEvolutionStrategy, saved: dict[str, np.ndarray], path: Path) -> None:
    """Put a saved ``_cma_state`` into a freshly built ``es`` (same dimension, options and rule).

    This sets pycma's attributes directly (pycma has no loader other than pickle); the round trip is
    tested against an uninterrupted run with both rules, so a pycma release that moves them fails that test.

    TPA injects the mirrored pair +-(mean - mean_old) as the first two samples of every generation after
    the first; a fresh strategy has no such pair and pycma's ``ask`` fails without it, so the pair is
    prepared here as pycma's ``tell`` would have. A state file written before ``mean_old`` was kept gives
    the direction of the evolution path p_c instead (the cumulated recent mean shifts; pycma rescales the
    pair to a random sample length anyway), and starts TPA's ``s`` at 0.

    Raises:
        CheckpointError: if C's shape does not match the mean's dimension.
    """
    import cma

    n = es.N
    if saved["C"].shape != (n, n):
        raise checkpoint.CheckpointError(f"{path}: CMA-ES covariance has shape {saved['C'].shape}, expected ({n}, {n})")
    es.sm.C = np.array(saved["C"], dtype=float)
    if "B" in saved:
        es.sm.B, es.sm.D = np.array(saved["B"], dtype=float), np.array(saved["D"], dtype=float)
        es.sm.count_tell, es.sm.last_update, es.sm.count_eigen = (int(c) for c in saved["sm_counts"])
        es.sm._inverse_root_C = None
    else:  # written before the decomposition was kept: decompose C now
        es.sm.update_now(-1)
    es.pc = np.array(saved["pc"], dtype=float)
    es.adapt_sigma.ps = np.array(saved["ps"], dtype=float)
    es.countiter, es.countevals = int(saved["countiter"]), int(saved["countevals"])
    # pycma sets these in its first ``ask`` and ``tell``, which a resumed run has not called
    if not hasattr(es, "timer"):
        es.timer = cma.utilities.utils.ElapsedWCTime()
    if "mean_old" in saved:
        es.mean_old = np.array(saved["mean_old"], dtype=float)
    else:
        es.mean_old = np.array(es.mean) - es.sigma * np.array(es.pc)
    if isinstance(es.adapt_sigma, adapt_sigma("tpa")):
        es.adapt_sigma.s = float(saved.get("tpa_s", 0.0))
        es.adapt_sigma.delta = float(saved.get("tpa_delta", 1.0))
        if es.countiter > 0 and np.any(es.mean != es.mean_old):
            es.pop_injection_directions = []
            es._prepare_injection_directions()  # TPA's pair, as the last ``tell`` left it
            es.number_of_injections_delivered = 0
