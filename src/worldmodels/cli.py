"""Command-line plumbing shared by the top-level scripts: preset defaults, tyro parsing, clean errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import tyro

from worldmodels.config import Preset, available_presets, load_preset

T = TypeVar("T")

DEFAULT_PRESET = "quick"


def parse(args_cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """Parse ``argv`` into ``args_cls`` whose defaults come from the chosen ``--preset``.

    ``args_cls`` is a dataclass with a required ``run_dir``, a ``preset`` name, and fields named like
    the ``Preset`` fields (``collect``, ``vae``, ...) that take the preset's values as defaults, so
    ``--help`` shows the preset's numbers and any flag overrides one of them.
    """
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=DEFAULT_PRESET)
    known, _ = pre.parse_known_args(argv)
    try:
        preset = load_preset(known.preset)
    except ValueError as err:
        sys.exit(f"error: {err}")
    preset_fields = {f.name for f in dataclasses.fields(Preset)}
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(args_cls):
        if f.name == "run_dir":
            defaults[f.name] = tyro.MISSING
        elif f.name == "preset":
            defaults[f.name] = known.preset
        elif f.name in preset_fields:
            defaults[f.name] = getattr(preset, f.name)
        elif f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        else:
            defaults[f.name] = f.default_factory()  # type: ignore[misc]
    description += f"\n\nPresets: {', '.join(available_presets())} (default {DEFAULT_PRESET})."
    return tyro.cli(args_cls, default=args_cls(**defaults), description=description, args=argv)


def run_main(fn: Callable[[], Any]) -> None:
    """Call ``fn``; the project's expected errors become one line on stderr and exit status 1."""
    from worldmodels.checkpoint import CheckpointError
    from worldmodels.data import DatasetError
    from worldmodels.stages import MissingInput
    from worldmodels.train import TrainingDiverged

    try:
        fn()
    except (MissingInput, CheckpointError, DatasetError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
