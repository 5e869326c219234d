"""Configuration: dataset recipes are parsed, invalid settings are refused."""

import pytest

from worldmodels.config import (
    CollectConfig,
    DreamConfig,
    IterateConfig,
    RNNConfig,
    VAEConfig,
    available_presets,
    load_preset,
)
from worldmodels.config import (
    TestConfig as EvalConfig,  # a name pytest does not take for a test class
)


def test_parse_recipe():
    from worldmodels.config import parse_recipe

    assert parse_recipe("brownian") == [("brownian", 1.0)]
    assert parse_recipe("brownian:2, heuristic:0.5") == [("brownian", 2.0), ("heuristic", 0.5)]
    for bad in ("", "a:0", "a:x", "a,a", ":3"):
        with pytest.raises(ValueError):
            parse_recipe(bad)


def test_unknown_step_size_rule_is_refused():
    with pytest.raises(ValueError, match="dream.step_size_adaptation must be one of csa, tpa"):
        DreamConfig(step_size_adaptation="median")


@pytest.mark.parametrize(
    ("cls", "field", "value", "message"),
    [
        (DreamConfig, "dream_steps", 0, "dream.dream_steps must be >= 1, got 0"),
        (DreamConfig, "temperature", -1.0, "dream.temperature must be > 0, got -1.0"),
        (DreamConfig, "population", 1, "dream.population must be >= 2, got 1"),
        (DreamConfig, "done_threshold", 0.0, r"dream.done_threshold must be in \(0, 1\], got 0.0"),
        (DreamConfig, "sigma_init", 0.0, "dream.sigma_init must be > 0"),
        (DreamConfig, "mid_episode_starts", 1.5, r"dream.mid_episode_starts must be in \[0, 1\], got 1.5"),
        (DreamConfig, "start_pool", 0, "dream.start_pool must be >= 1, got 0"),
        (DreamConfig, "termination", "sampled", "dream.termination must be 'threshold' or 'expected'"),
        (CollectConfig, "episodes", 0, "collect.episodes must be >= 1, got 0"),
        (CollectConfig, "brownian_theta", 1.5, r"collect.brownian_theta must be in \[0, 1\]"),
        (VAEConfig, "batch_size", 0, "vae.batch_size must be >= 1"),
        (VAEConfig, "learning_rate", 0.0, "vae.learning_rate must be > 0"),
        (RNNConfig, "holdout", 1.0, r"rnn.holdout must be in \[0, 1\), got 1.0"),
        (RNNConfig, "seq_len", 0, "rnn.seq_len must be >= 1"),
        (RNNConfig, "windows", "anywhere", "rnn.windows must be 'inside' or 'padded', got 'anywhere'"),
        (EvalConfig, "episodes", 0, "test.episodes must be >= 1"),
        (IterateConfig, "iterations", -1, "iterate.iterations must be >= 0"),
        (IterateConfig, "restart_sigma", -0.1, "iterate.restart_sigma must be >= 0"),
        (DreamConfig, "keep", "last", "dream.keep must be 'best' or 'mean', got 'last'"),
        (DreamConfig, "controller_units", -1, "dream.controller_units must be >= 0, got -1"),
    ],
)
def test_out_of_range_values_are_refused_with_the_field_named(cls, field, value, message):
    with pytest.raises(ValueError, match=message):
        cls(**{field: value})


def test_every_preset_passes_validation():
    for name in available_presets():
        load_preset(name)  # raises on any out-of-range value


@pytest.mark.parametrize("text", ["{not json", "[]"])
def test_an_unreadable_run_record_is_kept_aside_never_overwritten(tmp_path, text, capsys):
    from worldmodels.config import record_config

    (tmp_path / "config.json").write_text(text)
    record_config(tmp_path, "dream", DreamConfig(generations=3))
    kept = list(tmp_path.glob("config.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == text
    assert "kept it as" in capsys.readouterr().err
    import json

    assert json.loads((tmp_path / "config.json").read_text())["dream"]["generations"] == 3


def test_a_typed_policy_wins_over_the_presets_mix():
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("collect_data", Path(__file__).parents[1] / "collect_data.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules["collect_data"] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    mix = load_preset("quick").collect
    assert mix.mix  # the quick preset collects a mix
    assert script.resolve_policy_flags(mix, ["--run-dir", "r", "--policy=heuristic"]).mix == ""
    assert script.resolve_policy_flags(mix, ["--run-dir", "r"]) == mix
    with pytest.raises(SystemExit, match="--policy and --mix contradict"):
        script.resolve_policy_flags(mix, ["--policy", "heuristic", "--mix", "brownian:2"])


def test_a_value_of_the_wrong_type_is_refused_with_the_field_named():
    """A preset file can hold a string where a number belongs; it is refused, not compared."""
    with pytest.raises(ValueError, match="vae.batch_size must be a number >= 1, got '5'"):
        VAEConfig(batch_size="5")


def test_with_seed_reaches_every_training_stage_and_a_mismatched_run_is_refused(tmp_path):
    """pipeline.py --seed sets the seed of collection, V, M and the dream but not the test tracks; a run directory
    recorded with other seeds is refused before anything is written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from worldmodels.config import recorded_seeds, with_seed

    preset = with_seed(load_preset("quick"), 2)
    assert (preset.vae.seed, preset.rnn.seed, preset.dream.seed) == (2, 2, 2)
    assert preset.collect.seed == 2 * 6 * 20_000  # its own block of tracks for every collection policy
    assert preset.test.seed == load_preset("quick").test.seed and preset.dream.action_noise == 0.0
    for bad in (-1, 8):
        with pytest.raises(ValueError, match="--seed must be in"):
            with_seed(load_preset("quick"), bad)

    assert recorded_seeds(tmp_path) == {}
    record = json.dumps({"collect": {"seed": 0}, "rnn": {"seed": 0}, "test": {"seed": 1_000_000}})
    (tmp_path / "config.json").write_text(record)
    assert recorded_seeds(tmp_path) == {"collect": 0, "rnn": 0}
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "pipeline.py"), "--preset", "smoke", "--run-dir", str(tmp_path), "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode != 0 and "was made with other seeds (collect 0, rnn 0;" in proc.stderr, proc.stderr
    assert "use a fresh --run-dir" in proc.stderr
    assert (tmp_path / "config.json").read_text() == record and sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json"
    ]
