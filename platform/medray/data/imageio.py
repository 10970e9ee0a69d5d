"""Image decoding shared by ingest, validation, training pipelines and serving.

One entry point, :func:`decode`, takes the bytes of a JPEG, PNG, TIFF, BMP or DICOM file and returns a
numpy array. It handles 8/16-bit, grey/RGB/RGBA/CMYK/palette, EXIF orientation, DICOM (JPEG 2000 through
pydicom + pylibjpeg, RLE, YBR colour), and refuses images above a pixel-count limit before decoding them
(decompression bombs). Every failure is a typed :class:`~medray.errors.ImageDecodeError` naming the file.

For big JPEGs that will be shrunk anyway (fundus photos are 2-12 MP, models want 224-1024 px), pass
``target=`` and the JPEG is decoded at a reduced DCT scale (Pillow ``draft``): 2-8x fewer pixels
decoded, which is the largest single speed lever of ingest and training input.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from medray.errors import (
    DecompressionBombError,
    EmptyFileError,
    ImageDecodeError,
    MissingFileError,
    TruncatedImageError,
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


def _check_pixels(name: str, w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise UnsupportedImageError(name, f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise DecompressionBombError(
            name, f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)"
        )


def image_size(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the header only, after EXIF orientation. Raises ImageDecodeError."""
    if not data:
        raise EmptyFileError(name, "file is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt == "dicom":
        ds = _read_dicom(data, name, stop_before_pixels=True)
        try:
            w, h = int(ds.Columns), int(ds.Rows)
        except AttributeError:
            raise UnsupportedImageError(name, "DICOM has no image (no Rows/Columns)") from None
        return w, h
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            orient = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    except Image.UnidentifiedImageError:
        raise UnsupportedImageError(name, f"not a recognised image (format {fmt})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise TruncatedImageError(name, f"unreadable header: {e}") from None
    _check_pixels(name, w, h, max_pixels)
    if orient in (5, 6, 7, 8):
        w, h = h, w
    return w, h


def _read_dicom(data: bytes, name: str, stop_before_pixels: bool = False):
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise UnsupportedImageError(name, "DICOM support needs pydicom") from None
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types
        raise TruncatedImageError(name, f"unreadable DICOM: {e}") from None


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    ds = _read_dicom(data, name)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnsupportedImageError(name, "DICOM has no pixel data (not an image)")
    _check_pixels(name, int(getattr(ds, "Columns", 0)), int(getattr(ds, "Rows", 0)), max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing codec, corrupt stream
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        tsname = getattr(ts, "name", str(ts))
        raise UnsupportedImageError(name, f"cannot decode DICOM pixel data ({tsname}): {e}") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]  # multi-frame: the first frame (a photo series' first image)
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if spp == 3 and photometric.startswith("YBR") and photometric != "YBR_FULL_422":
        # pydicom leaves some YBR data in YCbCr; convert so every caller sees RGB
        try:
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        except Exception:  # noqa: BLE001 - already RGB after decoding
            pass
    if spp == 1 and photometric == "MONOCHROME1":
        arr = arr.max() - arr
    if arr.dtype.kind == "f" or arr.dtype.kind == "i" or (arr.dtype.kind == "u" and arr.dtype.itemsize > 1):
        arr = _rescale_to_uint8(arr.astype(np.float32))
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


def decode(
    data: bytes,
    name: str = "<bytes>",
    *,
    mode: Mode = "RGB",
    target: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode image bytes to ``HxW`` (mode L), ``HxWx3`` (RGB) or the native array (keep).

    Args:
        data: the file's bytes.
        name: file name/URI used in error messages.
        mode: ``"RGB"`` (default), ``"L"`` (grey) or ``"keep"`` (native channels and bit depth).
        target: if set, a JPEG may be decoded at a reduced scale whose shorter side is still
            >= ``target`` (the caller resizes afterwards).
        max_pixels: refuse images with more pixels than this, before decoding.

    Raises:
        EmptyFileError, TruncatedImageError, UnsupportedImageError, DecompressionBombError.
    """
    if not data:
        raise EmptyFileError(name, "file is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt == "dicom":
        arr = _decode_dicom(data, name, max_pixels)
        if mode == "keep":
            return arr
        if arr.ndim == 2:
            return np.repeat(arr[..., None], 3, axis=2) if mode == "RGB" else arr
        if mode == "L":
            return np.asarray(Image.fromarray(arr[..., :3]).convert("L"))
        return arr[..., :3]
    try:
        im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise UnsupportedImageError(name, f"not a recognised image format (magic {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise TruncatedImageError(name, f"unreadable header: {e}") from None
    try:
        w, h = im.size
        _check_pixels(name, w, h, max_pixels)
        if target and im.format == "JPEG" and min(w, h) > 2 * target:
            scale = min(w, h) / target
            im.draft(im.mode if im.mode in ("RGB", "L") else "RGB", (int(w / scale), int(h / scale)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        im = ImageOps.exif_transpose(im)
        return _pil_to_array(im, mode)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        if "truncated" in msg or "broken data stream" in msg or isinstance(e, (EOFError, SyntaxError)):
            raise TruncatedImageError(name, f"truncated or corrupt {fmt}: {msg}") from None
        raise TruncatedImageError(name, f"cannot decode {fmt}: {msg}") from None
    finally:
        im.close()


def read_image(uri: str, *, s3=None, mode: Mode = "RGB", target: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a file (any storage URI) and decode it; a missing file is a MissingFileError."""
    from medray import storage

    try:
        data = storage.read_bytes(uri, s3)
    except FileNotFoundError:
        raise MissingFileError(uri, "file not found") from None
    except IsADirectoryError:
        raise UnsupportedImageError(uri, "is a folder, not a file") from None
    return decode(data, uri, mode=mode, target=target, max_pixels=max_pixels)


def resize(arr: np.ndarray, size: int | tuple[int, int], how: Literal["pad", "stretch", "crop"] = "pad",
           resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize to ``size`` (int = square, or ``(h, w)``).

    ``pad``: keep the aspect ratio, fit inside, pad with zeros (letterbox; the default for fundus and
    skin: nothing is cut off). ``crop``: keep aspect, fill, centre-crop. ``stretch``: ignore aspect.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = arr.shape[:2]
    if (h, w) == (th, tw):
        return arr
    im = Image.fromarray(arr)
    if how == "stretch":
        return np.asarray(im.resize((tw, th), resample, reducing_gap=3.0))
    s = min(th / h, tw / w) if how == "pad" else max(th / h, tw / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    im = im.resize((nw, nh), resample, reducing_gap=3.0)
    small = np.asarray(im)
    if how == "crop":
        y0, x0 = (nh - th) // 2, (nw - tw) // 2
        return np.ascontiguousarray(small[y0 : y0 + th, x0 : x0 + tw])
    out = np.zeros((th, tw) + small.shape[2:], small.dtype)
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = small
    return out


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
