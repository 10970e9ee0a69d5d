"""Duke DME OCT B-scans with fluid masks (Chiu et al., Biomed. Opt. Express 6(4):1172, 2015).

Layout (the export in ``oct_duke_dme``)::

    SRC/images/img_N.png        768x496 B-scans, greyscale stored as RGB (R=G=B), N = 0, 1, ...
    SRC/fluid_masks/img_N.png   same size, RGB, values {0, 241..255}: grader 1's fluid

Quirks:

* The subject of ``img_N`` is ``N // 11 + 1``: the data set has 11 annotated B-scans per subject, in
  order. Neighbouring B-scans of one eye are near copies, so splits are by subject.
* Masks are RGB with near-white fluid; they are thresholded (channel 0 > 127) into a single-channel
  class-id PNG (0 background, 1 fluid) written beside the manifest. Many masks are empty.
* The B-scans keep the white padding rows at the top of the original export.
* Device: Heidelberg Spectralis; eye not given (``unknown``); lateral spacing varies per volume
  (not given per image, left null). Axial spacing: 3.87 um/pixel, the Spectralis's fixed axial
  pixel spacing (its Heyex header reads ScaleZ = 0.003872 mm in the Spectralis sample of
  ``oct_spectralis_layers``; Chiu et al. 2015 state 3.87 um/pixel for this data set).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np

from medray import storage
from medray.data import imageio
from medray.data.sources._common import IngestContext, Ingester, SourceError

CLASSES = ["background", "fluid"]
#: B-scans per subject in the Duke DME export (11 annotated B-scans per subject, in order)
SCANS_PER_SUBJECT = 11
#: Spectralis axial pixel spacing in micrometres (see the module docstring for the source)
AXIAL_UM = 3.87
_NAME = re.compile(r"^img_(\d+)\.png$", re.IGNORECASE)


def fluid_mask(rgb: np.ndarray) -> np.ndarray:
    """The exported mask (RGB or grey, fluid near-white) -> uint8 class ids (0 background, 1 fluid)."""
    channel = rgb[..., 0] if rgb.ndim == 3 else rgb
    return (channel > 127).astype(np.uint8)


class DukeDMEIngester(Ingester):
    kind = "duke_dme"
    default_task = "oct_seg"
    tasks = ("oct_seg",)
    description = "images/img_N.png and fluid_masks/img_N.png (Duke DME export)"

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        images_dir = storage.join(ctx.src, "images")
        masks_dir = storage.join(ctx.src, "fluid_masks")
        for d in (images_dir, masks_dir):
            if not ctx.is_dir(d):
                raise SourceError(f"{d}: folder not found (expected {self.description})")
        numbered: list[tuple[int, str]] = []
        for uri in ctx.list_files(images_dir, (".png",)):
            m = _NAME.match(storage.basename(uri))
            if m is None:
                ctx.warn(f"{uri}: skipped (not named img_N.png)")
                continue
            numbered.append((int(m.group(1)), uri))
        numbered.sort()
        for n, uri in numbered:
            ref = ctx.image(uri, rel=f"img_{n}.png")
            mask_src = storage.join(masks_dir, f"img_{n}.png")
            raw = imageio.decode(ctx.read(mask_src), mask_src, mode="keep")
            if raw.shape[:2] != (ref.height, ref.width):
                raise SourceError(f"{mask_src}: mask is {raw.shape[1]}x{raw.shape[0]}, "
                                  f"image is {ref.width}x{ref.height}")
            mask = fluid_mask(raw)
            mask_uri = ctx.write_png(f"masks/img_{n}.png", mask)
            yield {
                "image": ref.uri,
                "patient_id": str(n // SCANS_PER_SUBJECT + 1),
                "eye": "unknown",
                "width": ref.width,
                "height": ref.height,
                "mask": mask_uri,
                "axial_um": AXIAL_UM,
                "lateral_um": None,
                "scan_mode": "line",
                "_present": [int(c) for c in np.flatnonzero(np.bincount(mask.ravel(), minlength=2))],
            }

    def classes(self, task: str) -> list[str]:
        return list(CLASSES)

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        return {
            "device": "Heidelberg Spectralis",
            "subject_rule": f"patient_id = N // {SCANS_PER_SUBJECT} + 1 for img_N",
            "mask_rule": "fluid = channel 0 > 127 of fluid_masks/img_N.png (grader 1)",
            "axial_um_source": "Spectralis axial pixel spacing (Heyex ScaleZ 0.003872 mm); "
                               "Chiu et al. 2015 give 3.87 um/pixel",
            "citation": "Chiu et al., Biomed. Opt. Express 6(4):1172-1194 (2015)",
        }
