"""``medray data synth``: generated sets are real files + valid manifests, their labels mean what the
generators say, and the output is bit-identical for a seed. Real files, real S3 (moto server)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medray import storage
from medray.data import manifest
from medray.data.imageio import read_image
from medray.data.synth import GENERATORS, files_root, sample, synth
from medray.data.synth import fundus_age as fa
from medray.data.synth import fundus_quality as fq
from medray.data.synth import oct as octgen
from medray.data.synth import rop, skin
from medray.errors import ConfigError, ManifestError

# small but complete settings per kind (kept fast on a 2-CPU box)
SMALL: dict[str, dict] = {
    "skin": {"size": 64},
    "rop": {"size": 64},
    "oct": {"widths": [96, 128, 160], "scans_per_eye": 3},
    "fundus_age": {"size": 64},
    "fundus_quality": {"size": 64},
}


def _rows(uri: str, s3=None) -> list[dict]:
    return manifest.read_manifest(uri, s3).to_pylist()


def _check_manifest(uri: str, summary: dict, n: int, s3=None) -> list[dict]:
    """The manifest has exactly its task's schema, every row passes the task's label checks, every
    file decodes with the declared size; the summary agrees with the file."""
    inf = manifest.info(uri, s3)
    task = manifest.get_task(inf.task)
    table = manifest.read_manifest(uri, s3)
    assert table.schema.remove_metadata().equals(task.schema), table.schema
    assert table.num_rows == n == summary["rows"] == inf.num_rows
    assert summary["task"] == inf.task and summary["classes"] == inf.classes
    assert summary["sha256"] == storage.sha256_of(uri, s3)
    assert sum(summary["splits"].values()) == n
    rows = table.to_pylist()
    for r in rows:
        assert r["split"] in manifest.SPLITS and r["eye"] in manifest.EYES
        assert task.label_check(r, inf.classes) == [], r
        img = read_image(r["image"], s3=s3, mode="keep")
        assert img.shape[:2] == (r["height"], r["width"]), (r["image"], img.shape)
        assert img.dtype == np.uint8
        assert r["image"].startswith(files_root(uri) + "/")
    # splits are by patient: a patient never spans two splits
    by_patient: dict[str, set] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert summary["patients"] == len(by_patient)
    return rows


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_every_kind_writes_valid_manifest_and_images(kind, tmp_path):
    out = str(tmp_path / f"{kind}.parquet")
    n = 6
    res = synth(kind, n, out, seed=1, **SMALL[kind])
    json.dumps(res)  # JSON-able
    assert res["manifest"] == out and res["kind"] == kind
    rows = _check_manifest(out, res, n)
    assert manifest.info(out).meta["synth"]["seed"] == 1
    assert {r["dataset"] for r in rows} == {GENERATORS[kind].dataset}
    if kind in ("skin", "rop"):
        assert sum(res["per_class"].values()) == n
    if kind == "oct":
        for r in rows:
            m = read_image(r["mask"], mode="keep")
            assert m.ndim == 2 and m.shape == (r["height"], r["width"])
            assert r["scan_mode"] == "line" and r["lateral_um"] == pytest.approx(6000.0 / r["width"], rel=1e-5)


def test_skin_boxes_are_tight_around_the_lesions(tmp_path):
    out = str(tmp_path / "skin.parquet")
    n = 16
    res = synth("skin", n, out, seed=5, size=96, box_frac=1.0, clean_frac=0.0, image_format="png")
    rows = _check_manifest(out, res, n)
    assert all(r["label_quality"] == "clean" and r["boxes"] for r in rows)
    n_boxes = 0
    for r in rows:
        idx = int(Path(r["image"]).stem)
        smp = sample("skin", idx, seed=5, size=96, n=n, box_frac=1.0, clean_frac=0.0)
        img = read_image(r["image"], mode="RGB").astype(np.float32)
        assert np.array_equal(img, smp.image)  # the file is the rendered sample (PNG: lossless)
        assert len(r["boxes"]) == len(smp.boxes) >= 1
        for k, b in enumerate(r["boxes"], start=1):
            n_boxes += 1
            x0, y0, x1, y1 = (int(b[c]) for c in ("x0", "y0", "x1", "y1"))
            assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
            assert b["label"] == r["label"]
            blob = smp.lesion_mask == k
            ys, xs = np.nonzero(blob)
            # tight: the box is exactly the extent of the lesion's pixels; every edge touches it
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert blob[y0, x0:x1].any() and blob[y1 - 1, x0:x1].any()
            assert blob[y0:y1, x0].any() and blob[y0:y1, x1 - 1].any()
            # the blob's pixels stand out from the skin just around the box
            ring = np.zeros_like(blob)
            ring[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4] = True
            ring[y0:y1, x0:x1] = False
            ring &= smp.lesion_mask == 0
            if ring.sum() >= 10:
                diff = np.abs(img[blob].mean(axis=0) - img[ring].mean(axis=0)).sum()
                assert diff > 25, (r["image"], k, diff)
    assert n_boxes >= n


def test_skin_parts_noise_rate_and_true_labels(tmp_path):
    out = str(tmp_path / "skin.parquet")
    n, rate = 300, 0.3
    res = synth("skin", n, out, seed=11, size=32, hair=0.0)
    rows = _rows(out)
    truth = skin.true_labels(out)
    assert len(truth) == n
    parts = {"box": 0, "clean": 0, "full": 0}
    flips = 0
    for r, t in zip(rows, truth):
        if r["boxes"] is not None:
            part = "box"
            assert r["label_quality"] == "clean" and r["label"] == t
            assert all(b["label"] == t for b in r["boxes"])
        elif r["label_quality"] == "clean":
            part = "clean"
            assert r["label"] == t
        else:
            part = "full"
            assert r["label_quality"] == "noisy"
            flips += r["label"] != t
        parts[part] += 1
    assert parts == {"box": 30, "clean": 90, "full": 180} == res["parts"]
    # the flip rate is the configured one within 4 binomial standard deviations
    sd = math.sqrt(rate * (1 - rate) / parts["full"])
    assert abs(flips / parts["full"] - rate) < 4 * sd, flips
    assert res["noise"]["flipped"] == flips
    # long-tailed true classes: the head class is the most frequent, the tail the rarest
    counts = np.bincount(truth, minlength=5)
    assert counts[0] == counts.max() and counts[0] > 2 * counts[2] and counts[3] + counts[4] < counts[1]
    # the noise rate is an option (label streams only, no rendering)
    opts = skin.resolve({"noise": 0.6})
    flipped = [skin.labels_of(3, i, 4000, opts) for i in range(4000)]
    full = [t != s for t, s, p in flipped if p == "full"]
    assert abs(np.mean(full) - 0.6) < 4 * math.sqrt(0.24 / len(full))
    assert all(t == s for t, s, p in flipped if p != "full")


def test_oct_masks_hold_all_structures_in_order(tmp_path):
    out = str(tmp_path / "oct.parquet")
    n = 6
    res = synth("oct", n, out, seed=2, widths=[128, 160, 192], scans_per_eye=3)
    rows = _check_manifest(out, res, n)
    assert [r["width"] for r in rows] == [128, 160, 192] * 2
    assert all(r["height"] == 496 and r["axial_um"] == pytest.approx(3.9) for r in rows)
    seen: set[int] = set()
    masks = []
    for r in rows:
        img = read_image(r["image"], mode="keep")
        assert img.ndim == 2  # single-channel 8-bit PNG
        m = read_image(r["mask"], mode="keep")
        masks.append(m)
        ids = set(np.unique(m).tolist())
        assert ids <= set(range(1, 15)), ids  # every pixel labelled, 0 unused
        seen |= ids
        disc_cols = (m == octgen.DISC).any(axis=0)
        col_ok = (np.diff(m.astype(np.int16), axis=0) >= 0).all(axis=0)
        assert col_ok[~disc_cols].all(), np.flatnonzero(~col_ok & ~disc_cols)[:10]
        # the vitreous is on top and the sclera at the bottom of every non-disc column
        assert (m[0, ~disc_cols] == octgen.VITREOUS).all() and (m[-1, ~disc_cols] == octgen.SCLERA).all()
    assert seen == set(range(1, 15)), sorted(set(range(1, 15)) - seen)
    assert res["images_with_structure"]["optic_disc"] >= 1 and res["with_fovea"] >= 1
    # neighbouring B-scans of one eye are near copies; scans of another eye are not
    def agree(a: np.ndarray, b: np.ndarray) -> float:
        from PIL import Image

        rs = lambda x: np.asarray(Image.fromarray(x).resize((128, x.shape[0]), Image.NEAREST))  # noqa: E731
        return float((rs(a) == rs(b)).mean())

    same_eye = [agree(masks[0], masks[1]), agree(masks[1], masks[2]), agree(masks[3], masks[4])]
    other_eye = [agree(masks[0], masks[3]), agree(masks[1], masks[4]), agree(masks[2], masks[5])]
    assert min(same_eye) > 0.8 and min(same_eye) > max(other_eye) + 0.05, (same_eye, other_eye)


def _ridge_contrast(image: np.ndarray, geo: rop.RopGeometry, band: float = 0.035, ref: float = 0.06) -> float:
    """Mean luminance in a band around the vascular boundary minus the luminance just outside it."""
    s = image.shape[0]
    lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    pts = geo.points(offset=ref * s, margin=4)
    assert len(pts) > 10
    th = pts[:, 2]
    band_vals = [ndimage.map_coordinates(lum, [geo.cy + (geo.r(th) + o) * np.sin(th),
                                               geo.cx + (geo.r(th) + o) * np.cos(th)], order=1)
                 for o in np.linspace(-band * s, band * s, 9)]
    ref_vals = ndimage.map_coordinates(lum, [pts[:, 1], pts[:, 0]], order=1)
    return float(np.mean(np.mean(band_vals, axis=0) - ref_vals))


def test_rop_stages_are_separable_by_ridge_brightness(tmp_path):
    out = str(tmp_path / "rop.parquet")
    n = 32
    res = synth("rop", n, out, seed=4, size=128, stage_probs=[1, 1, 1, 1])
    rows = _check_manifest(out, res, n)
    stat: dict[int, list[float]] = {}
    for r in rows:
        idx = int(Path(r["image"]).stem)
        smp = sample("rop", idx, seed=4, size=128, stage_probs=[1, 1, 1, 1])
        img = read_image(r["image"])
        assert np.array_equal(img, smp.image) and smp.stage == r["stage"]
        stat.setdefault(r["stage"], []).append(_ridge_contrast(img, smp.geometry))
    assert sorted(stat) == [0, 1, 2, 3], {k: len(v) for k, v in stat.items()}
    means = [float(np.mean(stat[k])) for k in range(4)]
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert max(stat[0]) < min(stat[2]) and max(stat[1]) < max(stat[3]), stat
    assert abs(means[0]) < 6 < means[1], means


def test_fundus_age_features_track_age_and_disease_looks_older(tmp_path):
    out = str(tmp_path / "fa.parquet")
    n = 80
    res = synth("fundus_age", n, out, seed=6, size=96, disease_rate=0.3)
    rows = _check_manifest(out, res, n)
    assert all(20 <= r["age"] <= 80 and r["sex"] in ("F", "M") and r["age_flag"] is None for r in rows)
    ages = np.array([r["age"] for r in rows])
    dis = np.array([r["disease"] for r in rows])
    blue = np.array([fa.blue_share(read_image(r["image"])) for r in rows])
    healthy = dis == 0
    assert 4 <= (~healthy).sum() <= 50
    r_age = float(np.corrcoef(ages[healthy], blue[healthy])[0, 1])
    assert r_age < -0.8, r_age  # the eye yellows (loses blue) with age
    # with the healthy eyes' age->feature line, diseased eyes read as older than they are
    slope, icpt = np.polyfit(ages[healthy], blue[healthy], 1)
    read_age = (blue - icpt) / slope
    gap = read_age - ages
    assert gap[~healthy].mean() > gap[healthy].mean() + 4, (gap[~healthy].mean(), gap[healthy].mean())
    # drusen-like spots: more with apparent age (the known function)
    young = fa.age_features(25.0, 0, np.random.default_rng(0))
    old = fa.age_features(75.0, 0, np.random.default_rng(0))
    assert old["drusen"] > young["drusen"] and old["pallor"] > young["pallor"]
    assert old["artery_width"] < young["artery_width"] and old["tortuosity"] > young["tortuosity"]


def test_fundus_quality_defects_make_photos_measurably_worse(tmp_path):
    out = str(tmp_path / "q.parquet")
    n = 60
    res = synth("fundus_quality", n, out, seed=2, size=96)
    rows = _check_manifest(out, res, n)
    assert res["classes"] == ["ungradable", "gradable"] and res["task"] == "fundus_disease"
    labels = np.array([r["label"] for r in rows])
    assert 15 <= (labels == 0).sum() <= 45  # ungradable_rate 0.5
    assert sum(res["defects"].values()) >= (labels == 0).sum()
    # every defect, applied to the same photo, moves a simple image statistic the way it should
    base = fa.render(np.random.default_rng(0), 128).image
    grey = base.astype(np.float64).mean(-1)
    sharp = np.abs(ndimage.laplace(grey)).mean()

    def worse(d):
        return fq.degrade(base, [d], np.random.default_rng(1)).astype(np.float64)

    assert worse("dark").mean() < 0.3 * base.mean()
    assert worse("glare").mean() > base.mean() + 30
    assert np.abs(ndimage.laplace(worse("blur").mean(-1))).mean() < 0.5 * sharp
    fov = grey > 20  # the circular field of view
    assert (worse("occlusion").mean(-1)[fov] < 20).mean() > 0.25  # a shadow over part of the field
    assert ((worse("off_centre").mean(-1) > 20) & fov).sum() < 0.8 * fov.sum()  # the field left the frame
    # the labels are recomputable from the seed (sample == what was written)
    for i in (0, 1, 7):
        assert fq.sample(2, i, res["options"])["label"] == rows[i]["label"]


def _files(root: str) -> dict[str, bytes]:
    return {u[len(root):]: storage.read_bytes(u) for u in storage.iter_files(root)}


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_same_seed_same_bytes_other_seed_other_bytes(kind, tmp_path):
    out = str(tmp_path / "set.parquet")
    opts = dict(SMALL[kind], n=3, out=out)
    if kind == "oct":
        opts.update(widths=[64], height=96)
    a = synth(kind, seed=7, **opts)
    files_a = _files(files_root(out))
    b = synth(kind, seed=7, **opts)
    assert a == b and a["sha256"] == storage.sha256_of(out)
    assert _files(files_root(out)) == files_a
    c = synth(kind, seed=8, **opts)
    files_c = _files(files_root(out))
    assert c["sha256"] != a["sha256"]
    assert set(files_c) == set(files_a)
    assert all(files_c[k] != files_a[k] for k in files_a)


def test_parallel_workers_give_identical_output(tmp_path):
    one = synth("skin", 8, str(tmp_path / "one.parquet"), seed=3, size=48, workers=1, chunk_size=8)
    two = synth("skin", 8, str(tmp_path / "two.parquet"), seed=3, size=48, workers=2, chunk_size=2)
    files_one, files_two = _files(one["files"]), _files(two["files"])
    assert files_one == files_two and len(files_one) == 8
    rows_one, rows_two = _rows(one["manifest"]), _rows(two["manifest"])
    for r1, r2 in zip(rows_one, rows_two):
        r1.pop("image"), r2.pop("image")
        assert r1 == r2


def test_cli_synth_prints_summary(cli, tmp_path):
    out = str(tmp_path / "cli" / "rop.parquet")
    code, stdout, stderr = cli("data", "synth", "rop", "--n", "4", "--out", out, "--seed", "2", "--size", "48")
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res["manifest"] == out and res["rows"] == 4 and res["task"] == "rop"
    assert res["sha256"] == storage.sha256_of(out)
    _check_manifest(out, res, 4)
    code, _, stderr = cli("data", "synth", "mri", "--n", "4", "--out", out)
    assert code == 2 and "unknown kind 'mri'" in stderr


def test_bad_arguments_are_config_errors(tmp_path):
    out = str(tmp_path / "x.parquet")
    with pytest.raises(ConfigError, match="unknown option"):
        synth("skin", 2, out, colour="blue")
    with pytest.raises(ConfigError, match="n=0"):
        synth("rop", 0, out)
    with pytest.raises(ConfigError, match="box_frac"):
        synth("skin", 2, out, box_frac=0.8, clean_frac=0.5)
    with pytest.raises(ConfigError, match="n_stages"):
        synth("rop", 2, out, n_stages=7)
    assert not Path(out).exists()


def test_synth_to_s3(s3_bucket):
    out = f"{s3_bucket}/sets/skin.parquet"
    res = synth("skin", 4, out, seed=1, size=48)
    assert res["manifest"] == out and res["files"] == f"{s3_bucket}/sets/skin_files"
    rows = _check_manifest(out, res, 4)
    assert all(r["image"].startswith(f"{s3_bucket}/sets/skin_files/00000/") for r in rows)
    assert len(list(storage.iter_files(res["files"]))) == 4


def test_synth_to_memory_and_render_in_memory():
    out = "memory://medray-synth-test/oct.parquet"
    res = synth("oct", 2, out, seed=0, widths=[64], height=80)
    rows = _check_manifest(out, res, 2)
    assert rows[0]["mask"].startswith("memory://medray-synth-test/oct_files/")
    with pytest.raises(ManifestError, match="not a synthetic skin manifest"):
        skin.true_labels(out)
    # the pure renderers make one sample from a Generator, no files involved
    rng = np.random.default_rng(0)
    s = skin.render(rng, 48, label=1)
    assert s.image.shape == (48, 48, 3) and s.label == 1 and s.boxes
    r = rop.render(rng, 48, stage=2)
    assert r.image.shape == (48, 48, 3) and r.stage == 2
    o = octgen.render(rng, 64, 96)
    assert o.image.shape == o.mask.shape == (96, 64) and o.axial_um == pytest.approx(3.9 * 496 / 96)
    f = fa.render(rng, 48, age=60.0, disease=1)
    assert f.image.shape == (48, 48, 3) and f.apparent_age > 60.0 and f.disease == 1
