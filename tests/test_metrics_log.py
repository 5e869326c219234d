"""Run metrics: rows in metrics.jsonl and the same scalars in TensorBoard, trimmed on resume (no duplicates)."""

import numpy as np
import pytest
from helpers import rows, scalars

from worldmodels.metrics_log import MetricsLog, append_jsonl, trim_jsonl, write_json


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


def test_rows_with_nan_or_inf_are_strict_json(tmp_path):
    """A non-finite value is written as null, so the line parses with a parser that refuses NaN and Infinity."""
    import json

    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "a": float("nan"), "b": np.float32("inf"), "c": [1.0, -np.inf], "d": {"e": np.nan}})

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    row = json.loads(path.read_text(), parse_constant=refuse)
    assert row == {"step": 1, "a": None, "b": None, "c": [1.0, None], "d": {"e": None}}


def test_write_json_is_strict_and_leaves_the_old_file_when_it_cannot_write(tmp_path):
    """Results, summaries and scores (``write_json``): NaN as null; a value JSON cannot hold leaves the file that
    was there, whole, and no temporary file."""
    import json

    path = tmp_path / "results.json"
    write_json(path, {"mean": np.float64("nan"), "returns": [1.5, np.inf]})
    assert json.loads(path.read_text()) == {"mean": None, "returns": [1.5, None]}
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json(path, {"mean": 1.0, "bad": object()})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["results.json"]


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
