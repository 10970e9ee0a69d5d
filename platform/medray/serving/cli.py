"""What ``medray serve`` and ``medray evaluate-pipeline`` run (kept here so cli.py stays thin)."""

from __future__ import annotations

import os
import time
from typing import Any

from medray.errors import ConfigError
from medray.netutil import free_port, wait_healthy


def serve_config(path: str, port: int | None = None) -> int:
    """Deploy every application of a Serve config file and keep it up until Ctrl-C."""
    import ray
    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from medray.serving.app import AppArgs, build_app

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
        ServeDeploySchema.model_validate(raw)  # Serve's own schema: a bad file fails here, named
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - schema errors
        raise ConfigError(f"{path}: not a valid Serve config: {e}") from None
    http = dict(raw.get("http_options") or {})
    port = port or int(http.get("port", 8000))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), "port": port},
                logging_config={"enable_access_log": False})
    for a in raw["applications"]:
        if a.get("import_path") != "medray.serving.app:build_app":
            raise ConfigError(f"{path}: {a.get('name')}: import_path must be medray.serving.app:build_app "
                              "(use `serve run` for other apps)")
        app = build_app(AppArgs.model_validate(a.get("args") or {}))
        serve.run(app, name=a["name"], route_prefix=a.get("route_prefix", "/"))
        print(f"serving {a['name']} at http://{http.get('host', '127.0.0.1')}:{port}{a.get('route_prefix', '/')} "
              "(OpenAPI at /docs); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def evaluate_pipeline(preset: str, manifest: str, *, out: str, url: str | None = None, catalog: str | None = None,
                      split: str = "test", limit: int | None = None, concurrency: int = 8) -> dict[str, Any]:
    """Run a labelled manifest through a served preset over HTTP and write the report.

    With ``url``, the running app there is used; otherwise an app for ``preset`` is started on this
    machine's Ray (a local cluster if none is running) on a free loopback port, and removed after.
    """
    from medray.serving.evaluate import evaluate_over_http, write_report

    api_key = os.environ.get("MEDRAY_API_KEY") or None
    started = None
    if url is None:
        import ray
        from ray import serve

        from medray.data import manifest as mf
        from medray.serving.app import AppArgs, build_app, plan_app

        args = AppArgs(preset=preset, **({"catalog": catalog} if catalog else {}))
        mf.info(manifest)  # fail fast (bad manifest, preset or catalogue) before starting anything
        plan_app(args)
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"))
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        started = f"evaluate_{preset}"
        serve.run(build_app(args), name=started, route_prefix=f"/{started}")
        url = f"http://127.0.0.1:{port}/{started}"
        wait_healthy(url)
        print(f"evaluate-pipeline: serving {preset} at {url}", flush=True)
    try:
        report, lats = evaluate_over_http(url, manifest, preset=preset, split=split, limit=limit,
                                          concurrency=concurrency, api_key=api_key)
    finally:
        if started:
            from ray import serve

            serve.delete(started)
    paths = write_report(report, out, lats)
    return {"report": paths, "latency": report["latency"],
            "models": {k: {m: v[m] for m in ("n", "accuracy", "auc", "mae") if m in v} for k, v in report["models"].items()}}
