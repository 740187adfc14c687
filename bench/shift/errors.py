"""The two user-facing failures of the shift package, as :mod:`bench.errors` subclasses.

Both are one line: the CLI prints ``str(err)`` and exits, so the message itself must say
what to do (which extra to install) or where to look (which corruption, severity, image).
"""
from __future__ import annotations

from bench.errors import ConfigError, DataError

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
