"""The typed app builder: ``AppArgs`` -> a Serve application (STYLE.md P6).

    # serve/fundus_screening.yaml (a Serve config; `serve run serve/fundus_screening.yaml`)
    applications:
      - name: fundus_screening
        route_prefix: /
        import_path: medray.serving.app:build_app
        args: {preset: fundus_screening, catalog: runs/catalog}

The builder loads the catalogue and the presets, plans the selection (pure, :mod:`medray.catalog`),
and binds one :class:`~medray.serving.node.ModelNode` deployment per planned model, named after the
model, plus the FastAPI :class:`~medray.serving.api.Ingress`. Per-model replicas, autoscaling,
resources and batching come from ``AppArgs.deployments`` (or Serve config ``deployments:`` overrides
by name, e.g. ``{name: fundus_disease, num_replicas: 2}``). The same config embeds unchanged in a
KubeRay ``RayService`` (``serveConfigV2``).

In Python::

    from ray import serve
    from medray.serving.app import AppArgs, build_app
    serve.run(build_app(AppArgs(preset="fundus_screening", catalog="s3://bucket/catalog")))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from medray.config import StrictModel
from medray.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]


class DeploymentArgs(StrictModel):
    """Serve options of one model deployment.

    Attributes:
        num_replicas: fixed replica count (ignored when ``autoscaling_config`` is set).
        autoscaling_config: Serve autoscaling (``min_replicas``, ``max_replicas``,
            ``target_ongoing_requests``...).
        max_batch_size: ``@serve.batch`` size (``user_config``; changeable without a redeploy).
        batch_wait_timeout_s: how long a batch waits to fill.
        max_ongoing_requests: per replica; at least ``max_batch_size`` (default 2x it).
        ray_actor_options: replaces the card's ``resources`` (``num_cpus``, ``num_gpus``, ``memory``...).
    """

    num_replicas: int = Field(1, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    max_ongoing_requests: int | None = Field(None, ge=1)
    ray_actor_options: dict[str, Any] | None = None


class AppArgs(StrictModel):
    """Arguments of :func:`build_app` (the ``args:`` of a Serve config application).

    Attributes:
        catalog: catalogue URI (local folder or ``s3://``); default ``$MEDRAY_CATALOG`` or runs/catalog.
        preset: a preset name (in ``presets_dir``) or a path to a preset YAML.
        models: a custom selection (model refs) instead of a preset.
        subset: a second selection inside the preset.
        presets_dir: folder of the preset YAMLs.
        defaults: deployment options for every model.
        deployments: per-model deployment options (by model name), over ``defaults``.
        ingress_num_cpus / ingress_replicas: the FastAPI ingress.
        api_key_env: environment variable holding the API key (unset/empty: no key required).
        api_key: the key itself (tests; prefer the environment variable).
        max_body_mb: request body limit (413 above).
        max_image_pixels: refuse larger images (413) before decoding.
        min_image_side: refuse smaller images (422).
        display_size: uploads are shrunk to this longer side before the models see them.
        max_images: images per request.
        device: torch device of the model replicas (default: CUDA if the replica has a GPU).
    """

    catalog: str = Field(default_factory=lambda: os.environ.get("MEDRAY_CATALOG", "runs/catalog"))
    preset: str | None = None
    models: list[str] | None = None
    subset: list[str] | None = None
    presets_dir: str = "serve/presets"
    defaults: DeploymentArgs = Field(default_factory=DeploymentArgs)
    deployments: dict[str, DeploymentArgs] = Field(default_factory=dict)
    ingress_num_cpus: float = Field(0.1, ge=0)
    ingress_replicas: int = Field(1, ge=1)
    api_key_env: str = "MEDRAY_API_KEY"
    api_key: str | None = None
    max_body_mb: float = Field(32, gt=0)
    max_image_pixels: int = Field(50_000_000, ge=1)
    min_image_side: int = Field(16, ge=1)
    display_size: int = Field(1024, ge=32)
    max_images: int = Field(16, ge=1)
    device: Literal["cpu", "cuda"] | None = None

    @model_validator(mode="after")
    def _selection(self) -> AppArgs:
        if (self.preset is None) == (not self.models):
            raise ValueError("give either preset or models")
        if self.subset is not None and self.preset is None:
            raise ValueError("subset needs a preset")
        return self


def resolve_local(path: str) -> str:
    """A relative local path: as given if it exists from the working directory, else relative to the
    repository root (a Serve app is built in a Ray worker whose working directory may differ)."""
    if "://" in path or os.path.isabs(path) or os.path.exists(path):
        return path
    alt = REPO_ROOT / path
    return str(alt) if alt.exists() else path


def plan_app(args: AppArgs):
    """Pure part of the builder: ``(catalog, presets, selection request, plan, cards)``."""
    from medray.catalog import Catalog
    from medray.catalog.planner import make_plan
    from medray.catalog.presets import find_preset, load_presets
    from medray.catalog.selection import CardIndex, SelectionError

    presets_dir = resolve_local(args.presets_dir)
    presets = load_presets(presets_dir) if os.path.isdir(presets_dir) else {}
    request: dict[str, Any]
    if args.preset is not None:
        p = find_preset(resolve_local(args.preset) if args.preset.endswith((".yaml", ".yml")) else args.preset,
                        presets_dir)
        presets[p.name] = p
        request = {"preset": p.name, **({"subset": args.subset} if args.subset else {})}
    else:
        request = {"models": list(args.models or [])}
    catalog = Catalog(resolve_local(args.catalog))
    index = CardIndex.from_catalog(catalog)
    try:
        plan = make_plan(index, request, presets)
    except SelectionError as e:
        raise ConfigError(f"cannot build the app from {request} on catalogue {catalog.uri}: "
                          + "; ".join(e.reasons)) from None
    cards = [index.get(n.ref) for n in plan.nodes]
    return catalog, presets, request, plan, cards


def build_app(args: AppArgs):
    """The Serve application for a preset or a selection (typed app builder)."""
    from medray.serving.api import Ingress, IngressConfig
    from medray.serving.node import ModelNode

    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    catalog, presets, request, plan, cards = plan_app(args)
    nodes = {}
    for card in cards:
        d = args.deployments.get(card.name, args.defaults)
        actor = dict(d.ray_actor_options if d.ray_actor_options is not None else card.resources)
        actor.setdefault("num_cpus", 0.5)
        opts: dict[str, Any] = {
            "name": card.name,
            "ray_actor_options": actor,
            "user_config": {"max_batch_size": d.max_batch_size, "batch_wait_timeout_s": d.batch_wait_timeout_s},
            "max_ongoing_requests": max(d.max_ongoing_requests or 2 * d.max_batch_size, d.max_batch_size),
        }
        if d.autoscaling_config:
            opts["autoscaling_config"] = d.autoscaling_config
        else:
            opts["num_replicas"] = d.num_replicas
        card_json = card.model_dump(mode="json")
        card_json["resources"] = {**card_json.get("resources", {}), "num_cpus": actor["num_cpus"]}
        nodes[card.name] = ModelNode.options(**opts).bind(card_json, catalog.uri, args.device)
    cfg = IngressConfig(
        catalog_uri=catalog.uri, presets={k: v.model_dump(mode="json") for k, v in presets.items()},
        default_request=request, deployed=[c.model_dump(mode="json") for c in cards],
        api_key_env=args.api_key_env, api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=args.max_image_pixels, min_side=args.min_image_side, display_size=args.display_size,
        max_images=args.max_images,
    )
    return Ingress.options(name="Ingress", num_replicas=args.ingress_replicas,
                           ray_actor_options={"num_cpus": args.ingress_num_cpus}).bind(nodes, cfg.model_dump())
