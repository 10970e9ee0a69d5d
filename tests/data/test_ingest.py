"""`medray data ingest` on the real public samples in ../shared/data (read in place, never copied into
the repository): row counts, labels and their quirks, class lists, patient splits, masks, sidecars,
copies onto a real S3 endpoint (moto's server) read back with Ray Data on a local Ray cluster, the
CLI's output and its one-line errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from medray import storage
from medray.data import imageio, manifest
from medray.data.sources import INGESTERS, ingest
from medray.errors import ImageDecodeError, ManifestError, MedrayError

pytestmark = pytest.mark.realdata


def rows_of(uri: str) -> list[dict]:
    return manifest.read_manifest(str(uri)).to_pylist()


def split_of_patients(rows: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["patient_id"], set()).add(r["split"])
    return out


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {storage.basename(r["image"]): r for r in rows}


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# module-scoped ingests (each source is ingested once and checked by several tests)


@pytest.fixture(scope="module")
def duke(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("duke") / "duke.parquet"
    summary = ingest("duke_dme", str(shared_data / "oct_duke_dme"), str(out))
    return summary, rows_of(out), out


@pytest.fixture(scope="module")
def spectralis(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("spectralis") / "layers.parquet"
    summary = ingest("spectralis_layers", str(shared_data / "oct_spectralis_layers"), str(out))
    return summary, rows_of(out), out


@pytest.fixture(scope="module")
def odir_labels(shared_data) -> dict[str, dict]:
    with open(shared_data / "fundus_odir" / "labels.csv", newline="") as f:
        return {Path(r["file"]).name: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def heimed_labels(shared_data) -> dict[str, dict]:
    with open(shared_data / "fundus_heimed" / "labels.csv", newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


# ------------------------------------------------------------------------------------------------
# Duke DME


def test_duke_dme_rows_subjects_and_masks(duke, shared_data):
    summary, rows, out = duke
    assert summary["rows"] == len(rows) == 88
    assert summary["patients"] == 8 and summary["task"] == "oct_seg"
    assert sum(summary["splits"].values()) == 88 and all(summary["splits"].values())
    # subject = N // 11 + 1, and no subject in two splits
    for r in rows:
        n = int(Path(r["image"]).stem.split("_")[1])
        assert r["patient_id"] == str(n // 11 + 1)
    assert all(len(s) == 1 for s in split_of_patients(rows).values())
    # images stay where they are (no copy), masks are written beside the manifest
    src_images = str(shared_data / "oct_duke_dme" / "images")
    files = str(out)[: -len(".parquet")] + "_files"
    assert summary["files"] == files
    for r in rows:
        assert r["image"].startswith(src_images) and os.path.isabs(r["image"])
        assert r["mask"].startswith(files + "/masks/")
        assert (r["width"], r["height"]) == (768, 496)
        assert r["eye"] == "unknown" and r["scan_mode"] == "line" and r["dataset"] == "duke_dme"
        assert r["axial_um"] == pytest.approx(3.87) and r["lateral_um"] is None
    # each mask is the thresholded channel 0 of the source mask, single channel, ids {0, 1}
    with_fluid = 0
    for r in rows:
        mask = imageio.read_image(r["mask"], mode="keep")
        assert mask.ndim == 2 and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        with_fluid += int(mask.any())
    for name in ("img_0.png", "img_40.png", "img_87.png"):
        src = imageio.read_image(str(shared_data / "oct_duke_dme" / "fluid_masks" / name), mode="keep")
        got = imageio.read_image(f"{files}/masks/{name}", mode="keep")
        np.testing.assert_array_equal(got, (src[..., 0] > 127).astype(np.uint8))
    assert summary["per_class"] == {"background": 88, "fluid": with_fluid} and with_fluid == 62


def test_duke_dme_manifest_metadata_and_checksum(duke):
    summary, _rows, out = duke
    inf = manifest.info(str(out))
    assert inf.task == "oct_seg" and inf.classes == ["background", "fluid"] and inf.num_rows == 88
    assert inf.meta["kind"] == "duke_dme" and "3.87" in inf.meta["axial_um_source"]
    assert summary["sha256"] == sha256_file(out) and summary["bytes"] == out.stat().st_size
    report = json.loads(Path(summary["report"]).read_text())
    assert report["rows"] == 88 and report["sha256"] == summary["sha256"]


# ------------------------------------------------------------------------------------------------
# Spectralis layers


def test_spectralis_layers_mask_order_and_metadata(spectralis, shared_data):
    import scipy.io

    summary, rows, out = spectralis
    assert summary["rows"] == len(rows) == 1
    r = rows[0]
    assert r["patient_id"] == "spectralis_2763" and r["eye"] == "right" and r["scan_mode"] == "circle"
    assert r["axial_um"] == pytest.approx(3.87167, abs=1e-4)
    assert r["lateral_um"] == pytest.approx(14.2414, abs=1e-3)
    assert (r["width"], r["height"]) == (768, 496)
    image = imageio.read_image(r["image"], mode="keep")
    assert image.shape == (496, 768) and image.dtype == np.uint8 and image.max() > 200
    mask = imageio.read_image(r["mask"], mode="keep")
    assert mask.shape == (496, 768) and mask.dtype == np.uint8
    # 10 classes, in vertical order, monotone down every column, every class in every column
    assert list(np.unique(mask)) == list(range(10))
    assert (np.diff(mask.astype(np.int16), axis=0) >= 0).all()
    assert all(len(np.unique(mask[:, x])) == 10 for x in range(mask.shape[1]))
    # class k starts at floor(boundary k) (MATLAB rows; the toolbox's getRaster rule)
    bounds = scipy.io.loadmat(str(shared_data / "oct_spectralis_layers" / "circularScan_0_coordinates.mat"))
    interp = bounds["interpolation"]
    for x in (0, 300, 767):
        first_rows = [int(np.argmax(mask[:, x] >= k)) for k in range(1, 10)]
        assert first_rows == [int(np.floor(v)) for v in interp[:, x]]
    inf = manifest.info(str(out))
    assert inf.classes == summary["classes"] and len(inf.classes) == 10
    assert inf.classes[0] == "background" and inf.classes[1] == "rnfl" and inf.classes[-1] == "choroid"
    assert inf.meta["boundaries"][0] == "ILM" and set(inf.meta["structures"]) == set(inf.classes)


def test_spectralis_display_and_rasterize_edge_cases():
    from medray.data.sources.spectralis_layers import display_image, rasterize

    b = np.array([[0.0, 1.0, np.nan], [np.inf, 3.4e38, 0.0625]], np.float32)
    np.testing.assert_array_equal(display_image(b), [[0, 255, 0], [0, 0, 128]])
    bounds = np.array([[2.0, np.nan, 3.0], [4.5, 5.0, 2.0]])  # column 1 unlabelled, column 2 crossing
    mask, unlabelled, crossing = rasterize(bounds, 6)
    assert (unlabelled, crossing) == (1, 1)
    np.testing.assert_array_equal(mask[:, 0], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(mask[:, 1], [0] * 6)
    np.testing.assert_array_equal(mask[:, 2], [0, 0, 0, 2, 2, 2])


# ------------------------------------------------------------------------------------------------
# ODIR


def test_odir_fundus_disease_labels_from_that_eye(shared_data, tmp_path, odir_labels):
    out = tmp_path / "odir.parquet"
    summary = ingest("odir", str(shared_data / "fundus_odir"), str(out))
    rows = rows_of(out)
    assert summary["rows"] == len(rows) == 24 and summary["patients"] == 23
    assert summary["per_class"] == {"normal": 3, "abnormal": 21}
    inf = manifest.info(str(out))
    assert inf.task == "fundus_disease" and inf.classes == ["normal", "abnormal"]
    assert inf.meta["labels_classes"] == ["N", "D", "G", "C", "A", "H", "M", "O"]
    rows_by = by_name(rows)
    for name, lab in odir_labels.items():
        r = rows_by[name]
        assert r["patient_id"] == lab["ID"]
        assert r["eye"] == lab["eye"].lower() == name.split("_")[1].split(".")[0]
        assert (r["width"], r["height"]) == (int(lab["w"]), int(lab["h"]))
        assert r["labels"] == [int(lab[c]) for c in "NDGCAHMO"]
        assert r["label"] == (0 if lab["keywords"] == "normal fundus" else 1)
    # per-patient labels vs per-eye keywords: 1447_right sits in glaucoma/ (G=1) but is normal
    assert rows_by["1447_right.jpg"]["label"] == 0 and rows_by["1447_right.jpg"]["labels"][2] == 1
    assert rows_by["1023_right.jpg"]["label"] == 1 and rows_by["1023_right.jpg"]["labels"][7] == 1
    # both eyes of 3336 in one split
    assert rows_by["3336_left.jpg"]["split"] == rows_by["3336_right.jpg"]["split"]
    assert all(len(s) == 1 for s in split_of_patients(rows).values())
    assert all(r["image"].startswith(str(shared_data)) for r in rows)


def test_odir_fundus_age(shared_data, tmp_path, odir_labels):
    out = tmp_path / "odir_age.parquet"
    summary = ingest("odir", str(shared_data / "fundus_odir"), str(out), task="fundus_age")
    rows = rows_of(out)
    assert summary["rows"] == 24 and manifest.info(str(out)).task == "fundus_age"
    for name, r in by_name(rows).items():
        lab = odir_labels[name]
        assert r["age"] == float(lab["age"]) and r["age_flag"] is None  # no bad age among these 24
        assert r["sex"] == lab["sex"].lower()
        assert r["disease"] == (0 if lab["keywords"] == "normal fundus" else 1)
    assert summary["age"]["min"] == 42.0 and summary["age"]["max"] == 80.0


@pytest.fixture
def odir_official_sheet(shared_data, tmp_path) -> Path:
    """The official sheet's layout (one row per patient, both eyes) for IDs 1563 (Patient Age 1, a
    known bad value) and 2 (keywords with the full-width comma): neither is among the 24 sample
    images, so their rows point at real sample photos linked under their ODIR names."""
    src = tmp_path / "odir_sheet"
    (src / "images").mkdir(parents=True)
    real = shared_data / "fundus_odir" / "images"
    links = {"1563_left.jpg": "amd/292_left.jpg", "1563_right.jpg": "cataract/2211_right.jpg",
             "2_left.jpg": "normal/3336_left.jpg", "2_right.jpg": "diabetes/4304_right.jpg"}
    for name, target in links.items():
        (src / "images" / name).symlink_to(real / target)
    header = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
              "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"]
    with open(src / "ODIR-5K_Training_Annotations.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow([1563, 1, "Female", "1563_left.jpg", "1563_right.jpg", "normal fundus", "normal fundus",
                    1, 0, 0, 0, 0, 0, 0, 0])
        w.writerow([2, 57, "Male", "2_left.jpg", "2_right.jpg", "lens dust，normal fundus",
                    "moderate non proliferative retinopathy，hypertensive retinopathy", 0, 1, 0, 0, 0, 1, 0, 0])
        w.writerow([9999, 60, "Male", "9999_left.jpg", "9999_right.jpg", "cataract", "cataract",
                    0, 0, 0, 1, 0, 0, 0, 0])  # images not in this folder: skipped with a warning
    return src


def test_odir_official_sheet_bad_age_flagged_and_fullwidth_comma(odir_official_sheet, tmp_path):
    out = tmp_path / "sheet_age.parquet"
    summary = ingest("odir", str(odir_official_sheet), str(out), task="fundus_age")
    rows = by_name(rows_of(out))
    assert summary["rows"] == 4 and summary["patients"] == 2
    assert rows["1563_left.jpg"]["age"] == 1.0 and rows["1563_left.jpg"]["age_flag"] == "implausible"
    assert rows["1563_right.jpg"]["age_flag"] == "implausible"
    assert rows["2_left.jpg"]["age"] == 57.0 and rows["2_left.jpg"]["age_flag"] is None
    assert summary["flagged"] == {"implausible": 2}
    assert any("1563" in w and "implausible" in w for w in summary["warnings"])
    assert any("2 image(s) named in the sheet" in w for w in summary["warnings"])
    # '，' separates keywords: "lens dust" is a quality note, so the left eye of 2 is normal
    assert rows["2_left.jpg"]["disease"] == 0 and rows["2_right.jpg"]["disease"] == 1
    assert rows["2_left.jpg"]["sex"] == "male" and rows["2_left.jpg"]["eye"] == "left"

    out2 = tmp_path / "sheet_disease.parquet"
    ingest("odir", str(odir_official_sheet), str(out2))
    rows2 = by_name(rows_of(out2))
    assert rows2["2_right.jpg"]["labels"] == [0, 1, 0, 0, 0, 1, 0, 0]
    assert [rows2[n]["label"] for n in ("1563_left.jpg", "2_left.jpg", "2_right.jpg")] == [0, 0, 1]


def test_keyword_rules():
    from medray.data.sources.odir import eye_abnormal, split_keywords

    assert split_keywords("lens dust，normal fundus") == ["lens dust", "normal fundus"]
    assert eye_abnormal(split_keywords("normal fundus")) == 0
    assert eye_abnormal(split_keywords("normal fundus，drusen")) == 1
    assert eye_abnormal(split_keywords("low image quality")) is None
    assert eye_abnormal(split_keywords("no fundus image")) is None


def test_split_reproducible_and_seed_dependent(shared_data, tmp_path):
    src = str(shared_data / "fundus_odir")

    def splits(name: str, seed: int) -> dict[str, str]:
        out = tmp_path / f"{name}.parquet"
        ingest("odir", src, str(out), seed=seed)
        return {r["patient_id"]: r["split"] for r in rows_of(out)}

    a, b, c = splits("a", 0), splits("b", 0), splits("c", 1)
    assert a == b
    assert a != c
    assert set(a.values()) == set(c.values()) == {"train", "val", "test"}


def test_copy_images_locally(shared_data, tmp_path):
    out = tmp_path / "copied" / "odir.parquet"
    summary = ingest("odir", str(shared_data / "fundus_odir"), str(out), copy_images=True)
    rows = rows_of(out)
    files = str(tmp_path / "copied" / "odir_files")
    for r in rows:
        assert r["image"].startswith(files + "/images/images/")
        rel = r["image"][len(files + "/images/"):]
        assert sha256_file(r["image"]) == sha256_file(shared_data / "fundus_odir" / rel)
    assert summary["rows"] == 24


# ------------------------------------------------------------------------------------------------
# HEI-MED


def test_heimed_exudate_patients_and_lesion_boxes(shared_data, tmp_path, heimed_labels):
    out = tmp_path / "heimed.parquet"
    summary = ingest("heimed", str(shared_data / "fundus_heimed"), str(out))
    rows = by_name(rows_of(out))
    assert summary["rows"] == len(rows) == 22
    assert summary["per_class"] == {"exudate": 11, "no_exudate": 11}
    inf = manifest.info(str(out))
    assert inf.classes == ["no_exudate", "exudate"]
    for name, lab in heimed_labels.items():
        assert rows[name]["label"] == int(lab["has_exudate"] == "True")
        assert (rows[name]["width"], rows[name]["height"]) == (2196, 1958)
    # identical DOB/gender = both eyes of one patient: one patient id, one split
    assert summary["patients"] == 16
    for a, b in [("(00000052).jpg", "(00000053).jpg"), ("(00000137).jpg", "(00000138).jpg")]:
        assert rows[a]["patient_id"] == rows[b]["patient_id"] and rows[a]["split"] == rows[b]["split"]
    assert rows["(00000094).jpg"]["patient_id"] == "00000094"
    assert all(len(s) == 1 for s in split_of_patients(list(rows.values())).values())
    # lesion boxes: a JSON sidecar per image; a box equals the blob's bounds in the map
    lesions = inf.meta["lesion_boxes"]
    side = storage.read_json(f"{lesions}/00000052.json")
    assert side["image"] == rows["(00000052).jpg"]["image"]
    assert len(side["boxes"]) == 6 and {b["label"] for b in side["boxes"]} == {"Exudate"}
    side3 = storage.read_json(f"{lesions}/00000003.json")
    assert len(side3["boxes"]) == 298
    raw = gzip.decompress((shared_data / "fundus_heimed" / "DMED" / "(00000003).map.gz").read_bytes())
    blob_map = np.frombuffer(raw, "<i4", 2196 * 1958, 12).reshape(1958, 2196)
    box = side3["boxes"][10]
    ys, xs = np.nonzero(blob_map == box["blob"])
    assert (box["x0"], box["y0"], box["x1"], box["y1"]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert box["pixels"] == len(xs)
    for b in side3["boxes"]:
        assert 0 <= b["x0"] < b["x1"] <= 2196 and 0 <= b["y0"] < b["y1"] <= 1958
    assert storage.read_json(f"{lesions}/00000094.json")["boxes"] == []


def test_heimed_fundus_age_approximate_and_placeholder(shared_data, tmp_path, heimed_labels):
    out = tmp_path / "heimed_age.parquet"
    summary = ingest("heimed", str(shared_data / "fundus_heimed"), str(out), task="fundus_age")
    rows = by_name(rows_of(out))
    assert summary["rows"] == 22
    for name, lab in heimed_labels.items():
        r = rows[name]
        if name == "(00000094).jpg":  # placeholder DOB 1/1/2007, gender O
            assert r["age"] is None and r["age_flag"] == "implausible" and r["sex"] is None
        else:
            assert r["age"] == 2010 - int(lab["dob_year"]) and r["age_flag"] == "approximate"
            assert r["sex"] == {"F": "female", "M": "male"}[lab["gender"]]
    assert summary["flagged"] == {"approximate": 21, "implausible": 1}
    assert any("00000094" in w for w in summary["warnings"])


# ------------------------------------------------------------------------------------------------
# DICOM, folder, csv


def test_dicom_folder_skips_non_images_with_warnings(shared_data, tmp_path):
    out = tmp_path / "dicom.parquet"
    summary = ingest("dicom", str(shared_data / "formats" / "dicom"), str(out))
    rows = by_name(rows_of(out))
    assert "waveform_ecg.dcm" not in rows and "JPEG-lossy.dcm" not in rows
    assert set(rows) == {"VL4_J2KI_fundoscopy.dcm", "CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm",
                         "SC_rgb_rle.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm"}
    fundus = rows["VL4_J2KI_fundoscopy.dcm"]
    assert (fundus["width"], fundus["height"]) == (2226, 1868) and fundus["patient_id"] == "17VL4"
    assert all(r["label"] is None and r["labels"] is None for r in rows.values())
    assert rows["MR_small.dcm"]["patient_id"] == rows["MR_small_jp2klossless.dcm"]["patient_id"] == "4MR1"
    assert rows["MR_small.dcm"]["split"] == rows["MR_small_jp2klossless.dcm"]["split"]
    warned = " | ".join(summary["warnings"])
    assert "waveform_ecg.dcm: skipped: DICOM has no image" in warned
    assert "JPEG-lossy.dcm: skipped: cannot decode DICOM pixel data" in warned
    assert all("\n" not in w for w in summary["warnings"])
    assert summary["per_class"] == {"unlabelled": 7} and manifest.info(str(out)).classes == []


def test_folder_kind_classes_from_folder_names(shared_data, tmp_path):
    out = tmp_path / "folder.parquet"
    summary = ingest("folder", str(shared_data / "fundus_odir" / "images"), str(out))
    rows = by_name(rows_of(out))
    classes = ["amd", "cataract", "diabetes", "glaucoma", "hypertension", "myopia", "normal", "others"]
    assert summary["classes"] == classes == manifest.info(str(out)).classes
    assert summary["rows"] == 24 and summary["patients"] == 23
    for name, r in rows.items():
        assert classes[r["label"]] == Path(r["image"]).parent.name
        assert r["patient_id"] == name.split("_")[0] and r["eye"] in ("left", "right")
    assert rows["3336_left.jpg"]["split"] == rows["3336_right.jpg"]["split"]


def test_folder_kind_dicom_and_unusable_files_skipped(shared_data, tmp_path):
    src = tmp_path / "classes"
    for d in ("fundus", "ecg", "empty"):
        (src / d).mkdir(parents=True)
    dcm = shared_data / "formats" / "dicom"
    (src / "fundus" / "VL4.dcm").symlink_to(dcm / "nema_wg04" / "VL4_J2KI_fundoscopy.dcm")
    (src / "fundus" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG")
    (src / "ecg" / "waveform_ecg.dcm").symlink_to(dcm / "pydicom_test_files" / "waveform_ecg.dcm")
    out = tmp_path / "f.parquet"
    summary = ingest("folder", str(src), str(out))
    rows = rows_of(out)
    assert summary["classes"] == ["ecg", "fundus"] and len(rows) == 1
    assert rows[0]["label"] == 1 and rows[0]["patient_id"] == "17VL4"
    assert (rows[0]["width"], rows[0]["height"]) == (2226, 1868)
    warned = " | ".join(summary["warnings"])
    assert "broken.jpg: skipped" in warned and "waveform_ecg.dcm: skipped" in warned
    assert "empty: no images" in warned


def test_csv_kind_relative_paths_names_and_unknown_column(shared_data, tmp_path):
    src = tmp_path / "csvsrc"
    src.mkdir()
    (src / "imgs").symlink_to(shared_data / "fundus_odir" / "images")
    absolute = shared_data / "fundus_odir" / "images" / "myopia" / "760_left.jpg"
    table = [["image", "patient_id", "eye", "label"],
             ["imgs/amd/1885_left.jpg", "p1", "L", "amd"],
             ["imgs/normal/3336_right.jpg", "p2", "OD", "normal"],
             ["imgs/normal/3336_left.jpg", "p2", "os", "normal"],
             [str(absolute), "", "", ""]]
    sheet = src / "labels.csv"
    with open(sheet, "w", newline="") as f:
        csv.writer(f).writerows(table)
    out = tmp_path / "csv.parquet"
    summary = ingest("csv", str(sheet), str(out))
    rows = by_name(rows_of(out))
    assert summary["task"] == "fundus_disease" and summary["classes"] == ["amd", "normal"]
    assert rows["1885_left.jpg"]["image"] == str(src / "imgs" / "amd" / "1885_left.jpg")
    assert (rows["1885_left.jpg"]["label"], rows["1885_left.jpg"]["eye"]) == (0, "left")
    assert rows["3336_right.jpg"]["eye"] == "right" and rows["3336_left.jpg"]["eye"] == "left"
    assert rows["3336_right.jpg"]["split"] == rows["3336_left.jpg"]["split"]
    assert rows["760_left.jpg"]["patient_id"] == "760_left" and rows["760_left.jpg"]["label"] is None
    assert (rows["760_left.jpg"]["width"], rows["760_left.jpg"]["height"]) == (2048, 1536)

    bad = src / "bad.csv"
    bad.write_text("image,label,diagnosis\nimgs/amd/1885_left.jpg,amd,x\n")
    with pytest.raises(ManifestError, match="unknown column 'diagnosis'"):
        ingest("csv", str(bad), str(tmp_path / "bad.parquet"))
    assert not (tmp_path / "bad.parquet").exists()


def test_csv_oct_seg_masks_copied(shared_data, tmp_path):
    duke = shared_data / "oct_duke_dme"
    sheet = tmp_path / "oct.csv"
    with open(sheet, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id", "mask", "axial_um", "split"])
        w.writerow([duke / "images" / "img_3.png", "1", duke / "fluid_masks" / "img_3.png", "3.87", "train"])
        w.writerow([duke / "images" / "img_14.png", "2", "", "3.87", "test"])
    out = tmp_path / "oct" / "oct.parquet"
    summary = ingest("csv", str(sheet), str(out), copy_images=True)
    rows = rows_of(out)
    assert summary["task"] == "oct_seg" and summary["splits"] == {"train": 1, "val": 0, "test": 1}
    files = str(tmp_path / "oct" / "oct_files")
    assert all(r["image"].startswith(files + "/images/") for r in rows)
    assert rows[0]["mask"].startswith(files + "/masks/") and rows[1]["mask"] is None
    assert sha256_file(rows[0]["mask"]) == sha256_file(duke / "fluid_masks" / "img_3.png")


# ------------------------------------------------------------------------------------------------
# Errors: bad or missing source files are one clear MedrayError naming the file


def test_missing_and_bad_source_files_name_the_file(shared_data, tmp_path):
    src = tmp_path / "duke"
    (src / "images").mkdir(parents=True)
    (src / "fluid_masks").mkdir()
    (src / "images" / "img_0.png").symlink_to(shared_data / "oct_duke_dme" / "images" / "img_0.png")
    out = tmp_path / "duke.parquet"
    with pytest.raises(MedrayError, match=r"fluid_masks/img_0\.png: file not found"):
        ingest("duke_dme", str(src), str(out))
    (src / "fluid_masks" / "img_0.png").symlink_to(shared_data / "oct_duke_dme" / "fluid_masks" / "img_0.png")
    (src / "images" / "img_1.png").write_bytes(b"not a png at all")
    (src / "fluid_masks" / "img_1.png").symlink_to(shared_data / "oct_duke_dme" / "fluid_masks" / "img_1.png")
    with pytest.raises(ImageDecodeError) as e:
        ingest("duke_dme", str(src), str(out))
    assert e.value.path.endswith("images/img_1.png")
    assert not out.exists()  # nothing published on error


def test_registry_and_unknown_kind_or_task(shared_data, tmp_path):
    assert set(INGESTERS) == {"duke_dme", "spectralis_layers", "odir", "heimed", "dicom", "folder", "csv"}
    with pytest.raises(MedrayError, match="unknown ingest kind 'nope'"):
        ingest("nope", str(shared_data), str(tmp_path / "x.parquet"))
    with pytest.raises(MedrayError, match="does not produce task 'rop'"):
        ingest("duke_dme", str(shared_data / "oct_duke_dme"), str(tmp_path / "x.parquet"), task="rop")


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_prints_summary_and_exits_0(cli, shared_data, tmp_path):
    out = tmp_path / "heimed.parquet"
    code, stdout, stderr = cli("data", "ingest", "heimed", str(shared_data / "fundus_heimed"), "--out", str(out),
                               "--task", "fundus_age", "--seed", "3")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["rows"] == 22 and summary["task"] == "fundus_age" and summary["manifest"] == str(out)
    assert manifest.info(str(out)).meta["seed"] == 3


def test_cli_missing_src_exit_2_one_line(cli, tmp_path):
    missing = tmp_path / "no_such_folder"
    code, stdout, stderr = cli("data", "ingest", "odir", str(missing), "--out", str(tmp_path / "x.parquet"))
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medray: error: ") and str(missing) in lines[0]
    assert "source not found" in lines[0]


def test_cli_bad_csv_column_exit_2(cli, tmp_path):
    sheet = tmp_path / "t.csv"
    sheet.write_text("image,labelz\na.jpg,1\n")
    code, _out, stderr = cli("data", "ingest", "csv", str(sheet), "--out", str(tmp_path / "x.parquet"))
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "'labelz'" in stderr


# ------------------------------------------------------------------------------------------------
# S3 (moto server) + Ray Data on the local Ray cluster


def test_spectralis_to_s3_derived_files_on_s3(s3_bucket, shared_data):
    uri = f"{s3_bucket}/oct/layers.parquet"
    summary = ingest("spectralis_layers", str(shared_data / "oct_spectralis_layers"), uri)
    assert summary["manifest"] == uri and summary["sha256"] == storage.sha256_of(uri)
    r = manifest.read_manifest(uri).to_pylist()[0]
    assert r["image"] == f"{s3_bucket}/oct/layers_files/images/circularScan_B0.png"
    assert r["mask"] == f"{s3_bucket}/oct/layers_files/masks/circularScan_B0.png"
    assert imageio.read_image(r["image"], mode="keep").shape == (496, 768)
    assert list(np.unique(imageio.read_image(r["mask"], mode="keep"))) == list(range(10))
    assert storage.read_json(summary["report"])["rows"] == 1


def _read_back_with_ray(uri: str, decode):
    import ray

    ds = ray.data.read_parquet(uri, filesystem=storage.pyarrow_filesystem(uri)[0])
    return ds, ds.map_batches(decode, batch_size=4, batch_format="pandas").take_all()


def _s3_keys(bucket: str, prefix: str) -> list[str]:
    fs, path = storage.filesystem(f"{bucket}/{prefix}")
    return [k.split("/", 1)[1] for k in fs.find(path)]


@pytest.mark.slow  # > 20 s here: Ray Data's fixed cost per execution on 2 CPUs
def test_duke_to_s3_read_with_ray(ray_cluster, s3_bucket, shared_data):
    uri = f"{s3_bucket}/duke.parquet"
    summary = ingest("duke_dme", str(shared_data / "oct_duke_dme"), uri, copy_images=True)
    assert summary["manifest"] == uri and summary["rows"] == 88
    keys = _s3_keys(s3_bucket, "duke_files")
    assert sum(k.startswith("duke_files/images/") for k in keys) == 88
    assert sum(k.startswith("duke_files/masks/") for k in keys) == 88

    def decode(batch):
        import pandas as pd

        from medray.data.imageio import read_image

        out = []
        for img, mask in zip(batch["image"], batch["mask"]):
            a, m = read_image(img, mode="L"), read_image(mask, mode="keep")
            out.append({"image": img, "shape": list(a.shape), "mask_shape": list(m.shape),
                        "mask_values": sorted(int(v) for v in np.unique(m))})
        return pd.DataFrame(out)

    ds, decoded = _read_back_with_ray(uri, decode)
    assert ds.count() == 88
    assert len(decoded) == 88
    for d in decoded:
        assert d["image"].startswith(f"{s3_bucket}/duke_files/images/")
        assert d["shape"] == d["mask_shape"] == [496, 768] and set(d["mask_values"]) <= {0, 1}
    assert sum(1 in d["mask_values"] for d in decoded) == 62


@pytest.mark.slow  # > 20 s here: Ray Data's fixed cost per execution on 2 CPUs
def test_odir_to_s3_read_with_ray(ray_cluster, s3_bucket, shared_data):
    uri = f"{s3_bucket}/sets/odir.parquet"
    summary = ingest("odir", str(shared_data / "fundus_odir"), uri, copy_images=True)
    assert summary["rows"] == 24 and manifest.info(uri).classes == ["normal", "abnormal"]

    def decode(batch):
        import pandas as pd

        from medray.data.imageio import read_image

        rows = []
        for img, w, h in zip(batch["image"], batch["width"], batch["height"]):
            a = read_image(img, target=256)  # reduced-scale JPEG decode
            full = read_image(img) if w * h < 2_000_000 else None
            rows.append({"image": img, "ok": a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 256,
                         "full_ok": full is None or full.shape[:2] == (h, w)})
        return pd.DataFrame(rows)

    ds, decoded = _read_back_with_ray(uri, decode)
    assert ds.count() == 24 and len(decoded) == 24
    assert all(d["ok"] and d["full_ok"] for d in decoded)
    assert all(d["image"].startswith(f"{s3_bucket}/sets/odir_files/images/") for d in decoded)


@pytest.mark.slow  # > 20 s here: Ray Data's fixed cost per execution on 2 CPUs
def test_dicom_fundus_to_s3_read_with_ray(ray_cluster, s3_bucket, shared_data):
    uri = f"{s3_bucket}/dicom.parquet"
    summary = ingest("dicom", str(shared_data / "formats" / "dicom" / "nema_wg04"), uri, copy_images=True)
    assert summary["rows"] == 1

    def decode(batch):
        import pandas as pd

        from medray.data.imageio import read_image

        return pd.DataFrame([{"shape": list(read_image(u).shape)} for u in batch["image"]])

    _ds, decoded = _read_back_with_ray(uri, decode)
    assert [d["shape"] for d in decoded] == [[1868, 2226, 3]]
