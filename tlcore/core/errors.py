"""One error family for everything a user can get wrong.

Every message says what was wrong, names the file where there is one, and says what to do.
"""
from __future__ import annotations


class TLError(Exception):
    """An error whose message is meant for the user, not a traceback."""


class BadImageError(TLError):
    """A file that cannot be used as a training or test image."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


class WeightsUnavailableError(TLError):
    """Pretrained weights are not on this machine and could not be fetched."""
