"""Storage on fsspec URIs: local paths, ``file://``, ``s3://`` (AWS, MinIO, Ceph by endpoint), ``memory://``.

Everything medray reads or writes goes through here, so an ``s3://`` catalogue, manifest or checkpoint
path works wherever a local one does.

* S3 options come from the job's ``storage.s3`` section or, where unset, the usual AWS environment
  variables (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``). :func:`configure` sets process-wide
  options (also exported as environment variables, so Ray workers started later inherit them).
* Writes are atomic: a reader sees the old object or the whole new one, never half a file. Local files
  are written to a temporary name in the same folder and renamed; an S3 PUT is atomic by itself.
* Every write returns an :class:`Artifact` with the sha256 and size of the bytes written.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from typing import IO, Any, Iterator

import fsspec

from medray.errors import StorageError

_S3_OPTIONS: dict[str, Any] = {}


@dataclass(frozen=True)
class Artifact:
    uri: str
    sha256: str
    size: int


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def s3_options(overrides: Any = None) -> dict[str, Any]:
    """Keyword arguments for ``s3fs.S3FileSystem``: config first, then environment variables."""
    o = overrides
    if o is not None and hasattr(o, "model_dump"):
        o = o.model_dump()
    o = dict(o or {})
    merged = {**_S3_OPTIONS, **{k: v for k, v in o.items() if v not in (None, False)}}
    endpoint = merged.get("endpoint_url") or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    region = merged.get("region") or _env("AWS_REGION", "AWS_DEFAULT_REGION")
    kw: dict[str, Any] = {}
    if merged.get("anon"):
        kw["anon"] = True
    key = merged.get("access_key_id") or _env("AWS_ACCESS_KEY_ID")
    secret = merged.get("secret_access_key") or _env("AWS_SECRET_ACCESS_KEY")
    token = merged.get("session_token") or _env("AWS_SESSION_TOKEN")
    if key:
        kw["key"] = key
    if secret:
        kw["secret"] = secret
    if token:
        kw["token"] = token
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        kw["client_kwargs"] = client_kwargs
    return kw


def configure(s3: Any = None) -> None:
    """Set process-wide S3 options (from a job's ``storage.s3``) and export them as AWS_* variables
    so that Ray workers and subprocesses resolve the same endpoint and credentials."""
    if s3 is None:
        return
    d = s3.model_dump() if hasattr(s3, "model_dump") else dict(s3)
    _S3_OPTIONS.update({k: v for k, v in d.items() if v not in (None, False)})
    env_names = {
        "endpoint_url": ("AWS_ENDPOINT_URL_S3",),
        # both: AWS_REGION wins over AWS_DEFAULT_REGION in s3_options and the SDKs
        "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
        "access_key_id": ("AWS_ACCESS_KEY_ID",),
        "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
        "session_token": ("AWS_SESSION_TOKEN",),
    }
    for k, envs in env_names.items():
        if d.get(k):
            for env in envs:
                os.environ[env] = str(d[k])
    _fs_cache.clear()


def protocol_of(uri: str) -> str:
    uri = str(uri)
    if "://" not in uri:
        return "file"
    proto = uri.split("://", 1)[0].lower()
    return {"s3a": "s3", "s3n": "s3", "local": "file"}.get(proto, proto)


_fs_cache: dict[tuple, fsspec.AbstractFileSystem] = {}


def filesystem(uri: str, s3: Any = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a URI. Local paths are made absolute."""
    uri = str(uri)
    proto = protocol_of(uri)
    if proto == "file":
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    if proto == "s3":
        kw = s3_options(s3)
        key = ("s3", repr(sorted((k, repr(v)) for k, v in kw.items())))
        fs = _fs_cache.get(key)
        if fs is None:
            import s3fs

            # no listings cache: the instance lives for the whole process, and objects written by
            # other processes (Ray workers, another driver) must show up in listdir/exists/find
            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **kw)
            _fs_cache[key] = fs
        return fs, uri.split("://", 1)[1]
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(base: str, *parts: str) -> str:
    base = str(base)
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def parent(uri: str) -> str:
    """The folder/prefix holding ``uri`` (``/`` for a top-level local path, ``proto://`` for a
    bucket)."""
    uri = str(uri)
    prefix = ""
    if "://" in uri:
        prefix, uri = uri.split("://", 1)
        prefix += "://"
    stripped = uri.rstrip("/")
    if "/" not in stripped:
        return prefix if prefix else ("/" if uri.startswith("/") else ".")
    head = stripped.rsplit("/", 1)[0]
    return prefix + (head or "/")


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def to_uri(path: str) -> str:
    """A canonical URI: local paths become absolute paths (kept without ``file://``)."""
    if protocol_of(path) == "file":
        return filesystem(path)[1]
    return str(path)


def exists(uri: str, s3: Any = None) -> bool:
    fs, path = filesystem(uri, s3)
    try:
        return fs.exists(path)
    except Exception as e:  # noqa: BLE001 - network/permission problems surface as StorageError
        raise StorageError(f"{uri}: cannot check existence: {e}") from e


def read_bytes(uri: str, s3: Any = None) -> bytes:
    fs, path = filesystem(uri, s3)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None


def read_text(uri: str, s3: Any = None) -> str:
    return read_bytes(uri, s3).decode("utf-8")


def open_read(uri: str, s3: Any = None) -> IO[bytes]:
    fs, path = filesystem(uri, s3)
    return fs.open(path, "rb")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(uri: str, s3: Any = None, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open_read(uri, s3) as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def makedirs(uri: str, s3: Any = None) -> None:
    fs, path = filesystem(uri, s3)
    if protocol_of(uri) == "file":
        os.makedirs(path, exist_ok=True)
    elif protocol_of(uri) not in ("s3",):  # object stores have no folders
        fs.makedirs(path, exist_ok=True)


_TMP_SUFFIX = ".medray-tmp"


def _tmp_name(path: str) -> str:
    """A hidden temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    head, sep, base = path.rpartition("/")
    return f"{head}{sep}.{base}.{uuid.uuid4().hex}{_TMP_SUFFIX}"


def is_temporary(uri: str) -> bool:
    """Whether ``uri`` is one of our in-progress temporary files (hidden from listings)."""
    b = basename(uri)
    return b.startswith(".") and b.endswith(_TMP_SUFFIX)


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_local(path: str, chunks: Iterator[bytes]) -> tuple[str, int]:
    """Write ``chunks`` to a temporary file beside ``path``, fsync, rename over ``path``. The
    temporary file is removed on any failure; returns (sha256, size)."""
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = _tmp_name(path)
    h = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            for b in chunks:
                f.write(b)
                h.update(b)
                size += len(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(d)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return h.hexdigest(), size


def write_bytes(uri: str, data: bytes, s3: Any = None) -> Artifact:
    """Atomically write ``data`` to ``uri`` and return its checksum."""
    uri = str(uri)
    data = bytes(data) if not isinstance(data, bytes) else data
    fs, path = filesystem(uri, s3)
    proto = protocol_of(uri)
    try:
        if proto == "file":
            digest, _ = _write_local(path, iter((data,)))
            return Artifact(uri=uri, sha256=digest, size=len(data))
        digest = sha256_bytes(data)
        if proto == "s3":
            fs.pipe_file(path, data)  # one PUT (or a multipart upload): atomic on S3
        else:
            parent_path = path.rsplit("/", 1)[0] if "/" in path else ""
            if parent_path:
                try:
                    fs.makedirs(parent_path, exist_ok=True)
                except Exception:  # noqa: BLE001 - some filesystems have no dirs
                    pass
            tmp = _tmp_name(path)
            try:
                fs.pipe_file(tmp, data)
                fs.mv(tmp, path)
            finally:
                try:
                    if fs.exists(tmp):
                        fs.rm(tmp)
                except Exception:  # noqa: BLE001 - best effort
                    pass
    except OSError as e:
        raise StorageError(f"{uri}: write failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - SDK errors (connection, credentials) that are not OSErrors
        if proto == "file":
            raise
        raise StorageError(f"{uri}: write failed: {type(e).__name__}: {e}") from e
    return Artifact(uri=uri, sha256=digest, size=len(data))


def write_text(uri: str, text: str, s3: Any = None) -> Artifact:
    return write_bytes(uri, text.encode("utf-8"), s3)


def write_json(uri: str, obj: Any, s3: Any = None) -> Artifact:
    import json

    return write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", s3)


def read_json(uri: str, s3: Any = None) -> Any:
    import json

    return json.loads(read_text(uri, s3))


def _read_chunks(f: IO[bytes], chunk: int = 1 << 22) -> Iterator[bytes]:
    while True:
        b = f.read(chunk)
        if not b:
            return
        yield b


def upload_file(local_path: str, uri: str, s3: Any = None) -> Artifact:
    """Copy a local file to ``uri`` atomically, streaming (the file is never read whole into
    memory); returns the sha256/size of the bytes copied."""
    uri = str(uri)
    proto = protocol_of(uri)
    try:
        if proto == "file":
            _, path = filesystem(uri)
            with open(local_path, "rb") as f:
                digest, size = _write_local(path, _read_chunks(f))
            return Artifact(uri=uri, sha256=digest, size=size)
        if proto == "s3":
            fs, path = filesystem(uri, s3)
            digest, size = sha256_of(local_path), os.path.getsize(local_path)
            fs.put_file(local_path, path)  # single PUT or multipart upload: atomic on S3
            return Artifact(uri=uri, sha256=digest, size=size)
    except FileNotFoundError:
        if not os.path.exists(local_path):
            raise
        raise StorageError(f"{uri}: upload of {local_path} failed: no such bucket or folder") from None
    except OSError as e:
        raise StorageError(f"{uri}: upload of {local_path} failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - SDK errors that are not OSErrors
        if proto == "file":
            raise
        raise StorageError(f"{uri}: upload of {local_path} failed: {type(e).__name__}: {e}") from e
    with open(local_path, "rb") as f:
        return write_bytes(uri, f.read(), s3)


def upload_dir(local_dir: str, uri: str, s3: Any = None) -> list[Artifact]:
    """Copy a local folder tree to ``uri`` (each file atomically), in a stable (sorted) order.
    Our own in-progress temporary files are skipped."""
    if not os.path.isdir(local_dir):
        raise FileNotFoundError(f"{local_dir}: no such folder")
    out = []
    for root, dirs, files in os.walk(local_dir):
        dirs.sort()
        for name in sorted(files):
            src = os.path.join(root, name)
            if is_temporary(src):
                continue
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            out.append(upload_file(src, join(uri, rel), s3))
    return out


def download_dir(uri: str, local_dir: str, s3: Any = None) -> list[str]:
    """Copy every file under ``uri`` into ``local_dir`` (streaming, each file written to a temporary
    name and renamed). Returns the local paths. A source that does not exist is a
    FileNotFoundError (never a silently empty download); keys that would land outside
    ``local_dir`` (``../``) are refused."""
    fs, path = filesystem(uri, s3)
    root = path.rstrip("/")
    files = [p for p in sorted(fs.find(root)) if not is_temporary(p)]
    files = [p for p in files if p.rstrip("/") != root]  # `uri` naming a file is not a folder
    if not files and not fs.isdir(root):
        raise FileNotFoundError(f"{uri}: no such folder")
    dest_root = os.path.abspath(local_dir)
    plan = []
    for src in files:  # check every destination before writing anything
        rel = src[len(root) + 1 :] if src.startswith(root + "/") else basename(src)
        dst = os.path.abspath(os.path.join(dest_root, *rel.split("/")))
        if os.path.commonpath([dest_root, dst]) != dest_root or dst == dest_root:
            raise StorageError(f"{uri}: refusing to write {rel!r} outside {local_dir}")
        plan.append((src, dst))
    os.makedirs(dest_root, exist_ok=True)
    for src, dst in plan:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with fs.open(src, "rb") as fi:
            _write_local(dst, _read_chunks(fi))
    return [dst for _, dst in plan]


def _as_uri(proto: str, p: str) -> str:
    """A path returned by an fsspec filesystem -> a URI of the same protocol."""
    if proto == "file" or "://" in p:
        return p
    if proto == "memory":
        return f"memory://{p.lstrip('/')}"
    return f"{proto}://{p}"


def listdir(uri: str, s3: Any = None) -> list[str]:
    """Immediate children of a folder/prefix, as URIs (empty when it does not exist)."""
    fs, path = filesystem(uri, s3)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    proto = protocol_of(uri)
    out = []
    for e in entries:
        e = e.rstrip("/")
        if e == path.rstrip("/") or is_temporary(e):
            continue
        out.append(_as_uri(proto, e))
    return sorted(out)


def remove(uri: str, recursive: bool = False, s3: Any = None) -> None:
    fs, path = filesystem(uri, s3)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def pyarrow_filesystem(uri: str, s3: Any = None):
    """``(pyarrow.fs.FileSystem, path)`` for Ray Data / pyarrow readers and writers."""
    import pyarrow.fs as pafs

    proto = protocol_of(uri)
    if proto == "file":
        return pafs.LocalFileSystem(), filesystem(uri)[1]
    if proto == "s3":
        kw = s3_options(s3)
        ck = kw.get("client_kwargs", {})
        args: dict[str, Any] = {}
        endpoint = ck.get("endpoint_url")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            args["endpoint_override"] = (host or endpoint).rstrip("/")
            args["scheme"] = scheme if host else "https"
        if ck.get("region_name"):
            args["region"] = ck["region_name"]
        if kw.get("anon"):
            args["anonymous"] = True
        elif kw.get("key"):
            args["access_key"] = kw["key"]
            args["secret_key"] = kw.get("secret")
            if kw.get("token"):
                args["session_token"] = kw["token"]
        return pafs.S3FileSystem(**args), uri.split("://", 1)[1]
    fs, path = filesystem(uri, s3)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def iter_files(uri: str, suffixes: tuple[str, ...] = (), s3: Any = None) -> Iterator[str]:
    """All files under a folder/prefix (recursively), as URIs, sorted."""
    fs, path = filesystem(uri, s3)
    proto = protocol_of(uri)
    ends = tuple(s.lower() for s in suffixes)
    for p in sorted(fs.find(path)):
        if is_temporary(p) or (ends and not p.lower().endswith(ends)):
            continue
        yield _as_uri(proto, p)


def bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
