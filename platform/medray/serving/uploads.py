"""Upload checks: every bad image becomes an :class:`UploadError` with an HTTP status and a message
naming the file and the problem, never a 500 and never a crashed replica.

Decoding happens once, in the ingress (:func:`decode_upload`), through
:func:`medray.data.imageio.decode` (JPEG, PNG, TIFF, BMP, DICOM): models receive a decoded,
size-bounded uint8 array. DICOM headers are read for ``Modality`` only; no other header field
(patient name, id, birth date...) is read into a variable that is logged or returned.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from medray.data import imageio
from medray.errors import (
    DecompressionBombError,
    EmptyFileError,
    ImageDecodeError,
    TruncatedImageError,
    UnsupportedImageError,
)

log = logging.getLogger(__name__)

DICOM_MODALITIES: dict[str, set[str]] = {
    # DICOM Modality codes accepted for each plan modality (OP ophthalmic photography, OPT ophthalmic
    # tomography, XC external-camera photography, SC secondary capture, OT other)
    "fundus": {"OP", "SC", "OT", "XC"},
    "rop": {"OP", "SC", "OT", "XC"},
    "oct": {"OPT", "OP", "SC", "OT"},
    "skin": {"XC", "SC", "OT"},
}


class UploadError(Exception):
    """A request the service refuses: ``status`` (4xx) and a message for the client."""

    def __init__(self, status: int, message: str, **extra: Any):
        self.status = int(status)
        self.message = message
        self.extra = extra
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


def safe_name(name: str | None) -> str:
    """A file name fit for a message: printable, at most 80 characters."""
    n = "".join(ch if ch.isprintable() else "?" for ch in str(name or "<upload>"))
    return n[:80] or "<upload>"


def dicom_modality(data: bytes) -> str | None:
    """The DICOM ``Modality`` code of a DICOM file (``None`` when absent or not DICOM)."""
    if imageio.sniff_format(data) != "dicom":
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["Modality"])
        v = getattr(ds, "Modality", None)
        return str(v).strip().upper() or None if v is not None else None
    except Exception:  # noqa: BLE001 - the full decode reports a broken file properly
        return None


def decode_upload(data: bytes, name: str, *, modality: str, max_pixels: int, min_side: int,
                  display_size: int) -> np.ndarray:
    """Decode and check one uploaded image for a plan of ``modality``.

    Returns:
        An RGB uint8 array whose longer side is at most ``display_size``.

    Raises:
        UploadError: 400 empty, 413 too many pixels, 415 not an image format we decode,
            422 corrupt/truncated/too small/wrong modality.
    """
    name = safe_name(name)
    if not data:
        raise UploadError(400, f"image {name!r} is empty (0 bytes)", kind="empty")
    fmt = imageio.sniff_format(data)
    dm = dicom_modality(data) if fmt == "dicom" else None
    if dm is not None and modality in DICOM_MODALITIES and dm not in DICOM_MODALITIES[modality]:
        raise UploadError(422, f"image {name!r} is DICOM of modality {dm!r}, but this plan is for {modality} "
                               f"images (DICOM {', '.join(sorted(DICOM_MODALITIES[modality]))})",
                          kind="wrong_modality")
    try:
        arr = imageio.decode(data, name, mode="RGB", target=display_size, max_pixels=max_pixels)
    except EmptyFileError as e:
        raise UploadError(400, str(e), kind="empty") from None
    except DecompressionBombError as e:
        raise UploadError(413, str(e), kind="too_many_pixels") from None
    except TruncatedImageError as e:
        raise UploadError(422, str(e), kind="truncated") from None
    except UnsupportedImageError as e:
        raise UploadError(415 if fmt == "unknown" else 422, str(e), kind="unsupported") from None
    except ImageDecodeError as e:
        raise UploadError(422, str(e), kind="corrupt") from None
    except Exception as e:  # noqa: BLE001 - never a 500 for a bad upload
        raise UploadError(422, f"{name}: cannot decode image ({type(e).__name__})", kind="corrupt") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise UploadError(422, f"image {name!r}: decoded to an unexpected array {arr.shape} {arr.dtype}",
                          kind="corrupt")
    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise UploadError(422, f"image {name!r} is {w}x{h} px; at least {min_side} px per side needed",
                          kind="too_small")
    if max(h, w) > display_size:
        s = display_size / max(h, w)
        arr = imageio.resize(arr, (max(1, round(h * s)), max(1, round(w * s))), how="stretch")
    log.info("upload %s: %s %dx%d", name, fmt, w, h)
    return np.ascontiguousarray(arr)
