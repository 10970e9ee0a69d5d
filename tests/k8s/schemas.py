"""JSON schemas for every kind under k8s/: the KubeRay CRDs' own ``openAPIV3Schema`` (from
../shared/kuberay-crds, version v1) made strict, plus minimal, accurate schemas for the core kinds used
(Namespace, ConfigMap, Secret) and for ObjectMeta.

Strictness: the API server rejects unknown fields (``kubectl apply`` uses server-side field validation,
``Strict`` by default); in an OpenAPI schema that is implicit, in JSON Schema it is not. So every object
schema that lists ``properties`` and says nothing about ``additionalProperties`` gets
``additionalProperties: false``. The CRDs here contain no ``x-kubernetes-preserve-unknown-fields``
(checked by a test); a node carrying it would be left open, as Kubernetes leaves it.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(os.environ.get("MEDRAY_KUBERAY_CRDS", Path(__file__).resolve().parents[3] / "shared" / "kuberay-crds"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
        "labels": {"type": "object", "propertyNames": {"pattern": LABEL_KEY},
                   "additionalProperties": {"type": "string", "pattern": LABEL_VALUE}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _head(kind: str, api: str) -> dict[str, Any]:
    return {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": OBJECT_META}


CORE: dict[str, dict[str, Any]] = {
    "Namespace": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata"],
        "properties": {**_head("Namespace", "v1"),
                       "metadata": {**OBJECT_META, "properties": {**OBJECT_META["properties"],
                                                                  "name": {"type": "string", "pattern": DNS_LABEL,
                                                                           "maxLength": 63}}},
                       "spec": {"type": "object", "additionalProperties": False,
                                "properties": {"finalizers": {"type": "array", "items": {"type": "string"}}}}},
    },
    "ConfigMap": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata"],
        "properties": {**_head("ConfigMap", "v1"),
                       "data": {"type": "object", "propertyNames": {"pattern": ENV_NAME},
                                "additionalProperties": {"type": "string"}},
                       "binaryData": {"type": "object", "additionalProperties": {"type": "string"}},
                       "immutable": {"type": "boolean"}},
    },
    "Secret": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata"],
        "properties": {**_head("Secret", "v1"),
                       "type": {"type": "string"},
                       "data": {"type": "object", "propertyNames": {"pattern": ENV_NAME},
                                "additionalProperties": {"type": "string",
                                                         "pattern": r"^[A-Za-z0-9+/]*={0,2}$"}},
                       "stringData": {"type": "object", "propertyNames": {"pattern": ENV_NAME},
                                      "additionalProperties": {"type": "string"}},
                       "immutable": {"type": "boolean"}},
    },
}


def strict(schema: Any) -> Any:
    """A copy where every object schema with listed properties forbids others (see the module doc)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def crd_version(kind: str, version: str = "v1") -> dict[str, Any]:
    doc = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{kind} {version}")


@functools.lru_cache(maxsize=None)
def schema_for(kind: str) -> dict[str, Any]:
    if kind in CORE:
        return CORE[kind]
    s = strict(copy.deepcopy(crd_version(kind)))
    s["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    s["properties"]["kind"] = {"const": kind}
    s["properties"]["metadata"] = OBJECT_META  # the CRD says only {type: object}; the API server checks ObjectMeta
    s["required"] = sorted({*s.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return s


@functools.lru_cache(maxsize=None)
def validator(kind: str):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema_for(kind), default=jsonschema.Draft202012Validator)
    return cls(schema_for(kind))


def errors(obj: dict[str, Any]) -> list[str]:
    """Human-readable validation errors of one Kubernetes object (empty: valid)."""
    kind = obj.get("kind")
    if kind not in CORE and kind not in CRD_FILES:
        return [f"no schema for kind {kind!r}"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator(kind).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
