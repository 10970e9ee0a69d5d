"""Selection: the user's choice of models, checked the way seed 002 describes it.

The flow (METHODS.md §3):

* a **preset** gives its model combination; a **second selection** (``subset``) inside that
  combination narrows it to some of its models; or a **custom** list of models is given;
* choosing models makes the models they exclude **unselectable**: :func:`availability` returns every
  catalogued model with ``disabled`` and the reason (``excludes`` is symmetric: declared on either
  card, it is a conflict);
* a model whose **upstream** (a model whose output it consumes) is missing is either **auto-completed**
  (the upstream is added and reported) or **refused** with the reason;
* **conflicts** (two selected models that exclude each other, mixed modalities, an input naming an
  output the upstream does not produce) are refused; **cycles** are refused by the planner.

Everything here is pure Python over :class:`~medray.catalog.card.ModelCard` objects: a
:class:`CardIndex` is built from a list of cards (tests) or from a :class:`~medray.catalog.Catalog`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from pydantic import BaseModel, Field, model_validator

from medray.catalog.card import CatalogError, ModelCard, parse_input
from medray.catalog.presets import GateSpec, Preset, ref_name
from medray.config import StrictModel


class SelectionError(CatalogError):
    """A selection (or plan) was refused. ``reasons`` lists every problem found, one sentence each."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("selection refused: " + "; ".join(self.reasons))


_REF = re.compile(r"^([^:@]+)(?::v?(\d+)|@([^:@]+))?$")


class CardIndex:
    """Cards by name and version, resolving ``name``, ``name:3`` and ``name@alias`` like
    :meth:`Catalog.get` does, without touching storage again.

    Args:
        cards: every version that may be selected (``Catalog.list(all_versions=True)``).
    """

    def __init__(self, cards: Iterable[ModelCard]):
        self._by_name: dict[str, dict[int, ModelCard]] = {}
        for c in cards:
            self._by_name.setdefault(c.name, {})[c.version] = c

    @classmethod
    def from_catalog(cls, catalog: Any) -> CardIndex:
        """All versions of every model of a :class:`~medray.catalog.Catalog`."""
        return cls(catalog.list(all_versions=True))

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def latest(self) -> list[ModelCard]:
        """The newest version of every model, by name."""
        return [v[max(v)] for _, v in sorted(self._by_name.items())]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, ref: str) -> ModelCard:
        """Resolve a reference.

        Raises:
            SelectionError: the reference is malformed or unknown (the reason lists what exists).
        """
        m = _REF.match(str(ref).strip())
        if not m:
            raise SelectionError([f"bad model reference {ref!r}: use name, name:version or name@alias"])
        name, ver, alias = m.group(1), m.group(2), m.group(3)
        versions = self._by_name.get(name)
        if not versions:
            raise SelectionError([f"unknown model {name!r}; catalogue has: {', '.join(self.names()) or 'nothing'}"])
        if ver is not None:
            if int(ver) not in versions:
                raise SelectionError([f"{name} has no version {ver}; versions: {sorted(versions)}"])
            return versions[int(ver)]
        if alias is not None and alias != "latest":
            for c in versions.values():
                if alias in c.aliases:
                    return c
            have = sorted({a for c in versions.values() for a in c.aliases})
            raise SelectionError([f"{name} has no alias {alias!r}; aliases: {have or 'none'}"])
        return versions[max(versions)]


class SelectionRequest(StrictModel):
    """What a user asked for (the body of ``POST /plans``).

    Attributes:
        preset: a preset name: its combination and structure.
        subset: second selection inside the preset's combination (model names).
        models: a custom selection (refs) when no preset is given.
        auto_complete: add a missing upstream (reported) instead of refusing the selection.
        gates: gate conditions by model name; override the preset's.
    """

    preset: str | None = None
    subset: list[str] | None = None
    models: list[str] | None = None
    auto_complete: bool = True
    gates: dict[str, GateSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> SelectionRequest:
        if self.preset is None and not self.models:
            raise ValueError("give a preset or a non-empty list of models")
        if self.preset is not None and self.models:
            raise ValueError("give either a preset (with an optional subset) or models, not both")
        if self.subset is not None and self.preset is None:
            raise ValueError("subset is a second selection inside a preset: give the preset too")
        if self.subset is not None and not self.subset:
            raise ValueError("subset must name at least one model of the preset")
        return self


class Added(BaseModel):
    """A model the selection added to satisfy an input."""

    name: str
    ref: str
    reason: str


class ModelState(BaseModel):
    """One catalogued model as the selection interface shows it."""

    name: str
    version: int
    task: str
    modality: str
    description: str = ""
    inputs: list[str]
    outputs: list[str]
    excludes: list[str]
    aliases: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    selected: bool = False
    disabled: bool = False
    reasons: list[str] = Field(default_factory=list)


class Selection(BaseModel):
    """A checked selection: the exact cards to run and how they were chosen."""

    cards: list[ModelCard]
    preset: str | None = None
    requested: list[str]
    added: list[Added] = Field(default_factory=list)
    gates: dict[str, GateSpec] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cards]


def exclusion_reason(a: ModelCard, b: ModelCard) -> str | None:
    """Why ``a`` and ``b`` cannot be selected together (``None`` if they can)."""
    if b.name in a.excludes:
        return f"{a.name} excludes {b.name} ({a.name}.excludes lists it)"
    if a.name in b.excludes:
        return f"{b.name} excludes {a.name} ({b.name}.excludes lists it)"
    return None


def availability(index: CardIndex, selected: Iterable[str] = (), *, task: str | None = None,
                 modality: str | None = None) -> list[ModelState]:
    """Every catalogued model (newest version) with its state for the current selection.

    A model is ``disabled`` exactly when a selected model excludes it or it excludes a selected
    model; ``reasons`` says which. Filters (``task``, ``modality``) only narrow the listing.

    Raises:
        SelectionError: a selected reference is unknown.
    """
    chosen = [index.get(r) for r in selected]
    chosen_names = {c.name for c in chosen}
    out = []
    for card in index.latest():
        if task is not None and card.task != task:
            continue
        if modality is not None and card.modality != modality:
            continue
        reasons = []
        if card.name not in chosen_names:
            reasons = [r for c in chosen if (r := exclusion_reason(c, card))]
        out.append(ModelState(
            name=card.name, version=card.version, task=card.task, modality=card.modality,
            description=card.description, inputs=card.inputs, outputs=card.outputs, excludes=card.excludes,
            aliases=card.aliases, labels=card.labels, metrics=card.metrics, selected=card.name in chosen_names,
            disabled=bool(reasons), reasons=reasons,
        ))
    return out


def select(index: CardIndex, request: SelectionRequest | dict[str, Any],
           presets: dict[str, Preset] | None = None) -> Selection:
    """Check a selection and complete it.

    Args:
        index: the catalogue's cards.
        request: a :class:`SelectionRequest` (or its mapping).
        presets: the known presets by name (needed when ``request.preset`` is set).

    Returns:
        The selection with the exact cards (requested ones first, auto-completed upstreams after),
        what was added and why, and the gates that apply.

    Raises:
        SelectionError: with every reason (unknown models or presets, a subset outside the preset,
            conflicts, missing upstreams without auto-completion, missing outputs, mixed modalities).
    """
    req = request if isinstance(request, SelectionRequest) else SelectionRequest.model_validate(request)
    reasons: list[str] = []
    notes: list[str] = []
    preset: Preset | None = None
    gates: dict[str, GateSpec] = {}
    if req.preset is not None:
        preset = (presets or {}).get(req.preset)
        if preset is None:
            raise SelectionError([f"unknown preset {req.preset!r}; presets: {', '.join(sorted(presets or {})) or 'none'}"])
        refs = list(preset.models)
        if req.subset is not None:
            members = preset.model_names
            outside = [s for s in req.subset if ref_name(s) not in members]
            if outside:
                raise SelectionError([f"{s!r} is not in preset {preset.name} (models: {', '.join(members)})"
                                      for s in outside])
            keep = {ref_name(s) for s in req.subset}
            refs = [r for r in preset.models if ref_name(r) in keep]
        gates = dict(preset.gates)
    else:
        refs = list(req.models or [])

    names = [ref_name(r) for r in refs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SelectionError([f"{n} selected twice" for n in dup])

    cards: list[ModelCard] = []
    for r in refs:
        try:
            cards.append(index.get(r))
        except SelectionError as e:
            reasons.extend(e.reasons)
    if reasons:
        raise SelectionError(reasons)
    requested = [c.name for c in cards]

    # missing upstreams: add (reported) or refuse
    added: list[Added] = []
    queue = list(cards)
    while queue:
        card = queue.pop(0)
        for spec in card.inputs:
            up, port = parse_input(spec)
            if up is None or up in {c.name for c in cards}:
                continue
            if not req.auto_complete:
                reasons.append(f"{card.name} consumes {spec} but {up} is not selected: select {up} "
                               "or allow auto-completion")
                continue
            ref = (preset.ref_for(up) if preset else None) or up
            try:
                upc = index.get(ref)
            except SelectionError:
                reasons.append(f"{card.name} consumes {spec} but the catalogue has no model {up!r} to add")
                continue
            cards.append(upc)
            queue.append(upc)
            added.append(Added(name=upc.name, ref=upc.ref, reason=f"{card.name} consumes {spec}"))
    if reasons:
        raise SelectionError(reasons)

    by_name = {c.name: c for c in cards}
    # inputs must name outputs the upstream produces
    for card in cards:
        for spec in card.inputs:
            up, port = parse_input(spec)
            if up is not None and port not in by_name[up].outputs:
                reasons.append(f"{card.name} consumes {spec} but {up}:{by_name[up].version} produces only "
                               f"{by_name[up].outputs}")
    # conflicts
    for i, a in enumerate(cards):
        for b in cards[i + 1:]:
            r = exclusion_reason(a, b)
            if r:
                how = " (auto-completed)" if b.name in {x.name for x in added} or a.name in {x.name for x in added} else ""
                reasons.append(f"conflict: {r}{how}")
    modalities: dict[str, list[str]] = {}
    for c in cards:
        modalities.setdefault(c.modality, []).append(c.name)
    if len(modalities) > 1:
        desc = "; ".join(f"{m}: {', '.join(ns)}" for m, ns in sorted(modalities.items()))
        reasons.append(f"conflict: models of different modalities cannot run on one image ({desc})")
    if reasons:
        raise SelectionError(reasons)

    # gates: the preset's, overridden by the request's; a gate on a model not selected is dropped
    gates.update(req.gates)
    for g in list(gates):
        if g not in by_name:
            if g in req.gates:
                reasons.append(f"gate on {g}, which is not selected")
            else:
                notes.append(f"gate {g} dropped: {g} is not in the selection")
            del gates[g]
            continue
        if gates[g].output not in by_name[g].outputs:
            reasons.append(f"gate on {g} tests output {gates[g].output!r}, but {g} produces {by_name[g].outputs}")
    if reasons:
        raise SelectionError(reasons)
    return Selection(cards=cards, preset=preset.name if preset else None, requested=requested, added=added,
                     gates=gates, notes=notes)
