"""HEI-MED, the Hamilton Eye Institute Macular Edema Dataset (Giancardo et al., Medical Image
Analysis 16(1):216, 2012): colour fundus photos of a diabetic telemedicine network with manually
segmented exudates and other lesions.

Layout (``fundus_heimed``; SRC may be the folder holding ``DMED/`` or ``DMED/`` itself), per image
``(NNNNNNNN)``::

    (N).jpg      2196x1958 RGB photo
    (N).meta     "~Key~Value" lines: PatientGender (F/M/O), PatientRace, PatientDOB (M/D/YYYY),
                 QualityValue (ELVD 0-1), DiabetesType, ONrow/ONcol (optic-nerve centre, pixels)
    (N).GND      line 1 = number of blobs n, next n lines = each blob's label ("Exudate 1",
                 "MicroAneurysm 0", ...; the digit is 1 for bright, 0 for dark lesions), then a fixed
                 grading questionnaire (ignored)
    (N).map.gz   gzip of little-endian int32: a 3-int header [tag, W, H], then W*H values, row-major
                 (H x W); value k > 0 = pixel of blob k of the .GND, 0 = background. The tag is
                 negative (-43 in 14 of the 22 sample maps, -42 in the other 8, meaning undocumented),
                 so only its sign is checked, and the file length must be exactly 12 + 4*W*H
    (N)_vess.png machine vessel segmentation (not manual; ignored)

Tasks:

* ``fundus_disease`` (default): classes ["no_exudate", "exudate"]; exudate = the .GND lists at least
  one "Exudate" blob. Images without exudates can still hold microaneurysm/haemorrhage/drusen blobs.
* ``fundus_age``: only the date of birth is given, no exam date; collection finished in 2010, so
  age = 2010 - birth year, flagged ``approximate`` (+-2 years). Image 00000094 carries placeholder
  metadata (DOB 1/1/2007, gender O, "Metadata not consistent with an actual patient"): such records
  (gender O, or an age under :data:`MIN_AGE`) get a null age flagged ``implausible``. ``disease`` =
  1 when the image has any lesion blob (all patients are diabetic; any lesion is retinopathy),
  "Artifact" blobs aside.

For both tasks the lesion blobs become bounding boxes (``x0, y0, x1, y1`` in pixels, x1/y1
exclusive, the blob's label and pixel count) in a JSON sidecar per image beside the manifest,
``lesions/<N>.json`` (the manifest schemas have no box column for fundus tasks); the manifest's
metadata names the folder (``lesion_boxes``). The eye is not given (``unknown``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from typing import Any, Iterator

import numpy as np

from medray import storage
from medray.data.sources._common import IngestContext, Ingester, SourceError, normalize_sex, one_line

CLASSES = ["no_exudate", "exudate"]
#: the README: "The dataset collection and cleaning was completed in 2010"
REFERENCE_YEAR = 2010
#: a computed age below this (years) is a placeholder, not a diabetic screening patient
MIN_AGE = 10
_IMAGE = re.compile(r"^\((\d+)\)\.jpg$", re.IGNORECASE)
_META = re.compile(r"^~([^~]+)~(.*)$")


def parse_meta(text: str) -> dict[str, str]:
    """``~Key~Value`` lines -> dict (the ``~ImageName:~`` line included as ``ImageName:``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _META.match(line.strip())
        if m:
            out[m.group(1).strip()] = m.group(2).strip()
    return out


def parse_gnd(text: str, where: str) -> list[tuple[str, bool]]:
    """The blob list of a .GND file: ``[(label, bright), ...]`` in blob order (blob k = item k-1)."""
    lines = text.splitlines()
    try:
        n = int(lines[0].strip())
    except (IndexError, ValueError):
        raise SourceError(f"{where}: first line must be the number of blobs") from None
    if len(lines) < 1 + n:
        raise SourceError(f"{where}: says {n} blobs but lists {len(lines) - 1}")
    blobs = []
    for line in lines[1 : 1 + n]:
        parts = line.strip().rsplit(" ", 1)
        if len(parts) == 2 and parts[1] in ("0", "1"):
            blobs.append((parts[0].strip(), parts[1] == "1"))
        else:
            blobs.append((line.strip(), False))
    return blobs


def decode_blob_map(raw_gz: bytes, where: str) -> np.ndarray:
    """A ``.map.gz`` -> H x W int32 blob ids (see the module docstring for the format)."""
    try:
        raw = gzip.decompress(raw_gz)
    except (OSError, EOFError) as e:
        raise SourceError(f"{where}: not a gzip blob map: {one_line(str(e))}") from None
    if len(raw) < 12:
        raise SourceError(f"{where}: blob map shorter than its 12-byte header")
    tag, w, h = (int(v) for v in np.frombuffer(raw, "<i4", 3))
    if tag >= 0 or w <= 0 or h <= 0:
        raise SourceError(f"{where}: bad blob-map header [{tag}, {w}, {h}] (expected [<negative tag>, W, H])")
    if len(raw) != 12 + 4 * w * h:
        raise SourceError(f"{where}: blob map has {len(raw)} bytes, expected {12 + 4 * w * h} for {w}x{h}")
    return np.frombuffer(raw, "<i4", w * h, 12).reshape(h, w)


def blob_boxes(blob_map: np.ndarray, blobs: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """One box per blob present in the map: pixel bounds (x1/y1 exclusive), label, size."""
    from scipy import ndimage

    counts = np.bincount(blob_map.ravel().clip(min=0), minlength=len(blobs) + 1)
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(blob_map), start=1):
        if sl is None:
            continue
        label, bright = blobs[k - 1] if k <= len(blobs) else ("unknown", False)
        boxes.append({"blob": k, "label": label, "bright": bright,
                      "x0": int(sl[1].start), "y0": int(sl[0].start),
                      "x1": int(sl[1].stop), "y1": int(sl[0].stop), "pixels": int(counts[k])})
    return boxes


def patient_key(meta: dict[str, str], image_id: str) -> str:
    """Patient id. The README says no patient is duplicated, but some DOB/gender pairs repeat on
    consecutive images with optic discs on opposite sides (e.g. 00000052/00000053), which looks like
    both eyes of one patient. Images sharing DOB and gender are therefore grouped into one patient
    (an opaque hash of the pair), so a split never separates them; placeholder records (gender O or
    no DOB) stay on their own (the image id)."""
    dob, gender = meta.get("PatientDOB", ""), meta.get("PatientGender", "")
    if not dob or gender.upper() not in ("F", "M"):
        return image_id
    return "p" + hashlib.sha256(f"{dob}|{gender.upper()}".encode()).hexdigest()[:10]


def dob_year(meta: dict[str, str]) -> int | None:
    m = re.search(r"(\d{4})\s*$", meta.get("PatientDOB", ""))
    return int(m.group(1)) if m else None


class HeimedIngester(Ingester):
    kind = "heimed"
    default_task = "fundus_disease"
    tasks = ("fundus_disease", "fundus_age")
    description = "HEI-MED DMED/ folder: (N).jpg, (N).meta, (N).GND, (N).map.gz"

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        folder = storage.join(ctx.src, "DMED")
        if not ctx.is_dir(folder):
            folder = ctx.src
        if not ctx.is_dir(folder):
            raise SourceError(f"{ctx.src}: expected the HEI-MED folder ({self.description})")
        for uri in ctx.list_files(folder, (".jpg",)):
            m = _IMAGE.match(storage.basename(uri))
            if m is None:
                continue
            yield self._row(ctx, folder, uri, m.group(1))

    def _row(self, ctx: IngestContext, folder: str, uri: str, image_id: str) -> dict[str, Any]:
        base = storage.join(folder, f"({image_id})")
        meta = parse_meta(ctx.read_text(f"{base}.meta"))
        if "PatientDOB" not in meta:
            raise SourceError(f"{base}.meta: no ~PatientDOB~ line")
        blobs = parse_gnd(ctx.read_text(f"{base}.GND"), f"{base}.GND")
        ref = ctx.image(uri)
        blob_map = decode_blob_map(ctx.read(f"{base}.map.gz"), f"{base}.map.gz")
        if blob_map.shape != (ref.height, ref.width):
            ctx.warn(f"{base}.map.gz: blob map is {blob_map.shape[1]}x{blob_map.shape[0]}, "
                     f"image is {ref.width}x{ref.height}")
        if int(blob_map.max(initial=0)) > len(blobs):
            ctx.warn(f"{base}.map.gz: blob id {int(blob_map.max())} > {len(blobs)} blobs in the .GND")
        boxes = blob_boxes(blob_map, blobs)
        sidecar = {
            "image": ref.uri, "source_map": storage.to_uri(f"{base}.map.gz"),
            "width": ref.width, "height": ref.height,
            "optic_nerve": {"row": _int(meta.get("ONrow")), "col": _int(meta.get("ONcol"))},
            "quality_elvd": _float(meta.get("QualityValue")),
            "boxes": boxes,
        }
        ctx.write_file(f"lesions/{image_id}.json", (json.dumps(sidecar, indent=1) + "\n").encode())
        row: dict[str, Any] = {"image": ref.uri, "patient_id": patient_key(meta, image_id), "eye": "unknown",
                               "width": ref.width, "height": ref.height}
        if ctx.task == "fundus_disease":
            row["label"] = int(any(label == "Exudate" for label, _ in blobs))
        else:
            year = dob_year(meta)
            age = float(REFERENCE_YEAR - year) if year is not None else None
            flag = "approximate" if age is not None else None
            if age is not None and (age < MIN_AGE or meta.get("PatientGender", "").upper() == "O"):
                ctx.warn(f"{uri}: placeholder metadata (DOB {meta.get('PatientDOB')}, gender "
                         f"{meta.get('PatientGender')}); age left null, flagged implausible")
                age, flag = None, "implausible"
            row.update(age=age, age_flag=flag, sex=normalize_sex(meta.get("PatientGender")),
                       disease=int(any(label != "Artifact" for label, _ in blobs)))
        return row

    def classes(self, task: str) -> list[str]:
        return list(CLASSES) if task == "fundus_disease" else []

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "lesion_boxes": storage.join(ctx.files_dir, "lesions"),
            "lesion_boxes_naming": "lesions/<N>.json for image (N).jpg; boxes in pixels, x1/y1 exclusive",
            "patient_rule": "images with identical DOB and gender grouped as one patient (both eyes)",
            "citation": "Giancardo et al., Medical Image Analysis 16(1):216-226 (2012)",
        }
        if task == "fundus_disease":
            meta["label_rule"] = "exudate = the .GND lists an 'Exudate' blob"
        else:
            meta.update(age_rule=f"age = {REFERENCE_YEAR} - birth year (approximate, +-2 y); "
                                 "placeholder records null + implausible",
                        disease_rule="1 if any lesion blob other than 'Artifact'")
        return meta


def _int(v: Any) -> int | None:
    try:
        return int(float(str(v)))
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        return float(str(v))
    except (TypeError, ValueError):
        return None
