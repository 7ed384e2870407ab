"""Exceptions raised for problems a user can fix. The CLI prints their message and exits non-zero."""

from __future__ import annotations


class TextSamError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class InputError(TextSamError, ValueError):
    """A bad argument: wrong shape, point outside the image, empty phrase, unreadable image, ..."""


class WeightsError(TextSamError, RuntimeError):
    """A checkpoint is missing, corrupt, of the wrong format, or cannot be downloaded."""


class DownloadError(TextSamError, RuntimeError):
    """A dataset file cannot be downloaded, is corrupt, or cannot be unpacked where it belongs."""


class CheckpointMismatchError(WeightsError):
    """A state dict does not fit the model: lists the missing and unexpected keys."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
