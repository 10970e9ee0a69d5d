"""The planner: stages (sequential where one consumes another's output, parallel where independent),
gates before the models they guard, cycles refused; the shipped presets expand to their documented
stages. Pure Python, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from medray.catalog import ModelCard
from medray.catalog.planner import make_plan, plan
from medray.catalog.presets import GateSpec, load_presets
from medray.catalog.selection import CardIndex, SelectionError, select
from medray.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def card(name, inputs=("image",), outputs=("label", "score"), modality="fundus", task="classify", **kw):
    return ModelCard(name=name, task=task, modality=modality, inputs=list(inputs), outputs=list(outputs), **kw)


# cards shaped like what the method issues publish, for every shipped preset
CARDS = [
    card("fundus_quality", task="quality"),
    card("fundus_disease"),
    card("retinal_age", task="retinal_age", outputs=["retinal_age", "age_gap"]),
    card("oct_layers", modality="oct", task="oct_seg", outputs=["mask"]),
    card("oct_thickness", modality="oct", task="oct_thickness", inputs=["oct_layers.mask"], outputs=["thickness"]),
    card("skin_localiser", modality="skin", task="skin_heatmap", outputs=["heatmap", "overlay", "peaks"]),
    card("skin", modality="skin", task="skin_classify"),
    card("rop_mt", modality="fundus", task="rop_stage", outputs=["stage", "probs"]),
]


@pytest.mark.parametrize("name", ["fundus_screening", "oct_analysis", "skin_triage", "rop_staging"])
def test_shipped_presets_expand_to_their_documented_stages(name):
    presets = load_presets(REPO / "serve" / "presets")
    p = make_plan(CardIndex(CARDS), {"preset": name}, presets)
    assert [sorted(s) for s in p.stages] == [sorted(s) for s in presets[name].stages]


def test_fundus_screening_structure():
    presets = load_presets(REPO / "serve" / "presets")
    p = make_plan(CardIndex(CARDS), {"preset": "fundus_screening"}, presets)
    assert p.stages == [["fundus_quality"], ["fundus_disease", "retinal_age"]]
    assert p.parallel == [["fundus_disease", "retinal_age"]]
    assert {(e.src, e.dst, e.kind) for e in p.edges} == {("fundus_quality", "fundus_disease", "gate"),
                                                         ("fundus_quality", "retinal_age", "gate")}
    assert p.node("retinal_age").gated_by == ["fundus_quality"]
    assert p.node("fundus_quality").gate == GateSpec(output="label", allow=["gradable"])


def test_sequential_vs_parallel():
    idx = CardIndex([card("a"), card("b", inputs=["a.label"]), card("c", inputs=["image"]),
                     card("d", inputs=["b.score", "c.score"])])
    p = plan(select(idx, {"models": ["a", "b", "c", "d"]}))
    assert p.stages == [["a", "c"], ["b"], ["d"]]
    assert p.node("d").after == ["b", "c"] and p.node("b").after == ["a"]
    assert {(e.src, e.dst, e.port) for e in p.edges} == {("a", "b", "label"), ("b", "d", "score"),
                                                          ("c", "d", "score")}


def test_gate_runs_before_what_it_guards_but_after_what_feeds_it():
    idx = CardIndex([card("pre"), card("q", inputs=["pre.label"], task="quality"), card("x"), card("y")])
    p = plan(select(idx, {"models": ["pre", "q", "x", "y"],
                          "gates": {"q": {"output": "score", "min": 0.5}}}))
    assert p.stages == [["pre"], ["q"], ["x", "y"]]
    assert p.node("pre").gated_by == [] and p.node("x").gated_by == ["q"]


def test_cycle_is_refused_with_the_cycle_spelled_out():
    idx = CardIndex([card("a", inputs=["c.label"]), card("b", inputs=["a.label"]), card("c", inputs=["b.label"])])
    with pytest.raises(SelectionError) as e:
        plan(select(idx, {"models": ["a", "b", "c"]}))
    assert len(e.value.reasons) == 1 and e.value.reasons[0].startswith("cycle: ")
    assert e.value.reasons[0].count("->") == 3
    # a gate fed by a model it would guard is a cycle too
    idx = CardIndex([card("g", inputs=["x.label"]), card("x"), card("y")])
    p = plan(select(idx, {"models": ["g", "x", "y"], "gates": {"g": {"output": "label", "allow": ["ok"]}}}))
    assert p.stages == [["x"], ["g"], ["y"]]  # x feeds the gate, so it is not gated


def test_conflict_is_refused():
    idx = CardIndex([card("a", excludes=["b"]), card("b")])
    with pytest.raises(SelectionError, match="conflict: a excludes b"):
        make_plan(idx, {"models": ["a", "b"]})


def test_preset_whose_cards_disagree_with_its_documented_stages_is_refused():
    presets = load_presets(REPO / "serve" / "presets")
    cards = [c for c in CARDS if c.name != "oct_thickness"] + [card("oct_thickness", modality="oct",
                                                                     outputs=["thickness"])]
    with pytest.raises(SelectionError, match="documented"):
        make_plan(CardIndex(cards), {"preset": "oct_analysis"}, presets)


def test_gate_spec_check():
    g = GateSpec(output="label", allow=["gradable"])
    assert g.check({"label": "gradable"})[0] and not g.check({"label": "ungradable"})[0]
    assert not g.check({})[0]
    g = GateSpec(output="score", min=0.3, max=0.9)
    assert g.check({"score": 0.5})[0] and not g.check({"score": 0.1})[0] and not g.check({"score": "x"})[0]
    with pytest.raises(ValueError):
        GateSpec(output="score")


def test_bad_preset_file_names_the_file(tmp_path):
    (tmp_path / "p.yaml").write_text("name: p\nmodels: [a]\ngates: {b: {output: label, allow: [x]}}\n")
    with pytest.raises(ConfigError, match="p.yaml"):
        load_presets(tmp_path)
