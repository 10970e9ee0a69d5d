"""Selection exactly as seed 002 describes it: preset, second selection, mutual exclusion shown as
disabled with reasons, missing upstream auto-completed (reported) or refused, conflicts refused.
Pure Python over real ModelCard objects (no Ray)."""

from __future__ import annotations

import pytest

from medray.catalog import ModelCard
from medray.catalog.presets import Preset
from medray.catalog.selection import CardIndex, SelectionError, SelectionRequest, availability, select


def card(name, inputs=("image",), outputs=("label", "score"), excludes=(), modality="fundus", task="classify",
         version=0, aliases=()):
    published = {"checksum": "0" * 64, "created_at": "2026-01-01T00:00:00Z",
                 "files": {"weights": {"path": "weights.safetensors", "sha256": "0" * 64, "size": 1}}} if version else {}
    return ModelCard(name=name, task=task, modality=modality, inputs=list(inputs), outputs=list(outputs),
                     excludes=list(excludes), version=version, aliases=list(aliases), **published)


@pytest.fixture
def index():
    return CardIndex([
        card("fundus_quality", task="quality"),
        card("fundus_disease", inputs=["image", "fundus_quality.label"], excludes=["fundus_disease_lite"]),
        card("fundus_disease_lite"),
        card("retinal_age", task="retinal_age", outputs=["age", "gap"]),
        card("age_report", inputs=["retinal_age.age", "fundus_disease.score"], outputs=["text"]),
        card("oct_layers", modality="oct", task="oct_seg", outputs=["mask"]),
        card("oct_thickness", modality="oct", task="oct_thickness", inputs=["oct_layers.mask"],
             outputs=["thickness"]),
    ])


@pytest.fixture
def presets():
    return {"fundus_screening": Preset(
        name="fundus_screening", modality="fundus",
        models=["fundus_quality", "fundus_disease", "retinal_age"],
        gates={"fundus_quality": {"output": "label", "allow": ["gradable"]}},
        stages=[["fundus_quality"], ["fundus_disease", "retinal_age"]])}


def test_preset_gives_its_combination_and_gates(index, presets):
    sel = select(index, {"preset": "fundus_screening"}, presets)
    assert sel.names == ["fundus_quality", "fundus_disease", "retinal_age"]
    assert sel.preset == "fundus_screening" and sel.added == []
    assert set(sel.gates) == {"fundus_quality"}


def test_second_selection_inside_the_combination(index, presets):
    sel = select(index, {"preset": "fundus_screening", "subset": ["retinal_age"]}, presets)
    assert sel.names == ["retinal_age"]
    # the gate's model is not in the subset: the gate is dropped and that is reported
    assert sel.gates == {} and any("fundus_quality" in n for n in sel.notes)
    with pytest.raises(SelectionError) as e:
        select(index, {"preset": "fundus_screening", "subset": ["oct_layers"]}, presets)
    assert "not in preset fundus_screening" in e.value.reasons[0]


def test_choosing_a_model_disables_exactly_the_excluded_ones(index):
    states = {s.name: s for s in availability(index, ["fundus_disease"])}
    disabled = {n for n, s in states.items() if s.disabled}
    assert disabled == {"fundus_disease_lite"}
    assert states["fundus_disease_lite"].reasons == [
        "fundus_disease excludes fundus_disease_lite (fundus_disease.excludes lists it)"]
    assert states["fundus_disease"].selected and not states["fundus_disease"].disabled
    # symmetric: choosing the lite model disables the full one (declared on the other card)
    states = {s.name: s for s in availability(index, ["fundus_disease_lite"])}
    assert {n for n, s in states.items() if s.disabled} == {"fundus_disease"}
    assert "fundus_disease.excludes" in states["fundus_disease"].reasons[0]
    # filters only narrow the listing
    assert [s.name for s in availability(index, [], modality="oct")] == ["oct_layers", "oct_thickness"]
    assert not any(s.disabled for s in availability(index, []))


def test_missing_upstream_is_auto_completed_and_reported(index):
    sel = select(index, {"models": ["age_report"]})
    assert sel.requested == ["age_report"]
    assert set(sel.names) == {"age_report", "retinal_age", "fundus_disease", "fundus_quality"}
    added = {a.name: a.reason for a in sel.added}
    assert added == {"retinal_age": "age_report consumes retinal_age.age",
                     "fundus_disease": "age_report consumes fundus_disease.score",
                     "fundus_quality": "fundus_disease consumes fundus_quality.label"}


def test_missing_upstream_is_refused_without_auto_completion(index):
    with pytest.raises(SelectionError) as e:
        select(index, {"models": ["oct_thickness"], "auto_complete": False})
    assert e.value.reasons == ["oct_thickness consumes oct_layers.mask but oct_layers is not selected: "
                               "select oct_layers or allow auto-completion"]
    # and an upstream the catalogue does not have cannot be added
    idx = CardIndex([card("oct_thickness", modality="oct", inputs=["oct_layers.mask"])])
    with pytest.raises(SelectionError, match="no model 'oct_layers' to add"):
        select(idx, {"models": ["oct_thickness"]})


def test_conflicts_are_refused_with_reasons(index):
    with pytest.raises(SelectionError) as e:
        select(index, {"models": ["fundus_disease", "fundus_disease_lite"]})
    assert e.value.reasons == ["conflict: fundus_disease excludes fundus_disease_lite "
                               "(fundus_disease.excludes lists it)"]
    with pytest.raises(SelectionError, match="different modalities"):
        select(index, {"models": ["retinal_age", "oct_layers"]})
    # an input naming an output the upstream does not produce
    idx = CardIndex([card("a", outputs=["x"]), card("b", inputs=["a.y"])])
    with pytest.raises(SelectionError, match="produces only"):
        select(idx, {"models": ["a", "b"]})


def test_unknown_refs_versions_aliases(index):
    idx = CardIndex([card("m", version=1), card("m", version=2, aliases=["production"])])
    assert idx.get("m").version == 2 and idx.get("m:1").version == 1 and idx.get("m@production").version == 2
    with pytest.raises(SelectionError, match="unknown model 'nope'"):
        select(index, {"models": ["nope"]})
    with pytest.raises(SelectionError, match="has no version 7"):
        idx.get("m:7")
    with pytest.raises(SelectionError, match="unknown preset"):
        select(index, {"preset": "nope"}, {})
    with pytest.raises(ValueError):
        SelectionRequest.model_validate({"preset": "x", "models": ["a"]})
    with pytest.raises(SelectionError, match="selected twice"):
        select(index, {"models": ["retinal_age", "retinal_age:0"]})


def test_gate_on_unknown_output_is_refused(index):
    with pytest.raises(SelectionError, match="gate on fundus_quality tests output 'grade'"):
        select(index, {"models": ["fundus_quality"], "gates": {"fundus_quality": {"output": "grade", "min": 1}}})
