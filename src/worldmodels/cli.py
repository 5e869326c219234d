"""Command-line plumbing shared by the top-level scripts: preset defaults, tyro parsing, clean errors."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tyro

from worldmodels.config import Preset, available_presets, load_preset

T = TypeVar("T")

DEFAULT_PRESET = "quick"
CACHE_ENV = "WORLDMODELS_JAX_CACHE"
"""Environment variable naming the persistent compilation cache directory; empty disables the cache."""
CACHE_MIN_COMPILE_SECS = 0.1
"""Compilations at least this long are written to the persistent cache."""


def parse(args_cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """Parse ``argv`` into ``args_cls`` whose defaults come from the chosen ``--preset``.

    ``args_cls`` is a dataclass with a required ``run_dir``, a ``preset`` name, and fields named like
    the ``Preset`` fields (``collect``, ``vae``, ...) that take the preset's values as defaults, so
    ``--help`` shows the preset's numbers and any flag overrides one of them.
    """
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    own = {f.name: f.default for f in dataclasses.fields(args_cls)}.get("preset", DEFAULT_PRESET)
    default_preset = own if isinstance(own, str) else DEFAULT_PRESET
    pre.add_argument("--preset", default=default_preset)
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
    description += f"\n\nPresets: {', '.join(available_presets())} (default {default_preset})."
    return tyro.cli(args_cls, default=args_cls(**defaults), description=description, args=argv)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/worldmodels/jax``, or ``~/.cache/worldmodels/jax`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "worldmodels" / "jax"


def enable_compilation_cache(min_compile_secs: float = CACHE_MIN_COMPILE_SECS) -> Path | None:
    """Turn on JAX's persistent compilation cache so a rerun of a script skips XLA compilation.

    The directory is, in order: ``$WORLDMODELS_JAX_CACHE`` if set (an empty value disables the cache
    and returns ``None``); JAX's own ``jax_compilation_cache_dir`` if already set (for example by
    ``JAX_COMPILATION_CACHE_DIR``); else ``default_cache_dir()``. Programs whose compilation takes at
    least ``min_compile_secs`` are stored (JAX's default, 1 s, would skip the smaller dream and
    training steps). Must run before the first compilation that should be cached; JAX opens the
    cache lazily, at the first compilation after the directory is set.

    The cache is trusted code: do not point it at a directory that others can write.

    Returns:
        The cache directory (created), or ``None`` when disabled.
    """
    import jax

    env = os.environ.get(CACHE_ENV)
    if env is not None and not env.strip():
        return None
    path = Path(env).expanduser() if env else None
    if path is None:
        current = jax.config.jax_compilation_cache_dir
        path = Path(current) if current else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    return path


def run_main(fn: Callable[[], Any]) -> None:
    """Enable the compilation cache (``enable_compilation_cache``), then call ``fn``.

    The project's expected errors, and operating-system I/O errors (a read-only directory, a full disk, a file
    removed under a running stage), become one line on stderr naming the file, and exit status 1; Ctrl-C exits 130.
    """
    enable_compilation_cache()
    from worldmodels.checkpoint import CheckpointError
    from worldmodels.data import DatasetError
    from worldmodels.errors import MissingInput, TrainingDiverged

    try:
        fn()
    except (MissingInput, CheckpointError, DatasetError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"error: {where}{err.strerror or err}; fix that path (permissions, free disk space, a damaged file) and "
            "run the same command again: finished work is saved",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
