"""The project's error types, in one module that imports nothing of the project.

Each is raised with a one-line message that names the file or flag at fault and what to do; the
scripts (``worldmodels.cli.run_main``) print that line and exit 1 instead of a traceback.
"""

from __future__ import annotations


class MissingInput(RuntimeError):
    """A stage's input does not exist; the message names it and the command that produces it."""


class DatasetError(RuntimeError):
    """A dataset is missing or unreadable."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match what the caller expects."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint step exists but its metadata or arrays cannot be read (a disk fault, a killed copy); loaders
    fall back to the step before it (``checkpoint.newest_loadable``)."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the last good checkpoint."""
