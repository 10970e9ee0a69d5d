"""A small, strict subset of ``kustomize build`` (enough for k8s/base and k8s/overlays/*), so tests and
machines without the kustomize binary can render the overlays.

Supported ``kustomization.yaml`` fields: ``apiVersion``, ``kind``, ``resources`` (files and folders
holding a kustomization), ``namespace``, ``images`` (``name`` + ``newName``/``newTag``; applied to every
``containers``/``initContainers`` list at any depth, which covers CRD pod templates), ``patches`` with
``path`` + optional ``target`` (``group``/``version``/``kind``/``name``) where the patch file is an RFC 6902
JSON patch (a YAML list of ``op/path/value``; ops ``add``, ``replace``, ``remove``, ``test``). Any other field,
or a patch that is not a JSON patch, is an error rather than silently ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from medray.errors import ConfigError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    try:
        docs = [d for d in yaml.load_all(path.read_text(), Loader=_LOADER) if d is not None]
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d:
            raise ConfigError(f"{path}: every document must be a Kubernetes object with a kind")
    return docs


def _pointer(path: str, where: str) -> list[str]:
    if not path.startswith("/"):
        raise ConfigError(f"{where}: JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], where: str) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise ConfigError(f"{where}: no list index {p!r}") from None
        elif isinstance(cur, dict):
            if p not in cur:
                raise ConfigError(f"{where}: no field {p!r}")
            cur = cur[p]
        else:
            raise ConfigError(f"{where}: cannot descend into {type(cur).__name__} at {p!r}")
    return cur


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """RFC 6902 (add / replace / remove / test) on a copy of ``doc``."""
    out = copy.deepcopy(doc)
    for i, op in enumerate(ops):
        w = f"{where}[{i}]"
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ConfigError(f"{w}: a JSON patch operation needs 'op' and 'path'")
        parts = _pointer(op["path"], w)
        parent = _walk(out, parts[:-1], f"{w} ({op['path']})")
        last = parts[-1]
        kind = op["op"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise ConfigError(f"{w}: '{kind}' needs a value")
        if kind == "test":
            if _walk(out, parts, w) != op["value"]:
                raise ConfigError(f"{w}: test failed at {op['path']}")
            continue
        if isinstance(parent, list):
            if last == "-" and kind == "add":
                parent.append(copy.deepcopy(op["value"]))
                continue
            try:
                idx = int(last)
            except ValueError:
                raise ConfigError(f"{w}: bad list index {last!r} in {op['path']}") from None
            if kind == "add":
                if not 0 <= idx <= len(parent):
                    raise ConfigError(f"{w}: index {idx} out of range in {op['path']}")
                parent.insert(idx, copy.deepcopy(op["value"]))
            elif not 0 <= idx < len(parent):
                raise ConfigError(f"{w}: index {idx} out of range in {op['path']}")
            elif kind == "replace":
                parent[idx] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[idx]
            else:
                raise ConfigError(f"{w}: unsupported op {kind!r}")
        elif isinstance(parent, dict):
            if kind in ("replace", "remove") and last not in parent:
                raise ConfigError(f"{w}: no field {last!r} to {kind} at {op['path']}")
            if kind in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            else:
                raise ConfigError(f"{w}: unsupported op {kind!r}")
        else:
            raise ConfigError(f"{w}: {op['path']} does not point into a mapping or list")
    return out


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    checks = {"kind": obj.get("kind"), "name": (obj.get("metadata") or {}).get("name"),
              "group": group, "version": version}
    for key, want in target.items():
        if key not in checks:
            raise ConfigError(f"patch target field {key!r} is not supported (kind, name, group, version)")
        if checks[key] != want:
            return False
    return True


def _set_images(node: Any, images: list[dict[str, Any]]) -> None:
    if isinstance(node, dict):
        for key, val in node.items():
            if key in ("containers", "initContainers") and isinstance(val, list):
                for c in val:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        c["image"] = _new_image(c["image"], images)
            _set_images(val, images)
    elif isinstance(node, list):
        for v in node:
            _set_images(v, images)


def _new_image(image: str, images: list[dict[str, Any]]) -> str:
    name, tag = image, None
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
    for rule in images:
        if rule.get("name") == name:
            return f"{rule.get('newName', name)}:{rule.get('newTag', tag)}" if (rule.get("newTag") or tag) \
                else rule.get("newName", name)
    return image


def build(folder: str | Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build folder`` would emit (for the supported subset)."""
    folder = Path(folder)
    kfile = folder / "kustomization.yaml"
    if not kfile.is_file():
        raise ConfigError(f"{folder}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise ConfigError(f"{kfile}: unsupported kustomization field(s) {sorted(unknown)}")
    objs: list[dict[str, Any]] = []
    for res in k.get("resources") or []:
        p = (folder / res).resolve()
        objs += build(p) if p.is_dir() else load_docs(p)
    for i, patch in enumerate(k.get("patches") or []):
        where = f"{kfile}: patches[{i}]"
        if "path" not in patch or set(patch) - {"path", "target"}:
            raise ConfigError(f"{where}: only 'path' (+ 'target') patches are supported")
        ops = yaml.safe_load((folder / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise ConfigError(f"{where}: {patch['path']} is not a JSON 6902 patch (a list of operations)")
        target = patch.get("target") or {}
        hit = 0
        for j, obj in enumerate(objs):
            if _matches(obj, target):
                objs[j] = json_patch(obj, ops, f"{folder / patch['path']}")
                hit += 1
        if not hit:
            raise ConfigError(f"{where}: target {target} matches no resource")
    if k.get("images"):
        for obj in objs:
            _set_images(obj, k["images"])
    if k.get("namespace"):
        for obj in objs:
            if obj.get("kind") == "Namespace":  # as kustomize does: the Namespace object is renamed
                obj.setdefault("metadata", {})["name"] = k["namespace"]
            elif obj.get("kind") not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objs
