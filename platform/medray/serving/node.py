"""``ModelNode``: one catalogued model as a Ray Serve deployment.

Each model of a plan gets its own deployment (own replicas, resources, autoscaling), named after
the model (Serve config overrides address it by that name). The predictor is built with
:func:`medray.inference.predictor.load_predictor` from the card and its catalogue: the weights are
fetched with their sha256 checked against the card, so a tampered file refuses to load.

Requests are batched with ``@serve.batch``; ``max_batch_size`` and ``batch_wait_timeout_s`` come from
``user_config`` (``reconfigure``), so they can be changed in a Serve config without a redeploy.
A predictor whose ``predict`` accepts ``inputs=`` receives the upstream outputs it consumes
(``{"oct_layers.mask": array}`` per image); others receive the images only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from typing import Any

from ray import serve

log = logging.getLogger(__name__)


def load_model(card: dict[str, Any], catalog_uri: str | None, device: str | None = None):
    """The default loader (module level so it pickles): card mapping -> predictor."""
    from medray.catalog import Catalog, ModelCard
    from medray.inference.predictor import load_predictor

    c = ModelCard.model_validate(card)
    cat = Catalog.of(c) if c.location else Catalog(catalog_uri)
    return load_predictor(c, cat, device=device)


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.5})
class ModelNode:
    """A predictor behind ``@serve.batch``.

    Args:
        card: the model card (``ModelCard.model_dump(mode="json")``).
        catalog_uri: where the card came from, when the card has no ``location``.
        device: torch device (default: CUDA when the replica has a GPU).
        loader: ``loader(card, catalog_uri, device) -> predictor`` (injected, STYLE.md P7).
    """

    def __init__(self, card: dict[str, Any], catalog_uri: str | None = None, device: str | None = None,
                 loader=load_model):
        import torch

        cpus = float((card.get("resources") or {}).get("num_cpus") or 1)
        try:
            ctx = serve.get_replica_context()
            self.replica = ctx.replica_tag if hasattr(ctx, "replica_tag") else str(ctx.replica_id)
        except Exception:  # noqa: BLE001 - outside a replica
            self.replica = f"pid{os.getpid()}"
        torch.set_num_threads(max(1, int(round(cpus))))
        self.name = card["name"]
        self.ref = f"{card['name']}:{card.get('version', 0)}"
        self.predictor = loader(card, catalog_uri, device)
        self.accepts_inputs = "inputs" in inspect.signature(self.predictor.predict).parameters
        log.info("model node %s ready (%s)", self.ref, self.replica)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``."""
        config = config or {}
        if "max_batch_size" in config:
            self.predict_batch.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self.predict_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def _predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        images = [it["image"] for it in items]
        if self.accepts_inputs:
            return self.predictor.predict(images, inputs=[it.get("inputs") or {} for it in items])
        return self.predictor.predict(images)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        t0 = time.time()
        try:
            outs = await asyncio.to_thread(self._predict, items)
            err = None
        except Exception as e:  # noqa: BLE001 - retry one by one: one bad item must not fail the batch
            outs, err = None, e
        if outs is None:
            outs = []
            for it in items:
                try:
                    outs.append(self._predict([it])[0])
                except Exception as e:  # noqa: BLE001
                    outs.append(e)
        t1 = time.time()
        info = {"compute_start": t0, "compute_end": t1, "batch_size": len(items), "replica": self.replica}
        return [o if isinstance(o, Exception) else {"outputs": o, **info} for o in outs]

    async def __call__(self, image: Any, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        res = await self.predict_batch({"image": image, "inputs": inputs or {}})
        if isinstance(res, Exception):
            raise res
        return res

    async def predict_unbatched(self, image: Any, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """One image, no batching (benchmarks compare it with ``__call__``)."""
        t0 = time.time()
        out = await asyncio.to_thread(self._predict, [{"image": image, "inputs": inputs or {}}])
        return {"outputs": out[0], "compute_start": t0, "compute_end": time.time(), "batch_size": 1,
                "replica": self.replica}

    def ping(self) -> dict[str, Any]:
        return {"model": self.ref, "replica": self.replica}
