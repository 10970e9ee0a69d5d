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
import re
import types
import typing
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
    "retinal_age": "medray.methods.retinal_age",
    "oct_layers": "medray.methods.oct_layers",
    "skin": "medray.methods.skin",
    "rop": "medray.methods.rop",
}


def _method_name(cls: type) -> str:
    field = cls.model_fields.get("method") if isinstance(cls, type) and issubclass(cls, BaseModel) else None
    ann = field.annotation if field else None
    args = typing.get_args(ann) if typing.get_origin(ann) is Literal else ()
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{getattr(cls, '__name__', cls)}.method must be Literal['<name>'] (one string)")
    return args[0]


def register_job(cls: type[JobBase]) -> type[JobBase]:
    """Class decorator: add a method's Config to the ``method``-keyed union.

    Re-registering the same class (a module reloaded) replaces it; a *different* class claiming a
    method name that is taken is an error (two methods would silently shadow each other)."""
    if not (isinstance(cls, type) and issubclass(cls, JobBase)):
        raise TypeError(f"register_job: {cls!r} is not a JobBase subclass")
    name = _method_name(cls)
    prev = _JOBS.get(name)
    if prev is not None and prev is not cls and (prev.__module__, prev.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"method {name!r} is already registered by {prev.__module__}.{prev.__qualname__}")
    _JOBS[name] = cls
    return cls


def job_classes() -> dict[str, type[JobBase]]:
    """Every registered job class, by method name (importing the known method modules first)."""
    for mod in METHOD_MODULES.values():
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a method not built yet (the module or its package)
            if e.name is None or not (mod == e.name or mod.startswith(e.name + ".")):
                raise
    return dict(_JOBS)


def job_adapter() -> TypeAdapter:
    """A TypeAdapter over the job union: the class itself when only one method is registered (a
    one-member discriminated union is not allowed), else a union discriminated by ``method``."""
    classes = tuple(job_classes().values())
    if not classes:
        raise ConfigError("no training methods are registered")
    if len(classes) == 1:
        return TypeAdapter(classes[0])
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="method")])  # type: ignore[valid-type]


# --------------------------------------------------------------------------------------------
# YAML, overrides, errors


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (YAML silently keeps the last one) and reads
    ``3e-4``/``1e5`` as floats like YAML 1.2 (PyYAML's 1.1 rules need a dot: ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # duplicates among the keys written in this mapping; keys brought in by a merge (`<<: *base`)
    # may be overridden, as YAML intends
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # let the base constructor report unhashable keys
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse YAML text with medray's rules (duplicate keys rejected, ``1e-3`` is a float); errors
    are ConfigErrors naming ``source:line:col``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        if context and getattr(e, "problem", None) and "duplicate key" not in problem:
            problem = f"{problem} ({context})"
        raise ConfigError(f"{source}{where}: invalid YAML: {problem}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (any storage URI); syntax errors name the file, line and column."""
    from medray import storage

    path = str(path)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    data = parse_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied (values parsed as YAML:
    ``3e-4`` is a float, ``false`` a bool, ``[a,b]`` a list; text YAML cannot parse stays text).
    Missing sections are created; descending into a value that is not a section is an error."""
    import copy

    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key in {key!r}")
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() != "" else ""  # noqa: S506
        except yaml.YAMLError:
            value = raw
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])} is a {type(nxt).__name__} "
                    f"({nxt!r}), not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def _unwrap_model(ann: Any, part: Any) -> Any:
    """The model type reached by stepping into ``part`` of an annotation (Optional/Union members,
    list/tuple items for an int index, dict values for a key)."""
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if isinstance(part, int) and origin in (list, tuple, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _as_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) in (Union, types.UnionType):  # Optional[Model], Model | None...
        for a in typing.get_args(ann):
            if isinstance(a, type) and issubclass(a, BaseModel):
                return a
    return ann


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """Names of the fields a model accepts at ``loc`` (for 'did you mean')."""
    cur: Any = model
    for part in loc:
        cur = _as_model(cur)
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            f = cur.model_fields.get(part) if isinstance(part, str) else None
            if f is None:
                return []
            cur = f.annotation
            continue
        # a container: list[Model] with an index, dict[str, Model] with a key, Optional[list[...]]
        inner = None
        for cand in (cur, *(getattr(cur, "__args__", ()) or ())):
            inner = _unwrap_model(cand, part)
            if inner is not None:
                break
        if inner is None:
            return []
        cur = inner
    cur = _as_model(cur)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def _dotted(loc: tuple) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def _short(v: Any, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _method_hint(tag: Any) -> str:
    known = sorted(_JOBS)
    msg = f"unknown method {tag!r}; known: {', '.join(known) or '(none)'}"
    close = difflib.get_close_matches(str(tag), known, n=1) if tag is not None else []
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return msg


def format_validation_error(err: ValidationError, source: str, root: Any = None) -> str:
    """One line per problem: ``source: dotted.field: message`` (with "did you mean" for unknown keys).
    ``root`` is the validated model; None means the ``method``-discriminated job union."""
    lines = []
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        model = root
        if root is None and loc and isinstance(loc[0], str) and loc[0] in _JOBS:
            # discriminated union: the first element of loc is the tag
            model = _JOBS[loc[0]]
            loc = loc[1:]
        typ = e.get("type", "")
        if typ == "extra_forbidden":
            msg = "unknown field"
            if model is not None and loc:
                known = _fields_at(model, loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), known, n=1)
                if close:
                    msg += f"; did you mean {close[0]!r}?"
                elif known:
                    msg += f" (allowed: {', '.join(sorted(known))})"
        elif typ == "union_tag_invalid":
            msg = _method_hint(e.get("ctx", {}).get("tag"))
            loc = ("method",)
        elif typ == "union_tag_not_found":
            msg = f"missing (one of: {', '.join(sorted(_JOBS))})"
            loc = ("method",)
        else:
            msg = e.get("msg", "invalid")
            if typ == "value_error" and msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if "input" in e and typ != "missing" and not isinstance(e["input"], dict):
                msg += f" (got {_short(e['input'])})"
        lines.append(f"{source}: {_dotted(loc)}: {msg}")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: dict[str, Any], source: str = "<config>") -> Any:
    """Validate ``data`` against ``model``; errors become a :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, root=model)) from None


def parse_job(data: dict[str, Any], source: str = "<config>") -> JobBase:
    """Validate a job mapping through the ``method``-keyed union."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    adapter = job_adapter()
    method = data.get("method")
    if "method" not in data or method is None:
        raise ConfigError(f"{source}: method: missing (one of: {', '.join(sorted(_JOBS))})")
    if not isinstance(method, str) or method not in _JOBS:
        raise ConfigError(f"{source}: method: {_method_hint(method)}")
    try:
        return adapter.validate_python(data)
    except ValidationError as e:
        root = next(iter(_JOBS.values())) if len(_JOBS) == 1 else None
        raise ConfigError(format_validation_error(e, source, root=root)) from None


def _source(path: str | os.PathLike, overrides: list[str] | tuple[str, ...]) -> str:
    return str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")


def load_job(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> JobBase:
    """``medray train FILE.yaml k=v ...``: load, override, validate."""
    data = apply_overrides(load_yaml(path), overrides)
    return parse_job(data, source=_source(path, overrides))


def load_spec(model: type[BaseModel], path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """Load any YAML spec (tune study, serve preset...) into ``model``."""
    data = apply_overrides(load_yaml(path), overrides)
    return validate(model, data, source=_source(path, overrides))


def resolve_relative(base_file: str | os.PathLike, uri: str) -> str:
    """Resolve a relative local path in a spec against the spec's folder; URIs pass through."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str((Path(base_file).resolve().parent / uri).resolve())
