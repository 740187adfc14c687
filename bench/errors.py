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


# --------------------------------------------------------------------------- corruptions (bench.corrupt)
# pip cannot install medmnistc together with our pins in one resolution (it pins
# medmnist==3.0.1 and scikit-image==0.23.2), so it is installed without its dependencies
# after the extra, and Wand needs ImageMagick's C library from Debian.
INSTALL_HINT = (
    "pip install -e '.[shift]' && pip install --no-deps medmnistc==0.1.0 "
    "(and apt-get install libmagickwand-6.q16-6 for Wand)"
)


class MissingExtra(ConfigError):
    """A corruption backend (medmnistc, torchio) cannot be imported."""

    def __init__(self, package: str, cause: BaseException):
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"corrupted test sets need '{package}', which cannot be imported ({first_line}); "
                         f"install the shift extra: {INSTALL_HINT}")
        self.package = package


class CorruptionFailed(DataError):
    """A corruption raised, or returned an image of the wrong shape or dtype."""

    def __init__(self, flag: str, corruption: str, severity: int | None, index: int, reason: str,
                 where: str = "test image"):
        at = f" at severity {severity}" if severity is not None else ""
        super().__init__(f"{flag}: corruption '{corruption}'{at} failed on {where} {index}: {reason}")
        self.flag, self.corruption, self.severity, self.index = flag, corruption, severity, index
