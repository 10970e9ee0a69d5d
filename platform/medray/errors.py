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
    """The file does not exist."""


class UnreadableFileError(ImageDecodeError):
    """The file exists but cannot be read (permission, I/O or network error, a folder)."""


class EmptyFileError(ImageDecodeError):
    """The file has 0 bytes."""


class CorruptImageError(ImageDecodeError):
    """The file is recognised but its data cannot be decoded (corrupt stream, bad chunk...)."""


class TruncatedImageError(CorruptImageError):
    """The file ends before the image data does (a cut/partial download)."""


class UnsupportedImageError(ImageDecodeError):
    """Not an image this platform decodes (unknown format, DICOM without pixels, missing codec)."""


class DecompressionBombError(ImageDecodeError):
    """The header claims more pixels than the limit; refused before decoding."""


class ManifestError(MedrayError):
    """A manifest is malformed (schema, missing column, bad task)."""
