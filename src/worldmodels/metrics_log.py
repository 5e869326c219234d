"""Run metrics: one JSON line per logged step in ``metrics.jsonl``, and the same scalars for TensorBoard.

Every stage directory that trains or evolves something (``vae/``, ``rnn/``, ``controller/``) holds a
``metrics.jsonl``, the record the plots, summaries and tests read, and, next to it, ``tb/``: TensorBoard
event files with each finite numeric column of those rows as a scalar, written as the run goes, so that
``tensorboard --logdir RUN_DIR`` shows every stage of a run live.

A stage resumed from a checkpoint or state saved at step s first drops the rows an interrupted run wrote
after s (``trim_jsonl``), and opens its ``MetricsLog`` with ``start=s``, which hides the TensorBoard
events past s of that earlier run; the resumed run then writes those steps again, once.
"""

from __future__ import annotations

import json
import math
import os
import time
from numbers import Real
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
"""The rows' file name in a stage directory."""
TB_DIR = "tb"
"""The TensorBoard event files' folder in a stage directory."""


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf; Python or NumPy), in dicts, lists and tuples at any
    depth, replaced by ``None``: JSON has no NaN, and a line holding one is unreadable to most JSON tools."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` to ``path`` as JSON, atomically: into ``PATH.tmp``, then renamed over ``path``, so a kill
    leaves the old file or the new one, never half of one. Non-finite floats are written as ``null``
    (``json_safe``): JSON has no NaN, and a file holding one is unreadable to most JSON tools.

    Raises:
        TypeError: if a value of ``data`` is not JSON-serialisable (nothing is written then).
        OSError: if the file cannot be written.
    """
    text = json.dumps(json_safe(data), indent=indent, allow_nan=False)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to ``path`` as one JSON line (the file is created if missing); non-finite floats are
    written as ``null`` (``json_safe``).

    Raises:
        TypeError: if a value of ``record`` is not JSON-serialisable (nothing is written then).
        OSError: if the file cannot be opened or written.
    """
    line = json.dumps(json_safe(record), allow_nan=False) + "\n"
    with path.open("a") as f:
        f.write(line)


def trim_jsonl(path: Path, last_step: int, key: str) -> int:
    """Drop the rows of a JSON-lines file whose ``key`` is greater than ``last_step``; keep the rest as is.

    This is what a run resumed from a checkpoint (or state) saved at ``last_step`` needs: the rows an
    interrupted run wrote after its last save are written again by the resumed one. Rows without ``key``
    (or with a non-numeric one), and blank lines, are kept; kept lines are byte-identical. A last line
    that is not JSON and has no newline (a write cut short by a crash) is dropped. The file is rewritten
    only if something changes, atomically (a temporary file beside it, then ``os.replace``), so a crash
    while trimming leaves the old file or the new one, never a partial one.

    Args:
        path: the file (e.g. a stage's ``metrics.jsonl``); a missing file is left missing.
        last_step: the last step (update, generation) to keep, in the units of ``key``.
        key: the rows' step column, e.g. ``"step"`` (training updates) or ``"generation"`` (CMA-ES).

    Returns:
        The number of lines dropped.

    Raises:
        ValueError: if a line other than an unterminated last one is not JSON (named by its line number).
        OSError: if the file cannot be read or replaced.
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip():
            kept.append(line)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not line.endswith("\n"):
                continue  # torn last write
            raise ValueError(f"{path}:{i + 1}: not a JSON line ({e})") from e
        value = row.get(key) if isinstance(row, dict) else None
        if isinstance(value, Real) and not isinstance(value, bool) and value > last_step:
            continue
        kept.append(line)
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"  # a complete last row whose newline was cut off: end it so the next append starts a line
    if kept == lines:
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return len(lines) - len(kept)


def _finite_scalar(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or NumPy, not a bool) that is neither NaN nor infinite."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


class MetricsLog:
    """A stage's metrics: rows appended to ``DIR/metrics.jsonl`` and scalars to TensorBoard in ``DIR/tb/``.

    ``log(record, step)`` appends ``record`` to ``metrics.jsonl`` exactly as ``append_jsonl`` does
    and adds each finite real value of it (Python or NumPy ints and floats; not bools, strings, lists,
    NaN or infinities) as a TensorBoard scalar at ``step``, tagged with its key as is (``"total"``,
    ``"rescored_best"``, ``"total/3"``: TensorBoard groups the tags by what precedes a slash). The step
    column ``step_key`` is the x axis and is not repeated as a scalar. The event writer
    (``tensorboardX.SummaryWriter``, no TensorFlow needed) is opened at the first ``log`` and flushed
    after each, so TensorBoard shows the run as it goes; ``close`` (or leaving a ``with`` block) closes
    it. Nothing is created in ``DIR`` before the first ``log``.

    Each opening writes a new event file (``events.out.tfevents.<seconds>.<host>.<nanoseconds>``, names
    that sort in writing order). The first one starts with a restart marker at ``start + 1``:
    TensorBoard drops the events at steps ``> start`` of the files before it, those of a run interrupted
    after its last save at ``start`` (whose rows ``trim_jsonl`` drops), so each step is shown once.

    Args:
        out_dir: the stage directory (must exist by the first ``log``).
        step_key: the records' step column (``"step"``, ``"generation"``), or None to add every column.
        start: the step this run starts from: 0 for a new run, the saved step or generation for a resumed one.

    Example::

        with MetricsLog(out_dir, step_key="step", start=start) as log:
            log.log({"step": 100, "total": 0.5}, 100)
    """

    def __init__(self, out_dir: Path, *, step_key: str | None = None, start: int = 0):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / METRICS_FILE
        self.tb_dir = self.out_dir / TB_DIR
        self.step_key = step_key
        self.start = int(start)
        self._writer: SummaryWriter | None = None
        self._purge_step: int | None = self.start + 1  # the restart marker, in the first event file only

    def log(self, record: dict[str, Any], step: int) -> None:
        """Append ``record`` to ``metrics.jsonl`` and its finite real values to TensorBoard at ``step``.

        Args:
            record: one row; JSON-serialisable (written unchanged, key order kept).
            step: the TensorBoard step (x axis): the record's update or generation count.

        Raises:
            TypeError: if ``record`` is not JSON-serialisable (nothing is written then).
            OSError: if ``metrics.jsonl`` or the event file cannot be written.
        """
        append_jsonl(self.path, record)
        writer = self._open()
        for key, value in record.items():
            if key != self.step_key and _finite_scalar(value):
                writer.add_scalar(key, float(value), global_step=int(step))
        writer.flush()

    def close(self) -> None:
        """Flush and close the event file; a later ``log`` opens a new one. Closing twice is harmless."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> SummaryWriter:
        """The event writer, opened on first use (the first one with the restart marker at ``start + 1``)."""
        if self._writer is None:
            self._writer = SummaryWriter(
                logdir=str(self.tb_dir),
                purge_step=self._purge_step,
                # the default name has whole seconds only and a second writer within that second would
                # overwrite the first's file: the nanosecond suffix keeps names distinct and in order
                filename_suffix=f".{time.time_ns()}",
            )
            self._purge_step = None  # a reopening after ``close`` must not hide this run's own events
        return self._writer
