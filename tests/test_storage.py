"""medray.storage on real backends: the local disk, file:// and memory:// URIs, and S3 through moto's
server on loopback (the `s3_bucket` fixture)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medray import storage
from medray.config import S3Options
from medray.errors import StorageError

REPO = Path(__file__).resolve().parents[1]


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def mem():
    """A fresh memory:// prefix, removed afterwards (the memory filesystem is process-wide)."""
    uri = f"memory://medray-test-{uuid.uuid4().hex[:8]}"
    yield uri
    storage.remove(uri, recursive=True)


@pytest.fixture
def clean_s3_config(monkeypatch):
    """Isolate process-wide S3 options and the AWS_* variables `configure` exports."""
    monkeypatch.setattr(storage, "_S3_OPTIONS", {})
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if k in os.environ:
            monkeypatch.setenv(k, os.environ[k])  # restored at teardown even if configure() changes it
        else:
            monkeypatch.delenv(k, raising=False)
    yield
    storage._fs_cache.clear()


# --------------------------------------------------------------------------------------------
# Round trips


def _round_trip(base: str) -> None:
    payload = os.urandom(50_000)
    uri = storage.join(base, "nested/deeper/blob.bin")
    art = storage.write_bytes(uri, payload)
    assert art.uri == uri and art.size == len(payload) and art.sha256 == _sha(payload)
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == payload
    assert storage.sha256_of(uri) == _sha(payload)
    with storage.open_read(uri) as f:
        assert f.read(10) == payload[:10]
    # overwrite
    art2 = storage.write_text(uri, "second version\n")
    assert storage.read_text(uri) == "second version\n" and art2.sha256 == _sha(b"second version\n")
    # json
    j = storage.join(base, "meta.json")
    storage.write_json(j, {"b": 2, "a": [1, 2.5, "x"]})
    assert storage.read_json(j) == {"b": 2, "a": [1, 2.5, "x"]}
    # missing files
    missing = storage.join(base, "nope.bin")
    assert not storage.exists(missing)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.read_bytes(missing)
    # remove
    storage.remove(uri)
    assert not storage.exists(uri)
    storage.remove(uri)  # removing what is gone is fine


def test_local_path_round_trip(tmp_path):
    _round_trip(str(tmp_path))
    assert not any(storage.is_temporary(str(p)) for p in tmp_path.rglob("*"))


def test_file_uri_round_trip(tmp_path):
    _round_trip(f"file://{tmp_path}")
    art = storage.write_bytes(f"file://{tmp_path}/via_uri.txt", b"abc")
    assert (tmp_path / "via_uri.txt").read_bytes() == b"abc"  # the same file as the plain path
    assert art.sha256 == _sha(b"abc")
    assert storage.read_bytes(str(tmp_path / "via_uri.txt")) == b"abc"
    assert storage.to_uri(f"file://{tmp_path}/via_uri.txt") == str(tmp_path / "via_uri.txt")


def test_memory_round_trip(mem):
    _round_trip(mem)
    storage.write_bytes(f"{mem}/a.txt", b"A")
    assert storage.listdir(mem) == sorted([f"{mem}/a.txt", f"{mem}/meta.json", f"{mem}/nested"])
    assert not any(storage.is_temporary(u) for u in storage.iter_files(mem))


def test_s3_round_trip(s3_bucket):
    _round_trip(f"{s3_bucket}/prefix")
    # s3a:// names the same object
    storage.write_bytes(f"{s3_bucket}/alias.txt", b"same object")
    assert storage.read_bytes(s3_bucket.replace("s3://", "s3a://") + "/alias.txt") == b"same object"


def test_relative_local_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage.write_text("rel/file.txt", "x")
    assert (tmp_path / "rel" / "file.txt").read_text() == "x"
    assert storage.to_uri("rel/file.txt") == str(tmp_path / "rel" / "file.txt")


# --------------------------------------------------------------------------------------------
# Atomic writes


_FAILING_WRITER = """
import resource, signal, sys
from medray import storage
from medray.errors import StorageError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # exceeding the limit -> EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    storage.{call}
except StorageError as e:
    print("StorageError:", e)
    sys.exit(3)
print("no error")
"""


@pytest.mark.parametrize("call", [
    "write_bytes(sys.argv[1], b'N' * (4 << 20))",
    "upload_file(sys.argv[2], sys.argv[1])",
])
def test_failure_mid_write_keeps_old_content_and_cleans_up(tmp_path, call):
    target = tmp_path / "model.bin"
    old = b"old complete content\n" * 100
    storage.write_bytes(str(target), old)
    big = tmp_path / "src" / "big.bin"
    big.parent.mkdir()
    big.write_bytes(b"N" * (4 << 20))
    before = set(os.listdir(tmp_path))
    res = subprocess.run([sys.executable, "-c", _FAILING_WRITER.format(call=call), str(target), str(big)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO / "platform")})
    assert res.returncode == 3, res.stdout + res.stderr
    assert "write failed" in res.stdout or "upload of" in res.stdout
    assert "File too large" in res.stdout  # the real OS error, not a simulated one
    assert target.read_bytes() == old  # the reader still sees the whole old file
    assert set(os.listdir(tmp_path)) == before  # no temporary file left behind


def test_reader_never_sees_a_partial_file(tmp_path):
    uri = str(tmp_path / "state.bin")
    versions = [bytes([i]) * (1 << 20) for i in range(1, 5)]  # 1 MiB each
    storage.write_bytes(uri, versions[0])
    ok = {_sha(v) for v in versions}
    stop = threading.Event()
    seen: list[str] = []

    def reader():
        while not stop.is_set():
            seen.append(_sha(storage.read_bytes(uri)))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            storage.write_bytes(uri, versions[i % len(versions)])
    finally:
        stop.set()
        t.join()
    assert seen and set(seen) <= ok
    assert os.listdir(tmp_path) == ["state.bin"]


def test_write_errors_are_storage_errors(tmp_path, s3_endpoint):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match="write failed"):
        storage.write_bytes(str(tmp_path / "afile" / "child.txt"), b"y")  # parent is a file
    with pytest.raises(StorageError, match="write failed"):
        storage.write_bytes(str(tmp_path), b"y")  # target is a folder
    assert sorted(os.listdir(tmp_path)) == ["afile"]
    nobucket = f"s3://medray-no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError):
        storage.write_bytes(f"{nobucket}/x.bin", b"y")
    with pytest.raises(StorageError, match="upload of"):
        storage.upload_file(str(tmp_path / "afile"), f"{nobucket}/x.bin")


def test_stray_temporary_files_are_hidden(tmp_path, s3_bucket):
    """A writer killed mid-write (SIGKILL: no cleanup possible) leaves a hidden temporary file;
    listings, uploads and downloads must not pick it up as data."""
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"w")
    (src / "sub" / "opt.bin").write_bytes(b"o")
    stray = src / f".weights.bin.{uuid.uuid4().hex}.medray-tmp"
    stray.write_bytes(b"partial")
    assert storage.is_temporary(str(stray)) and not storage.is_temporary(str(src / ".hidden_but_real"))
    assert storage.listdir(str(src)) == [str(src / "sub"), str(src / "weights.bin")]
    assert list(storage.iter_files(str(src))) == [str(src / "sub" / "opt.bin"), str(src / "weights.bin")]
    arts = storage.upload_dir(str(src), f"{s3_bucket}/ckpt")
    assert [a.uri for a in arts] == [f"{s3_bucket}/ckpt/weights.bin", f"{s3_bucket}/ckpt/sub/opt.bin"]


# --------------------------------------------------------------------------------------------
# Checksums


def test_sha256_matches_hashlib_everywhere(tmp_path, mem, s3_bucket):
    payload = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    local_src = tmp_path / "src.bin"
    local_src.write_bytes(payload)
    expected = _sha(payload)
    for base in (str(tmp_path / "out"), mem, s3_bucket):
        art = storage.write_bytes(f"{base}/w.bin", payload)
        assert art.sha256 == expected and art.size == len(payload)
        up = storage.upload_file(str(local_src), f"{base}/u.bin")
        assert up.sha256 == expected and up.size == len(payload)
        assert storage.read_bytes(f"{base}/u.bin") == payload
        assert storage.sha256_of(f"{base}/u.bin") == expected
    assert storage.sha256_bytes(b"") == hashlib.sha256(b"").hexdigest()


def test_upload_file_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.upload_file(str(tmp_path / "nope"), str(tmp_path / "dst"))


# --------------------------------------------------------------------------------------------
# S3 options: config vs environment


def test_s3_options_from_environment(clean_s3_config, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    kw = storage.s3_options()
    assert kw == {"key": "env-key", "secret": "env-secret", "token": "env-token",
                  "client_kwargs": {"endpoint_url": "http://s3-specific:2", "region_name": "eu-central-1"}}
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_REGION")
    kw = storage.s3_options()
    assert kw["client_kwargs"] == {"endpoint_url": "http://generic:1", "region_name": "eu-west-1"}


def test_s3_options_config_wins_over_environment(clean_s3_config, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://from-env:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    cfg = S3Options(endpoint_url="http://from-config:9000", region="ap-south-1", access_key_id="cfg-key",
                    secret_access_key="cfg-secret")
    kw = storage.s3_options(cfg)
    assert kw["key"] == "cfg-key" and kw["secret"] == "cfg-secret"
    assert kw["client_kwargs"] == {"endpoint_url": "http://from-config:9000", "region_name": "ap-south-1"}
    # unset config fields fall back to the environment, field by field; a plain dict works too
    kw = storage.s3_options({"region": "us-west-2"})
    assert kw["client_kwargs"] == {"endpoint_url": "http://from-env:1", "region_name": "us-west-2"}
    assert kw["key"] == "env-key"
    assert storage.s3_options(S3Options(anon=True))["anon"] is True
    # the same resolution reaches pyarrow
    fs, path = storage.pyarrow_filesystem("s3://bucket/key.parquet", cfg)
    opts = fs.__reduce__()[1][0]  # the options pyarrow was built with
    assert path == "bucket/key.parquet" and fs.type_name == "s3"
    assert (opts["endpoint_override"], opts["scheme"], opts["region"]) == ("from-config:9000", "http", "ap-south-1")
    assert (opts["access_key"], opts["secret_key"]) == ("cfg-key", "cfg-secret")


def test_configure_sets_process_options_and_exports_them(clean_s3_config, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    storage.configure(S3Options(endpoint_url="http://configured:9000", region="us-east-2", access_key_id="k",
                                secret_access_key="s"))
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://configured:9000"
    assert os.environ["AWS_REGION"] == os.environ["AWS_DEFAULT_REGION"] == "us-east-2"
    assert os.environ["AWS_ACCESS_KEY_ID"] == "k" and os.environ["AWS_SECRET_ACCESS_KEY"] == "s"
    kw = storage.s3_options()
    assert kw["client_kwargs"] == {"endpoint_url": "http://configured:9000", "region_name": "us-east-2"}
    # a job's own section still wins over the process-wide one
    assert storage.s3_options({"endpoint_url": "http://job:1"})["client_kwargs"]["endpoint_url"] == "http://job:1"
    storage.configure(None)  # no-op
    assert storage.s3_options()["client_kwargs"]["endpoint_url"] == "http://configured:9000"


def test_config_endpoint_is_used_against_a_real_server(clean_s3_config, monkeypatch, s3_endpoint, s3_bucket):
    """The environment points at a dead endpoint; the job's config points at moto: config wins."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    cfg = S3Options(endpoint_url=s3_endpoint, region="us-east-1", access_key_id="testing",
                    secret_access_key="testing")
    uri = f"{s3_bucket}/cfg/obj.txt"
    storage.write_text(uri, "via config", s3=cfg)
    assert storage.read_text(uri, s3=cfg) == "via config"
    assert storage.listdir(f"{s3_bucket}/cfg", s3=cfg) == [uri]
    fs, path = storage.pyarrow_filesystem(uri, cfg)
    with fs.open_input_file(path) as f:
        assert f.read() == b"via config"
    # and with the environment fixed, no config is needed
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint + "/")
    assert storage.read_text(uri) == "via config"
    fs, path = storage.pyarrow_filesystem(uri)  # trailing slash in the endpoint is tolerated
    with fs.open_input_file(path) as f:
        assert f.read() == b"via config"


# --------------------------------------------------------------------------------------------
# pyarrow


@pytest.mark.parametrize("backend", ["local", "file_uri", "memory", "s3"])
def test_pyarrow_filesystem_with_parquet(backend, tmp_path, mem, s3_bucket):
    base = {"local": str(tmp_path), "file_uri": f"file://{tmp_path}", "memory": mem, "s3": s3_bucket}[backend]
    uri = f"{base}/tables/t.parquet"
    table = pa.table({"image": ["a.jpg", "b.jpg", "c.jpg"], "label": [0, 1, 2]})
    storage.makedirs(storage.parent(uri))
    fs, path = storage.pyarrow_filesystem(uri)
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    # written through pyarrow, read through fsspec: the same object
    assert pq.read_table(pa.BufferReader(storage.read_bytes(uri))).equals(table)
    assert storage.exists(uri)
    # and the other way round
    buf = pa.BufferOutputStream()
    pq.write_table(table.slice(1), buf)
    storage.write_bytes(uri, buf.getvalue().to_pybytes())
    assert pq.ParquetFile(fs.open_input_file(path)).read().num_rows == 2


# --------------------------------------------------------------------------------------------
# Listing, upload/download of folders


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "model.safetensors": os.urandom(2000),
        "card.json": json.dumps({"name": "m"}).encode(),
        "plots/roc.png": b"\x89PNG fake",
        "plots/deeper/cm.png": b"\x89PNG other",
        "logs/train.log": b"epoch 1\n",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


@pytest.mark.parametrize("backend", ["local", "memory", "s3"])
def test_upload_list_download(backend, tmp_path, mem, s3_bucket):
    src = tmp_path / "src"
    files = _make_tree(src)
    base = {"local": str(tmp_path / "remote"), "memory": mem, "s3": s3_bucket}[backend] + "/run1"
    arts = storage.upload_dir(str(src), base)
    # a stable order: each folder's files (sorted), then its sub-folders (sorted)
    order = ["card.json", "model.safetensors", "logs/train.log", "plots/roc.png", "plots/deeper/cm.png"]
    assert [a.uri for a in arts] == [storage.join(base, r) for r in order]
    assert {a.uri: a.sha256 for a in arts} == {storage.join(base, r): _sha(d) for r, d in files.items()}
    # immediate children only, as URIs of the same kind
    assert storage.listdir(base) == sorted(storage.join(base, n) for n in ("card.json", "logs", "model.safetensors", "plots"))
    assert storage.listdir(storage.join(base, "plots")) == [storage.join(base, "plots/deeper"), storage.join(base, "plots/roc.png")]
    assert storage.listdir(storage.join(base, "missing")) == []
    assert storage.listdir(storage.join(base, "card.json")) == []  # a file has no children
    # every file, recursively, sorted; optional suffix filter (case-insensitive)
    assert list(storage.iter_files(base)) == sorted(storage.join(base, r) for r in files)
    assert list(storage.iter_files(base, suffixes=(".PNG",))) == [storage.join(base, "plots/deeper/cm.png"),
                                                                   storage.join(base, "plots/roc.png")]
    # every listed URI can be read back
    for u in storage.iter_files(base):
        assert storage.read_bytes(u) == files[u[len(base) + 1:]]
    # download reproduces the tree
    dst = tmp_path / "dst"
    got = storage.download_dir(base, str(dst))
    assert sorted(got) == sorted(str(dst / r) for r in files)
    assert _tree(dst) == files
    with pytest.raises(FileNotFoundError, match="no such folder"):
        storage.download_dir(storage.join(base, "missing"), str(tmp_path / "dst2"))
    assert not (tmp_path / "dst2").exists() or not any((tmp_path / "dst2").iterdir())


def test_upload_dir_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.upload_dir(str(tmp_path / "none"), str(tmp_path / "out"))


def test_s3_listing_sees_objects_written_by_others(s3_endpoint, s3_bucket):
    """Another process (a Ray worker) writes an object after we listed: we must see it."""
    import boto3

    storage.write_text(f"{s3_bucket}/runs/a.txt", "a")
    assert storage.listdir(f"{s3_bucket}/runs") == [f"{s3_bucket}/runs/a.txt"]
    bucket = s3_bucket.split("://")[1]
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key="runs/b.txt", Body=b"b")
    assert storage.listdir(f"{s3_bucket}/runs") == [f"{s3_bucket}/runs/a.txt", f"{s3_bucket}/runs/b.txt"]
    assert storage.exists(f"{s3_bucket}/runs/b.txt")
    assert list(storage.iter_files(s3_bucket)) == [f"{s3_bucket}/runs/a.txt", f"{s3_bucket}/runs/b.txt"]


def test_download_refuses_keys_escaping_the_folder(s3_endpoint, s3_bucket, tmp_path):
    import boto3

    bucket = s3_bucket.split("://")[1]
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="pre/ok.txt", Body=b"ok")
    client.put_object(Bucket=bucket, Key="pre/../../../escaped.txt", Body=b"evil")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    if "pre/../../../escaped.txt" not in keys:
        pytest.skip("this S3 server normalises '..' in keys")
    dst = tmp_path / "a" / "b" / "dst"
    with pytest.raises(StorageError, match="outside"):
        storage.download_dir(f"{s3_bucket}/pre", str(dst))
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))
    assert not dst.exists()  # checked before anything was written


# --------------------------------------------------------------------------------------------
# URI helpers


def test_uri_helpers():
    assert storage.protocol_of("/a/b") == "file"
    assert storage.protocol_of("file:///a") == "file"
    assert storage.protocol_of("S3://b/k") == "s3" and storage.protocol_of("s3a://b/k") == "s3"
    assert storage.protocol_of("memory://x") == "memory"
    assert storage.join("s3://b/", "/runs/", "x.txt") == "s3://b/runs/x.txt"
    assert storage.join("/tmp/a", "b", "c") == "/tmp/a/b/c"
    assert storage.parent("s3://b/runs/x.txt") == "s3://b/runs"
    assert storage.parent("s3://b/runs/") == "s3://b"
    assert storage.parent("s3://b") == "s3://"
    assert storage.parent("/x") == "/" and storage.parent("/a/b") == "/a" and storage.parent("x") == "."
    assert storage.basename("s3://b/runs/x.txt") == "x.txt" and storage.basename("/a/b/") == "b"
    assert storage.to_uri("s3://b/k") == "s3://b/k"
