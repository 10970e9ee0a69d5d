"""Image decoding (medray.data.imageio) on real files (public DICOM samples, ODIR fundus photos) and on
generated ones covering every mode, bit depth and failure the decoder promises to handle."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medray.data import imageio
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

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# --------------------------------------------------------------------------------------------
# helpers


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int, w: int, c: int | None = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    """A smooth RGB gradient: JPEG keeps it close to the original (noise would not)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h)], -1).astype(np.uint8)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


# --------------------------------------------------------------------------------------------
# DICOM (real files)


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    d = shared_data / "formats" / "dicom"
    if not d.is_dir():
        pytest.skip(f"DICOM samples not found at {d}")
    return d


def _dcm(dicom_dir: Path, name: str) -> tuple[str, bytes]:
    sub = "nema_wg04" if name.startswith("VL4") else "pydicom_test_files"
    p = dicom_dir / sub / name
    return str(p), p.read_bytes()


def test_dicom_fundus_jpeg2000_decodes_to_rgb(dicom_dir):
    path, data = _dcm(dicom_dir, "VL4_J2KI_fundoscopy.dcm")
    assert imageio.sniff_format(data) == "dicom"
    arr = imageio.decode(data, path)
    assert arr.shape == (1868, 2226, 3) and arr.dtype == np.uint8
    assert imageio.image_size(data, path) == (2226, 1868)
    # YBR_ICT colour came back as RGB: a fundus photo is red > green > blue
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > g > b and r > 50
    # the same file through read_image (storage path), in grey
    grey = imageio.read_image(path, mode="L")
    assert grey.shape == (1868, 2226) and grey.dtype == np.uint8
    assert abs(float(grey.mean()) - float((arr @ np.array([0.299, 0.587, 0.114])).mean())) < 2


def test_dicom_ct_16bit_grey_to_uint8(dicom_dir):
    path, data = _dcm(dicom_dir, "CT_small.dcm")
    rgb = imageio.decode(data, path)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    grey = imageio.decode(data, path, mode="L")
    assert grey.shape == (128, 128) and grey.dtype == np.uint8
    assert grey.min() == 0 and grey.max() == 255  # the signed 16-bit range is stretched to 8 bits
    keep = imageio.decode(data, path, mode="keep")
    assert keep.shape == (128, 128) and keep.dtype == np.uint8
    # the mapping is monotonic: brighter CT values stay brighter
    import pydicom

    raw = pydicom.dcmread(path).pixel_array.astype(np.int64)
    order = np.argsort(raw.ravel(), kind="stable")
    assert np.all(np.diff(grey.ravel()[order].astype(int)) >= 0)


def test_dicom_rle_rgb(dicom_dir):
    import pydicom

    path, data = _dcm(dicom_dir, "SC_rgb_rle.dcm")
    arr = imageio.decode(data, path)
    assert arr.shape == (100, 100, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr, pydicom.dcmread(path).pixel_array)
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 1


def test_dicom_multiframe_ybr_gives_rgb_first_frame(dicom_dir):
    from pydicom.pixels import pixel_array

    path, data = _dcm(dicom_dir, "examples_ybr_color.dcm")
    arr = imageio.decode(data, path)
    assert arr.shape == (240, 320, 3) and arr.dtype == np.uint8
    assert imageio.image_size(data, path) == (320, 240)
    raw_ybr = pixel_array(path, index=0, as_rgb=False)
    # an ultrasound image is mostly grey: in RGB the channels agree; raw YCbCr would have Cb/Cr ~ 128
    assert np.abs(arr[..., 0].astype(int) - arr[..., 1]).mean() < 3
    assert np.abs(raw_ybr[..., 0].astype(int) - raw_ybr[..., 1]).mean() > 50
    # it is the first of the 30 frames
    assert np.array_equal(arr, pixel_array(path, index=0))
    assert not np.array_equal(arr, pixel_array(path, index=15))


def test_dicom_ybr_full_uncompressed_is_converted_once(dicom_dir, tmp_path):
    """Regression: YBR_FULL pixel data was converted to RGB twice (pydicom, then imageio)."""
    import pydicom
    from pydicom.pixels import convert_color_space

    path, _ = _dcm(dicom_dir, "examples_rgb_color.dcm")
    ds = pydicom.dcmread(path)
    rgb = ds.pixel_array
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    out = tmp_path / "ybr_full.dcm"
    ds.save_as(out)
    arr = imageio.decode(out.read_bytes(), str(out))
    assert arr.shape == rgb.shape
    assert np.abs(arr.astype(int) - rgb).max() <= 3  # colour-space round trip, not a double conversion


def test_dicom_jpeg2000_lossless_matches_uncompressed(dicom_dir):
    path, data = _dcm(dicom_dir, "MR_small_jp2klossless.dcm")
    arr = imageio.decode(data, path)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    ref_path, ref = _dcm(dicom_dir, "MR_small.dcm")
    assert np.array_equal(arr, imageio.decode(ref, ref_path))  # lossless: the same pixels


def test_dicom_monochrome1_is_inverted(dicom_dir, tmp_path):
    import pydicom

    path, data = _dcm(dicom_dir, "MR_small.dcm")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    out = tmp_path / "mono1.dcm"
    ds.save_as(out)
    normal = imageio.decode(data, path, mode="L")
    inverted = imageio.decode(out.read_bytes(), str(out), mode="L")
    assert np.array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("name, cls, words", [
    ("JPEG-lossy.dcm", UnsupportedImageError, "JPEG Extended"),
    ("waveform_ecg.dcm", UnsupportedImageError, "no pixel data"),
])
def test_dicom_failures_are_typed_and_name_the_file(dicom_dir, name, cls, words):
    path, data = _dcm(dicom_dir, name)
    with pytest.raises(cls) as ei:
        imageio.decode(data, path)
    assert ei.value.path == path
    assert path in str(ei.value) and words in str(ei.value)
    with pytest.raises(cls):
        imageio.read_image(path)


def test_dicom_truncated(dicom_dir):
    path, data = _dcm(dicom_dir, "VL4_J2KI_fundoscopy.dcm")
    with pytest.raises(TruncatedImageError, match="truncated"):
        imageio.decode(data[: len(data) // 2], path)
    ct_path, ct = _dcm(dicom_dir, "CT_small.dcm")
    with pytest.raises(TruncatedImageError, match="less than expected"):
        imageio.decode(ct[: len(ct) // 2], ct_path)
    with pytest.raises(TruncatedImageError):
        imageio.decode(ct[:200], ct_path)  # only the preamble and part of the file meta


def test_dicom_truncation_detection_is_thread_safe(dicom_dir):
    """Parallel readers (validate) must not see each other's pydicom warnings: a good file read
    while another thread reads a truncated one still decodes, and the truncated one is flagged."""
    from concurrent.futures import ThreadPoolExecutor

    _, good = _dcm(dicom_dir, "MR_small_jp2klossless.dcm")
    cut = good[: len(good) // 2]
    jobs = [("good", good), ("cut", cut)] * 40

    def run(job):
        kind, data = job
        try:
            imageio.decode(data, kind)
            return kind, "ok"
        except TruncatedImageError:
            return kind, "truncated"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    assert results == [("good", "ok"), ("cut", "truncated")] * 40


def test_dicom_pixel_limit(dicom_dir):
    path, data = _dcm(dicom_dir, "VL4_J2KI_fundoscopy.dcm")
    for fn in (imageio.image_size, imageio.decode):
        with pytest.raises(DecompressionBombError, match="2226x1868"):
            fn(data, path, max_pixels=1_000_000)


# --------------------------------------------------------------------------------------------
# Real fundus JPEGs


def _odir(shared_data: Path) -> list[tuple[Path, int, int]]:
    csv_path = shared_data / "fundus_odir" / "labels.csv"
    if not csv_path.is_file():
        pytest.skip(f"ODIR sample not found at {csv_path}")
    with open(csv_path, newline="") as f:
        return [(shared_data / "fundus_odir" / r["file"], int(r["w"]), int(r["h"])) for r in csv.DictReader(f)]


def test_odir_header_sizes_and_reduced_decode(shared_data):
    rows = _odir(shared_data)
    assert len(rows) >= 10
    for path, w, h in rows:
        data = path.read_bytes()
        assert imageio.image_size(data, str(path)) == (w, h), path
        small = imageio.decode(data, str(path), target=224)
        assert small.dtype == np.uint8 and small.ndim == 3 and small.shape[2] == 3
        assert min(small.shape[:2]) >= 224
        if min(w, h) >= 448:  # at least 2x the target: a reduced DCT scale was used
            assert small.shape[0] < h and small.shape[1] < w
            ratio = (w / small.shape[1], h / small.shape[0])
            assert abs(ratio[0] - ratio[1]) < 0.05 * ratio[0]  # aspect ratio kept


def test_odir_full_decode_matches_header(shared_data):
    path, w, h = _odir(shared_data)[0]
    arr = imageio.read_image(str(path))
    assert arr.shape == (h, w, 3)


def test_odir_truncated_is_detected_even_with_target(shared_data):
    path, w, h = _odir(shared_data)[0]
    data = path.read_bytes()
    for target in (None, 64, 224):
        with pytest.raises(TruncatedImageError, match="truncated") as ei:
            imageio.decode(data[: len(data) // 2], str(path), target=target)
        assert ei.value.path == str(path)


# --------------------------------------------------------------------------------------------
# Generated files: modes and bit depths


def test_cmyk_jpeg():
    im = Image.new("RGB", (64, 48), (200, 30, 60)).convert("CMYK")
    data = _save(im, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    arr = imageio.decode(data)
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
    assert np.allclose(arr.reshape(-1, 3).mean(0), (200, 30, 60), atol=6)
    assert imageio.decode(data, mode="keep").shape == (48, 64, 3)
    assert imageio.decode(data, mode="L").shape == (48, 64)


def test_rgba_png_composites_on_black():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (10, 200, 90)
    rgba[:10, :, 3] = 255  # top half opaque, bottom half transparent
    data = _save(Image.fromarray(rgba), "PNG")
    arr = imageio.decode(data)
    assert arr.shape == (20, 30, 3)
    assert np.all(arr[:10] == (10, 200, 90)) and np.all(arr[10:] == 0)
    keep = imageio.decode(data, mode="keep")
    assert keep.shape == (20, 30, 4) and np.array_equal(keep, rgba)


def test_palette_png():
    rgb = _smooth(40, 50)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    data = _save(pal, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    expected = np.asarray(pal.convert("RGB"))
    assert np.array_equal(imageio.decode(data), expected)
    assert np.array_equal(imageio.decode(data, mode="keep"), expected)
    assert imageio.decode(data, mode="L").shape == (40, 50)


def test_palette_png_with_transparency():
    pal = Image.new("P", (8, 6), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 4, 6))
    data = _save(pal, "PNG", transparency=0)  # index 0 (red) transparent
    arr = imageio.decode(data)
    assert np.all(arr[:, :4] == (0, 255, 0)) and np.all(arr[:, 4:] == 0)
    assert imageio.decode(data, mode="keep").shape == (6, 8, 4)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grey(fmt):
    a16 = np.random.default_rng(1).integers(0, 65536, (30, 40)).astype(np.uint16)
    a16[0, 0], a16[0, 1] = 0, 65535
    data = _save(Image.fromarray(a16), fmt)
    keep = imageio.decode(data, mode="keep")
    assert keep.dtype == np.uint16 and np.array_equal(keep, a16)
    grey = imageio.decode(data, mode="L")
    assert grey.dtype == np.uint8 and np.array_equal(grey, (a16 // 257).astype(np.uint8))
    rgb = imageio.decode(data)
    assert rgb.shape == (30, 40, 3) and np.array_equal(rgb[..., 2], grey)


def test_16bit_big_endian_tiff():
    a16 = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600
    data = _save(Image.frombytes("I;16B", (10, 10), a16.astype(">u2").tobytes()), "TIFF")
    keep = imageio.decode(data, mode="keep")
    assert keep.dtype == np.uint16 and keep.dtype.byteorder in ("=", "<", "|") and np.array_equal(keep, a16)


def test_float_tiff_is_rescaled():
    f = np.linspace(-1.0, 3.0, 200, dtype=np.float32).reshape(10, 20)
    data = _save(Image.fromarray(f), "TIFF")
    grey = imageio.decode(data, mode="L")
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert imageio.decode(data, mode="keep").dtype == np.float32


def test_1bit_and_grey():
    bits = np.zeros((16, 24), bool)
    bits[4:8, 2:20] = True
    data = _save(Image.fromarray(bits), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    rgb = imageio.decode(data)
    assert rgb.shape == (16, 24, 3) and set(np.unique(rgb)) == {0, 255}
    assert np.array_equal(imageio.decode(data, mode="keep") > 0, bits)

    g = _noise(16, 24, None)
    data = _save(Image.fromarray(g), "PNG")
    assert np.array_equal(imageio.decode(data, mode="L"), g)
    assert np.array_equal(imageio.decode(data, mode="keep"), g)
    rgb = imageio.decode(data)
    assert rgb.shape == (16, 24, 3) and all(np.array_equal(rgb[..., i], g) for i in range(3))


def test_bmp_gif_webp_decode():
    rgb = _smooth(20, 30)
    for fmt, name in (("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp")):
        data = _save(Image.fromarray(rgb), fmt)
        assert imageio.sniff_format(data) == name
        assert imageio.decode(data).shape == (20, 30, 3)
        assert imageio.image_size(data) == (30, 20)


def test_mode_argument_is_checked():
    with pytest.raises(ValueError, match="mode"):
        imageio.decode(_save(Image.new("L", (4, 4)), "PNG"), mode="BGR")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_exif_orientation_6_swaps_width_and_height(fmt):
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[:8, :8] = 255  # marker in the stored top-left corner
    data = _save(Image.fromarray(arr), fmt, exif=_exif(6))
    assert imageio.image_size(data) == (30, 40)  # (width, height) as displayed
    out = imageio.decode(data)
    assert out.shape == (40, 30, 3)
    # orientation 6 = rotate 90 degrees clockwise for display: the stored top-left goes top-right
    assert out[:8, -8:].mean() > 200 and out[:8, :8].mean() < 50
    assert imageio.decode(data, mode="L").shape == (40, 30)
    assert imageio.decode(data, mode="keep").shape == (40, 30, 3)


def test_exif_orientation_6_with_reduced_jpeg_decode():
    data = _save(Image.fromarray(_smooth(1000, 1600)), "JPEG", exif=_exif(6))
    assert imageio.image_size(data) == (1000, 1600)
    out = imageio.decode(data, target=224)
    assert out.shape == (400, 250, 3)  # 1/4 scale, then rotated


def test_png_exif_after_pixel_data():
    """The eXIf chunk may follow IDAT; the header-only size must still see it (like decode does)."""
    data = _save(Image.fromarray(_smooth(30, 40)), "PNG", exif=_exif(6))
    chunks = _png_chunks(data)
    exif = [c for c in chunks if c[0] == b"eXIf"]
    rest = [c for c in chunks if c[0] not in (b"eXIf", b"IEND")]
    assert exif
    moved = b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(t, d) for t, d in rest + exif + [(b"IEND", b"")])
    assert imageio.image_size(moved) == (30, 40)
    assert imageio.decode(moved).shape == (40, 30, 3)


# --------------------------------------------------------------------------------------------
# Failures


def _bomb_png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    # IDAT is garbage: decoding it would fail with a *corrupt* error, so a DecompressionBombError
    # proves the size was refused before any pixel was decoded (and nothing was allocated)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"not zlib" * 8) + _chunk(b"IEND", b"")


def test_pixel_limit_refused_before_decoding():
    bomb = _bomb_png(100_000, 80_000)  # 8 Gpixel RGB = 24 GB if it were allocated
    for fn in (imageio.image_size, imageio.decode, imageio.decode_mask):
        with pytest.raises(DecompressionBombError, match="100000x80000") as ei:
            fn(bomb, "bomb.png")
        assert ei.value.path == "bomb.png"
    # the same header under the limit is decoded, and fails on its garbage data
    small = _bomb_png(10, 10)
    with pytest.raises(CorruptImageError):
        imageio.decode(small, "small.png")


def test_pixel_limit_is_configurable():
    data = _save(Image.fromarray(_smooth(100, 200)), "PNG")
    with pytest.raises(DecompressionBombError, match="20,000 pixels exceeds the limit of 19,999"):
        imageio.decode(data, "x.png", max_pixels=19_999)
    assert imageio.decode(data, "x.png", max_pixels=20_000).shape == (100, 200, 3)
    big = _bomb_png(25_000, 20_000)  # 500 Mpixel: above the default limit of 400 M
    with pytest.raises(DecompressionBombError):
        imageio.image_size(big, "big.png")
    assert imageio.image_size(big, "big.png", max_pixels=10**9) == (25_000, 20_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = _save(Image.fromarray(_noise(200, 300)), fmt)
    for cut in (len(data) // 2, len(data) // 5):
        with pytest.raises(TruncatedImageError, match="truncated") as ei:
            imageio.decode(data[:cut], f"cut.{fmt.lower()}")
        assert ei.value.path == f"cut.{fmt.lower()}"
        # the header survives: the size can still be read
        assert imageio.image_size(data[:cut]) == (300, 200)
    with pytest.raises(TruncatedImageError):
        imageio.decode(data[:40], "header-cut")


def test_corrupt_png_data():
    data = bytearray(_save(Image.fromarray(_noise(100, 100)), "PNG"))
    i = data.find(b"IDAT")
    data[i + 200 : i + 260] = b"\x00" * 60
    with pytest.raises(CorruptImageError, match="corrupt png"):
        imageio.decode(bytes(data), "bad.png")


def test_empty_and_random_bytes(tmp_path):
    for fn in (imageio.decode, imageio.image_size, imageio.decode_mask):
        with pytest.raises(EmptyFileError, match="0 bytes"):
            fn(b"", "empty.jpg")
    rnd = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for fn in (imageio.decode, imageio.image_size, imageio.decode_mask):
        with pytest.raises(UnsupportedImageError, match="not a recognised image") as ei:
            fn(rnd, "noise.bin")
        assert ei.value.path == "noise.bin"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError):
        imageio.read_image(str(empty))


def test_read_image_missing_and_folder(tmp_path):
    with pytest.raises(MissingFileError, match="not found") as ei:
        imageio.read_image(str(tmp_path / "nope.jpg"))
    assert ei.value.path == str(tmp_path / "nope.jpg")
    with pytest.raises(UnreadableFileError, match="folder"):
        imageio.read_image(str(tmp_path))


def test_all_failures_are_image_decode_errors():
    for cls in (MissingFileError, UnreadableFileError, EmptyFileError, TruncatedImageError, CorruptImageError,
                UnsupportedImageError, DecompressionBombError):
        assert issubclass(cls, ImageDecodeError)
    assert issubclass(TruncatedImageError, CorruptImageError)


# --------------------------------------------------------------------------------------------
# Reduced-size decode


@pytest.mark.parametrize("h, w, target, expected", [
    (1784, 2000, 224, (446, 500)),  # 1/8 would give 223 < 224: 1/4 is the largest allowed
    (1792, 2000, 224, (224, 250)),  # exactly 224 at 1/8
    (1000, 1000, 224, (250, 250)),
    (449, 500, 224, (225, 250)),
    (300, 400, 224, (300, 400)),  # too small to reduce
    (2000, 1600, 64, (250, 200)),  # at most 1/8
])
def test_reduced_jpeg_decode_size(h, w, target, expected):
    data = _save(Image.fromarray(_smooth(h, w)), "JPEG")
    out = imageio.decode(data, target=target)
    assert out.shape == expected + (3,)
    assert min(out.shape[:2]) >= min(target, h, w)
    assert imageio.decode(data, target=target, mode="L").shape == expected
    # content is the same picture, just smaller
    full = imageio.resize(imageio.decode(data), expected, how="stretch")
    assert np.abs(full.astype(int) - out).mean() < 6


@pytest.mark.parametrize("how, scale", [("pad", 4), ("crop", 2), ("stretch", 2)])
def test_decode_with_size_drafts_only_as_far_as_the_resize_needs(how, scale):
    """A 2196x1958 fundus-sized JPEG to 512 px: letterboxing fits the LONGER side (549 px at 1/4 is
    enough), cropping and stretching need the shorter side too (489 px at 1/4 is not: 1/2)."""
    assert imageio._draft_scale(2196, 1958, *imageio._resized_dims(2196, 1958, 512, how)) == scale
    data = _save(Image.fromarray(_smooth(1958, 2196)), "JPEG")
    fast = imageio.decode(data, size=512, how=how)
    exact = imageio.resize(imageio.decode(data), 512, how=how)
    assert fast.shape == exact.shape == (512, 512, 3)
    assert np.abs(fast.astype(int) - exact).mean() < 3  # the same picture: the resize never enlarges


def test_decode_with_size_sizes_the_draft_in_stored_orientation():
    """EXIF orientation 6 (stored 1958 wide x 2196 high, shown 2196 x 1958): the draft is still 1/4 for
    pad, and the letterbox comes out in display orientation."""
    im = Image.fromarray(_smooth(2196, 1958))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    out = imageio.decode(buf.getvalue(), size=(256, 512), how="pad")
    assert out.shape == (256, 512, 3)
    ref = imageio.resize(imageio.decode(buf.getvalue()), (256, 512), how="pad")
    assert np.abs(out.astype(int) - ref).mean() < 3


def test_target_does_not_change_non_jpeg():
    data = _save(Image.fromarray(_smooth(600, 800)), "PNG")
    assert imageio.decode(data, target=100).shape == (600, 800, 3)


# --------------------------------------------------------------------------------------------
# resize


@pytest.mark.parametrize("shape", [(100, 200, 3), (100, 200)])
def test_resize_modes(shape):
    arr = np.full(shape, 200, np.uint8)
    pad = imageio.resize(arr, 64, how="pad")
    assert pad.shape == (64, 64) + shape[2:]
    # letterbox: the 2:1 image fills the width, zero bands above and below
    assert np.all(pad[:15] == 0) and np.all(pad[-15:] == 0) and np.all(pad[17:47] == 200)
    crop = imageio.resize(arr, 64, how="crop")
    assert crop.shape == (64, 64) + shape[2:] and np.all(crop == 200)
    st = imageio.resize(arr, 64, how="stretch")
    assert st.shape == (64, 64) + shape[2:] and np.all(st == 200)
    assert imageio.resize(arr, (50, 80), how="pad").shape == (50, 80) + shape[2:]
    assert imageio.resize(arr, (50, 80), how="crop").shape == (50, 80) + shape[2:]
    assert imageio.resize(arr, (50, 80), how="stretch").shape == (50, 80) + shape[2:]
    assert imageio.resize(arr, (100, 200)) is arr  # already the size


def test_resize_crop_keeps_the_centre():
    arr = np.zeros((100, 300), np.uint8)
    arr[:, 100:200] = 255  # the middle third
    out = imageio.resize(arr, 100, how="crop")
    assert out.shape == (100, 100) and out.mean() > 250


def test_resize_rejects_bad_arguments():
    arr = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="how"):
        imageio.resize(arr, 5, how="fit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        imageio.resize(arr, 0)


# --------------------------------------------------------------------------------------------
# masks and encoders


def test_decode_mask_palette_gives_indices():
    ids = np.zeros((20, 30), np.uint8)
    ids[5:10, 5:25] = 1
    ids[12:18, 2:8] = 2
    pal = Image.frombytes("P", (30, 20), ids.tobytes())
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    data = _save(pal, "PNG")
    assert np.array_equal(imageio.decode_mask(data), ids)
    # decode() would give colours, not ids
    assert imageio.decode(data).shape == (20, 30, 3)
    assert np.array_equal(imageio.decode_mask(_save(Image.fromarray(ids), "PNG")), ids)
    m16 = ids.astype(np.uint16) * 300
    assert np.array_equal(imageio.decode_mask(_save(Image.fromarray(m16), "PNG")), m16)


def test_decode_mask_1bit_and_grey_alpha():
    ids = np.zeros((10, 12), bool)
    ids[3:6, 2:9] = True
    assert np.array_equal(imageio.decode_mask(_save(Image.fromarray(ids), "PNG")), ids.astype(np.uint8))
    la = Image.fromarray(ids.astype(np.uint8) * 2).convert("LA")  # opaque alpha everywhere
    assert np.array_equal(imageio.decode_mask(_save(la, "PNG")), ids.astype(np.uint8) * 2)


def test_decode_mask_rgb():
    ids = np.zeros((10, 12), np.uint8)
    ids[2:5] = 3
    grey_rgb = np.repeat(ids[..., None], 3, axis=2)
    assert np.array_equal(imageio.decode_mask(_save(Image.fromarray(grey_rgb), "PNG")), ids)
    colour = grey_rgb.copy()
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(UnsupportedImageError, match="single-channel"):
        imageio.decode_mask(_save(Image.fromarray(colour), "PNG"), "colour.png")


def test_read_mask_and_encoders(tmp_path):
    ids = (np.arange(64).reshape(8, 8) % 4).astype(np.uint8)
    p = tmp_path / "m.png"
    p.write_bytes(imageio.encode_png(ids))
    assert np.array_equal(imageio.read_mask(str(p)), ids)
    with pytest.raises(MissingFileError):
        imageio.read_mask(str(tmp_path / "none.png"))
    rgb = _smooth(32, 48)
    assert np.array_equal(imageio.decode(imageio.encode_png(rgb)), rgb)
    jpg = imageio.encode_jpeg(rgb, quality=95)
    assert imageio.sniff_format(jpg) == "jpeg"
    assert np.abs(imageio.decode(jpg).astype(int) - rgb).mean() < 3
