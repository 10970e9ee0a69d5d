"""Heidelberg Spectralis B-scans in the MATLAB form of Rathke's octSegmentation toolbox, with manually
placed layer boundaries (F. Rathke, S. Schmidt, C. Schnörr, Medical Image Analysis 18(5):781, 2014).

Layout (``oct_spectralis_layers``)::

    SRC/<scan>.mat                    Heyex .vol header fields as variables (SizeX, SizeZ, ScaleX,
                                      ScaleZ [mm], ScanPattern, ScanPosition 'OD'/'OS', PatientID ...)
                                      and the B-scans B0, B1, ... (SizeZ x SizeX float32, raw
                                      reflectivity 0..1)
    SRC/<scan>_<k>_coordinates.mat    boundaries of B-scan k: ``interpolation`` (9 x SizeX, the row of
                                      each boundary per A-scan, MATLAB 1-based, top to bottom)

What is written beside the manifest, per B-scan:

* ``images/<scan>_B<k>.png``: 8-bit display image, ``B ** 0.25`` (the usual Heyex display
  transform). NaN/inf and Heyex's "no data" value (FLT_MAX) become 0; values are clipped to 0..1.
* ``masks/<scan>_B<k>.png``: class ids rasterised from the boundaries the way the toolbox's
  ``getRaster`` does it: row ``r`` (0-based) lies below boundary ``b`` when ``r >= floor(b)``.
  Class 0 is above the first boundary (the ILM: vitreous, i.e. background), class ``k`` lies between
  boundary ``k`` and ``k+1``, and class 9 is everything below the last boundary (Bruch's membrane:
  choroid and deeper). Columns without a valid boundary are left 0 (unlabelled); crossing boundaries
  are made monotone (each boundary at least as deep as the one above) and reported.

The 9 boundaries of the toolbox's manual labels are ILM, RNFL/GCL, IPL/INL, INL/OPL, OPL/ONL, ELM
(ONL/inner segments), IS/OS, OS/RPE and Bruch's membrane (RPE/choroid). The ten classes map onto the
14-structure list of METHODS.md section 2 as given in :data:`STRUCTURES` (stored in the manifest);
GCL and IPL are not separated by these labels, and the outer segments have no structure of their
own in that list (nearest: ellipsoid zone).

Other metadata: ``axial_um`` = ScaleZ x 1000, ``lateral_um`` = ScaleX x 1000 (ScaleX is the A-scan
spacing along the scan; for a circle scan that is along the circle), ``scan_mode`` from ScanPattern
(Heyex: 1 line, 2 circle, 3/4 volume, 5 radial), ``eye`` from ScanPosition (OD right, OS left).
"""

from __future__ import annotations

import io
import re
from typing import Any, Iterator

import numpy as np

from medray import storage
from medray.data.sources._common import IngestContext, Ingester, SourceError, normalize_eye, one_line

BOUNDARIES = ["ILM", "RNFL/GCL", "IPL/INL", "INL/OPL", "OPL/ONL", "ELM", "IS/OS", "OS/RPE", "BM"]
CLASSES = ["background", "rnfl", "gcl_ipl", "inl", "opl", "onl", "inner_segments", "outer_segments",
           "rpe", "choroid"]
#: each class -> the structures of METHODS.md section 2 it covers (id, name); 0 = background/unlabelled
STRUCTURES: dict[str, list[list[Any]]] = {
    "background": [[0, "background"], [1, "vitreous"]],
    "rnfl": [[2, "nerve fibre layer"]],
    "gcl_ipl": [[3, "ganglion cell layer"], [4, "inner plexiform layer"]],
    "inl": [[5, "inner nuclear layer"]],
    "opl": [[6, "outer plexiform layer"]],
    "onl": [[7, "outer nuclear layer"]],
    "inner_segments": [[8, "external limiting membrane"], [9, "myoid zone"]],
    "outer_segments": [[10, "ellipsoid zone"]],
    "rpe": [[11, "retinal pigment epithelium"]],
    "choroid": [[12, "choroid"], [13, "sclera"]],
}
SCAN_PATTERNS = {1: "line", 2: "circle", 3: "volume", 4: "volume", 5: "radial"}
#: Heyex marks missing reflectivity with FLT_MAX; anything above this is "no data"
_NO_DATA = 1e30
_COORDS = re.compile(r"_(\d+)_coordinates\.mat$", re.IGNORECASE)


def display_image(bscan: np.ndarray) -> np.ndarray:
    """Raw Heyex reflectivity -> 8-bit display image (``B ** 0.25``; invalid values -> 0)."""
    b = np.asarray(bscan, dtype=np.float64)
    valid = np.isfinite(b) & (b < _NO_DATA)
    b = np.clip(np.where(valid, b, 0.0), 0.0, 1.0)
    return np.round(b ** 0.25 * 255.0).astype(np.uint8)


def rasterize(boundaries: np.ndarray, height: int) -> tuple[np.ndarray, int, int]:
    """Boundary rows (n x W, MATLAB 1-based, top to bottom) -> class-id mask (height x W, uint8).

    Returns:
        ``(mask, unlabelled_columns, reordered_columns)``.
    """
    b = np.asarray(boundaries, dtype=np.float64)
    if b.ndim != 2:
        raise ValueError(f"boundaries must be 2-D (n x width), got shape {b.shape}")
    invalid = ~np.isfinite(b).all(axis=0)
    b = np.where(np.isfinite(b), b, 0.0)
    crossing = (np.diff(b, axis=0) < 0).any(axis=0) & ~invalid
    b = np.maximum.accumulate(b, axis=0)
    edges = np.floor(b)
    rows = np.arange(height, dtype=np.float64)[:, None]
    mask = np.zeros((height, b.shape[1]), dtype=np.uint8)
    for e in edges:
        mask += (rows >= e[None, :]).astype(np.uint8)
    mask[:, invalid] = 0
    return mask, int(invalid.sum()), int(crossing.sum())


def _scalar(m: dict[str, Any], key: str) -> Any:
    """A MATLAB scalar or string variable as a Python value (None when absent/empty)."""
    v = m.get(key)
    if v is None:
        return None
    a = np.asarray(v)
    if a.size == 0:
        return None
    if a.dtype.kind in ("U", "S"):
        return str(a.ravel()[0]).strip() or None
    return a.ravel()[0].item()


def _loadmat(ctx: IngestContext, uri: str) -> dict[str, Any]:
    import scipy.io

    data = ctx.read(uri)
    try:
        return scipy.io.loadmat(io.BytesIO(data))
    except NotImplementedError:
        raise SourceError(f"{uri}: MATLAB v7.3 (HDF5) files are not supported; save with -v7") from None
    except Exception as e:  # noqa: BLE001 - scipy raises many types on corrupt files
        raise SourceError(f"{uri}: not a readable MATLAB file: {one_line(str(e))}") from None


class SpectralisLayersIngester(Ingester):
    kind = "spectralis_layers"
    default_task = "oct_seg"
    tasks = ("oct_seg",)
    description = "<scan>.mat (Heyex header + B0..) with <scan>_<k>_coordinates.mat boundaries"

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        if not ctx.is_dir(ctx.src):
            raise SourceError(f"{ctx.src}: expected a folder of .mat scans")
        mats = list(ctx.list_files(ctx.src, (".mat",)))
        label_files = {u for u in mats if _COORDS.search(storage.basename(u))}
        scans = [u for u in mats if u not in label_files]
        for uri in scans:
            yield from self._scan_rows(ctx, uri, label_files)

    def _scan_rows(self, ctx: IngestContext, uri: str, label_files: set[str]) -> Iterator[dict[str, Any]]:
        m = _loadmat(ctx, uri)
        stem = storage.basename(uri)[: -len(".mat")]
        n_scans = _scalar(m, "NumBScans")
        keys = [f"B{k}" for k in range(int(n_scans))] if n_scans else sorted(
            (k for k in m if re.fullmatch(r"B\d+", k)), key=lambda k: int(k[1:]))
        if not keys or keys[0] not in m:
            raise SourceError(f"{uri}: no B-scan variables (B0, B1, ...) found")
        scale_z, scale_x = _scalar(m, "ScaleZ"), _scalar(m, "ScaleX")
        pattern = _scalar(m, "ScanPattern")
        patient = _scalar(m, "PatientID") or (str(_scalar(m, "PID")) if _scalar(m, "PID") is not None else stem)
        eye = normalize_eye(_scalar(m, "ScanPosition"))
        for key in keys:
            if key not in m:
                raise SourceError(f"{uri}: NumBScans={n_scans} but variable {key} is missing")
            bscan = np.asarray(m[key])
            if bscan.ndim != 2:
                raise SourceError(f"{uri}: {key} has shape {bscan.shape}, expected 2-D (depth x width)")
            height, width = bscan.shape
            name = f"{stem}_{key}"
            image_uri = ctx.write_png(f"images/{name}.png", display_image(bscan))
            mask_uri, present = None, [0]
            coords = storage.join(storage.parent(uri), f"{stem}_{key[1:]}_coordinates.mat")
            if coords in label_files:
                lab = _loadmat(ctx, coords)
                if "interpolation" not in lab:
                    raise SourceError(f"{coords}: no 'interpolation' variable (the boundary rows)")
                bounds = np.asarray(lab["interpolation"], dtype=np.float64)
                if bounds.shape != (len(BOUNDARIES), width):
                    raise SourceError(f"{coords}: interpolation has shape {bounds.shape}, expected "
                                      f"({len(BOUNDARIES)}, {width}) for {key}")
                mask, unlabelled, crossing = rasterize(bounds, height)
                if unlabelled:
                    ctx.warn(f"{coords}: {unlabelled} column(s) without valid boundaries left 0 (unlabelled)")
                if crossing:
                    ctx.warn(f"{coords}: boundaries cross in {crossing} column(s); made monotone")
                mask_uri = ctx.write_png(f"masks/{name}.png", mask)
                present = [int(c) for c in np.flatnonzero(np.bincount(mask.ravel()))]
            yield {
                "image": image_uri,
                "patient_id": str(patient),
                "eye": eye,
                "width": int(width),
                "height": int(height),
                "mask": mask_uri,
                "axial_um": float(scale_z) * 1000.0 if scale_z else None,
                "lateral_um": float(scale_x) * 1000.0 if scale_x else None,
                "scan_mode": SCAN_PATTERNS.get(int(pattern)) if pattern is not None else None,
                "_present": present,
            }

    def classes(self, task: str) -> list[str]:
        return list(CLASSES)

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        return {
            "device": "Heidelberg Spectralis",
            "boundaries": BOUNDARIES,
            "structures": STRUCTURES,
            "mask_rule": "row r below boundary b iff r >= floor(b) (MATLAB rows); class k between "
                         "boundary k and k+1; 0 above the ILM and unlabelled columns; 9 below BM",
            "display_transform": "uint8(round(clip(B, 0, 1) ** 0.25 * 255)); NaN/inf/FLT_MAX -> 0",
            "citation": "Rathke, Schmidt, Schnörr, Medical Image Analysis 18(5):781-794 (2014)",
        }
