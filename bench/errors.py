"""User-facing errors.

Anything a user can cause (a typo, a missing file, a closed port) is raised as a
:class:`BenchError`. The CLI prints its message as a single line on stderr and exits
with a non-zero code -- no traceback -- because the message already says what went
wrong, where, and how to fix it. Programming errors stay ordinary exceptions.
"""
from __future__ import annotations


class BenchError(Exception):
    """A problem the user can fix; ``str(err)`` is the one line we show them."""

    exit_code = 2


class DataError(BenchError):
    """Missing, damaged or unverified data files."""


class ConfigError(BenchError):
    """Invalid suite YAML, unknown names, wrong types."""


class NotApplicable(BenchError):
    """An objective has no form for this task (e.g. a binary-only loss on multi-label)."""

    exit_code = 3


class TrainingDiverged(BenchError):
    """The loss became NaN/inf; the cell stops and is recorded as FAILED."""


class TrackingError(BenchError):
    """The MLflow tracking store or artifact location cannot be used."""
