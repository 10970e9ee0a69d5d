"""The planner: a checked selection -> an inference structure in stages (a DAG).

* **Data edges**: ``A -> B`` when B's card consumes an output of A (``inputs: ["A.label"]``): B runs
  after A, sequentially, and receives A's outputs.
* **Gate edges**: a gate model G (e.g. image quality) runs before every selected model that does not
  feed G; when G's result fails its :class:`~medray.catalog.presets.GateSpec`, those models are skipped.
* **Stages** are the longest-path levels of the DAG: a model's stage is one more than the latest stage
  of what it waits for. Models in one stage are independent and run in parallel.
* **Cycles** are refused with the cycle spelled out.

Pure Python (no Ray Serve): serving executes a :class:`Plan`, it does not build one.

    >>> plan = make_plan(CardIndex.from_catalog(cat), {"preset": "fundus_screening"}, presets)
    >>> plan.stages
    [['fundus_quality'], ['fundus_disease', 'retinal_age']]
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from medray.catalog.card import ModelCard, parse_input
from medray.catalog.presets import GateSpec, Preset, check_documented_stages
from medray.catalog.selection import (
    Added,
    CardIndex,
    Selection,
    SelectionError,
    SelectionRequest,
    select,
)


class Edge(BaseModel):
    src: str
    dst: str
    kind: Literal["data", "gate"]
    port: str | None = None  # for data edges: the consumed output


class PlanNode(BaseModel):
    """One model of the plan.

    Attributes:
        name, ref, version, task, modality: from the card.
        inputs: the card's inputs (``image`` and ``<upstream>.<output>``).
        outputs: what it produces.
        after: models it waits for (data and gate edges).
        gated_by: gate models whose failure skips this model.
        gate: this model's gate condition, if it is a gate.
        stage: 0-based stage index.
        resources: Ray actor options from the card.
    """

    name: str
    ref: str
    version: int
    task: str
    modality: str
    inputs: list[str]
    outputs: list[str]
    after: list[str] = Field(default_factory=list)
    gated_by: list[str] = Field(default_factory=list)
    gate: GateSpec | None = None
    stage: int = 0
    resources: dict[str, Any] = Field(default_factory=dict)


class Plan(BaseModel):
    """A runnable inference structure (the answer of ``POST /plans``)."""

    preset: str | None = None
    modality: str
    nodes: list[PlanNode]
    stages: list[list[str]]
    edges: list[Edge]
    requested: list[str]
    added: list[Added] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def node(self, name: str) -> PlanNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def parallel(self) -> list[list[str]]:
        """Stages with more than one model (branches that run concurrently)."""
        return [s for s in self.stages if len(s) > 1]


def _ancestors(name: str, preds: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(preds[name])
    while stack:
        x = stack.pop()
        if x not in seen:
            seen.add(x)
            stack.extend(preds[x])
    return seen


def _find_cycle(names: list[str], succ: dict[str, list[str]]) -> list[str] | None:
    color = {n: 0 for n in names}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = 1
        path.append(n)
        for m in succ[n]:
            if color[m] == 1:
                return path[path.index(m):] + [m]
            if color[m] == 0 and (c := visit(m)):
                return c
        path.pop()
        color[n] = 2
        return None

    for n in names:
        if color[n] == 0 and (c := visit(n)):
            return c
    return None


def plan(selection: Selection) -> Plan:
    """Turn a checked selection into stages.

    Raises:
        SelectionError: the data dependencies form a cycle (the reason spells it out).
    """
    cards: dict[str, ModelCard] = {c.name: c for c in selection.cards}
    order = list(cards)
    edges: list[Edge] = []
    data_preds: dict[str, set[str]] = {n: set() for n in order}
    for n, c in cards.items():
        for spec in c.inputs:
            up, port = parse_input(spec)
            if up is not None and up in cards:
                edges.append(Edge(src=up, dst=n, kind="data", port=port))
                data_preds[n].add(up)
    succ = {n: [e.dst for e in edges if e.src == n] for n in order}
    cycle = _find_cycle(order, succ)
    if cycle:
        raise SelectionError([f"cycle: {' -> '.join(cycle)} (each consumes the next one's output)"])

    preds = {n: set(p) for n, p in data_preds.items()}
    gated_by: dict[str, list[str]] = {n: [] for n in order}
    for g in selection.gates:
        feeds_gate = _ancestors(g, data_preds)
        for n in order:
            if n == g or n in feeds_gate or n in selection.gates:
                continue
            gated_by[n].append(g)
            if g not in preds[n]:
                preds[n].add(g)
                edges.append(Edge(src=g, dst=n, kind="gate"))
    succ = {n: [e.dst for e in edges if e.src == n] for n in order}
    cycle = _find_cycle(order, succ)
    if cycle:  # a gate that (indirectly) consumes a gated model's output
        raise SelectionError([f"cycle through a gate: {' -> '.join(cycle)}"])

    stage: dict[str, int] = {}

    def level(n: str) -> int:
        if n not in stage:
            stage[n] = 1 + max((level(p) for p in preds[n]), default=-1)
        return stage[n]

    for n in order:
        level(n)
    n_stages = 1 + max(stage.values())
    stages = [[n for n in order if stage[n] == s] for s in range(n_stages)]
    nodes = [PlanNode(name=n, ref=c.ref, version=c.version, task=c.task, modality=c.modality, inputs=c.inputs,
                      outputs=c.outputs, after=sorted(preds[n], key=order.index), gated_by=gated_by[n],
                      gate=selection.gates.get(n), stage=stage[n], resources=c.resources)
             for n, c in cards.items()]
    return Plan(preset=selection.preset, modality=next(iter(cards.values())).modality, nodes=nodes,
                stages=stages, edges=edges, requested=selection.requested, added=selection.added,
                notes=selection.notes)


def make_plan(index: CardIndex, request: SelectionRequest | dict[str, Any],
              presets: dict[str, Preset] | None = None, check_preset: bool = True) -> Plan:
    """Selection + planning in one call.

    With a whole preset (no subset), the derived stages must equal the preset's documented ones
    (``check_preset``): a catalogue whose cards disagree with the preset is refused.

    Raises:
        SelectionError: the selection or the structure is refused (``reasons``).
    """
    sel = select(index, request, presets)
    p = plan(sel)
    req = request if isinstance(request, SelectionRequest) else SelectionRequest.model_validate(request)
    if check_preset and req.preset is not None and req.subset is None and not req.gates and not p.added:
        try:
            check_documented_stages((presets or {})[req.preset], p.stages)
        except Exception as e:  # ConfigError
            raise SelectionError([str(e)]) from None
    return p
