"""Model cards: what a catalogued model is, consumes, produces, excludes and needs.

A :class:`ModelCard` is the ``card.json`` of one published version (see :mod:`medray.catalog.store`
for the on-storage layout). It is the contract every later stage reads:

* serving and ``medray predict`` rebuild the network from ``architecture`` and ``preprocessing``,
  load ``files["weights"]`` (always safetensors, verified against ``checksum``) and map outputs to
  ``labels``;
* presets, selection and the planner read the I/O contract: ``inputs`` are ``"image"`` (the request
  image) or ``"<model name>.<output>"`` (a named output of another model, which makes that model an
  upstream of this one), ``outputs`` are the names this model produces, ``excludes`` names models
  that must not be selected together with this one (treat it as symmetric: a conflict declared on
  either side is a conflict), and ``resources`` is passed as Ray actor options;
* efficacy reports compare fresh measurements with ``metrics``.

Example card (as stored, ``aliases`` excluded)::

    {"schema_version": 1, "name": "fundus_dr", "version": 3, "task": "classify",
     "modality": "fundus", "inputs": ["image", "fundus_quality.gradable"],
     "outputs": ["label", "probs"], "excludes": ["fundus_dr_lite"],
     "resources": {"num_cpus": 1, "num_gpus": 0.5},
     "files": {"weights": {"path": "weights.safetensors", "sha256": "...", "size": 1234}},
     "checksum": "...", "created_at": "2026-01-01T12:00:00Z", ...}

``version``, ``files``, ``checksum`` and ``created_at`` are assigned by
:meth:`medray.catalog.store.Catalog.publish`; a card being prepared for publishing leaves them at
their defaults (version 0 means "not published"). ``aliases`` and ``location`` are never stored in
``card.json``: they are filled when a card is read (from ``<name>/aliases.json`` and from where the
card was found), so a card handed to serving still knows where its files are
(``Catalog.of(card).local_path(card)``).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from medray.config import StrictModel
from medray.errors import MedrayError

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
"""Model names, aliases, tasks, modalities and file keys: lowercase slugs."""

OUTPUT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""Output (port) names: identifiers, so ``"model.name.output"`` splits unambiguously on the last dot."""

REQUEST_INPUTS: tuple[str, ...] = ("image",)
"""Inputs that come from the request itself rather than from another model."""

RESOURCE_KEYS: tuple[str, ...] = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type")
"""Keys allowed in ``ModelCard.resources`` (a subset of Ray's actor options)."""

_NAME_RE = re.compile(NAME_PATTERN)
_OUTPUT_RE = re.compile(OUTPUT_PATTERN)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class CatalogError(MedrayError):
    """A catalogue operation failed: unknown model/version/alias, invalid card or file, checksum
    mismatch. The message names what was asked for and what exists."""


def is_name(value: str) -> bool:
    """Whether ``value`` is a valid model name / alias slug (``^[a-z0-9][a-z0-9_.-]*$``)."""
    return bool(_NAME_RE.match(value))


def parse_input(spec: str) -> tuple[str | None, str]:
    """Split one ``ModelCard.inputs`` entry into ``(upstream model or None, port)``.

    Args:
        spec: ``"image"`` (a request input) or ``"<model name>.<output>"``.

    Returns:
        ``(None, "image")`` for a request input, ``(model_name, output)`` otherwise.

    Raises:
        ValueError: ``spec`` is neither form.
    """
    if spec in REQUEST_INPUTS:
        return None, spec
    model, dot, output = spec.rpartition(".")
    if not dot or not _NAME_RE.match(model) or not _OUTPUT_RE.match(output):
        raise ValueError(
            f"input {spec!r} must be one of {list(REQUEST_INPUTS)} or '<model name>.<output>' "
            f"(e.g. 'fundus_quality.gradable')"
        )
    return model, output


class FileRef(StrictModel):
    """One file of a published version.

    Attributes:
        path: path relative to the version folder (``weights.safetensors``), ``/``-separated.
        sha256: hex sha256 of the file's bytes.
        size: size in bytes.
    """

    path: str
    sha256: str
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        parts = v.split("/")
        if not v or v.startswith("/") or "\\" in v or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{v!r} must be a relative path inside the version folder")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256_RE.match(v):
            raise ValueError("must be 64 lowercase hex digits (sha256)")
        return v


MetricValue = float | int | bool | str | list | dict


class ModelCard(StrictModel):
    """The card of one catalogued model version (see the module docstring).

    Attributes:
        schema_version: card format version; readers refuse a newer one instead of guessing.
        name: catalogue name, a slug (``fundus_dr``).
        version: 1, 2, ... assigned at publish; 0 on a card that is not published yet.
        aliases: aliases pointing at this version, filled at read time (never stored).
        location: URI of the version folder the card was read from, filled at read time (never
            stored); empty on a card that was not read from a catalogue.
        task: what the model does (``classify``, ``retinal_age``, ``oct_seg``, ``skin_heatmap``,
            ``skin_classify``, ``rop_stage``, ``quality``...).
        modality: image modality (``fundus``, ``oct``, ``skin``, ``rop``...).
        description: one paragraph for people browsing the catalogue.
        inputs: ``"image"`` and/or ``"<model>.<output>"`` of upstream models.
        outputs: names of what this model produces (at least one).
        excludes: names of models that cannot be selected together with this one.
        resources: Ray actor options for one replica (``num_cpus``, ``num_gpus``, ``memory`` in
            bytes, ``resources``, ``accelerator_type``).
        metrics: validation/test metrics at publish time.
        preprocessing: how to turn an image into the network input (``image_size``, ``mean``,
            ``std``, ``mode``, ``resize``).
        labels: label map (index -> name) for classification/segmentation outputs.
        architecture: how to rebuild the network (``name`` in the model registry, ``kwargs``,
            ``in_chans``, ``num_classes``).
        files: published files by key; ``"weights"`` (a ``.safetensors`` file) is required.
        checksum: sha256 of the weights file (equals ``files["weights"].sha256``).
        created_at: publish time, ISO-8601 UTC (``2026-01-01T12:00:00Z``).
        source: provenance (``method``, ``job``, ``run_path``, ``git_commit``...).
        intended_use: stated use; defaults to research only.
        extra: anything else a method wants to keep with the model.
    """

    model_config = ConfigDict(ser_json_inf_nan="constants")  # NaN metrics survive a JSON round trip

    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(0, ge=0)
    aliases: list[str] = Field(default_factory=list)
    location: str = ""
    task: str = Field(pattern=NAME_PATTERN)
    modality: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    inputs: list[str] = Field(default_factory=lambda: ["image"], min_length=1)
    outputs: list[str] = Field(min_length=1)
    excludes: list[str] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    architecture: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileRef] = Field(default_factory=dict)
    checksum: str = ""
    created_at: str = ""
    source: dict[str, Any] = Field(default_factory=dict)
    intended_use: str = "research use only"
    extra: dict[str, Any] = Field(default_factory=dict)

    # ---------------------------------------------------------------- field checks

    @field_validator("aliases", "excludes")
    @classmethod
    def _slugs(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not _NAME_RE.match(x)]
        if bad:
            raise ValueError(f"{bad} are not valid names ({NAME_PATTERN})")
        if len(set(v)) != len(v):
            raise ValueError("duplicate entries")
        return v

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: list[str]) -> list[str]:
        for spec in v:
            parse_input(spec)
        if len(set(v)) != len(v):
            raise ValueError("duplicate entries")
        return v

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not _OUTPUT_RE.match(x)]
        if bad:
            raise ValueError(f"{bad} are not valid output names ({OUTPUT_PATTERN})")
        if len(set(v)) != len(v):
            raise ValueError("duplicate entries")
        return v

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(RESOURCE_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed: {list(RESOURCE_KEYS)}")
        for key in ("num_cpus", "num_gpus", "memory"):
            if key in v:
                x = v[key]
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                    raise ValueError(f"{key} must be a number >= 0, got {x!r}")
        if "resources" in v:
            custom = v["resources"]
            if not isinstance(custom, dict) or not all(
                isinstance(k, str) and isinstance(n, (int, float)) and not isinstance(n, bool) and n >= 0
                for k, n in custom.items()
            ):
                raise ValueError("resources.resources must map custom resource names to numbers >= 0")
        if "accelerator_type" in v and not isinstance(v["accelerator_type"], str):
            raise ValueError("accelerator_type must be a string")
        return v

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, v: str) -> str:
        if v and not _SHA256_RE.match(v):
            raise ValueError("must be 64 lowercase hex digits (sha256)")
        return v

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: str) -> str:
        if not v:
            return v
        try:
            t = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an ISO-8601 timestamp") from None
        if t.utcoffset() != timedelta(0):
            raise ValueError(f"{v!r} must be in UTC (e.g. 2026-01-01T12:00:00Z)")
        return v

    # ---------------------------------------------------------------- cross-field checks

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.name in self.excludes:
            raise ValueError(f"excludes: a model cannot exclude itself ({self.name!r})")
        upstream = self.upstream
        if self.name in upstream:
            raise ValueError(f"inputs: {self.name!r} cannot consume its own outputs")
        both = sorted(set(upstream) & set(self.excludes))
        if both:
            raise ValueError(f"inputs consume {both}, which excludes also lists")
        n = self.architecture.get("num_classes")
        if self.labels and isinstance(n, int) and not isinstance(n, bool) and n != len(self.labels):
            raise ValueError(f"labels has {len(self.labels)} entries but architecture.num_classes is {n}")
        if "weights" in self.files:
            if self.checksum and self.checksum != self.files["weights"].sha256:
                raise ValueError("checksum differs from files.weights.sha256")
        if self.version > 0:
            missing = [f for f in ("checksum", "created_at") if not getattr(self, f)]
            if "weights" not in self.files:
                missing.append("files.weights")
            if missing:
                raise ValueError(f"a published card (version {self.version}) needs {missing}")
        return self

    # ---------------------------------------------------------------- helpers

    @property
    def ref(self) -> str:
        """``"name:version"``, the exact reference :meth:`Catalog.get` resolves back to this card."""
        return f"{self.name}:{self.version}"

    @property
    def upstream(self) -> list[str]:
        """Names of the models whose outputs this model consumes, in ``inputs`` order."""
        out: list[str] = []
        for spec in self.inputs:
            model, _ = parse_input(spec)
            if model is not None and model not in out:
                out.append(model)
        return out

    @property
    def weights(self) -> FileRef:
        """The weights file entry.

        Raises:
            CatalogError: the card has no ``"weights"`` file (it was never published).
        """
        if "weights" not in self.files:
            raise CatalogError(f"{self.name}: card has no weights file (not published?)")
        return self.files["weights"]
