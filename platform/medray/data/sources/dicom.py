"""A folder of DICOM files (e.g. an ophthalmic-photography export), ingested unlabelled.

Every file under SRC (recursively) that is DICOM (``DICM`` magic, or a ``.dcm``/``.dicom`` name)
becomes one row with null labels, unless it cannot serve as an image; such files are skipped with a
warning naming the file and the reason, never a crash:

* no pixel data / no Rows-Columns (e.g. a waveform such as ``waveform_ecg.dcm``, a structured report);
* pixel data no installed codec can decode (e.g. 12-bit JPEG Extended, which needs GDCM): a readable
  header does not mean a decodable image, so each DICOM is decoded once here;
* an unreadable or truncated file.

Width/height come from the header (:func:`medray.data.imageio.image_size`). Patient id = the
PatientID tag when present, else the file's stem; eye from ImageLaterality/Laterality (R/L).
Multi-frame files are kept (readers use the first frame) with a warning. Files whose Modality is not
an ophthalmic/photographic one (OP, OPT, XC, OT, SC) are kept and counted in one warning, since the
folder may not hold what the caller thinks. Other (non-DICOM) files are ignored and counted.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any, Iterator

from medray import storage
from medray.data.sources._common import IngestContext, Ingester, SourceError, normalize_eye, one_line, stem_of
from medray.errors import ImageDecodeError, MedrayError

DICOM_SUFFIXES = (".dcm", ".dicom")
PHOTO_MODALITIES = {"OP", "OPT", "XC", "OT", "SC"}


def is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_tags(data: bytes, uri: str) -> Any:
    """The header (no pixels) as a pydicom Dataset; unreadable -> ImageDecodeError naming the file."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types
        raise ImageDecodeError(uri, f"unreadable DICOM header: {one_line(str(e))}") from None


def tag_str(ds: Any, name: str) -> str | None:
    v = getattr(ds, name, None)
    s = str(v).strip() if v is not None else ""
    return s or None


class DicomIngester(Ingester):
    kind = "dicom"
    default_task = "fundus_disease"
    tasks = ("fundus_disease", "rop", "skin")
    description = "a folder of DICOM files (unlabelled)"

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        if not ctx.is_dir(ctx.src):
            raise SourceError(f"{ctx.src}: expected a folder of DICOM files")
        ignored = 0
        modalities: Counter[str] = Counter()
        for uri in ctx.list_files(ctx.src):
            try:
                if not uri.lower().endswith(DICOM_SUFFIXES) and not is_dicom(ctx.read_head(uri, 132)):
                    ignored += 1
                    continue
                data = ctx.read(uri)
            except MedrayError as e:
                ctx.warn(f"{uri}: skipped: {e}")
                continue
            row = dicom_row(ctx, uri, data, modalities)
            if row is not None:
                yield row
        if ignored:
            ctx.warn(f"{ctx.src}: {ignored} non-DICOM file(s) ignored")
        odd = {m: n for m, n in modalities.items() if m not in PHOTO_MODALITIES}
        if odd:
            listing = ", ".join(f"{m} x{n}" for m, n in sorted(odd.items()))
            ctx.warn(f"{ctx.src}: {sum(odd.values())} image(s) with a non-photographic Modality ({listing}); "
                     "check the folder holds fundus photos")

    def classes(self, task: str) -> list[str]:
        return []

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        return {"unlabelled": True, "patient_rule": "PatientID tag, else the file stem"}


def dicom_row(ctx: IngestContext, uri: str, data: bytes, modalities: Counter[str] | None = None,
              rel: str | None = None) -> dict[str, Any] | None:
    """One unlabelled row for a DICOM file already read, or None (skipped, with a warning)."""
    try:
        ds = read_tags(data, uri)
        ref = ctx.image_from_bytes(uri, data, rel=rel, verify=True)
    except ImageDecodeError as e:
        ctx.warn(f"{storage.to_uri(uri)}: skipped: {e.reason}")
        return None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        ctx.warn(f"{uri}: multi-frame ({frames} frames); readers use the first frame")
    if modalities is not None:
        modalities[tag_str(ds, "Modality") or "unknown"] += 1
    lat = tag_str(ds, "ImageLaterality") or tag_str(ds, "Laterality")
    return {
        "image": ref.uri,
        "patient_id": tag_str(ds, "PatientID") or stem_of(uri),
        "eye": normalize_eye(lat),
        "width": ref.width,
        "height": ref.height,
    }


__all__ = ["DicomIngester", "dicom_row", "is_dicom", "read_tags"]
