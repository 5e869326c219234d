"""Run-directory access: the loaders rebuild V, M and C from their checkpoints' own kinds and sizes."""

import json

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

from worldmodels import checkpoint, run_dir
from worldmodels.agent import Agent
from worldmodels.errors import CheckpointError, DatasetError, MissingInput
from worldmodels.models import MDNRNN, ConvVAE
from worldmodels.models.registry import build_controller, controller_hparams


def save_run(path, z=8, hidden=16):
    vae, dynamics = ConvVAE(z, key=jr.key(0)), MDNRNN(z, 3, hidden, 2, key=jr.key(1))
    checkpoint.save(path / "vae" / "ckpt", 1, vae, kind="vae", hparams={"z_size": z})
    hp = {"z_size": z, "action_size": 3, "hidden_size": hidden, "num_mixtures": 2}
    checkpoint.save(path / "rnn" / "ckpt", 2, dynamics, kind="mdnrnn", hparams=hp)
    ctrl = build_controller(**controller_hparams(dynamics))
    checkpoint.save(path / "controller" / "ckpt", 3, ctrl, kind="controller", hparams=controller_hparams(dynamics))
    return vae, dynamics


def test_load_agent_rebuilds_every_part_from_its_checkpoint(tmp_path):
    vae, dynamics = save_run(tmp_path)
    agent = run_dir.load_agent(tmp_path)
    assert isinstance(agent, Agent) and agent.vae.z_size == 8 and agent.dynamics.hidden_size == 16
    assert jnp.array_equal(agent.dynamics.head.weight, dynamics.head.weight)
    assert agent.controller.weight.shape == (3, 8 + 16)


def test_missing_and_mismatched_parts_are_named(tmp_path):
    with pytest.raises(MissingInput, match=r"vae/ckpt: run `uv run train_vae.py --run-dir"):
        run_dir.load_vae(tmp_path)
    save_run(tmp_path)
    with pytest.raises(CheckpointError, match="z_size=8 in the checkpoint, 32 in the config"):
        run_dir.load_dynamics(tmp_path, expected={"z_size": 32})
    with pytest.raises(MissingInput, match="data/heuristic/metadata.json.*collect_data.py .* --policy heuristic"):
        run_dir.recipe_paths(tmp_path, "heuristic:2")
    (tmp_path / "data" / "heuristic").mkdir(parents=True)
    (tmp_path / "data" / "heuristic" / "episode_0.h5").write_bytes(b"x")  # files without metadata.json
    with pytest.raises(DatasetError, match="holds files but no metadata.json.*move it aside"):
        run_dir.recipe_paths(tmp_path, "heuristic:2")


def test_exported_agent_is_the_same_agent_and_frozen(tmp_path, monkeypatch):

    import numpy as np

    src = tmp_path / "run"
    save_run(src)
    (src / "config.json").write_text(json.dumps({"dream": {"population": 4}}))
    out = tmp_path / "shipped"
    record = run_dir.export_agent(src, out, {"score": "n/a"})
    assert record["parts"]["rnn"]["kind"] == "mdnrnn" and record["score"] == "n/a"
    a, b = run_dir.load_agent(src), run_dir.load_agent(out)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert json.loads((out / "config.json").read_text()) == {"dream": {"population": 4}}
    assert not list(out.rglob("opt"))  # no optimiser state travels

    # A shipped agent is only read: its results default to a fresh runs/ directory.
    assert run_dir.frozen(out) and not run_dir.frozen(src)
    assert run_dir.results_path(src) == src / "eval" / "results.json"
    monkeypatch.chdir(tmp_path)
    fresh = run_dir.results_path(out)
    assert fresh.parts[0] == "runs" and fresh.parent.parent.name.startswith("shipped-eval-")
    assert run_dir.results_path(out, tmp_path / "x.json") == tmp_path / "x.json"

    with pytest.raises(FileExistsError, match="never overwritten"):
        run_dir.export_agent(src, out, {})

    # A linked part (V, which the Sim2Real2Sim loop never retrains) is a relative link that loads the same V from
    # the source, and survives moving source and copy together; a part name that is not a part is refused first.
    with pytest.raises(ValueError, match=r"unknown parts \['vea'\]"):
        run_dir.export_agent(src, src / "iterations" / "0" / "agent", {}, link=("vea",))
    assert not (src / "iterations").exists()
    kept = src / "iterations" / "0" / "agent"
    run_dir.export_agent(src, kept, {"iteration": 0}, link=("vae",))
    assert (kept / "vae").is_symlink() and not (kept / "vae").readlink().is_absolute()
    moved = tmp_path / "moved"
    src.rename(moved)
    c = run_dir.load_agent(moved / "iterations" / "0" / "agent")
    for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(c), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_loop_keeps_the_controller_its_own_episodes_rank_first(tmp_path):
    from worldmodels.pipeline import select_iteration

    def row(k, test, own):
        r = {"iteration": k, "n": 20, "mean": test, "ci95": 5.0, "std": 10.0}
        if own is not None:
            r["onpolicy"] = {"n": 30, "mean": own, "ci95": 4.0, "exploration": "noise 0.2"}
        return r

    # The test score (iteration 1's 900) is never looked at; iteration 2 has no episodes of its own.
    rows = [row(0, 100.0, 50.0), row(1, 900.0, 40.0), row(2, 50.0, None)]
    choice = select_iteration(tmp_path, rows)
    assert choice["iteration"] == 0 and [c["iteration"] for c in choice["candidates"]] == [0, 1]
    assert choice["agent"] == str(tmp_path / "iterations" / "0" / "agent") and not choice["agent_kept"]
    assert choice["test"]["mean"] == 100.0 and f"--run-dir {tmp_path}/iterations/0/agent" in choice["command"]
    assert select_iteration(tmp_path, [row(0, 1.0, None)]) == {"iteration": None, "candidates": []}


def test_results_of_another_test_plan_are_kept_aside(tmp_path):
    """A re-test with another plan keeps the earlier results.json under a name that says its plan; the same plan
    replaces it; names already taken are not overwritten."""
    out = tmp_path / "eval" / "results.json"
    assert run_dir.keep_previous_results(out, {"n": 3, "action_noise": 0.2}) is None  # nothing there
    out.parent.mkdir()
    out.write_text(json.dumps({"n": 3, "mean": 1.0}))  # written before results recorded action_noise
    assert run_dir.keep_previous_results(out, {"n": 3, "action_noise": 0.0}) is None  # same plan
    assert out.is_file()
    aside = run_dir.keep_previous_results(out, {"n": 3, "action_noise": 0.2})
    assert aside == out.with_name("results.n3-noise0.0.json") and not out.exists()
    assert json.loads(aside.read_text()) == {"n": 3, "mean": 1.0}
    out.write_text(json.dumps({"n": 3, "mean": 2.0}))
    second = run_dir.keep_previous_results(out, {"n": 100, "action_noise": 0.0})
    assert second == out.with_name("results.n3-noise0.0-2.json") and json.loads(aside.read_text())["mean"] == 1.0
    out.write_text("{not json")
    assert run_dir.keep_previous_results(out, {"n": 3, "action_noise": 0.0}).name == "results.nunknown-noise0.0.json"


def test_copy_world_model_copies_whole_parts_and_keeps_what_is_there(tmp_path):
    """V and M are copied without logs (and without M's latent cache on request), a stopped copy is redone, the
    data is linked, and a part already in place is left as it is."""
    import os

    from worldmodels.run_dir import copy_world_model

    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("vae", "rnn", "data"):
        (src / name / "ckpt").mkdir(parents=True)
        (src / name / "ckpt" / "1").write_text(name)
        (src / name / "metrics.jsonl").write_text("{}")
    (src / "rnn" / "latents").mkdir()
    (src / "config.json").write_text("{}")
    (dst / "vae.partial").mkdir(parents=True)  # a copy stopped half-way
    (dst / "rnn" / "ckpt").mkdir(parents=True)
    (dst / "rnn" / "ckpt" / "1").write_text("ours")
    copy_world_model(src, dst, link_data=True, latents=False)
    assert (dst / "vae" / "ckpt" / "1").read_text() == "vae" and not (dst / "vae" / "metrics.jsonl").exists()
    assert not (dst / "vae.partial").exists()
    assert (dst / "rnn" / "ckpt" / "1").read_text() == "ours"  # kept
    assert os.path.islink(dst / "data") and (dst / "config.json").read_text() == "{}"
    assert (src / "vae" / "metrics.jsonl").exists()  # the source is only read


def test_earlier_stage_times_read_only_a_pipeline_report_of_the_same_preset(tmp_path, capsys):
    """A resumed pipeline reuses the seconds of the stages an earlier report of its preset timed; another
    preset's report, a file that is not JSON, and JSON of another shape give no times (the last two named)."""
    from worldmodels.pipeline import _earlier_seconds

    path = tmp_path / "pipeline.json"
    assert _earlier_seconds(tmp_path, "quick") == {}  # no report yet
    stages = {"collect": {"status": "ran", "seconds": 12.5}, "vae": {"status": "skipped (done)", "seconds": 0.0},
              "rnn": {"status": "ran", "seconds": "?"}, "dream": "ran"}  # fmt: skip
    path.write_text(json.dumps({"preset": "quick", "stages": stages}))
    assert _earlier_seconds(tmp_path, "quick") == {"collect": 12.5}
    assert _earlier_seconds(tmp_path, "smoke") == {}
    assert capsys.readouterr().out == ""
    for text in ("{not json", "[1, 2]", '{"preset": "quick", "stages": [1]}', "\udcff"):
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        assert _earlier_seconds(tmp_path, "quick") == {}
        assert f"{path} is not a pipeline report" in capsys.readouterr().out


def test_same_weights_compares_every_array():
    """Two V are the same only with equal arrays leaf for leaf: one changed value, or another architecture, differs."""
    import equinox as eqx

    vae = ConvVAE(8, key=jr.key(0))
    assert run_dir.same_weights(vae, ConvVAE(8, key=jr.key(0)))
    assert not run_dir.same_weights(vae, ConvVAE(8, key=jr.key(1)))
    arrays, static = eqx.partition(vae, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].add(1.0)  # one value of one array
    changed = eqx.combine(jax.tree.unflatten(treedef, leaves), static)
    assert not run_dir.same_weights(vae, changed)
    assert not run_dir.same_weights(vae, MDNRNN(8, 3, 16, 2, key=jr.key(0)))
