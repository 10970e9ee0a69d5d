"""Serving on Ray Serve: one deployment per catalogued model, an ingress that executes a plan.

* :mod:`medray.serving.app` — ``AppArgs`` and the typed app builder ``build_app`` (``serve run
  serve/fundus_screening.yaml``; the same config embeds in a KubeRay RayService);
* :mod:`medray.serving.node` — ``ModelNode``: a predictor behind ``@serve.batch``;
* :mod:`medray.serving.executor` — runs a :class:`~medray.catalog.planner.Plan` on one image:
  independent branches awaited concurrently, gates stop what they guard (pure asyncio);
* :mod:`medray.serving.api` — the FastAPI ingress (``/models``, ``/plans``, ``/infer``, ``/evaluate``,
  ``/healthz``, OpenAPI at ``/docs``);
* :mod:`medray.serving.uploads` — upload checks (format, size, modality) -> 4xx naming the problem;
* :mod:`medray.serving.render` — overlays (masks, heatmaps) as PNGs;
* :mod:`medray.serving.evaluate` — efficacy of a served plan on a labelled manifest.

The catalogue and the planner (``medray.catalog``) know nothing about Serve; this package executes
what they produce. Importing it does not import Ray Serve (submodules do).
"""
