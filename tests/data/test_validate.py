"""``medray data validate`` on real fundus photos (ODIR JPEGs copied into tmp), generated images, an
OCT manifest with class-id masks, and a manifest on a real S3 endpoint (moto)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medray import storage
from medray.data import imageio, manifest, validate
from medray.data.validate import Problem, Report, format_report, validate_manifest
from medray.errors import ManifestError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# --------------------------------------------------------------------------------------------
# helpers


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (mtime_ns, size, sha256) -- to prove nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p.relative_to(root)) + "/"] = (p.stat().st_mtime_ns, 0, "")
    return out


def fundus_row(path: str, i: int, **kw) -> dict:
    data = Path(path).read_bytes()
    w, h = imageio.image_size(data, path)
    row = dict(image=path, patient_id=f"p{i:03d}", eye="left" if i % 2 else "right", width=w, height=h,
               split="train", dataset="test", age=40.0 + i, sex="Female", disease=0)
    row.update(kw)
    return row


def table_rows(stdout: str) -> dict[int, list[str]]:
    """Row index -> reasons, parsed from the printed table."""
    out: dict[int, list[str]] = {}
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["row", "file", "reason"])
    col = lines[header].index("reason")
    for line in lines[header + 2:]:
        if not line.strip():
            break
        out.setdefault(int(line.split()[0]), []).append(line[col:])
    return out


def gen_jpeg(path: Path, h: int, w: int, seed: int = 0, **save) -> str:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 7 + seed) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=90, **save)
    return str(path)


@pytest.fixture
def odir_images(shared_data, tmp_path) -> list[str]:
    """Eight real ODIR fundus JPEGs (different cameras/sizes), copied into tmp (never the repo)."""
    src = sorted((shared_data / "fundus_odir" / "images").glob("*/*.jpg"))
    if len(src) < 8:
        pytest.skip(f"need 8 ODIR JPEGs under {shared_data / 'fundus_odir' / 'images'}, found {len(src)}")
    # one per disease folder first, for variety of sizes/cameras
    by_folder: dict[str, Path] = {}
    for p in src:
        by_folder.setdefault(p.parent.name, p)
    picked = list(by_folder.values())[:8]
    picked += [p for p in src if p not in picked][: 8 - len(picked)]
    out = tmp_path / "images"
    out.mkdir()
    paths = []
    for i, p in enumerate(picked):
        dst = out / f"{i:02d}_{p.parent.name}_{p.name}"
        shutil.copyfile(p, dst)
        paths.append(str(dst))
    return paths


# --------------------------------------------------------------------------------------------
# The acceptance test: real fundus photos with four broken rows


def test_cli_reports_exactly_the_broken_rows(odir_images, tmp_path, cli):
    rows = [fundus_row(p, i) for i, p in enumerate(odir_images)]
    truncated, missing, empty, bad_age = 2, 4, 5, 6
    data = Path(odir_images[truncated]).read_bytes()
    Path(odir_images[truncated]).write_bytes(data[: len(data) // 2])  # cut in half
    os.unlink(odir_images[missing])
    Path(odir_images[empty]).write_bytes(b"")
    rows[bad_age]["age"] = -3.0
    uri = str(tmp_path / "fundus_age.parquet")
    manifest.write_manifest(rows, uri, "fundus_age")
    before = snapshot(tmp_path)

    code, out, err = cli("data", "validate", uri, "--workers", "3")

    assert code == 1, out + err
    got = table_rows(out)
    assert sorted(got) == [truncated, missing, empty, bad_age]
    assert all(len(r) == 1 for r in got.values())  # one problem each
    assert "truncated" in got[truncated][0]
    assert "missing" in got[missing][0] and "not found" in got[missing][0]
    assert "empty" in got[empty][0] and "0 bytes" in got[empty][0]
    assert "age=-3" in got[bad_age][0] and "out of range" in got[bad_age][0]
    # the file column names the file of each bad row
    for i in got:
        assert any(line.split()[0] == str(i) and rows[i]["image"] in line for line in out.splitlines())
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(uri) and "checked 8 rows" in summary and "4 bad rows (4 problems)" in summary
    # only read: every byte and mtime as before, nothing created
    assert snapshot(tmp_path) == before


def test_api_report_for_the_broken_rows(odir_images, tmp_path):
    rows = [fundus_row(p, i) for i, p in enumerate(odir_images)]
    os.unlink(odir_images[1])
    rows[3]["age"] = 131.0
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest(rows, uri, "fundus_age")
    rep = validate_manifest(uri, workers=2)
    assert isinstance(rep, Report)
    assert (rep.task, rep.total_rows, rep.rows, rep.bad_rows) == ("fundus_age", 8, 8, 2)
    assert [(p.row, p.file) for p in rep.bad] == [(1, odir_images[1]), (3, odir_images[3])]
    assert rep.bad[1].reason == "age=131 out of range [0, 130]"
    assert rep.as_dict()["bad_rows"] == 2


def test_clean_real_manifest_exits_zero(odir_images, tmp_path, cli):
    uri = str(tmp_path / "clean.parquet")
    manifest.write_manifest([fundus_row(p, i) for i, p in enumerate(odir_images)], uri, "fundus_age")
    before = snapshot(tmp_path)
    code, out, err = cli("data", "validate", uri)
    assert code == 0, out + err
    assert out.strip() == out.strip().splitlines()[-1]  # no table, just the summary
    assert "checked 8 rows" in out and "all OK" in out
    assert snapshot(tmp_path) == before


def test_real_dicom_fundus_in_a_manifest(shared_data, tmp_path):
    src = shared_data / "formats" / "dicom" / "nema_wg04" / "VL4_J2KI_fundoscopy.dcm"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    dst = tmp_path / "fundus.dcm"
    shutil.copyfile(src, dst)
    rows = [fundus_row(str(dst), 0), fundus_row(str(dst), 1, width=2226, height=2226)]
    assert (rows[0]["width"], rows[0]["height"]) == (2226, 1868)
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest(rows, uri, "fundus_age")
    rep = validate_manifest(uri, workers=2)
    assert [p.row for p in rep.bad] == [1]
    assert rep.bad[0].reason == "image size 2226x1868 != manifest width x height 2226x2226"


# --------------------------------------------------------------------------------------------
# Generated images: the checks one by one


def test_several_problems_in_one_row_count_once(tmp_path):
    imgs = [gen_jpeg(tmp_path / f"g{i}.jpg", 120, 160, seed=i) for i in range(4)]
    rows = [fundus_row(p, i) for i, p in enumerate(imgs)]
    rows[1].update(width=161, age=200.0, split="training", disease=3)
    rows[2].update(eye="both")
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest(rows, uri, "fundus_age")
    rep = validate_manifest(uri, workers=2)
    assert rep.bad_rows == 2 and len(rep.bad) == 5
    reasons = [p.reason for p in rep.bad if p.row == 1]
    assert len(reasons) == 4
    assert any(r.startswith("split='training' not one of train, val, test") for r in reasons)
    assert "image size 160x120 != manifest width x height 161x120" in reasons
    assert "age=200 out of range [0, 130]" in reasons
    assert "disease=3 not 0/1" in reasons
    assert [p.reason for p in rep.bad if p.row == 2] == ["eye='both' not one of left, right, unknown"]
    text = format_report(rep)
    assert text.splitlines()[-1].endswith("2 bad rows (5 problems)")
    assert len(table_rows(text)[1]) == 4


def test_exif_rotated_photo_uses_displayed_size(tmp_path):
    ex = Image.Exif()
    ex[0x0112] = 6  # stored 160x120, displayed 120x160
    p = gen_jpeg(tmp_path / "rot.jpg", 120, 160, exif=ex.tobytes())
    rows = [fundus_row(p, 0), fundus_row(p, 1, width=160, height=120)]
    assert (rows[0]["width"], rows[0]["height"]) == (120, 160)
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest(rows, uri, "fundus_age")
    rep = validate_manifest(uri)
    assert [p.row for p in rep.bad] == [1] and "120x160" in rep.bad[0].reason


def test_corrupt_unsupported_and_folder_images(tmp_path):
    good = gen_jpeg(tmp_path / "good.jpg", 64, 80)
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    folder = tmp_path / "a_folder.jpg"
    folder.mkdir()
    bomb_like = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(bomb_like)
    rows = [fundus_row(good, 0)]
    rows += [dict(rows[0], image=str(noise), patient_id="p1"), dict(rows[0], image=str(folder), patient_id="p2"),
             dict(rows[0], image=str(bomb_like), patient_id="p3", width=3000, height=3000)]
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest(rows, uri, "fundus_age")
    rep = validate_manifest(uri, max_pixels=10_000_000)
    assert [p.row for p in rep.bad] == [1, 2]
    assert "not a recognised image" in rep.bad[0].reason
    assert "folder" in rep.bad[1].reason
    rep = validate_manifest(uri, max_pixels=1_000_000)
    assert [p.row for p in rep.bad] == [1, 2, 3] and "too many pixels" in rep.bad[2].reason


def test_truncated_generated_jpeg_and_png_are_detected(tmp_path):
    """Reduced-scale decoding (validate uses target=) must still see a cut file."""
    big = gen_jpeg(tmp_path / "big.jpg", 1200, 1600)
    png = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(png)
    rows = [fundus_row(big, 0), fundus_row(str(png), 1)]
    for p in (big, str(png)):
        data = Path(p).read_bytes()
        Path(p).write_bytes(data[: int(len(data) * 0.8)])
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest(rows, uri, "fundus_age")
    rep = validate_manifest(uri)
    assert [p.row for p in rep.bad] == [0, 1]
    assert all("truncated" in p.reason for p in rep.bad)


def test_limit_workers_and_batches(tmp_path, monkeypatch, cli):
    """Row indices stay right across many small batches; --limit checks only the first rows; the
    result does not depend on the number of workers."""
    monkeypatch.setattr(validate, "BATCH_ROWS", 7)
    img = gen_jpeg(tmp_path / "g.jpg", 40, 50)
    rows = [fundus_row(img, i) for i in range(50)]
    for i in (3, 7, 8, 22, 49):
        rows[i]["age"] = -1.0
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest(rows, uri, "fundus_age", row_group_size=10)
    reps = [validate_manifest(uri, workers=w) for w in (1, 4)]
    for rep in reps:
        assert [p.row for p in rep.bad] == [3, 7, 8, 22, 49] and rep.rows == 50
    assert reps[0].bad == reps[1].bad
    rep = validate_manifest(uri, limit=20)
    assert rep.rows == 20 and [p.row for p in rep.bad] == [3, 7, 8]
    code, out, _ = cli("data", "validate", uri, "--limit", "8", "--workers", "2")
    assert code == 1 and sorted(table_rows(out)) == [3, 7]
    assert "checked 8 of 50 rows" in out
    code, out, _ = cli("data", "validate", uri, "--limit", "3")
    assert code == 0 and "checked 3 of 50 rows" in out and "all OK" in out
    code, out, err = cli("data", "validate", uri, "--workers", "0")
    assert code == 2 and "--workers must be >= 1" in err


def test_progress_goes_to_stderr(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(validate, "PROGRESS_MIN_ROWS", 30)
    monkeypatch.setattr(validate, "PROGRESS_EVERY_S", 0.0)
    img = gen_jpeg(tmp_path / "g.jpg", 40, 50)
    uri = str(tmp_path / "m.parquet")
    manifest.write_manifest([fundus_row(img, i, age=50.0) for i in range(100)], uri, "fundus_age")
    code, out, err = cli("data", "validate", uri, "--workers", "2")
    assert code == 0
    progress = [line for line in err.splitlines() if line.startswith("validate: ")]
    assert progress and progress[-1].startswith("validate: 100/100 rows (100%), 0 bad")
    assert "validate:" not in out
    # small manifests stay quiet; progress can be forced either way through the API
    code, out, err = cli("data", "validate", uri, "--limit", "10")
    assert code == 0 and err == ""
    buf = io.StringIO()
    validate_manifest(uri, limit=5, progress=True, progress_stream=buf)
    assert buf.getvalue().startswith("validate: 5/5 rows")


# --------------------------------------------------------------------------------------------
# OCT: class-id masks


def test_oct_masks(tmp_path, cli):
    classes = ["background", "retina", "fluid"]
    rng = np.random.default_rng(0)

    def scan(i: int, h: int = 96, w: int = 128) -> str:
        p = tmp_path / f"scan{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(p)
        return str(p)

    def mask(i: int, ids: np.ndarray, palette: bool = False) -> str:
        p = tmp_path / f"mask{i}.png"
        if palette:
            im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
            im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
            im.save(p)
        else:
            Image.fromarray(ids).save(p)
        return str(p)

    ok = np.zeros((96, 128), np.uint8)
    ok[30:60] = 1
    ok[40:45, 50:70] = 2
    bad_ids = ok.copy()
    bad_ids[0, 0] = 5
    bad_ids[1, 1] = 3
    colour = np.zeros((96, 128, 3), np.uint8)
    colour[30:60] = (255, 0, 0)

    def row(i, image, m, **kw):
        r = dict(image=image, patient_id=f"p{i}", eye="right", width=128, height=96, split="train", dataset="oct",
                 mask=m, axial_um=3.9, lateral_um=11.0, scan_mode="line")
        r.update(kw)
        return r

    rows = [
        row(0, scan(0), mask(0, ok)),  # good
        row(1, scan(1), mask(1, bad_ids)),  # class ids 3 and 5 outside [0, 2]
        row(2, scan(2), mask(2, ok, palette=True)),  # good: palette indices are the ids
        row(3, scan(3), mask(3, ok[:80])),  # mask 128x80 vs image 128x96
        row(4, scan(4), None),  # unlabelled: fine
        row(5, scan(5), str(tmp_path / "no_such_mask.png")),  # missing mask
        row(6, scan(6), mask(6, colour)),  # a colour picture, not class ids
        row(7, scan(7), mask(7, ok), axial_um=0.0),  # label check of the task
    ]
    uri = str(tmp_path / "oct.parquet")
    manifest.write_manifest(rows, uri, "oct_seg", classes=classes)
    before = snapshot(tmp_path)
    code, out, err = cli("data", "validate", uri)
    assert code == 1, out + err
    got = table_rows(out)
    assert sorted(got) == [1, 3, 5, 6, 7]
    assert got[1] == ["mask has class id(s) 3, 5 outside the class map [0, 2] (3 classes)"]
    assert got[3] == ["mask size 128x80 != image size 128x96"]
    assert "missing" in got[5][0] and "not found" in got[5][0]
    assert "single-channel" in got[6][0]
    assert got[7] == ["axial_um=0.0 must be > 0"]
    # the file column names the mask for mask problems, the image otherwise
    lines = {int(line.split()[0]): line for line in out.splitlines() if re.match(r"^\s*\d+\s", line)}
    assert rows[1]["mask"] in lines[1] and rows[7]["image"] in lines[7]
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------
# S3


def test_manifest_on_s3(s3_endpoint, s3_bucket, tmp_path, cli):
    import boto3

    base = f"{s3_bucket}/sets/fundus"
    rows = []
    for i in range(5):
        local = gen_jpeg(tmp_path / f"g{i}.jpg", 100 + 10 * i, 150, seed=i)
        uri = f"{base}/images/g{i}.jpg"
        storage.upload_file(local, uri)
        rows.append(fundus_row(local, i, image=uri))
    rows[3]["image"] = f"{base}/images/not_uploaded.jpg"
    trunc = storage.read_bytes(rows[4]["image"])
    storage.write_bytes(rows[4]["image"], trunc[: len(trunc) // 2])
    muri = f"{base}/manifest.parquet"
    manifest.write_manifest(rows, muri, "fundus_age")

    bucket = s3_bucket.split("://")[1]
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    def objects():
        return {o["Key"]: (o["ETag"], o["LastModified"], o["Size"])
                for o in client.list_objects_v2(Bucket=bucket)["Contents"]}

    before = objects()
    code, out, err = cli("data", "validate", muri, "--workers", "4")
    assert code == 1, out + err
    got = table_rows(out)
    assert sorted(got) == [3, 4]
    assert "missing" in got[3][0] and "truncated" in got[4][0]
    assert f"{base}/images/not_uploaded.jpg" in out
    assert objects() == before  # nothing written to the bucket

    # the good part of it validates clean; a manifest that is not there is a clear error
    manifest.write_manifest(rows[:3], f"{base}/clean.parquet", "fundus_age")
    code, out, err = cli("data", "validate", f"{base}/clean.parquet")
    assert code == 0 and "all OK" in out, out + err
    code, out, err = cli("data", "validate", f"{base}/nope.parquet")
    assert code == 2 and err.strip() == f"medray: error: {base}/nope.parquet: manifest not found"


# --------------------------------------------------------------------------------------------
# Manifest errors (exit 2)


def test_unreadable_or_absent_manifest(tmp_path, cli):
    img = gen_jpeg(tmp_path / "photo.jpg", 20, 30)
    (tmp_path / "empty.parquet").write_bytes(b"")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image": [img]}), plain)  # Parquet, but not a medray manifest
    unknown = tmp_path / "unknown_task.parquet"
    t = manifest.to_table([fundus_row(img, 0)], "fundus_age")
    pq.write_table(t.replace_schema_metadata({b"medray": b'{"task": "retina_magic", "classes": []}'}), unknown)
    cases = {
        str(tmp_path / "absent.parquet"): "manifest not found",
        img: "not a Parquet manifest (a file starting with b'\\xff\\xd8\\xff",
        str(tmp_path / "empty.parquet"): "not a Parquet manifest (an empty file)",
        str(tmp_path): "is a folder",
        str(plain): "no medray metadata",
        str(unknown): "unknown task 'retina_magic'",
    }
    for uri, words in cases.items():
        code, out, err = cli("data", "validate", uri)
        assert code == 2, (uri, out, err)
        assert err.startswith(f"medray: error: {uri}: ") or err.startswith("medray: error: unknown task"), err
        assert words in err, err
        assert out == ""
        with pytest.raises(ManifestError):
            validate_manifest(uri)


def test_schema_mismatch_is_a_manifest_error(tmp_path, cli):
    """pyarrow silently skips a missing column: every label check would pass on nulls."""
    img = gen_jpeg(tmp_path / "photo.jpg", 20, 30)
    t = manifest.to_table([fundus_row(img, 0)], "fundus_age")
    p = tmp_path / "no_age.parquet"
    pq.write_table(t.drop_columns(["age"]), p)
    code, out, err = cli("data", "validate", str(p))
    assert code == 2 and "missing column(s) ['age'] for task 'fundus_age'" in err
    p2 = tmp_path / "text_width.parquet"
    i = t.schema.get_field_index("width")
    pq.write_table(t.set_column(i, "width", pa.array(["30"])), p2)
    with pytest.raises(ManifestError, match=r"width: string \(expected int32\)"):
        validate_manifest(str(p2))
    p3 = tmp_path / "int64_age.parquet"  # compatible types are fine (e.g. written by pandas)
    j = t.schema.get_field_index("age")
    pq.write_table(t.set_column(j, "age", pa.array([41], pa.int64())).set_column(i, "width", pa.array([30], pa.int64())), p3)
    assert validate_manifest(str(p3)).ok


# --------------------------------------------------------------------------------------------
# The report table


def test_format_report_is_aligned():
    rep = Report(uri="m.parquet", task="fundus_age", classes=[], total_rows=2000, rows=2000, seconds=1.25, bad=[
        Problem(7, "/a/short.jpg", "image: missing file: file not found"),
        Problem(7, "/a/short.jpg", "age=-3 out of range [0, 130]"),
        Problem(1234, "s3://bucket/a/much/longer/path/to/image.jpg", "image: file is empty (0 bytes)"),
    ])
    text = format_report(rep)
    lines = text.splitlines()
    assert lines[0].split() == ["row", "file", "reason"]
    col = lines[0].index("reason")
    file_col = lines[0].index("file")
    for line in lines[2:5]:
        assert line[col - 2 : col] == "  " and line[col] != " "
        assert line[file_col - 2 : file_col] == "  " and line[file_col] != " "
    assert lines[2].lstrip().startswith("7 ") and lines[4].startswith("1234 ")
    assert lines[-1] == "m.parquet (fundus_age): checked 2,000 rows in 1.2 s: 2 bad rows (3 problems)"
    short = format_report(rep, max_lines=1)
    assert "... 2 more problem(s) not shown" in short
    ok = Report(uri="m.parquet", task="rop", classes=["0"], total_rows=10, rows=4, seconds=0.01)
    assert format_report(ok) == "m.parquet (rop): checked 4 of 10 rows in 0.0 s: all OK"
