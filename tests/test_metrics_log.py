"""Run metrics: rows in metrics.jsonl and the same scalars in TensorBoard, trimmed on resume (no duplicates)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from worldmodels.checkpoint import CheckpointError
from worldmodels.config import DreamConfig
from worldmodels.evolve import evolve
from worldmodels.metrics_log import MetricsLog, append_jsonl, trim_jsonl
from worldmodels.models import MDNRNN, LinearController
from worldmodels.trainer import fit

TINY = {"z_size": 2, "hidden_size": 3, "action_size": 3}


class Interrupted(Exception):
    """Stands for a crash (killed job, lost machine) that leaves no chance to save."""


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def scalars(out_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under ``out_dir/tb`` as TensorBoard shows it (restarts purged), by tag."""
    acc = EventAccumulator(str(out_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_log_writes_the_row_and_tensorboard_scalars(tmp_path):
    record = {
        "step": 10,
        "total": 0.5,
        "loss/recon": np.float64(0.25),
        "count": 3,
        "diverged": False,
        "nan": float("nan"),
        "name": "vae",
        "per_model": [1.0, 2.0],
    }
    with MetricsLog(tmp_path, step_key="step") as log:
        assert not (tmp_path / "tb").exists()  # nothing before the first row
        log.log(record, 10)
        log.log({**record, "step": 20, "total": 0.25}, 20)
    plain = tmp_path / "plain.jsonl"
    append_jsonl(plain, record)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[0] == plain.read_text().splitlines()[0]
    assert [r["step"] for r in rows(tmp_path)] == [10, 20]
    got = scalars(tmp_path)
    assert set(got) == {"total", "loss/recon", "count"}  # no step column, bool, NaN, string or list
    assert got["total"] == [(10, 0.5), (20, 0.25)]
    assert got["loss/recon"] == [(10, 0.25), (20, 0.25)] and got["count"] == [(10, 3.0), (20, 3.0)]


def test_a_resumed_log_hides_the_interrupted_runs_later_events(tmp_path):
    """Run 1 logs steps 1..5 and dies after saving at 3; run 2 (start=3) logs 4..6: TensorBoard shows each
    step once, with run 2's values past 3, although both event files may be named within one second."""
    with MetricsLog(tmp_path, step_key="step") as log:
        for s in range(1, 6):
            log.log({"step": s, "x": float(s)}, s)
    with MetricsLog(tmp_path, step_key="step", start=3) as log:
        log.log({"step": 4, "x": 40.0}, 4)
        log.close()
        log.log({"step": 5, "x": 50.0}, 5)  # reopened: a new file, which must not hide step 4
        log.log({"step": 6, "x": 60.0}, 6)
    assert len(list((tmp_path / "tb").iterdir())) == 3
    assert scalars(tmp_path)["x"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_trim_jsonl_drops_later_rows_and_keeps_the_rest_byte_identical(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = [
        '{"step": 1, "total": 0.1234567890123}\n',
        '{"reward_delusion": 0.5}\n',  # no step: kept
        "\n",
        '{"step": 3,   "total": 1e-07}\n',  # odd spacing survives
    ]
    later = ['{"step": 4, "total": 2.0}\n', '{"step": 5.5, "total": 3.0}\n']
    path.write_text(kept[0] + kept[1] + later[0] + kept[2] + kept[3] + later[1] + '{"step": 6, "tot')  # torn
    assert trim_jsonl(path, 3, "step") == 3
    assert path.read_text() == "".join(kept)
    before = path.stat().st_mtime_ns
    assert trim_jsonl(path, 3, "step") == 0 and path.stat().st_mtime_ns == before  # nothing to do: not rewritten
    assert trim_jsonl(tmp_path / "missing.jsonl", 0, "step") == 0 and not (tmp_path / "missing.jsonl").exists()
    # a complete last row whose newline was lost gets one, so the next append starts its own line
    path.write_text('{"generation": 1}\n{"generation": 2}')
    assert trim_jsonl(path, 5, "generation") == 0 and path.read_text() == '{"generation": 1}\n{"generation": 2}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        trim_jsonl(path, 1, "step")
    assert not list(tmp_path.glob("*.tmp"))


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


def test_resumed_fit_leaves_one_row_per_logged_step(tmp_path):
    """A crash at update 18 (checkpoint at 10, rows 5, 10, 15 written) then a resume to 30: steps
    5, 10, ..., 30 once each in metrics.jsonl and in TensorBoard."""
    hp = {"z_size": 4, "action_size": 3, "hidden_size": 8, "num_mixtures": 2}

    def loss_fn(model, batch, key):
        loss = jnp.sum(model.head.bias**2) * batch
        return loss, {"total": loss}

    def run(make_batch):
        return fit(
            model=MDNRNN(**hp, key=jr.key(0)),
            optimizer=optax.sgd(1e-2),
            loss_fn=loss_fn,
            make_batch=make_batch,
            steps=30,
            out_dir=tmp_path / "rnn",
            kind="mdnrnn",
            hparams=hp,
            seed=0,
            log_every=5,
            checkpoint_every=10,
            items_per_step=1,
            desc="resume",
        )

    def crashing(step):
        if step == 17:
            raise Interrupted
        return jnp.float32(1.0)

    with pytest.raises(Interrupted):
        run(crashing)
    assert [r["step"] for r in rows(tmp_path / "rnn")] == [5, 10, 15]
    run(lambda step: jnp.float32(1.0))
    got = rows(tmp_path / "rnn")
    assert [r["step"] for r in got] == [5, 10, 15, 20, 25, 30]
    assert all(set(r) == {"step", "total", "grad_norm", "items_per_s"} for r in got)
    series = scalars(tmp_path / "rnn")
    assert set(series) == {"total", "grad_norm", "items_per_s"}
    assert [s for s, _ in series["total"]] == [5, 10, 15, 20, 25, 30]
    np.testing.assert_allclose([v for _, v in series["total"]], [r["total"] for r in got], rtol=1e-6)
    # a finished run resumed again changes nothing
    before = (tmp_path / "rnn" / "metrics.jsonl").read_bytes()
    run(crashing)
    assert (tmp_path / "rnn" / "metrics.jsonl").read_bytes() == before


def test_fit_without_a_checkpoint_starts_its_rows_afresh(tmp_path):
    """Rows left by a run that crashed before its first checkpoint are dropped when training restarts at 0."""
    out = tmp_path / "rnn"
    out.mkdir()
    append_jsonl(out / "metrics.jsonl", {"step": 5, "total": 9.0})
    hp = {"z_size": 4, "action_size": 3, "hidden_size": 8, "num_mixtures": 2}
    fit(
        model=MDNRNN(**hp, key=jr.key(0)),
        optimizer=optax.sgd(1e-2),
        loss_fn=lambda m, b, k: (jnp.sum(m.head.bias**2), {"total": jnp.sum(m.head.bias**2)}),
        make_batch=lambda s: None,
        steps=5,
        out_dir=out,
        kind="mdnrnn",
        hparams=hp,
        seed=0,
        log_every=5,
        checkpoint_every=5,
        items_per_step=1,
        desc="fresh",
    )
    got = rows(out)
    assert [r["step"] for r in got] == [5] and got[0]["total"] != 9.0


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
