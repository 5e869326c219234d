"""CMA-ES driver: finds a known optimum, resumes exactly at the presets' sizes with either step-size rule, one
metrics row per generation after a resume; its dream fitness runs on the MDN-RNN."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import Interrupted, rows, scalars, small_world

from worldmodels.checkpoint import CheckpointError
from worldmodels.config import DreamConfig
from worldmodels.errors import TrainingDiverged
from worldmodels.evolve import dream_fitness, evolve
from worldmodels.models import LinearController
from worldmodels.models.registry import controller_hparams

PAPER = {"z_size": 32, "hidden_size": 256, "action_size": 3}
"""The paper's controller: (32 + 256) x 3 + 3 = 867 parameters, above pycma's TPA switch at 300."""
TINY = {"z_size": 2, "hidden_size": 3, "action_size": 3}


def noisy_quadratic(hparams):
    """A cheap stand-in for the dream: -|x - target|^2 plus noise drawn from the generation's key."""
    target = jnp.linspace(-0.5, 0.5, LinearController.num_params(**hparams))

    @jax.jit
    def fitness(population, key):
        return -jnp.sum((population - target) ** 2, axis=1) + 0.01 * jr.normal(key, (population.shape[0],))

    return fitness


def test_cma_es_finds_known_optimum(tmp_path):
    """The CMA-ES driver (ask, one jitted fitness call, tell, keep the best) finds argmax of a quadratic."""
    hparams = TINY
    n = LinearController.num_params(**hparams)
    target = jnp.linspace(-0.5, 0.5, n)

    @jax.jit
    def fitness(population, key):
        noise = 0.0 * jr.normal(key, (population.shape[0],))
        return -jnp.sum((population - target) ** 2, axis=1) + noise

    cfg = DreamConfig(population=16, generations=150, sigma_init=0.3, checkpoint_every=50, seed=0)
    best = evolve(tmp_path / "controller", fitness, hparams, cfg)
    np.testing.assert_allclose(best, target, atol=0.02)
    got = rows(tmp_path / "controller")
    assert len(got) == 150 and got[-1]["best"] > got[0]["best"]
    # A finished run is not redone; a longer one resumes from the saved mean.
    again = evolve(tmp_path / "controller", fitness, hparams, cfg)
    np.testing.assert_array_equal(again, best)
    longer = evolve(tmp_path / "controller", fitness, hparams, dataclasses.replace(cfg, generations=160))
    assert float(jnp.sum((longer - target) ** 2)) <= float(jnp.sum((best - target) ** 2)) + 1e-6


@pytest.mark.parametrize("adaptation", ["tpa", "csa"])
@pytest.mark.parametrize(
    ("hparams", "population"),
    [(PAPER, 32), (PAPER, 64), (TINY, 8), ({"z_size": 32, "hidden_size": 64, "action_size": 3}, 8)],
    ids=["867-P32", "867-P64", "18-P8", "291-P8"],
)
def test_interrupted_cma_es_resumes_as_if_never_stopped(tmp_path, hparams, population, adaptation):
    """Stopped after 3 generations and resumed to 8 == 8 generations straight: same samples, covariance,
    its eigendecomposition (pycma decomposes lazily at large sizes), paths, step-size state and best."""
    fitness = noisy_quadratic(hparams)
    cfg = DreamConfig(
        population=population, generations=8, sigma_init=0.1, checkpoint_every=1, seed=3,
        step_size_adaptation=adaptation,
    )  # fmt: skip
    straight = evolve(tmp_path / "straight", fitness, hparams, cfg)
    evolve(tmp_path / "resumed", fitness, hparams, dataclasses.replace(cfg, generations=3))
    resumed = evolve(tmp_path / "resumed", fitness, hparams, cfg)
    np.testing.assert_array_equal(resumed, straight)
    n = LinearController.num_params(**hparams)
    with np.load(tmp_path / "straight" / "es_state.npz") as a, np.load(tmp_path / "resumed" / "es_state.npz") as b:
        assert a["C"].shape == (n, n) and int(a["countiter"]) == 8 and str(a["adaptation"]) == adaptation
        for name in a.files:
            if name != "adaptation":
                np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert [r["best"] for r in rows(tmp_path / "resumed")] == [r["best"] for r in rows(tmp_path / "straight")]
    assert [r["generation"] for r in rows(tmp_path / "resumed")] == list(range(1, 9))


def test_keep_mean_keeps_cma_es_final_mean_and_searches_as_keep_best(tmp_path):
    """``keep="mean"`` writes and returns CMA-ES's last mean (its re-score as the checkpoint's dream score); the
    search itself is the one ``keep="best"`` makes, and a finished run returns the same mean again."""
    from worldmodels.run_dir import load_controller

    fitness = noisy_quadratic(TINY)
    cfg = DreamConfig(population=8, generations=12, sigma_init=0.2, checkpoint_every=4, seed=1, keep="mean")
    kept = evolve(tmp_path / "mean" / "controller", fitness, TINY, cfg)
    evolve(tmp_path / "best" / "controller", fitness, TINY, dataclasses.replace(cfg, keep="best"))
    with (
        np.load(tmp_path / "mean" / "controller" / "es_state.npz") as a,
        np.load(tmp_path / "best" / "controller" / "es_state.npz") as b,
    ):
        np.testing.assert_array_equal(kept, a["mean"].astype(np.float32))
        np.testing.assert_array_equal(a["mean"], b["mean"])  # the same search
        assert not np.array_equal(a["best"], a["mean"])  # so keeping the mean is a different controller
        mean_score = float(a["mean_score"])
    ctrl, meta = load_controller(tmp_path / "mean")
    assert meta["step"] == 12 and meta["extra"]["keep"] == "mean"
    assert meta["extra"]["dream_score"] == pytest.approx(mean_score)
    np.testing.assert_array_equal(np.asarray(ctrl.to_flat()), kept)
    assert rows(tmp_path / "mean" / "controller")[-1]["rescored_mean"] == pytest.approx(mean_score)
    np.testing.assert_array_equal(evolve(tmp_path / "mean" / "controller", fitness, TINY, cfg), kept)


def test_iteration_restart_sigma_restarts_cma_es_at_its_mean(tmp_path):
    """``iterate.restart_sigma``: before an iteration's first generation the state keeps its mean and kept best,
    takes the restart step size and drops its covariance and paths (once: again, the file is unchanged); CMA-ES
    then goes on from that mean with that sigma. Without it only the kept best's score is forgotten."""
    from worldmodels.stages import _restart_kept_best

    fitness = noisy_quadratic(TINY)
    cfg = DreamConfig(population=8, generations=6, sigma_init=0.05, checkpoint_every=6, seed=2)
    for name in ("restart", "continue"):
        evolve(tmp_path / name / "controller", fitness, TINY, cfg)
    path = tmp_path / "restart" / "controller" / "es_state.npz"
    before = dict(np.load(path))
    _restart_kept_best(tmp_path / "restart", 6, restart_sigma=0.5)
    after = dict(np.load(path))
    assert "C" not in after and float(after["sigma"]) == 0.5 and after["best_score"] == -np.inf
    np.testing.assert_array_equal(after["mean"], before["mean"])
    np.testing.assert_array_equal(after["best"], before["best"])
    raw = path.read_bytes()
    _restart_kept_best(tmp_path / "restart", 6, restart_sigma=0.5)
    assert path.read_bytes() == raw
    _restart_kept_best(tmp_path / "continue", 6)
    kept = dict(np.load(tmp_path / "continue" / "controller" / "es_state.npz"))
    assert "C" in kept and kept["best_score"] == -np.inf and float(kept["sigma"]) == float(before["sigma"])

    longer = dataclasses.replace(cfg, generations=7)
    evolve(tmp_path / "restart" / "controller", fitness, TINY, longer)
    evolve(tmp_path / "continue" / "controller", fitness, TINY, longer)
    restarted = rows(tmp_path / "restart" / "controller")[-1]["sigma"]
    continued = rows(tmp_path / "continue" / "controller")[-1]["sigma"]
    assert restarted > 0.25 and continued < 0.25  # a generation from sigma 0.5 against one from the old sigma


@pytest.mark.parametrize("adaptation", ["tpa", "csa"])
def test_state_file_from_before_the_rule_was_recorded_still_resumes(tmp_path, adaptation):
    """An es_state.npz written before the rule, the decomposition and mean_old were kept (as in a run that
    crashed at the first Sim2Real2Sim iteration) resumes at 867 parameters with the configured rule."""
    fitness = noisy_quadratic(PAPER)
    cfg = DreamConfig(population=32, generations=3, checkpoint_every=1, seed=1, step_size_adaptation=adaptation)
    out = tmp_path / "controller"
    evolve(out, fitness, PAPER, cfg)
    path = out / "es_state.npz"
    with np.load(path) as f:
        old = {
            k: f[k] for k in f.files if k not in ("adaptation", "mean_old", "B", "D", "sm_counts", "tpa_s", "tpa_delta")
        }
    np.savez(path, **old)
    evolve(out, fitness, PAPER, dataclasses.replace(cfg, generations=6))
    got = rows(out)
    assert [r["generation"] for r in got] == list(range(1, 7)) and all(np.isfinite(r["best"]) for r in got)
    with np.load(path) as f:
        assert int(f["generation"]) == 6 and str(f["adaptation"]) == adaptation


def test_other_step_size_rule_is_refused_and_nothing_is_written(tmp_path):
    fitness = noisy_quadratic(TINY)
    out = tmp_path / "controller"
    cfg = DreamConfig(population=8, generations=2, checkpoint_every=1, step_size_adaptation="csa")
    evolve(out, fitness, TINY, cfg)
    before = (out / "es_state.npz").read_bytes(), (out / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="step-size adaptation 'csa'.*--dream.step-size-adaptation csa"):
        evolve(out, fitness, TINY, dataclasses.replace(cfg, generations=4, step_size_adaptation="tpa"))
    assert ((out / "es_state.npz").read_bytes(), (out / "metrics.jsonl").read_text()) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cma_es_state_names_the_file(tmp_path, damage):
    """A garbage or truncated (a disk fault, a killed copy: zipfile.BadZipFile) state file is one error naming it,
    from evolve and from the stage's done check alike."""
    from worldmodels.stages import dream_done

    hparams = {"z_size": 2, "hidden_size": 3, "action_size": 3}
    out = tmp_path / "controller"
    out.mkdir()
    path = out / "es_state.npz"
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    else:
        np.savez(path, mean=np.zeros(18), generation=3)
        path.write_bytes(path.read_bytes()[:200])
    cfg = DreamConfig(population=4, generations=2)
    with pytest.raises(CheckpointError, match="es_state.npz"):
        evolve(out, lambda p, k: -jnp.sum(p**2, axis=1), hparams, cfg)
    with pytest.raises(CheckpointError, match="es_state.npz"):
        dream_done(tmp_path, cfg)


def test_dream_fitness_plumbing_runs_on_the_mdnrnn(tmp_path):
    rnn, start, _ = small_world()
    cfg = DreamConfig(population=4, rollouts=2, dream_steps=8, generations=2, checkpoint_every=1)
    best = evolve(tmp_path / "c", dream_fitness(rnn, start, cfg), controller_hparams(rnn), cfg)
    assert best.shape == (LinearController.num_params(8, 16),)
    assert (tmp_path / "c" / "ckpt").is_dir()


def test_resumed_evolve_leaves_one_row_per_generation(tmp_path):
    """A crash in generation 5 (state saved at 3, rows 1..4 written) then a resume to 8: rows and
    TensorBoard series are generations 1..8 once each, equal to an uninterrupted run's."""
    target = jnp.linspace(-0.5, 0.5, LinearController.num_params(**TINY))

    @jax.jit
    def quadratic(population, key):
        return -jnp.sum((population - target) ** 2, axis=1) + 0.01 * jr.normal(key, (population.shape[0],))

    calls = []

    def crashing(population, key):  # two calls per generation: the population, then the re-scores
        calls.append(1)
        if len(calls) > 8:
            raise Interrupted
        return quadratic(population, key)

    cfg = DreamConfig(population=8, generations=8, sigma_init=0.1, checkpoint_every=3, seed=2)
    evolve(tmp_path / "straight", quadratic, TINY, cfg)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        evolve(out, crashing, TINY, cfg)
    assert [r["generation"] for r in rows(out)] == [1, 2, 3, 4]
    with np.load(out / "es_state.npz") as f:
        assert int(f["generation"]) == 3
    evolve(out, quadratic, TINY, cfg)
    got, straight = rows(out), rows(tmp_path / "straight")
    assert [r["generation"] for r in got] == list(range(1, 9))
    assert [r["best"] for r in got] == [r["best"] for r in straight]
    assert set(got[0]) == set(straight[0])
    series = scalars(out)
    assert "generation" not in series and {"best", "mean", "sigma", "kept_score", "seconds"} <= set(series)
    assert [s for s, _ in series["best"]] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in series["best"]], [r["best"] for r in got], rtol=1e-6)


def test_evolve_refused_resume_leaves_metrics_untouched(tmp_path):
    """The state check comes before trimming: a refused resume neither trims rows nor opens TensorBoard."""
    fitness = jax.jit(lambda population, key: -jnp.sum(population**2, axis=1))
    cfg = DreamConfig(population=8, generations=2, checkpoint_every=1, step_size_adaptation="csa")
    out = tmp_path / "controller"
    evolve(out, fitness, TINY, cfg)
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"generation": 9}\n')
    before = (out / "metrics.jsonl").read_bytes(), sorted(p.name for p in (out / "tb").iterdir())
    with pytest.raises(CheckpointError, match="step-size adaptation"):
        evolve(out, fitness, TINY, dataclasses.replace(cfg, generations=4, step_size_adaptation="tpa"))
    assert ((out / "metrics.jsonl").read_bytes(), sorted(p.name for p in (out / "tb").iterdir())) == before


def test_non_finite_fitness_stops_with_the_last_good_state_intact(tmp_path):
    """A NaN dream return stops CMA-ES naming the generation; the state and controller saved before stay."""
    fitness = noisy_quadratic(TINY)
    out = tmp_path / "controller"
    cfg = DreamConfig(population=8, generations=2, checkpoint_every=1, seed=2)
    evolve(out, fitness, TINY, cfg)
    before = (out / "es_state.npz").read_bytes()

    def broken(population, key):
        return fitness(population, key).at[3].set(jnp.nan)

    with pytest.raises(TrainingDiverged, match="non-finite dream fitness at generation 3.*at generation 2"):
        evolve(out, broken, TINY, dataclasses.replace(cfg, generations=4))
    assert (out / "es_state.npz").read_bytes() == before
    assert [r["generation"] for r in rows(out)] == [1, 2]


def test_step_size_experiment_script_smoke(tmp_path):
    """experiments/cma_step_size.py at a tiny size: both rules run and the JSON holds a row per condition."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "cma.json"
    args = ["--dimension", "20", "--populations", "8", "--noise", "0", "1", "--generations", "3", "--seeds", "2"]
    proc = subprocess.run(
        [sys.executable, str(root / "experiments" / "cma_step_size.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["noise"], r["adaptation"]) for r in rows] == [(0.0, "csa"), (0.0, "tpa"), (1.0, "csa"), (1.0, "tpa")]
    assert all(len(r["final_f"]) == 2 and np.isfinite(r["mean"]) for r in rows)
