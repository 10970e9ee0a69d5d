"""Typed errors that the CLI turns into one clear line (never a traceback)."""

from __future__ import annotations


class MedrayError(Exception):
    """Base class: anything raised on purpose, with a message meant for a person."""


class ConfigError(MedrayError):
    """A job/spec file or an override is invalid. The message names the file and the field."""


class StorageError(MedrayError):
    """A URI could not be read or written."""


class ImageDecodeError(MedrayError):
    """An image file could not be decoded. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingFileError(ImageDecodeError):
    pass


class EmptyFileError(ImageDecodeError):
    pass


class TruncatedImageError(ImageDecodeError):
    pass


class UnsupportedImageError(ImageDecodeError):
    pass


class DecompressionBombError(ImageDecodeError):
    pass


class ManifestError(MedrayError):
    """A manifest is malformed (schema, missing column, bad task)."""
