"""Ingest of real public data layouts into medray manifests (``medray data ingest KIND SRC --out URI``).

One module per layout; each knows its source's files and quirks and yields manifest rows, and the
shared driver (:mod:`._common`) sizes images from their headers, splits by patient (seeded,
reproducible), optionally copies images beside the manifest, and writes the manifest atomically.

Kinds (:data:`INGESTERS`):

=====================  ==================  ==========================================================
kind                   default task        source
=====================  ==================  ==========================================================
``duke_dme``           ``oct_seg``         Duke DME B-scans + fluid masks (images/, fluid_masks/)
``spectralis_layers``  ``oct_seg``         Heyex .mat B-scans + ``*_<k>_coordinates.mat`` boundaries
``odir``               ``fundus_disease``  ODIR-5K photos + labels.csv (or the official sheet as CSV)
``heimed``             ``fundus_disease``  HEI-MED DMED/ (.jpg, .meta, .GND, .map.gz)
``dicom``              ``fundus_disease``  a folder of DICOM files, unlabelled
``folder``             ``fundus_disease``  SRC/<class name>/<images>
``csv``                (from the columns)  a CSV of image paths and labels
=====================  ==================  ==========================================================
"""

from __future__ import annotations

from typing import Any

from medray.data.sources._common import Ingester, IngestContext, SourceError, run
from medray.data.sources.csvfile import CsvIngester
from medray.data.sources.dicom import DicomIngester
from medray.data.sources.duke_dme import DukeDMEIngester
from medray.data.sources.folder import FolderIngester
from medray.data.sources.heimed import HeimedIngester
from medray.data.sources.odir import OdirIngester
from medray.data.sources.spectralis_layers import SpectralisLayersIngester

#: kind -> ingester class
INGESTERS: dict[str, type[Ingester]] = {
    cls.kind: cls
    for cls in (
        DukeDMEIngester,
        SpectralisLayersIngester,
        OdirIngester,
        HeimedIngester,
        DicomIngester,
        FolderIngester,
        CsvIngester,
    )
}


def get_ingester(kind: str) -> Ingester:
    """A fresh ingester for ``kind``; an unknown kind is a SourceError listing the known ones."""
    try:
        return INGESTERS[kind]()
    except KeyError:
        raise SourceError(f"unknown ingest kind {kind!r}; known: {', '.join(INGESTERS)}") from None


def ingest(kind: str, src: str, out: str, *, task: str | None = None, seed: int = 0,
           copy_images: bool = False, s3: Any = None) -> dict[str, Any]:
    """Turn a public data layout into a Parquet manifest.

    Args:
        kind: one of :data:`INGESTERS` (``duke_dme``, ``spectralis_layers``, ``odir``, ``heimed``,
            ``dicom``, ``folder``, ``csv``).
        src: the source folder (the CSV file for ``csv``): local path or URI.
        out: the manifest URI (local path or ``s3://bucket/x.parquet``). Derived files go to
            ``<out without .parquet>_files/`` beside it.
        task: the manifest task; None = the kind's natural task.
        seed: seed of the patient-level split.
        copy_images: copy every image (and mask) beside the manifest and point rows at the copies,
            so the data set is self-contained wherever the manifest is.
        s3: S3 options (a ``storage.s3`` config section or dict); None = environment variables.

    Returns:
        A JSON-able summary: manifest URI, task, rows, patients, rows per split, per class,
        sha256 of the manifest, flagged rows and warnings (and the URI of the full report).

    Raises:
        MedrayError: a missing source, a missing or unreadable file (named), a bad label sheet.
    """
    return run(get_ingester(kind), src, out, task=task, seed=seed, copy_images=copy_images, s3=s3)


__all__ = ["INGESTERS", "IngestContext", "Ingester", "SourceError", "get_ingester", "ingest"]
