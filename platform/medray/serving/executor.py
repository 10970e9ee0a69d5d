"""Execute a plan on one image: every model starts as soon as what it waits for is done, so
independent branches run concurrently; a failed gate skips the models it guards.

Pure asyncio: ``call(name, inputs)`` is injected (the ingress passes a function that calls the
model's DeploymentHandle; tests of this module could pass any coroutine), which keeps Serve out of
the plan logic (STYLE.md P7).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from medray.catalog.card import parse_input
from medray.catalog.planner import Plan

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""``call(model name, upstream inputs {"<model>.<output>": value}) -> {"outputs": {...}, ...}``."""


async def execute(plan: Plan, call: Call) -> dict[str, Any]:
    """Run ``plan`` once.

    Returns:
        ``{"status": "complete" | "stopped" | "failed", "stopped_by": [gates], "models": {name: {
        "status": "ok" | "skipped" | "error", "outputs": {...}, "reason": str, "gate": {...}}},
        "timings": {name: {"start": t, "end": t, "ms": float, ...replica timings}}}`` with wall-clock
        times (``time.time()``) so the windows of parallel branches can be compared.
    """
    models: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, Any]] = {}
    tasks: dict[str, asyncio.Task] = {}

    async def run(name: str) -> str:
        node = plan.node(name)
        if node.after:
            await asyncio.gather(*(tasks[p] for p in node.after))
        failed_gates = [g for g in node.gated_by if models.get(g, {}).get("gate", {}).get("passed") is False]
        if failed_gates:
            models[name] = {"status": "skipped", "reason": f"stopped by gate {', '.join(failed_gates)}"}
            return "skipped"
        bad = [p for p in node.after if models[p]["status"] != "ok"]
        if bad:
            models[name] = {"status": "skipped", "reason": f"upstream {', '.join(bad)} did not run"}
            return "skipped"
        inputs: dict[str, Any] = {}
        for spec in node.inputs:
            up, port = parse_input(spec)
            if up is not None:
                inputs[spec] = models[up]["outputs"].get(port)
        t0 = time.time()
        try:
            res = await call(name, inputs)
        except Exception as e:  # noqa: BLE001 - a failing model is reported, the plan goes on
            t1 = time.time()
            timings[name] = {"start": t0, "end": t1, "ms": round((t1 - t0) * 1e3, 3)}
            models[name] = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:500]}
            return "error"
        t1 = time.time()
        timings[name] = {"start": t0, "end": t1, "ms": round((t1 - t0) * 1e3, 3),
                         **{k: v for k, v in res.items() if k != "outputs"}}
        entry: dict[str, Any] = {"status": "ok", "outputs": res["outputs"]}
        if node.gate is not None:
            passed, why = node.gate.check(res["outputs"])
            entry["gate"] = {"passed": passed, "reason": why, **node.gate.model_dump(exclude_none=True)}
        models[name] = entry
        return "ok"

    for stage in plan.stages:
        for name in stage:
            tasks[name] = asyncio.ensure_future(run(name))
    await asyncio.gather(*tasks.values())
    stopped_by = [n for n, m in models.items() if m.get("gate", {}).get("passed") is False]
    status = "failed" if any(m["status"] == "error" for m in models.values()) else (
        "stopped" if stopped_by else "complete")
    ordered = {n: models[n] for s in plan.stages for n in s}
    return {"status": status, "stopped_by": stopped_by, "models": ordered, "timings": timings}


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether two timing windows (``start``/``end``) intersect."""
    return max(a["start"], b["start"]) < min(a["end"], b["end"])
