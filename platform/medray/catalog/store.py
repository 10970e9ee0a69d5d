"""The model catalogue on any storage URI: publish, list, get, aliases, verified downloads.

A catalogue is a folder (local path, default ``runs/catalog``) or prefix (``s3://bucket/catalog``,
``memory://...``); everything goes through :mod:`medray.storage`. Layout::

    <uri>/
      <name>/                       one folder per model name (a slug, see ModelCard.name)
        aliases.json                {"production": 3, "staging": 4}; written atomically
        v0001/                      one folder per version, v{version:04d}
          _publish.json             the claim on this version number (publisher, host, pid, time)
          weights.safetensors       published files; their sha256 and size are in card.json
          ...                       (any other files the publisher passed)
          card.json                 the ModelCard, written LAST
        v0002/
          _publish.json             a publish that crashed: files but no card.json. Ignored by
          weights.safetensors       list/get, and its number is never reused.
        v0003/
          _publish.json             a deleted version: card.json and files removed, the
          _deleted.json             tombstone keeps the number from being reused.

Rules:

* ``card.json`` present = a complete version. It is written after every file, so a reader never sees
  a card whose files are still uploading. Every file write is atomic (temporary name + rename
  locally, one PUT on S3).
* Version numbers are never reused. The next version is ``1 + the highest vNNNN folder`` whatever
  its state (complete, crashed half-way, deleted).
* A publisher claims a number by creating ``vNNNN/_publish.json`` exclusively: ``O_EXCL``/hard
  link locally, ``If-None-Match: *`` on S3 (AWS, MinIO, moto honour it), an exists-check elsewhere.
  It then reads the claim back and re-checks it (and that no ``card.json`` exists) just before
  writing its own ``card.json``, which is itself created exclusively.

Concurrency. Sequential publishers never collide. Two concurrent publishers of the same name on a
local/NFS folder or on an S3 store that honours conditional writes never collide either: the loser
of a claim moves on to the next number. On an object store that ignores ``If-None-Match``, or an
fsspec backend without an atomic create (``memory://`` and most non-S3 remotes: there it is an
exists-check then a write), two publishers racing within the same few milliseconds can
both believe they hold the same number; the read-back check catches most such cases, and the
exclusive ``card.json`` write plus the per-file sha256 in the card make any remaining collision
visible (a checksum mismatch on fetch) rather than silent. ``aliases.json`` is read-modify-write:
concurrent alias changes on the same name are last-writer-wins.

Caching. :meth:`Catalog.local_path` downloads a file to
``<cache>/<name>/v<version:04d>/<sha256[:16]>/<file name>`` (``<cache>`` is ``cache_dir``, else
``$MEDRAY_CACHE_DIR/catalog``, else ``$XDG_CACHE_HOME/medray/catalog``, else
``~/.cache/medray/catalog``). The sha256 in the path keeps two catalogues that share a name and
version apart; a cached copy is reused only when its sha256 matches the card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import struct
import uuid
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from medray import storage
from medray.catalog.card import CatalogError, FileRef, ModelCard, is_name
from medray.errors import StorageError

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
CLAIM_FILE = "_publish.json"
TOMBSTONE_FILE = "_deleted.json"
ALIASES_FILE = "aliases.json"

PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")
"""File types refused at publish: they can hold pickles, which run code when loaded."""

RESERVED_ALIASES: tuple[str, ...] = ("latest",)
"""``name@latest`` always means the newest complete version; it cannot be set or removed."""

_READ_TIME_FIELDS = {"aliases", "location"}  # filled when a card is read, never stored
_VERSION_DIR = re.compile(r"^v(\d+)$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_CLAIM_TRIES = 50
_CHUNK = 1 << 22


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version_dir(version: int) -> str:
    return f"v{version:04d}"


def _default_cache_dir() -> str:
    if os.environ.get("MEDRAY_CACHE_DIR"):
        return os.path.join(os.environ["MEDRAY_CACHE_DIR"], "catalog")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "medray", "catalog")


def _check_safetensors(data: bytes, where: str) -> None:
    """Refuse bytes that are not a safetensors file (e.g. a renamed ``torch.save`` pickle).

    A safetensors file starts with a little-endian u64 ``N`` followed by an ``N``-byte JSON object.
    """
    problem = None
    if len(data) < 8:
        problem = f"{len(data)} bytes, no header"
    else:
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            problem = f"header length {n} exceeds the file"
        else:
            try:
                header = json.loads(data[8 : 8 + n])
                if not isinstance(header, dict):
                    problem = "header is not a JSON object"
            except (UnicodeDecodeError, ValueError):
                problem = "header is not JSON"
    if problem is None:
        return
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CatalogError(
            f"{where}: looks like a torch.save/pickle file, not safetensors; the catalogue refuses "
            "pickles (loading one can run arbitrary code). Save the weights with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        )
    raise CatalogError(f"{where}: not a safetensors file ({problem})")


class Catalog:
    """A model catalogue at a storage URI (see the module docstring for the layout).

    Args:
        uri: catalogue folder/prefix: a local path, ``s3://bucket/prefix``, ``memory://...``.
        s3: S3 options (``medray.config.S3Options`` or a dict) where the environment is not enough.
        cache_dir: local folder for :meth:`local_path` downloads (default: see the module docstring).

    Example:
        >>> cat = Catalog("runs/catalog")
        >>> card = cat.publish({"name": "fundus_dr", "task": "classify", "modality": "fundus",
        ...                     "outputs": ["label", "probs"]},
        ...                    {"weights": "runs/fundus_dr/weights.safetensors"}, alias="production")
        >>> cat.get("fundus_dr@production").version
        1
    """

    def __init__(self, uri: str, s3: Any = None, cache_dir: str | None = None):
        self.uri = storage.to_uri(str(uri)).rstrip("/")
        self.s3 = s3
        self.cache_dir = os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else _default_cache_dir()

    @classmethod
    def of(cls, card: ModelCard, s3: Any = None, cache_dir: str | None = None) -> Catalog:
        """The catalogue a card was read from (``card.location``), e.g. to fetch its weights where
        only the card was passed along: ``Catalog.of(card).local_path(card)``.

        Raises:
            CatalogError: the card was not read from a catalogue (empty ``location``).
        """
        if not card.location:
            raise CatalogError(f"{card.name}: card was not read from a catalogue (no location)")
        return cls(storage.parent(storage.parent(card.location)), s3=s3, cache_dir=cache_dir)

    def __repr__(self) -> str:
        return f"Catalog({self.uri!r})"

    # ------------------------------------------------------------------ paths and low-level I/O

    def _name_uri(self, name: str) -> str:
        if not is_name(name):
            raise CatalogError(f"{name!r} is not a valid model name (lowercase letters, digits, '_.-')")
        return storage.join(self.uri, name)

    def _version_uri(self, name: str, version: int) -> str:
        return storage.join(self._name_uri(name), _version_dir(version))

    def _fresh(self, uri: str) -> tuple[Any, str]:
        """``(fs, path)`` with any cached listing of ``uri`` and its parents dropped, so that objects
        written by other processes are seen (s3fs caches listings per filesystem instance)."""
        fs, path = storage.filesystem(uri, self.s3)
        try:
            fs.invalidate_cache(path)
        except Exception:  # noqa: BLE001 - a backend without a cache
            pass
        return fs, path

    def _subdirs(self, uri: str) -> list[str]:
        """Names of the immediate sub-folders of ``uri`` (empty when it does not exist)."""
        fs, path = self._fresh(uri)
        try:
            entries = fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise StorageError(f"{uri}: cannot list: {e}") from e
        out = []
        for e in entries:
            if e.get("type") == "directory":
                base = storage.basename(e["name"])
                if base:
                    out.append(base)
        return sorted(set(out))

    def _read_optional(self, uri: str) -> bytes | None:
        self._fresh(uri)
        try:
            return storage.read_bytes(uri, self.s3)
        except FileNotFoundError:
            return None

    def _exists(self, uri: str) -> bool:
        self._fresh(uri)
        return storage.exists(uri, self.s3)

    def _create_exclusive(self, uri: str, data: bytes) -> bool:
        """Create ``uri`` with ``data`` unless it exists. Returns False when it already existed.

        Local files: written to a temporary name and hard-linked into place (atomic, fails if the
        target exists), falling back to ``O_EXCL`` where hard links are unsupported. S3: one PUT with
        ``If-None-Match: *``. Other fsspec backends: ``pipe_file(mode="create")``.
        """
        fs, path = self._fresh(uri)
        if storage.protocol_of(uri) == "file":
            d = os.path.dirname(path)
            os.makedirs(d, exist_ok=True)
            tmp = os.path.join(d, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                except OSError:  # no hard links on this filesystem
                    try:
                        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    except FileExistsError:
                        return False
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                return True
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"{uri}: write failed: {e}") from e
        return True

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """Model names that have at least one complete version, sorted."""
        return [n for n in self._subdirs(self.uri) if is_name(n) and self.versions(n)]

    def _version_numbers(self, name: str) -> list[int]:
        """Every ``vNNNN`` folder of a name, complete or not, ascending."""
        out = []
        for d in self._subdirs(self._name_uri(name)):
            m = _VERSION_DIR.match(d)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def versions(self, name: str) -> list[int]:
        """Complete versions of ``name`` (those with a ``card.json``), ascending."""
        return [v for v in self._version_numbers(name)
                if self._exists(storage.join(self._version_uri(name, v), CARD_FILE))]

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` for ``name`` (empty when it has none)."""
        uri = storage.join(self._name_uri(name), ALIASES_FILE)
        raw = self._read_optional(uri)
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise CatalogError(f"{uri}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
        ):
            raise CatalogError(f"{uri}: must map alias names to version numbers")
        return dict(sorted(data.items()))

    def _load_card(self, name: str, version: int, aliases: dict[str, int] | None = None) -> ModelCard | None:
        """The card of ``name`` version ``version``, or None when that version is not complete."""
        uri = storage.join(self._version_uri(name, version), CARD_FILE)
        raw = self._read_optional(uri)
        if raw is None:
            return None
        try:
            card = ModelCard.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "card"
            raise CatalogError(f"{uri}: invalid card: {where}: {first['msg']}") from None
        if card.name != name or card.version != version:
            raise CatalogError(f"{uri}: card says {card.ref}, but it is stored as {name}:{version}")
        al = self.aliases(name) if aliases is None else aliases
        card.aliases = sorted(a for a, v in al.items() if v == version)
        card.location = self._version_uri(name, version)
        return card

    def _latest(self, name: str) -> ModelCard | None:
        al = self.aliases(name)
        for v in reversed(self._version_numbers(name)):
            card = self._load_card(name, v, al)
            if card is not None:
                return card
        return None

    def list(self, task: str | None = None, modality: str | None = None, name: str | None = None,
             all_versions: bool = False) -> list[ModelCard]:
        """Cards in the catalogue, sorted by name then version.

        Args:
            task: keep only cards of this task.
            modality: keep only cards of this modality.
            name: keep only this model name.
            all_versions: every complete version instead of the latest of each name.

        Returns:
            The matching cards, with ``aliases`` filled. Empty when the catalogue does not exist.

        Raises:
            CatalogError: a ``card.json`` or ``aliases.json`` in the catalogue is invalid.
        """
        if name is not None:
            if not is_name(name):
                return []
            candidates = [name]
        else:
            candidates = [n for n in self._subdirs(self.uri) if is_name(n)]
        out: list[ModelCard] = []
        for n in candidates:
            if all_versions:
                al = self.aliases(n)
                cards = [self._load_card(n, v, al) for v in self._version_numbers(n)]
            else:
                cards = [self._latest(n)]
            for c in cards:
                if c is None:
                    continue
                if task is not None and c.task != task:
                    continue
                if modality is not None and c.modality != modality:
                    continue
                out.append(c)
        return sorted(out, key=lambda c: (c.name, c.version))

    def _unknown_name(self, name: str) -> CatalogError:
        known = self.names()
        if not known:
            return CatalogError(f"no model {name!r}: catalogue {self.uri} is empty")
        return CatalogError(f"no model {name!r} in catalogue {self.uri}; models: {', '.join(known)}")

    def _no_version(self, name: str, version: int) -> CatalogError:
        have = self.versions(name)
        if not have:
            return self._unknown_name(name)
        return CatalogError(f"{name} has no version {version}; versions: {', '.join(map(str, have))}")

    def get(self, ref: str) -> ModelCard:
        """Resolve a model reference to its card.

        Args:
            ref: ``name`` (latest complete version), ``name:3`` (a version; ``name:v0003`` also
                works) or ``name@production`` (an alias; ``name@latest`` is the latest).

        Returns:
            The card, with ``aliases`` filled.

        Raises:
            CatalogError: the reference is malformed or names no model, version or alias; the
                message lists what exists.
        """
        ref = str(ref).strip()
        m = re.match(r"^([^:@]+)(?::v?(\d+)|@([^:@]+))?$", ref)
        if not m or not is_name(m.group(1)):
            raise CatalogError(f"bad model reference {ref!r}: use name, name:version or name@alias")
        name, ver, alias = m.group(1), m.group(2), m.group(3)
        if alias is not None and alias not in RESERVED_ALIASES:
            al = self.aliases(name)
            if alias not in al:
                if not self.versions(name):
                    raise self._unknown_name(name)
                have = ", ".join(f"{a} -> {v}" for a, v in al.items()) or "none"
                raise CatalogError(f"{name} has no alias {alias!r}; aliases: {have}")
            card = self._load_card(name, al[alias], al)
            if card is None:
                raise CatalogError(f"alias {name}@{alias} points at missing version {al[alias]}")
            return card
        if ver is not None:
            card = self._load_card(name, int(ver))
            if card is None:
                raise self._no_version(name, int(ver))
            return card
        card = self._latest(name)
        if card is None:
            raise self._unknown_name(name)
        return card

    # ------------------------------------------------------------------ publishing

    def _prepare_files(self, files: dict[str, bytes | str | os.PathLike]) -> dict[str, tuple[str, bytes]]:
        """Validate and read the files to publish: ``{key: (file name in the version folder, bytes)}``."""
        if not isinstance(files, dict) or "weights" not in files:
            raise CatalogError("publish needs files={'weights': <safetensors bytes or path>, ...}")
        out: dict[str, tuple[str, bytes]] = {}
        for key, value in files.items():
            if not isinstance(key, str) or not is_name(key):
                raise CatalogError(f"file key {key!r} must be a lowercase slug (e.g. 'weights', 'labels')")
            if isinstance(value, (bytes, bytearray, memoryview)):
                src = None
                fname = "weights.safetensors" if key == "weights" else key
            elif isinstance(value, (str, os.PathLike)):
                src = os.fspath(value)
                fname = storage.basename(src)
            else:
                raise CatalogError(f"files[{key!r}] must be bytes or a path, not {type(value).__name__}")
            if fname.lower().endswith(PICKLE_SUFFIXES):
                raise CatalogError(
                    f"files[{key!r}]: {fname} is a pickle-based file ({os.path.splitext(fname)[1]}); "
                    "the catalogue refuses pickles (loading one can run arbitrary code). Save "
                    "weights with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
                )
            if src is None:
                data = bytes(value)
            else:
                try:
                    data = storage.read_bytes(src, self.s3)
                except (FileNotFoundError, IsADirectoryError):
                    raise CatalogError(f"files[{key!r}]: no such file: {src}") from None
            if not _FILE_NAME.match(fname) or fname == CARD_FILE:
                raise CatalogError(f"files[{key!r}]: {fname!r} cannot be a catalogue file name")
            if key == "weights":
                if not fname.endswith(".safetensors"):
                    raise CatalogError(f"files['weights']: {fname} must be a .safetensors file")
                _check_safetensors(data, f"files['weights'] ({fname})")
            out[key] = (fname, data)
        names = [f for f, _ in out.values()]
        dup = sorted({f for f in names if names.count(f) > 1})
        if dup:
            raise CatalogError(f"two files would both be stored as {dup}; rename one")
        return out

    def _claim(self, name: str) -> tuple[int, str]:
        """Claim the next free version number of ``name``: ``(version, claim token)``."""
        for _ in range(_MAX_CLAIM_TRIES):
            existing = self._version_numbers(name)
            version = (existing[-1] if existing else 0) + 1
            token = uuid.uuid4().hex
            claim = {"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                     "started_at": _utc_now()}
            uri = storage.join(self._version_uri(name, version), CLAIM_FILE)
            if self._create_exclusive(uri, json.dumps(claim).encode()) and self._holds(uri, token):
                return version, token
            log.info("catalogue %s: %s v%d was claimed by another publisher; trying the next",
                     self.uri, name, version)
        raise CatalogError(f"could not claim a version number for {name} after {_MAX_CLAIM_TRIES} tries")

    def _holds(self, claim_uri: str, token: str) -> bool:
        raw = self._read_optional(claim_uri)
        try:
            return raw is not None and json.loads(raw).get("token") == token
        except ValueError:
            return False

    def _write_card(self, card_uri: str, data: bytes) -> bool:
        """Write ``card.json`` (exclusively: never over another publisher's card)."""
        return self._create_exclusive(card_uri, data)

    def publish(self, card: ModelCard | dict[str, Any], files: dict[str, bytes | str | os.PathLike],
                alias: str | None = None) -> ModelCard:
        """Publish a new version of a model.

        Args:
            card: the card (or its mapping). ``version``, ``files``, ``checksum``, ``created_at``,
                ``aliases`` and ``location`` are assigned here; values given for them are replaced.
            files: ``{key: bytes or path}``; ``"weights"`` (safetensors) is required. A path (local
                or any storage URI) keeps its file name; bytes are stored as
                ``weights.safetensors`` for ``"weights"`` and as the key otherwise.
            alias: an alias to point at the new version (e.g. ``"production"``).

        Returns:
            The published card as read back from the catalogue.

        Raises:
            CatalogError: invalid card, missing/pickle/non-safetensors weights, or a version claim
                that could not be made or was lost to a concurrent publisher.
        """
        base = card.model_dump() if isinstance(card, ModelCard) else dict(card)
        try:
            draft = ModelCard.model_validate({**base, "version": 0, "files": {}, "checksum": "",
                                              "created_at": "", "aliases": [], "location": ""})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "card"
            raise CatalogError(f"invalid card for {base.get('name')!r}: {where}: {first['msg']}") from None
        if alias is not None:
            self._check_alias(alias)
        payload = self._prepare_files(files)
        name = draft.name

        version, token = self._claim(name)
        vuri = self._version_uri(name, version)
        refs: dict[str, FileRef] = {}
        for key, (fname, data) in payload.items():
            art = storage.write_bytes(storage.join(vuri, fname), data, self.s3)
            refs[key] = FileRef(path=fname, sha256=art.sha256, size=art.size)
        final = ModelCard.model_validate({
            **draft.model_dump(), "version": version, "files": {k: r.model_dump() for k, r in refs.items()},
            "checksum": refs["weights"].sha256, "created_at": _utc_now(), "aliases": [],
        })
        card_uri = storage.join(vuri, CARD_FILE)
        if not self._holds(storage.join(vuri, CLAIM_FILE), token):
            raise CatalogError(f"{name} v{version}: claim lost to a concurrent publisher; publish again")
        body = final.model_dump_json(indent=2, exclude=_READ_TIME_FIELDS).encode() + b"\n"
        if not self._write_card(card_uri, body):
            raise CatalogError(f"{name} v{version}: another publisher completed this version first; "
                               "publish again")
        log.info("catalogue %s: published %s (%s)", self.uri, final.ref, refs["weights"].sha256[:12])
        if alias is not None:
            self.set_alias(name, alias, version)
        return self.get(final.ref)

    # ------------------------------------------------------------------ aliases

    @staticmethod
    def _check_alias(alias: str) -> None:
        if not isinstance(alias, str) or not is_name(alias):
            raise CatalogError(f"alias {alias!r} must be a lowercase slug (e.g. 'production')")
        if alias in RESERVED_ALIASES:
            raise CatalogError(f"alias {alias!r} is reserved (name@{alias} always means the newest version)")

    def _write_aliases(self, name: str, aliases: dict[str, int]) -> None:
        uri = storage.join(self._name_uri(name), ALIASES_FILE)
        body = json.dumps(dict(sorted(aliases.items())), indent=2) + "\n"
        storage.write_bytes(uri, body.encode(), self.s3)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``name@alias`` at ``version`` (moving it if it pointed elsewhere).

        Raises:
            CatalogError: invalid or reserved alias, or no complete ``version`` of ``name``.
        """
        self._check_alias(alias)
        if self._load_card(name, int(version), {}) is None:
            raise self._no_version(name, int(version))
        al = self.aliases(name)
        al[alias] = int(version)
        self._write_aliases(name, al)

    def remove_alias(self, name: str, alias: str) -> None:
        """Remove ``name@alias``.

        Raises:
            CatalogError: ``name`` has no such alias.
        """
        al = self.aliases(name)
        if alias not in al:
            have = ", ".join(al) or "none"
            raise CatalogError(f"{name} has no alias {alias!r}; aliases: {have}")
        del al[alias]
        self._write_aliases(name, al)

    # ------------------------------------------------------------------ files

    def _file_ref(self, card: ModelCard, key: str) -> tuple[FileRef, str]:
        if key not in card.files:
            have = ", ".join(sorted(card.files)) or "none"
            raise CatalogError(f"{card.ref} has no file {key!r}; files: {have}")
        ref = card.files[key]
        return ref, storage.join(self._version_uri(card.name, card.version), ref.path)

    def _resolve(self, card: ModelCard | str) -> ModelCard:
        return self.get(card) if isinstance(card, str) else card

    def fetch(self, card: ModelCard | str, key: str = "weights") -> bytes:
        """The bytes of one published file, verified against the card's sha256.

        Args:
            card: a card from this catalogue, or a reference for :meth:`get`.
            key: the file key (``"weights"`` by default).

        Raises:
            CatalogError: unknown key, missing file, or checksum mismatch.
        """
        card = self._resolve(card)
        ref, uri = self._file_ref(card, key)
        self._fresh(uri)
        try:
            data = storage.read_bytes(uri, self.s3)
        except FileNotFoundError:
            raise CatalogError(f"{card.ref}: catalogue file missing: {uri}") from None
        got = storage.sha256_bytes(data)
        if got != ref.sha256 or len(data) != ref.size:
            raise CatalogError(
                f"checksum mismatch: catalogue file was modified or corrupted: {uri} "
                f"(card sha256 {ref.sha256[:16]}..., {ref.size} bytes; file {got[:16]}..., {len(data)} bytes)"
            )
        return data

    def local_path(self, card: ModelCard | str, key: str = "weights") -> str:
        """A verified local copy of one published file (downloaded once, then reused).

        The copy lives at ``<cache>/<name>/v<version:04d>/<sha256[:16]>/<file name>``; an existing
        copy is re-hashed and reused only when it matches the card, otherwise it is replaced.

        Args:
            card: a card from this catalogue, or a reference for :meth:`get`.
            key: the file key (``"weights"`` by default).

        Returns:
            The local file path.

        Raises:
            CatalogError: unknown key, missing file, or the catalogue copy fails its checksum.
        """
        card = self._resolve(card)
        ref, uri = self._file_ref(card, key)
        folder = os.path.join(self.cache_dir, card.name, _version_dir(card.version), ref.sha256[:16])
        dst = os.path.join(folder, *ref.path.split("/"))
        if os.path.isfile(dst) and self._sha256_local(dst) == ref.sha256:
            return dst
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.{uuid.uuid4().hex}.tmp"
        h, size = hashlib.sha256(), 0
        self._fresh(uri)
        try:
            with storage.open_read(uri, self.s3) as fi, open(tmp, "wb") as fo:
                while chunk := fi.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    fo.write(chunk)
            if h.hexdigest() != ref.sha256 or size != ref.size:
                raise CatalogError(
                    f"checksum mismatch: catalogue file was modified or corrupted: {uri} "
                    f"(card sha256 {ref.sha256[:16]}..., file {h.hexdigest()[:16]}...)"
                )
            os.replace(tmp, dst)
        except FileNotFoundError:
            raise CatalogError(f"{card.ref}: catalogue file missing: {uri}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dst

    @staticmethod
    def _sha256_local(path: str) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    # ------------------------------------------------------------------ deleting

    def delete(self, name: str, version: int) -> None:
        """Delete one version. Its number is kept (a tombstone) and never reused.

        ``card.json`` goes first, so the version disappears from readers at once; then its files.

        Raises:
            CatalogError: no such version, or an alias still points at it (remove the alias first).
        """
        version = int(version)
        if self._load_card(name, version, {}) is None:
            raise self._no_version(name, int(version))
        pointing = sorted(a for a, v in self.aliases(name).items() if v == version)
        if pointing:
            raise CatalogError(f"{name}:{version} is aliased as {', '.join(pointing)}; "
                               "remove the alias(es) first")
        vuri = self._version_uri(name, version)
        tombstone = {"deleted_at": _utc_now(), "host": socket.gethostname()}
        storage.write_bytes(storage.join(vuri, TOMBSTONE_FILE), json.dumps(tombstone).encode(), self.s3)
        self._fresh(storage.join(vuri, CARD_FILE))
        storage.remove(storage.join(vuri, CARD_FILE), s3=self.s3)
        fs, path = self._fresh(vuri)
        for p in fs.find(path):
            if storage.basename(p) not in (CLAIM_FILE, TOMBSTONE_FILE):
                fs.rm(p)
        self._fresh(vuri)
        log.info("catalogue %s: deleted %s:%d", self.uri, name, version)
