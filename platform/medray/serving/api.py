"""The HTTP API: a FastAPI ingress deployment that executes plans over the model deployments.

    GET  /healthz                      liveness + which models this app serves (?deep=1 pings them)
    GET  /models?modality=&task=&selected=a,b
                                       browse the catalogue; with ``selected``, the models those
                                       exclude are ``disabled`` with the reason
    POST /plans      {preset|models, subset, auto_complete, gates}
                                       a validated plan (stages, edges, gates, auto-completed
                                       models), or 422 with every reason
    POST /infer      multipart: image (one or more files), plan (JSON) | preset (name), modality
                                       per image: per-model results, gate decisions, timings, URLs of
                                       rendered overlays (GET /results/{id}/{file})
    POST /evaluate   {manifest, split, limit, preset|plan}
                                       efficacy of the served plan on a small labelled manifest
    GET  /docs, /openapi.json          OpenAPI

Safety: with an API key configured (``AppArgs.api_key_env`` names the environment variable), every
route except ``/healthz``, ``/docs`` and ``/openapi.json`` needs ``Authorization: Bearer <key>``
(401). Bodies above ``max_body_mb`` are refused with 413 before they are parsed. Bad uploads are 4xx
with a message naming the file (:mod:`medray.serving.uploads`); no request can make a 500 by its
content.
"""

# (no `from __future__ import annotations`: FastAPI must resolve the route annotations at runtime)

import asyncio
import collections
import hmac
import json
import logging
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from ray import serve

from medray.catalog import Catalog, CatalogError, ModelCard
from medray.catalog.planner import Plan, make_plan
from medray.catalog.presets import Preset
from medray.catalog.selection import CardIndex, SelectionError, SelectionRequest, availability
from medray.serving.executor import execute
from medray.serving.render import render_outputs
from medray.serving.uploads import UploadError, decode_upload, safe_name

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")
RETRYABLE = ("ActorDiedError", "RayActorError", "ActorUnavailableError", "DeploymentUnavailableError",
             "BackPressureError")


class IngressConfig(BaseModel):
    """What the app builder hands the ingress (JSON-serialisable)."""

    catalog_uri: str
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_request: dict[str, Any]
    deployed: list[dict[str, Any]]
    api_key_env: str = "MEDRAY_API_KEY"
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    max_pixels: int = 50_000_000
    min_side: int = 16
    display_size: int = 1024
    max_images: int = 16
    results_cache: int = 256
    call_retries: int = 20


class EvaluateRequest(BaseModel):
    manifest: str
    split: str = "test"
    limit: int = Field(64, ge=1, le=512)
    concurrency: int = Field(8, ge=1, le=64)
    preset: str | None = None
    plan: SelectionRequest | None = None


api = FastAPI(
    title="medray inference",
    description="Browse catalogued medical-image models, plan a combination, run it on images. "
                "Research use only; not for diagnostic use.",
    version="1",
)

_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "JPEG, PNG, TIFF, BMP or DICOM files (repeat the field for several)"},
                "plan": {"type": "string", "description": "JSON SelectionRequest: "
                         '{"preset": ..., "subset": [...]} or {"models": [...]} (+ "gates")'},
                "preset": {"type": "string", "description": "a preset name (instead of plan)"},
                "modality": {"type": "string", "description": "the images' modality, checked against the plan"},
            }}}},
    }
}


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        return f"{where}: {err['msg']}"
    return str(e)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": {"error": message, **extra}})


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Ingress:
    """Executes plans; ``nodes`` maps model names to their DeploymentHandles."""

    def __init__(self, nodes: dict[str, Any], config: dict[str, Any]):
        self.cfg = IngressConfig.model_validate(config)
        self.nodes = nodes
        self.catalog = Catalog(self.cfg.catalog_uri)
        self.presets = {k: Preset.model_validate(v) for k, v in self.cfg.presets.items()}
        self.deployed = [ModelCard.model_validate(c) for c in self.cfg.deployed]
        self.deployed_index = CardIndex(self.deployed)
        self.default_plan = make_plan(self.deployed_index, self.cfg.default_request, self.presets)
        self.api_key = self.cfg.api_key or os.environ.get(self.cfg.api_key_env) or None
        self.results: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._index: tuple[float, CardIndex] | None = None
        self._root = ""

    # ------------------------------------------------------------------ helpers

    def _guard(self, request: Request) -> JSONResponse | None:
        if self.api_key and request.url.path not in OPEN_PATHS:
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not token or not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"},
                                    content={"detail": {"error": "missing or wrong API key "
                                                        "(Authorization: Bearer <key>)"}})
        n = request.headers.get("content-length")
        if n is not None:
            try:
                size = int(n)
            except ValueError:
                return _error(400, f"bad Content-Length {safe_name(n)!r}")
            if size > self.cfg.max_body_bytes:
                return _error(413, f"request body is {size} bytes; the limit is {self.cfg.max_body_bytes}")
        return None

    async def _read_capped(self, request: Request) -> JSONResponse | None:
        """Read the body with the size cap (chunked requests have no Content-Length)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.cfg.max_body_bytes:
                return _error(413, f"request body exceeds the limit of {self.cfg.max_body_bytes} bytes")
            chunks.append(chunk)
        request._body = b"".join(chunks)  # starlette replays a cached body to form()/json()
        return None

    def _full_index(self) -> CardIndex:
        now = time.time()
        if self._index is None or now - self._index[0] > 10:
            self._index = (now, CardIndex.from_catalog(self.catalog))
        return self._index[1]

    def _plan_for(self, req: dict[str, Any] | None) -> Plan:
        if req is None:
            return self.default_plan
        try:
            return make_plan(self.deployed_index, req, self.presets)
        except SelectionError as e:
            raise UploadError(422, "plan refused: " + "; ".join(e.reasons), reasons=e.reasons,
                              served=self.deployed_index.names()) from None
        except (ValidationError, ValueError) as e:
            raise UploadError(400, f"bad plan: {_first_error(e)}") from None

    def _store(self, rid: str, name: str):
        def store(key: str, png: bytes) -> str:
            fname = f"{name}.{key}.png"
            self.results[f"{rid}/{fname}"] = png
            while len(self.results) > self.cfg.results_cache:
                self.results.popitem(last=False)
            return f"{self._root}/results/{rid}/{fname}"
        return store

    async def _call(self, name: str, image: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        handle = self.nodes[name]
        for attempt in range(self.cfg.call_retries):
            try:
                return await handle.remote(image, inputs)
            except Exception as e:  # noqa: BLE001
                if type(e).__name__ not in RETRYABLE or attempt == self.cfg.call_retries - 1:
                    raise
                log.warning("model %s unavailable (%s); retrying", name, type(e).__name__)
                await asyncio.sleep(min(0.25 * (attempt + 1), 2.0))
        raise RuntimeError("unreachable")

    async def run_image(self, plan: Plan, image: Any, rid: str, label: str) -> dict[str, Any]:
        res = await execute(plan, lambda name, inputs: self._call(name, image, inputs))
        for name, m in res["models"].items():
            if m.get("status") == "ok":
                m["outputs"] = render_outputs(m["outputs"], image, self._store(rid, f"{label}.{name}"))
        return res

    # ------------------------------------------------------------------ routes

    @api.get("/healthz", summary="liveness and the models this app serves")
    async def healthz(self, deep: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "preset": self.default_plan.preset,
                               "models": {c.name: c.ref for c in self.deployed},
                               "stages": self.default_plan.stages}
        if deep:
            pings = await asyncio.gather(*(self.nodes[n].ping.remote() for n in self.nodes),
                                         return_exceptions=True)
            out["replicas"] = {n: (p if isinstance(p, dict) else f"error: {type(p).__name__}")
                               for n, p in zip(self.nodes, pings)}
        return out

    @api.get("/models", summary="browse the catalogue (disabled state for a selection)")
    async def models(self, request: Request, modality: str | None = None, task: str | None = None,
                     selected: str | None = None):
        if (r := self._guard(request)) is not None:
            return r
        sel = [s.strip() for s in (selected or "").split(",") if s.strip()]
        try:
            states = availability(self._full_index(), sel, task=task, modality=modality)
        except SelectionError as e:
            return _error(422, "; ".join(e.reasons), reasons=e.reasons)
        except CatalogError as e:
            return _error(503, f"catalogue unavailable: {e}")
        served = {c.name: c.version for c in self.deployed}
        return {"selected": sel, "models": [{**s.model_dump(), "served": served.get(s.name) == s.version}
                                            for s in states],
                "presets": {k: {"title": p.title, "description": p.description, "models": p.models,
                                "stages": p.stages} for k, p in self.presets.items()}}

    @api.post("/plans", summary="selection -> validated plan (422 with reasons)")
    async def plans(self, request: Request):
        if (r := self._guard(request)) is not None:
            return r
        if (r := await self._read_capped(request)) is not None:
            return r
        try:
            body = json.loads(request._body or b"null")
            req = SelectionRequest.model_validate(body)
        except json.JSONDecodeError as e:
            return _error(400, f"body is not JSON: {e.msg} at position {e.pos}")
        except ValidationError as e:
            return _error(422, f"bad selection: {_first_error(e)}")
        try:
            p = make_plan(self._full_index(), req, self.presets)
        except SelectionError as e:
            return _error(422, "selection refused", reasons=e.reasons)
        except CatalogError as e:
            return _error(503, f"catalogue unavailable: {e}")
        served = {c.name: c.version for c in self.deployed}
        missing = [n.ref for n in p.nodes if served.get(n.name) != n.version]
        return {"plan": p.model_dump(), "servable": not missing, "not_served": missing}

    @api.post("/infer", summary="run a plan on uploaded images", openapi_extra=_INFER_BODY)
    async def infer(self, request: Request):
        if (r := self._guard(request)) is not None:
            return r
        if (r := await self._read_capped(request)) is not None:
            return r
        t_req = time.time()
        self._root = request.scope.get("root_path", "").rstrip("/")
        try:
            ctype = request.headers.get("content-type", "")
            if not ctype.startswith("multipart/form-data"):
                raise UploadError(415, f"send images as multipart/form-data (got {safe_name(ctype) or 'no content type'!r})")
            try:
                form = await request.form(max_files=self.cfg.max_images + 1, max_fields=16)
            except Exception as e:  # noqa: BLE001 - malformed multipart
                raise UploadError(400, f"malformed multipart body: {type(e).__name__}: {e}"[:300]) from None
            files = [f for key in ("image", "images") for f in form.getlist(key) if hasattr(f, "read")]
            strays = [k for k, v in form.multi_items() if k not in ("image", "images", "plan", "preset", "modality")]
            if strays:
                raise UploadError(400, f"unknown form fields {sorted(set(strays))}; use image, plan, preset, modality")
            if not files:
                raise UploadError(400, "no image: send the file(s) in the multipart field 'image'")
            if len(files) > self.cfg.max_images:
                raise UploadError(413, f"{len(files)} images; at most {self.cfg.max_images} per request")
            plan_raw, preset = form.get("plan"), form.get("preset")
            if plan_raw is not None and preset is not None:
                raise UploadError(400, "give either plan or preset, not both")
            req = None
            if isinstance(plan_raw, str):
                try:
                    req = json.loads(plan_raw)
                except json.JSONDecodeError as e:
                    raise UploadError(400, f"plan is not JSON: {e.msg} at position {e.pos}") from None
                if not isinstance(req, dict):
                    raise UploadError(400, "plan must be a JSON object")
            elif isinstance(preset, str):
                req = {"preset": preset}
            elif plan_raw is not None or preset is not None:
                raise UploadError(400, "plan/preset must be form text fields, not files")
            plan = self._plan_for(req)
            modality = form.get("modality")
            if isinstance(modality, str) and modality and modality != plan.modality:
                raise UploadError(422, f"images declared as {safe_name(modality)!r}, but the plan is for "
                                       f"{plan.modality} images", kind="wrong_modality")
            images, names = [], []
            for f in files:
                data = await f.read()
                name = safe_name(f.filename)
                images.append(await asyncio.to_thread(
                    decode_upload, data, name, modality=plan.modality, max_pixels=self.cfg.max_pixels,
                    min_side=self.cfg.min_side, display_size=self.cfg.display_size))
                names.append(name)
        except UploadError as e:
            log.info("refused request: %s %s", e.status, e.message)
            return JSONResponse(status_code=e.status, content={"detail": e.body()})
        rid = uuid.uuid4().hex[:16]
        t_dec = time.time()
        results = await asyncio.gather(*(self.run_image(plan, im, rid, str(i)) for i, im in enumerate(images)))
        t_end = time.time()
        return {
            "request_id": rid,
            "plan": {"preset": plan.preset, "stages": plan.stages, "added": [a.model_dump() for a in plan.added],
                     "gates": {n.name: n.gate.model_dump(exclude_none=True) for n in plan.nodes if n.gate}},
            "results": [{"image": n, "size": list(im.shape[:2]), **r} for n, im, r in zip(names, images, results)],
            "timings": {"decode_ms": round((t_dec - t_req) * 1e3, 3), "total_ms": round((t_end - t_req) * 1e3, 3)},
        }

    @api.get("/results/{rid}/{fname}", summary="a rendered overlay (PNG)")
    async def result_file(self, request: Request, rid: str, fname: str):
        if (r := self._guard(request)) is not None:
            return r
        png = self.results.get(f"{rid}/{fname}")
        if png is None:
            return _error(404, f"no result {safe_name(rid)}/{safe_name(fname)} (results are kept for the "
                               f"last {self.cfg.results_cache} overlays of this replica)")
        return Response(content=png, media_type="image/png")

    @api.post("/evaluate", summary="efficacy of the served plan on a small labelled manifest")
    async def evaluate(self, request: Request):
        if (r := self._guard(request)) is not None:
            return r
        if (r := await self._read_capped(request)) is not None:
            return r
        from medray.serving.evaluate import evaluate_rows, load_rows

        try:
            body = EvaluateRequest.model_validate(json.loads(request._body or b"null"))
        except json.JSONDecodeError as e:
            return _error(400, f"body is not JSON: {e.msg}")
        except ValidationError as e:
            return _error(422, f"bad request: {_first_error(e)}")
        try:
            req = body.plan.model_dump() if body.plan else ({"preset": body.preset} if body.preset else None)
            plan = self._plan_for(req)
            rows = await asyncio.to_thread(load_rows, body.manifest, body.split, body.limit)
        except UploadError as e:
            return JSONResponse(status_code=e.status, content={"detail": e.body()})
        except Exception as e:  # noqa: BLE001 - MedrayError: missing/invalid manifest
            return _error(422, f"{type(e).__name__}: {e}"[:500])
        preset = self.presets.get(plan.preset) if plan.preset else None

        async def one(row: dict[str, Any]) -> tuple[dict[str, Any], float]:
            from medray.data.imageio import read_file

            data = await asyncio.to_thread(read_file, row["image"])
            im = await asyncio.to_thread(decode_upload, data, row["image"], modality=plan.modality,
                                         max_pixels=self.cfg.max_pixels, min_side=self.cfg.min_side,
                                         display_size=self.cfg.display_size)
            t0 = time.time()
            res = await execute(plan, lambda name, inputs: self._call(name, im, inputs))
            return res, time.time() - t0

        report = await evaluate_rows(rows, one, plan, self.deployed, preset, body.concurrency)
        return report
