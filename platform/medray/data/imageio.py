"""Image decoding shared by ingest, validation, training pipelines and serving.

One entry point, :func:`decode`, takes the bytes of a JPEG, PNG, TIFF, BMP or DICOM file and returns a
numpy array. It handles 8/16-bit, grey/RGB/RGBA/CMYK/palette, EXIF orientation, DICOM (JPEG 2000 through
pydicom + pylibjpeg, RLE, YBR colour), and refuses images above a pixel-count limit before decoding them
(decompression bombs). Every failure is a typed :class:`~medray.errors.ImageDecodeError` naming the file.

For big JPEGs that will be shrunk anyway (fundus photos are 2-12 MP, models want 224-1024 px), pass
``target=`` and the JPEG is decoded at a reduced DCT scale (Pillow ``draft``): 2-8x fewer pixels
decoded, which is the largest single speed lever of ingest and training input. The whole stream is
still read, so a truncated file is still a TruncatedImageError.

Also: :func:`image_size` (header only, after EXIF orientation, pixel limit checked),
:func:`read_image`/:func:`read_file` (any storage URI), :func:`decode_mask`/:func:`read_mask`
(class-id masks: palette indices, never colours) and :func:`resize` (pad/crop/stretch).

Errors: MissingFileError, UnreadableFileError, EmptyFileError, TruncatedImageError (a subclass of
CorruptImageError), CorruptImageError, UnsupportedImageError, DecompressionBombError. Everything here
is thread-safe (``medray data validate`` decodes in a thread pool).
"""

from __future__ import annotations

import io
import logging
import struct
import threading
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from medray.errors import (
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    ImageDecodeError,
    MissingFileError,
    TruncatedImageError,
    UnreadableFileError,
    UnsupportedImageError,
)

ImageFile.LOAD_TRUNCATED_IMAGES = False
# We enforce our own limit (max_pixels) before decoding; disable Pillow's warning/second limit so a
# caller who raises max_pixels is obeyed.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 20_000 * 20_000  # 400 MP: far above any fundus/OCT/skin photo
Mode = Literal["RGB", "L", "keep"]


def sniff_format(data: bytes) -> str:
    """Format from magic bytes: jpeg, png, tiff, bmp, gif, webp, dicom, or unknown."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "unknown"


_TRUNCATION_WORDS = ("truncated", "premature end", "not enough data", "no tag to read", "end of file",
                     "incomplete", "requires a buffer of at least")


def _ends_early(data: bytes | None, fmt: str) -> bool:
    """Structural check that the file stops before its format's end: a PNG whose chunk list runs past
    the end of the data before IEND, a JPEG without an end-of-image marker."""
    if not data:
        return False
    if fmt == "png":
        pos = 8
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            if data[pos + 4 : pos + 8] == b"IEND":
                return False
            pos += 12 + length
        return True
    if fmt == "jpeg":
        return b"\xff\xd9" not in data[-4096:]
    return False


def _decode_failure(name: str, fmt: str, e: BaseException, what: str, data: bytes | None = None) -> ImageDecodeError:
    """A Pillow/codec exception -> TruncatedImageError (the data ends early) or CorruptImageError."""
    msg = str(e) or type(e).__name__
    low = msg.lower()
    if isinstance(e, EOFError) or any(k in low for k in _TRUNCATION_WORDS) or _ends_early(data, fmt):
        return TruncatedImageError(name, f"truncated {fmt} ({what}): {msg}")
    return CorruptImageError(name, f"corrupt {fmt} ({what}): {msg}")


_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF", "webp": "WEBP"}


def _unopenable(data: bytes, name: str, fmt: str) -> ImageDecodeError:
    """Why Pillow could not open a file: unknown magic -> UnsupportedImageError; a known magic whose
    header is cut or corrupt -> Truncated/CorruptImageError (Pillow hides the cause behind
    UnidentifiedImageError, so the format's own opener is asked again)."""
    key = _PIL_FORMATS.get(fmt)
    if key is None:
        return UnsupportedImageError(name, f"not a recognised image format (magic {data[:8]!r})")
    try:
        Image.preinit()
        Image.init()
        Image.OPEN[key][0](io.BytesIO(data), "")
    except Exception as e:  # noqa: BLE001
        return _decode_failure(name, fmt, e, "header", data)
    return CorruptImageError(name, f"corrupt {fmt} header")


def _check_pixels(name: str, w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise UnsupportedImageError(name, f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise DecompressionBombError(
            name, f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)"
        )


def _png_exif_orientation(data: bytes) -> int:
    """EXIF orientation of a PNG from its ``eXIf`` chunk, found by walking the chunk headers (no
    decompression: Pillow's ``getexif`` on a PNG decodes the whole image first)."""
    pos = 8
    n = len(data)
    while pos + 8 <= n:
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"eXIf":
            exif = Image.Exif()
            try:
                exif.load(data[pos + 8 : pos + 8 + length])
                return int(exif.get(0x0112, 1) or 1)
            except Exception:  # noqa: BLE001 - a corrupt EXIF block means "no orientation"
                return 1
        if ctype == b"IEND":
            break
        pos += 12 + length
    return 1


def _pillow_orients_tiff() -> bool:
    """Whether this Pillow applies a TIFF's orientation tag itself (size and pixels), as newer
    versions do; probed once on a 2x1 TIFF so we never rotate twice."""
    try:
        buf = io.BytesIO()
        Image.new("L", (2, 1)).save(buf, "TIFF", tiffinfo={0x0112: 6})
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            return im.size == (1, 2)
    except Exception:  # noqa: BLE001 - no TIFF support: nothing to orient
        return False


_PILLOW_ORIENTS_TIFF = _pillow_orients_tiff()


def _orientation(im: Image.Image, data: bytes) -> int:
    """The EXIF orientation still to apply to ``im`` (1 when none or when Pillow applies it)."""
    if im.format == "TIFF" and _PILLOW_ORIENTS_TIFF:
        return 1
    if im.format == "PNG":
        return _png_exif_orientation(data)
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: no orientation
        return 1


def image_size(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the header only, after EXIF orientation. Raises ImageDecodeError
    (including DecompressionBombError when the header claims more than ``max_pixels``)."""
    if not data:
        raise EmptyFileError(name, "file is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt == "dicom":
        ds = _read_dicom(data, name, stop_before_pixels=True)
        try:
            w, h = int(ds.Columns), int(ds.Rows)
        except (AttributeError, TypeError, ValueError):
            raise UnsupportedImageError(name, "DICOM has no image (no Rows/Columns)") from None
        _check_pixels(name, w, h, max_pixels)
        return w, h
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            _check_pixels(name, w, h, max_pixels)  # before anything that may decode pixels
            orient = _orientation(im, data)
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise _unopenable(data, name, fmt) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise _decode_failure(name, fmt, e, "header", data) from None
    if orient in (5, 6, 7, 8):
        w, h = h, w
    return w, h


class _PydicomMessages(logging.Handler):
    """Collects what pydicom logs while the *current thread* reads a file. pydicom reports a file
    that ends inside a value only as a warning (and drops the element); ``warnings.catch_warnings``
    is process-global and not thread-safe, so parallel readers (``medray data validate``) would see
    each other's warnings. Log records are handled in the emitting thread: a thread-local list is
    exact."""

    _local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        msgs = getattr(self._local, "msgs", None)
        if msgs is not None:
            msgs.append(record.getMessage())


_PYDICOM_MESSAGES = _PydicomMessages(level=logging.WARNING)
_PYDICOM_HOOKED = False
_HOOK_LOCK = threading.Lock()


def _read_dicom(data: bytes, name: str, stop_before_pixels: bool = False):
    global _PYDICOM_HOOKED
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise UnsupportedImageError(name, "DICOM support needs pydicom") from None
    if not _PYDICOM_HOOKED:
        with _HOOK_LOCK:
            if not _PYDICOM_HOOKED:
                logging.getLogger("pydicom").addHandler(_PYDICOM_MESSAGES)
                _PYDICOM_HOOKED = True
    local = _PydicomMessages._local
    local.msgs = msgs = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types
        raise _decode_failure(name, "dicom", e, "dataset") from None
    finally:
        local.msgs = None
    for m in msgs:
        if "end of file" in m.lower():
            raise TruncatedImageError(name, f"truncated dicom: {m}")
    if len(ds) == 0:
        raise TruncatedImageError(name, "truncated dicom: no data set after the file meta information")
    return ds


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """First frame of a DICOM image as uint8 (grey ``HxW`` or RGB ``HxWx3``) or its native array when
    it is already 8-bit. YBR colour is returned as RGB (pydicom converts it: ``as_rgb``)."""
    ds = _read_dicom(data, name)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnsupportedImageError(name, "DICOM has no pixel data (not an image, or a truncated file)")
    try:
        w, h = int(ds.Columns), int(ds.Rows)
    except (AttributeError, TypeError, ValueError):
        raise UnsupportedImageError(name, "DICOM has no image (no Rows/Columns)") from None
    _check_pixels(name, w, h, max_pixels)
    try:
        from pydicom.pixels import pixel_array

        # index=0: decode only the first frame of a multi-frame object (a photo series' first image)
        arr = pixel_array(ds, index=0)
    except Exception as e:  # noqa: BLE001 - missing codec, corrupt stream
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        tsname = getattr(ts, "name", str(ts))
        if "less than expected" in str(e):
            raise TruncatedImageError(name, f"truncated dicom pixel data ({tsname}): {e}") from None
        raise UnsupportedImageError(name, f"cannot decode DICOM pixel data ({tsname}): {e}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if arr.dtype != np.uint8:
        arr = _rescale_to_uint8(arr.astype(np.float32))
    if arr.ndim == 2 and photometric == "MONOCHROME1":  # 0 = white: invert so every caller sees 0 = black
        arr = 255 - arr
    return np.ascontiguousarray(arr)


def _rescale_to_uint8(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _pil_to_array(im: Image.Image, mode: Mode) -> np.ndarray:
    m = im.mode
    if m in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode == "keep":
            return arr.astype(np.uint16) if m.startswith("I;16") else arr
        if m.startswith("I;16"):
            a8 = (arr.astype(np.uint32) // 257).astype(np.uint8)
        else:
            a8 = _rescale_to_uint8(arr.astype(np.float32))
        return np.repeat(a8[..., None], 3, axis=2) if mode == "RGB" else a8
    if mode == "keep":
        if m in ("P", "PA"):
            im = im.convert("RGBA" if "transparency" in im.info or m == "PA" else "RGB")
        elif m in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        elif m == "1":
            im = im.convert("L")
        return np.asarray(im)
    if m in ("RGBA", "LA", "PA") or (m == "P" and "transparency" in im.info):
        # composite on black (the usual fundus/skin background) rather than dropping alpha blindly
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.asarray(im.convert(mode))


def _draft_scale(w: int, h: int, need_w: int, need_h: int) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) whose reduced image is still >= ``need_w`` x ``need_h``
    (so the resize after it only ever shrinks: no quality is traded for the speed)."""
    for s in (8, 4, 2):
        if -(-w // s) >= need_w and -(-h // s) >= need_h:  # Pillow's reduced size is ceil(size / s)
            return s
    return 1


def _resized_dims(w: int, h: int, size: int | tuple[int, int], how: str) -> tuple[int, int]:
    """(width, height) the image itself is scaled to by :func:`resize` (before any pad or crop)."""
    th, tw = (size, size) if isinstance(size, int) else size
    if how == "stretch":
        return tw, th
    s = min(th / h, tw / w) if how == "pad" else max(th / h, tw / w)
    return max(1, round(w * s)), max(1, round(h * s))


def decode(
    data: bytes,
    name: str = "<bytes>",
    *,
    mode: Mode = "RGB",
    target: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: int | tuple[int, int] | None = None,
    how: Literal["pad", "stretch", "crop"] = "pad",
) -> np.ndarray:
    """Decode image bytes to ``HxW`` (mode L), ``HxWx3`` (RGB) or the native array (keep).

    Args:
        data: the file's bytes.
        name: file name/URI used in error messages.
        mode: ``"RGB"`` (default), ``"L"`` (grey) or ``"keep"`` (native channels and bit depth).
        target: if set, a JPEG may be decoded at a reduced scale whose shorter side is still
            >= ``target`` (the caller resizes afterwards). Truncation is still detected.
        max_pixels: refuse images with more pixels than this, before decoding.
        size: if set, also resize to this size (see :func:`resize`, ``how``) — done on the Pillow
            image before it becomes an array (one copy less). Without ``target``, a JPEG is decoded
            at the smallest DCT scale that still covers what ``how`` scales the image to (for
            ``pad`` the longer side decides, for ``crop`` the shorter, for ``stretch`` both), so
            the resize only shrinks: the fast path of every training input pipeline.

    Raises:
        EmptyFileError, TruncatedImageError, CorruptImageError, UnsupportedImageError,
        DecompressionBombError (all ImageDecodeError, naming ``name``).
    """
    if mode not in ("RGB", "L", "keep"):
        raise ValueError(f"mode must be 'RGB', 'L' or 'keep', not {mode!r}")
    if not data:
        raise EmptyFileError(name, "file is empty (0 bytes)")
    if size is not None and mode == "keep":
        if target is None:
            target = size if isinstance(size, int) else min(size)
        return resize(decode(data, name, mode=mode, target=target, max_pixels=max_pixels), size, how)
    fmt = sniff_format(data)
    if fmt == "dicom" and size is not None:
        return resize(decode(data, name, mode=mode, max_pixels=max_pixels), size, how)
    if fmt == "dicom":
        arr = _decode_dicom(data, name, max_pixels)
        if mode == "keep":
            return arr
        if arr.ndim == 2:
            return np.repeat(arr[..., None], 3, axis=2) if mode == "RGB" else arr
        if mode == "L":
            return np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., :3])).convert("L"))
        return np.ascontiguousarray(arr[..., :3])
    try:
        im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise _unopenable(data, name, fmt) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise _decode_failure(name, fmt, e, "header", data) from None
    try:
        w, h = im.size
        _check_pixels(name, w, h, max_pixels)
        orientation = None  # parsed once, here when the draft needs it, else after load
        if (target or size is not None) and im.format in ("JPEG", "MPO"):
            if target:
                s = _draft_scale(w, h, int(target), int(target))
            else:
                # orientations 5-8 transpose the stored pixels: size the draft in stored orientation
                orientation = _orientation(im, data)
                turned = orientation >= 5
                nw, nh = _resized_dims(h if turned else w, w if turned else h, size, how)
                s = _draft_scale(w, h, *((nh, nw) if turned else (nw, nh)))
            if s > 1:
                # an RGB JPEG wanted in grey decodes its luma plane only
                im.draft("L" if mode == "L" else im.mode, (w // s, h // s))
        im.load()
        if (orientation if orientation is not None else _orientation(im, data)) != 1:
            im = ImageOps.exif_transpose(im)
        if size is None:
            return _pil_to_array(im, mode)
        if im.mode in ("RGB", "L") and mode in ("RGB", "L"):
            return np.asarray(_resize_pil(im if im.mode == mode else im.convert(mode), size, how))
        return resize(_pil_to_array(im, mode), size, how)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow/codec errors on corrupt data
        raise _decode_failure(name, fmt, e, "pixel data", data) from None
    finally:
        im.close()


def read_image(uri: str, *, s3=None, mode: Mode = "RGB", target: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a file (any storage URI) and decode it; a missing file is a MissingFileError."""
    return decode(read_file(uri, s3=s3), uri, mode=mode, target=target, max_pixels=max_pixels)


def read_file(uri: str, *, s3=None) -> bytes:
    """The bytes of an image file; failures are ImageDecodeErrors naming the file
    (MissingFileError, UnreadableFileError)."""
    from medray import storage

    try:
        return storage.read_bytes(uri, s3)
    except FileNotFoundError:
        raise MissingFileError(uri, "file not found") from None
    except IsADirectoryError:
        raise UnreadableFileError(uri, "is a folder, not a file") from None
    except PermissionError as e:
        raise UnreadableFileError(uri, f"permission denied: {e}") from None
    except OSError as e:
        raise UnreadableFileError(uri, f"cannot read file: {e}") from None


def decode_mask(data: bytes, name: str = "<bytes>", *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a class-id mask to a 2-D integer array (``HxW``).

    Palette images give their palette indices (not colours), grey/16-bit images their values, and an
    RGB(A) image is accepted only when its colour channels are equal (a grey mask saved as RGB).
    Anything else is an UnsupportedImageError: class ids must not be guessed from colours.
    """
    if not data:
        raise EmptyFileError(name, "file is empty (0 bytes)")
    if sniff_format(data) == "dicom":
        arr = decode(data, name, mode="keep", max_pixels=max_pixels)
    else:
        try:
            im = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise _unopenable(data, name, sniff_format(data)) from None
        except Exception as e:  # noqa: BLE001
            raise _decode_failure(name, sniff_format(data), e, "mask header", data) from None
        try:
            _check_pixels(name, *im.size, max_pixels)
            if im.mode in ("1", "P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"):
                im.load()
                if _orientation(im, data) != 1:
                    im = ImageOps.exif_transpose(im)
                arr = np.asarray(im)
                if arr.dtype == bool:  # a 1-bit mask: ids 0/1 (not 0/255)
                    arr = arr.astype(np.uint8)
                if arr.dtype.byteorder == ">":
                    arr = arr.astype(arr.dtype.newbyteorder("="))
                return np.ascontiguousarray(arr)
        except ImageDecodeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _decode_failure(name, sniff_format(data), e, "mask", data) from None
        finally:
            im.close()
        arr = decode(data, name, mode="keep", max_pixels=max_pixels)
    if arr.ndim == 3:
        c = arr.shape[2]
        colour = arr[..., :1] if c <= 2 else arr[..., :3]  # L(A) or RGB(A)
        if c in (2, 4) and not np.all(arr[..., -1] == arr[..., -1].flat[0]):
            raise UnsupportedImageError(name, "mask has a varying alpha channel; expected single-channel class ids")
        if not np.all(colour == colour[..., :1]):
            raise UnsupportedImageError(name, f"mask has {c} colour channels with different values; "
                                              "expected single-channel class ids")
        arr = colour[..., 0]
    if arr.dtype.kind == "f":
        raise UnsupportedImageError(name, "mask has floating-point values; expected integer class ids")
    return np.ascontiguousarray(arr)


def read_mask(uri: str, *, s3=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode a class-id mask (see :func:`decode_mask`)."""
    return decode_mask(read_file(uri, s3=s3), uri, max_pixels=max_pixels)


def _resize_pil(im: Image.Image, size: int | tuple[int, int], how: str,
                resample: int = Image.BILINEAR) -> Image.Image:
    if how not in ("pad", "stretch", "crop"):
        raise ValueError(f"resize: how must be 'pad', 'crop' or 'stretch', not {how!r}")
    th, tw = (size, size) if isinstance(size, int) else size
    if th < 1 or tw < 1:
        raise ValueError(f"resize: size must be positive, got {size!r}")
    w, h = im.size
    if (h, w) == (th, tw):
        return im
    if how == "stretch":
        return im.resize((tw, th), resample)
    s = min(th / h, tw / w) if how == "pad" else max(th / h, tw / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = im.resize((nw, nh), resample)
    if how == "crop":
        y0, x0 = (nh - th) // 2, (nw - tw) // 2
        return small.crop((x0, y0, x0 + tw, y0 + th))
    canvas = Image.new(small.mode, (tw, th))
    canvas.paste(small, ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def resize(arr: np.ndarray, size: int | tuple[int, int], how: Literal["pad", "stretch", "crop"] = "pad",
           resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize to ``size`` (int = square, or ``(h, w)``).

    ``pad``: keep the aspect ratio, fit inside, pad with zeros (letterbox; the default for fundus and
    skin: nothing is cut off). ``crop``: keep aspect, fill, centre-crop. ``stretch``: ignore aspect.
    """
    if how not in ("pad", "stretch", "crop"):
        raise ValueError(f"resize: how must be 'pad', 'crop' or 'stretch', not {how!r}")
    th, tw = (size, size) if isinstance(size, int) else size
    if th < 1 or tw < 1:
        raise ValueError(f"resize: size must be positive, got {size!r}")
    if arr.shape[:2] == (th, tw):
        return arr
    if arr.dtype in (np.uint8,) or (arr.dtype == np.float32 and arr.ndim == 2):
        return np.asarray(_resize_pil(Image.fromarray(arr), size, how, resample))
    # other dtypes (uint16...): resize channel by channel as float32 images
    chans = arr[..., None] if arr.ndim == 2 else arr
    out = [np.asarray(_resize_pil(Image.fromarray(chans[..., c].astype(np.float32)), size, how, resample))
           for c in range(chans.shape[2])]
    res = np.stack(out, axis=2).round().clip(np.iinfo(arr.dtype).min if arr.dtype.kind in "iu" else -np.inf,
                                               np.iinfo(arr.dtype).max if arr.dtype.kind in "iu" else np.inf)
    res = res.astype(arr.dtype)
    return res[..., 0] if arr.ndim == 2 else res


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
