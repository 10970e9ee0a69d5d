"""Presets: one-click model combinations with their documented inference structure.

A preset is a YAML file in ``serve/presets/`` (METHODS.md §3, seed 002 claim 2: "a preset option ->
the preset model combination -> its preset inference structure")::

    # Fundus screening: the quality gate first, then disease and retinal age in parallel.
    name: fundus_screening
    title: Fundus screening
    modality: fundus
    models: [fundus_quality, fundus_disease, retinal_age]     # catalogue refs: name, name:3, name@alias
    gates:
      fundus_quality: {output: label, allow: [gradable]}     # stops the later stages otherwise
    stages:                                                  # documented; the planner must derive it
      - [fundus_quality]
      - [fundus_disease, retinal_age]
    evaluation:                                              # manifest column per model (efficacy)
      fundus_disease: {column: label}
      retinal_age: {column: age, output: age}

``stages`` is documentation that is checked: :func:`medray.catalog.planner.plan` derives the stages
from the cards' inputs and the gates, and :func:`check_documented_stages` refuses a preset whose
documented stages differ from the derived ones. Pure Python: no Ray, no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medray.config import StrictModel, load_spec
from medray.errors import ConfigError

DEFAULT_PRESETS_DIR = "serve/presets"
"""Where presets live (relative to the repository / working directory)."""

GateValue = str | int | float | bool


class GateSpec(StrictModel):
    """When a gate model lets the rest of the plan run.

    The gate passes when its ``output`` value is in ``allow`` (if given) and within
    ``[min, max]`` (if given). Otherwise every model that does not feed the gate is skipped.

    Attributes:
        output: the gate model's output to test (``label``, ``score``...).
        allow: accepted values (e.g. ``[gradable]``).
        min: lowest accepted numeric value (inclusive).
        max: highest accepted numeric value (inclusive).
    """

    output: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    allow: list[GateValue] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_condition(self) -> GateSpec:
        if self.allow is None and self.min is None and self.max is None:
            raise ValueError("a gate needs at least one of allow, min, max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    def check(self, outputs: dict[str, Any]) -> tuple[bool, str]:
        """``(passed, reason)`` for one result of the gate model."""
        if self.output not in outputs:
            return False, f"gate output {self.output!r} missing from the result (has {sorted(outputs)})"
        v = outputs[self.output]
        if self.allow is not None and v not in self.allow:
            return False, f"{self.output}={v!r} not in {self.allow}"
        if self.min is not None or self.max is not None:
            try:
                x = float(v)
            except (TypeError, ValueError):
                return False, f"{self.output}={v!r} is not a number"
            if self.min is not None and x < self.min:
                return False, f"{self.output}={x:.4g} < min {self.min}"
            if self.max is not None and x > self.max:
                return False, f"{self.output}={x:.4g} > max {self.max}"
        return True, f"{self.output}={v!r} accepted"


class EvalSpec(StrictModel):
    """How a model of a preset is scored against a labelled manifest.

    Attributes:
        column: manifest column holding the ground truth (``label``, ``age``, ``stage``...).
        output: the model output compared with it (``label`` for classifiers).
        kind: ``classification`` (labels: class index or name) or ``regression`` (numbers).
    """

    column: str
    output: str = "label"
    kind: Literal["classification", "regression"] = "classification"


class Preset(StrictModel):
    """A one-click combination (see the module docstring)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    title: str = ""
    description: str = ""
    modality: str = ""
    models: list[str] = Field(min_length=1)
    gates: dict[str, GateSpec] = Field(default_factory=dict)
    stages: list[list[str]] | None = None
    evaluation: dict[str, EvalSpec] = Field(default_factory=dict)
    source: str = ""

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        names = [ref_name(r) for r in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models listed twice: {dup}")
        return v

    @model_validator(mode="after")
    def _refer_to_members(self) -> Preset:
        members = set(self.model_names)
        for key, what in ((list(self.gates), "gates"), (list(self.evaluation), "evaluation")):
            bad = sorted(set(key) - members)
            if bad:
                raise ValueError(f"{what} name {bad}, which are not in models {sorted(members)}")
        if self.stages is not None:
            flat = [m for s in self.stages for m in s]
            if sorted(flat) != sorted(members):
                raise ValueError(f"stages {self.stages} must list every model of models exactly once")
        return self

    @property
    def model_names(self) -> list[str]:
        """Model names (refs without ``:version`` / ``@alias``), in ``models`` order."""
        return [ref_name(r) for r in self.models]

    def ref_for(self, name: str) -> str | None:
        """The ref the preset uses for model ``name`` (``None`` if not a member)."""
        for r in self.models:
            if ref_name(r) == name:
                return r
        return None


def ref_name(ref: str) -> str:
    """``"fundus_dr:3"`` / ``"fundus_dr@production"`` / ``"fundus_dr"`` -> ``"fundus_dr"``."""
    return str(ref).split("@", 1)[0].split(":", 1)[0].strip()


def load_preset(path: str | os.PathLike) -> Preset:
    """Load and validate one preset YAML (errors name the file and the field)."""
    p = load_spec(Preset, path)
    stem = Path(str(path)).name.rsplit(".", 1)[0]
    if stem != p.name:
        raise ConfigError(f"{path}: name: {p.name!r} must equal the file name ({stem!r})")
    return p.model_copy(update={"source": str(path)})


def load_presets(folder: str | os.PathLike = DEFAULT_PRESETS_DIR) -> dict[str, Preset]:
    """Every ``*.yaml`` preset of ``folder``, by name.

    Raises:
        ConfigError: the folder does not exist, or a preset is invalid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: presets folder not found")
    out: dict[str, Preset] = {}
    for f in sorted(folder.glob("*.yaml")):
        p = load_preset(f)
        out[p.name] = p
    return out


def find_preset(name_or_path: str, folder: str | os.PathLike = DEFAULT_PRESETS_DIR) -> Preset:
    """A preset by name (in ``folder``) or by path to its YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_preset(name_or_path)
    presets = load_presets(folder)
    if name_or_path not in presets:
        raise ConfigError(f"no preset {name_or_path!r} in {folder}; presets: {', '.join(presets) or 'none'}")
    return presets[name_or_path]


def check_documented_stages(preset: Preset, derived: list[list[str]]) -> None:
    """Refuse a preset whose documented ``stages`` differ from the ``derived`` ones.

    Raises:
        ConfigError: naming the preset file and both structures.
    """
    if preset.stages is None:
        return
    if [sorted(s) for s in preset.stages] != [sorted(s) for s in derived]:
        raise ConfigError(f"{preset.source or preset.name}: stages: documented {preset.stages} but the "
                          f"catalogue cards give {derived}")
