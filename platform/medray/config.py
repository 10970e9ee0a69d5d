"""Configuration: strict pydantic models, YAML loading, dotted overrides, one job union.

Every spec a user writes (``jobs/*.yaml``, ``tune/*.yaml``, ``serve/presets/*.yaml``) is parsed by a
pydantic v2 model that rejects unknown keys. Errors come back as one :class:`ConfigError` whose message
names the file, the dotted field and the problem (with a "did you mean" where a key is misspelt)::

    jobs/fundus_disease.yaml: optim.lrr: unknown field; did you mean 'lr'?

``medray train FILE.yaml key.path=value ...`` applies overrides to the loaded mapping before validation;
values are parsed as YAML scalars/collections (``optim.lr=3e-4``, ``scaling.use_gpu=false``,
``data.classes=[a,b]``).

The job union is keyed on ``method``: each training method registers its ``Config`` class with
:func:`register_job` and :func:`parse_job` dispatches on the ``method`` field.
"""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from medray.errors import ConfigError


class StrictModel(BaseModel):
    """Base of every spec: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------------------------
# Shared sections


class S3Options(StrictModel):
    """S3-compatible object storage (AWS, MinIO, Ceph...). Unset fields fall back to the usual
    AWS environment variables (``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    anon: bool = False


class StorageSpec(StrictModel):
    s3: S3Options = Field(default_factory=S3Options)


class ModelSpec(StrictModel):
    """Which network to build. ``name`` is a key of the model registry (``medray models``)."""

    name: str = "test_tiny_cnn"
    pretrained: bool = False  # hub downloads are off by default; use `weights:` for a local/S3 file
    weights: str | None = None  # safetensors URI (local path, s3://...) loaded after building
    in_chans: int = 3
    kwargs: dict[str, Any] = Field(default_factory=dict)


class OptimSpec(StrictModel):
    name: Literal["adamw", "sgd", "adam"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = 0.9
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1, description="per worker")
    grad_accum_steps: int = Field(1, ge=1)
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1, description="epochs between decays (step scheduler)")
    gamma: float = Field(0.1, gt=0, le=1)
    clip_grad_norm: float | None = None


class ScalingSpec(StrictModel):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    channels_last: bool = True  # on GPU


class RunSpec(StrictModel):
    name: str = "run"
    storage_path: str = "runs"
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    checkpoints_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    seed: int = 0
    catalog: str | None = None  # catalogue URI to publish into when the run finishes
    publish_as: str | None = None  # catalogue name (default: run.name)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ ") or v.startswith("."):
            raise ValueError("must be a non-empty name without '/', '\\' or spaces")
        return v


class JobBase(StrictModel):
    """Fields every training job has. Methods subclass it with ``method: Literal["..."]``."""

    method: str
    description: str = ""
    model: ModelSpec = Field(default_factory=ModelSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    run: RunSpec = Field(default_factory=RunSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)


# --------------------------------------------------------------------------------------------
# The job union


_JOBS: dict[str, type[JobBase]] = {}
# method name -> module that defines (and registers) its Config; imported on demand so that
# `medray data ...` never pays for torch.
METHOD_MODULES: dict[str, str] = {
    "classify": "medray.methods.classify",
}


def register_job(cls: type[JobBase]) -> type[JobBase]:
    """Class decorator: add a method's Config to the ``method``-keyed union."""
    field = cls.model_fields.get("method")
    args = getattr(field.annotation, "__args__", ()) if field else ()
    if len(args) != 1:
        raise TypeError(f"{cls.__name__}.method must be Literal['<name>']")
    _JOBS[args[0]] = cls
    return cls


def job_classes() -> dict[str, type[JobBase]]:
    for mod in METHOD_MODULES.values():
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a method not built yet
            if e.name != mod:
                raise
    return dict(_JOBS)


def job_adapter() -> TypeAdapter:
    classes = tuple(job_classes().values())
    if not classes:
        raise ConfigError("no training methods are registered")
    if len(classes) == 1:
        return TypeAdapter(classes[0])
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="method")])  # type: ignore[valid-type]


# --------------------------------------------------------------------------------------------
# YAML, overrides, errors


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file, line and column."""
    from medray import storage

    path = str(path)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied (values parsed as YAML)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key in {key!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])} is a {type(nxt).__name__}, not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """Names of the fields a model accepts at ``loc`` (for 'did you mean')."""
    cur = model
    for part in loc:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return []
        f = cur.model_fields.get(part) if isinstance(part, str) else None
        if f is None:
            return []
        cur = f.annotation
        for a in getattr(cur, "__args__", ()) or ():  # Optional[Model] etc.
            if isinstance(a, type) and issubclass(a, BaseModel):
                cur = a
                break
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def format_validation_error(err: ValidationError, source: str, root: Any = None) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        model = root
        if root is None or (loc and isinstance(loc[0], str) and loc[0] in _JOBS and len(_JOBS) > 1):
            # discriminated union: the first element of loc is the tag
            if loc and isinstance(loc[0], str) and loc[0] in _JOBS:
                model = _JOBS[loc[0]]
                loc = loc[1:]
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        typ = e.get("type", "")
        if typ == "extra_forbidden":
            msg = "unknown field"
            if model is not None:
                known = _fields_at(model, loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), known, n=1)
                if close:
                    msg += f"; did you mean {close[0]!r}?"
                elif known:
                    msg += f" (allowed: {', '.join(sorted(known))})"
        elif typ == "union_tag_invalid":
            ctx = e.get("ctx", {})
            msg = f"unknown method {ctx.get('tag')!r}; known: {ctx.get('expected_tags')}"
        elif typ == "union_tag_not_found":
            msg = f"missing 'method' (one of: {', '.join(sorted(_JOBS))})"
        else:
            msg = e.get("msg", "invalid")
            if "input" in e and typ not in ("missing",) and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {dotted}: {msg}")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: dict[str, Any], source: str = "<config>") -> Any:
    """Validate ``data`` against ``model``; errors become a :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, root=model)) from None


def parse_job(data: dict[str, Any], source: str = "<config>") -> JobBase:
    """Validate a job mapping through the ``method``-keyed union."""
    adapter = job_adapter()
    if len(_JOBS) == 1:
        only = next(iter(_JOBS))
        if data.get("method") != only:
            raise ConfigError(
                f"{source}: method: unknown method {data.get('method')!r}; known: {sorted(_JOBS)}"
            )
    try:
        return adapter.validate_python(data)
    except ValidationError as e:
        root = next(iter(_JOBS.values())) if len(_JOBS) == 1 else None
        raise ConfigError(format_validation_error(e, source, root=root)) from None


def load_job(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> JobBase:
    """``medray train FILE.yaml k=v ...``: load, override, validate."""
    data = apply_overrides(load_yaml(path), overrides)
    src = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    job = parse_job(data, source=src)
    return job


def load_spec(model: type[BaseModel], path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """Load any YAML spec (tune study, serve preset...) into ``model``."""
    data = apply_overrides(load_yaml(path), overrides)
    return validate(model, data, source=str(path))


def resolve_relative(base_file: str | os.PathLike, uri: str) -> str:
    """Resolve a relative local path in a spec against the spec's folder; URIs pass through."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str((Path(base_file).resolve().parent / uri).resolve())
