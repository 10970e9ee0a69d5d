"""ModelCard / FileRef validation: the I/O contract later stages (presets, selection, planner) rely on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medray.catalog import Catalog, CatalogError, FileRef, ModelCard, parse_input
from medray.errors import MedrayError

SHA = "ab" * 32


def card(**over) -> ModelCard:
    d = {"name": "fundus_dr", "task": "classify", "modality": "fundus", "outputs": ["label", "probs"]}
    d.update(over)
    return ModelCard.model_validate(d)


def test_defaults_of_an_unpublished_card():
    c = card()
    assert c.version == 0 and c.inputs == ["image"] and c.intended_use == "research use only"
    assert c.upstream == [] and c.aliases == [] and c.files == {}
    assert c.ref == "fundus_dr:0" and c.location == ""
    with pytest.raises(CatalogError, match="not read from a catalogue"):
        Catalog.of(c)
    with pytest.raises(CatalogError, match="no weights file"):
        c.weights
    assert issubclass(CatalogError, MedrayError)


def test_upstream_models_from_inputs():
    c = card(name="fundus_dr", inputs=["image", "fundus_quality.gradable", "vessel.seg.mask", "vessel.seg.probs"])
    assert c.upstream == ["fundus_quality", "vessel.seg"]
    assert parse_input("image") == (None, "image")
    assert parse_input("vessel.seg.mask") == ("vessel.seg", "mask")
    with pytest.raises(ValueError, match="must be one of"):
        parse_input("imge")


@pytest.mark.parametrize("over, match", [
    ({"name": "Fundus"}, "name"),
    ({"name": "-x"}, "name"),
    ({"colour": "red"}, "Extra inputs are not permitted"),
    ({"outputs": []}, "at least 1 item"),
    ({"outputs": ["label", "label"]}, "duplicate"),
    ({"outputs": ["a.b"]}, "not valid output names"),
    ({"inputs": ["imge"]}, "must be one of"),
    ({"inputs": ["Other.out"]}, "must be one of"),
    ({"inputs": ["fundus_dr.label"]}, "cannot consume its own outputs"),
    ({"excludes": ["fundus_dr"]}, "cannot exclude itself"),
    ({"inputs": ["image", "q.gradable"], "excludes": ["q"]}, "which excludes also lists"),
    ({"labels": ["a", "b"], "architecture": {"num_classes": 3}}, "num_classes is 3"),
    ({"resources": {"num_gpu": 1}}, "unknown keys"),
    ({"resources": {"num_cpus": -1}}, ">= 0"),
    ({"resources": {"memory": "2G"}}, ">= 0"),
    ({"created_at": "yesterday"}, "not an ISO-8601"),
    ({"created_at": "2026-01-01T12:00:00+02:00"}, "must be in UTC"),
    ({"checksum": "xyz"}, "sha256"),
    ({"version": 2}, "a published card"),
    ({"schema_version": 2}, "schema_version"),
    ({"files": {"weights": {"path": "w.safetensors", "sha256": SHA, "size": 1}}, "checksum": "cd" * 32},
     "checksum differs"),
])
def test_invalid_cards_are_refused(over, match):
    with pytest.raises(ValidationError, match=match):
        card(**over)


def test_published_card_and_resources():
    c = card(version=3, checksum=SHA, created_at="2026-01-01T12:00:00Z",
             files={"weights": {"path": "weights.safetensors", "sha256": SHA, "size": 10}},
             resources={"num_cpus": 2, "num_gpus": 0.5, "memory": 2 << 30, "resources": {"fundus": 1}},
             labels=["a", "b", "c"], architecture={"name": "test_tiny_cnn", "num_classes": 3})
    assert c.weights.size == 10 and c.ref == "fundus_dr:3"
    assert c.resources["num_gpus"] == 0.5


@pytest.mark.parametrize("path", ["/abs.safetensors", "../up.safetensors", "a/../b", "", "a\\b"])
def test_file_ref_paths_stay_inside_the_version_folder(path):
    with pytest.raises(ValidationError, match="relative path"):
        FileRef(path=path, sha256=SHA, size=1)
    assert FileRef(path="sub/w.safetensors", sha256=SHA, size=1).path == "sub/w.safetensors"
