"""A generic class-per-folder layout: ``SRC/<class name>/**/<image>``.

* classes = the sorted names of the sub-folders of SRC that hold at least one image (empty ones are
  reported and left out); the label of an image is the index of its top-level folder. Files
  directly in SRC are ignored with a warning.
* images: .jpg .jpeg .png .tif .tiff .bmp .dcm .dicom, any depth below the class folder.
* patient id: the file stem, except that a stem ending in an eye (``<id>_left``, ``<id>-OD``,
  ``<id>_right`` ...) gives patient ``<id>`` and that eye, so both eyes of a patient share a split
  (the ODIR naming, for one). This rule does not depend on the task.
* tasks: ``fundus_disease`` (default) and ``skin`` (folder -> ``label``), ``rop`` (folder -> ``stage``;
  name the folders so that they sort in stage order, e.g. ``0_normal``, ``1_stage1``).
* A file that cannot be used (unreadable header; a DICOM without pixels or without a codec) is
  skipped with a warning naming it: a folder scan must not fail on one bad file.
"""

from __future__ import annotations

from typing import Any, Iterator

from medray import storage
from medray.data.sources._common import (
    IMAGE_SUFFIXES,
    IngestContext,
    Ingester,
    SourceError,
    eye_from_stem,
    stem_of,
)
from medray.data.sources.dicom import DICOM_SUFFIXES, dicom_row
from medray.errors import ImageDecodeError, MedrayError


def patient_and_eye(uri: str) -> tuple[str, str]:
    """``(patient_id, eye)`` from a file name (see the module docstring)."""
    stem = stem_of(uri)
    parsed = eye_from_stem(stem)
    return parsed if parsed is not None else (stem, "unknown")


class FolderIngester(Ingester):
    kind = "folder"
    default_task = "fundus_disease"
    tasks = ("fundus_disease", "skin", "rop")
    description = "SRC/<class name>/<images>"

    def __init__(self) -> None:
        self._classes: list[str] = []

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        if not ctx.is_dir(ctx.src):
            raise SourceError(f"{ctx.src}: expected a folder of class folders ({self.description})")
        by_class: dict[str, list[str]] = {}
        for d in ctx.list_dir(ctx.src):
            if ctx.is_dir(d):
                by_class[storage.basename(d)] = []
            elif d.lower().endswith(IMAGE_SUFFIXES):
                ctx.warn(f"{d}: image directly in SRC (not in a class folder); ignored")
        for name in list(by_class):
            by_class[name] = list(ctx.list_files(storage.join(ctx.src, name), IMAGE_SUFFIXES))
            if not by_class[name]:
                ctx.warn(f"{storage.join(ctx.src, name)}: no images; not a class")
                del by_class[name]
        self._classes = sorted(by_class)
        label_col = "stage" if ctx.task == "rop" else "label"
        for idx, name in enumerate(self._classes):
            for uri in by_class[name]:
                pid, eye = patient_and_eye(uri)
                if uri.lower().endswith(DICOM_SUFFIXES):
                    try:
                        data = ctx.read(uri)
                    except MedrayError as e:
                        ctx.warn(f"{uri}: skipped: {e}")
                        continue
                    row = dicom_row(ctx, uri, data)
                    if row is None:
                        continue
                    row.update(patient_id=row["patient_id"] if row["patient_id"] != stem_of(uri) else pid)
                    if row["eye"] == "unknown":
                        row["eye"] = eye
                else:
                    try:
                        ref = ctx.image(uri)
                    except ImageDecodeError as e:
                        ctx.warn(f"{storage.to_uri(uri)}: skipped: {e.reason}")
                        continue
                    row = {"image": ref.uri, "patient_id": pid, "eye": eye,
                           "width": ref.width, "height": ref.height}
                row[label_col] = idx
                yield row

    def classes(self, task: str) -> list[str]:
        return list(self._classes)

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        return {"label_rule": "index of the image's top-level folder in the sorted class folders",
                "patient_rule": "file stem; '<id>_<left|right|od|os>' -> patient <id> and that eye"}
