"""medray.config: strict specs, YAML loading, dotted overrides and the ``method``-keyed job union.

The job classes here are test-only: each test gets an isolated registry (no method module is
imported), so these tests neither depend on nor disturb the real training methods."""

from __future__ import annotations

import sys
import textwrap
from typing import Literal

import pytest
from pydantic import Field, ValidationError

from medray import config, storage
from medray.config import (
    ConfigError,
    JobBase,
    OptimSpec,
    RunSpec,
    ScalingSpec,
    StrictModel,
    apply_overrides,
    job_adapter,
    load_job,
    load_spec,
    load_yaml,
    parse_job,
    register_job,
    validate,
)


class DataSpec(StrictModel):
    manifest: str = "m.parquet"
    classes: list[str] = Field(default_factory=list)
    image_size: int = Field(224, ge=16)


class ItemSpec(StrictModel):
    name: str
    weight: float = 1.0


@pytest.fixture
def registry(monkeypatch):
    """An empty job registry with no method modules to import."""
    monkeypatch.setattr(config, "_JOBS", {})
    monkeypatch.setattr(config, "METHOD_MODULES", {})
    return config._JOBS


@pytest.fixture
def alpha(registry):
    @register_job
    class AlphaJob(JobBase):
        method: Literal["alpha"]
        data: DataSpec = Field(default_factory=DataSpec)
        items: list[ItemSpec] = Field(default_factory=list)
        threshold: float = 0.5

    return AlphaJob


@pytest.fixture
def beta(alpha):
    @register_job
    class BetaJob(JobBase):
        method: Literal["beta"]
        depth: int = Field(3, ge=1)
        alpha_free: bool = True

    return BetaJob


def _write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


# --------------------------------------------------------------------------------------------
# Unknown keys: file + dotted field + "did you mean"


def test_misspelt_key_names_file_field_and_suggestion(tmp_path, alpha):
    path = _write(tmp_path, "job.yaml", """\
        method: alpha
        optim:
          lrr: 0.01
          epochs: 2
        """)
    with pytest.raises(ConfigError) as ei:
        load_job(path)
    assert str(ei.value) == f"{path}: optim.lrr: unknown field; did you mean 'lr'?"


def test_misspelt_key_with_several_methods(tmp_path, beta):
    path = _write(tmp_path, "job.yaml", """\
        method: alpha
        data:
          clases: [a, b]
        scaling:
          num_worker: 2
        """)
    with pytest.raises(ConfigError) as ei:
        load_job(path)
    lines = str(ei.value).splitlines()
    assert f"{path}: data.clases: unknown field; did you mean 'classes'?" in lines
    assert f"{path}: scaling.num_worker: unknown field; did you mean 'num_workers'?" in lines
    assert len(lines) == 2


def test_misspelt_key_inside_a_list_of_sections(alpha):
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "alpha", "items": [{"name": "a"}, {"name": "b", "wieght": 2}]}, "j.yaml")
    assert str(ei.value) == "j.yaml: items[1].wieght: unknown field; did you mean 'weight'?"


def test_unknown_key_without_a_close_match_lists_allowed_fields(alpha):
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "alpha", "run": {"zzz": 1}}, "j.yaml")
    msg = str(ei.value)
    assert msg.startswith("j.yaml: run.zzz: unknown field (allowed: ")
    assert "storage_path" in msg and "did you mean" not in msg


def test_field_of_another_method_is_unknown(beta):
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "alpha", "depth": 4}, "j.yaml")
    assert str(ei.value).startswith("j.yaml: depth: unknown field")
    assert "threshold" in str(ei.value) or "did you mean" in str(ei.value)  # alpha's fields, not beta's
    job = parse_job({"method": "beta", "depth": 4})
    assert job.depth == 4


# --------------------------------------------------------------------------------------------
# YAML syntax


@pytest.mark.parametrize("text, line, col, words", [
    ("method: alpha\noptim:\n  lr: 0.1\n   epochs: 2\n", 4, 10, "mapping values are not allowed"),
    ("method: alpha\ndata:\n  classes: [a, b\nrun: {}\n", 4, 4, "expected ',' or ']'"),
    ("method: alpha\n\toptim: {}\n", 2, 1, "'\\t'"),
    ("method: alpha\nmodel: 'unclosed\n", 3, 1, "found unexpected end of stream"),
])
def test_invalid_yaml_names_file_line_col(tmp_path, text, line, col, words):
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as ei:
        load_yaml(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:{line}:{col}: invalid YAML: "), msg
    assert words in msg


def test_duplicate_keys_are_errors(tmp_path):
    path = _write(tmp_path, "dup.yaml", """\
        method: alpha
        optim:
          lr: 0.1
          epochs: 3
          lr: 0.2
        """)
    with pytest.raises(ConfigError) as ei:
        load_yaml(path)
    assert str(ei.value) == f"{path}:5:3: invalid YAML: duplicate key 'lr' (first at line 3)"


def test_yaml_anchors_and_merge_keys_may_be_overridden(tmp_path):
    path = _write(tmp_path, "anchors.yaml", """\
        defaults: &opt
          lr: 0.1
          epochs: 2
        method: alpha
        optim:
          <<: *opt
          lr: 0.01
        """)
    assert load_yaml(path)["optim"] == {"lr": 0.01, "epochs": 2}


def test_yaml_top_level_and_files(tmp_path):
    assert load_yaml(_write(tmp_path, "empty.yaml", "")) == {}
    assert load_yaml(_write(tmp_path, "comments.yaml", "# nothing\n")) == {}
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_yaml(_write(tmp_path, "list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_yaml(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="is a folder"):
        load_yaml(str(tmp_path))
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8"):
        load_yaml(str(tmp_path / "latin1.yaml"))


def test_yaml_scientific_notation_is_a_float(tmp_path):
    data = load_yaml(_write(tmp_path, "f.yaml", "lr: 3e-4\nbig: 1E5\nplain: 1.5\nn: 10\nv: 1.2.3\nmerge: {<<: {a: 1}, b: 2}\n"))
    assert data == {"lr": 3e-4, "big": 1e5, "plain": 1.5, "n": 10, "v": "1.2.3", "merge": {"a": 1, "b": 2}}
    assert isinstance(data["lr"], float) and isinstance(data["n"], int)


def test_load_from_a_storage_uri(alpha):
    uri = "memory://medray-test-config/job.yaml"
    storage.write_text(uri, "method: alpha\noptim: {lr: 2e-3}\n")
    try:
        job = load_job(uri)
        assert job.optim.lr == pytest.approx(2e-3)
    finally:
        storage.remove(uri)


# --------------------------------------------------------------------------------------------
# Wrong types name the field


def test_wrong_types_name_each_field(tmp_path, alpha):
    path = _write(tmp_path, "job.yaml", """\
        method: alpha
        optim:
          lr: fast
          epochs: 0
          name: rmsprop
        scaling:
          use_gpu: maybe
        data:
          classes: notalist
        threshold: [1, 2]
        """)
    with pytest.raises(ConfigError) as ei:
        load_job(path)
    lines = str(ei.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    by_field = {line.split(": ", 2)[1]: line.split(": ", 2)[2] for line in lines}
    assert "valid number" in by_field["optim.lr"] and "(got 'fast')" in by_field["optim.lr"]
    assert "greater than or equal to 1" in by_field["optim.epochs"] and "(got 0)" in by_field["optim.epochs"]
    assert "'adamw', 'sgd' or 'adam'" in by_field["optim.name"]
    assert any(k.startswith("scaling.use_gpu") for k in by_field)
    assert "valid list" in by_field["data.classes"]
    assert "valid number" in by_field["threshold"] and "(got [1, 2])" in by_field["threshold"]


def test_custom_validator_message(alpha):
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "alpha", "run": {"name": "my run"}}, "j.yaml")
    assert str(ei.value) == "j.yaml: run.name: must be a non-empty name without '/', '\\' or spaces (got 'my run')"


def test_missing_required_field(alpha):
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "alpha", "items": [{"weight": 2}]}, "j.yaml")
    assert str(ei.value) == "j.yaml: items[0].name: Field required"


def test_long_inputs_are_shortened(alpha):
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "alpha", "threshold": list(range(1000))}, "j.yaml")
    assert len(str(ei.value)) < 200 and str(ei.value).endswith("...)")


# --------------------------------------------------------------------------------------------
# Overrides


def test_overrides_parse_values_as_yaml():
    base = {"optim": {"lr": 0.1, "epochs": 5}, "data": {"classes": ["x"]}}
    out = apply_overrides(base, [
        "optim.lr=3e-4",
        "optim.epochs=20",
        "optim.momentum=0.95",
        "scaling.use_gpu=false",
        "scaling.amp=true",
        "data.classes=[normal, dme]",
        "model.kwargs.drop_rate=1e-1",
        "run.name=exp_7",
        "run.catalog=null",
        "description=",
        "run.publish_as = spaced ",
    ])
    assert out["optim"] == {"lr": 3e-4, "epochs": 20, "momentum": 0.95}
    assert isinstance(out["optim"]["lr"], float) and isinstance(out["optim"]["epochs"], int)
    assert out["scaling"] == {"use_gpu": False, "amp": True}
    assert out["data"]["classes"] == ["normal", "dme"]
    assert out["model"] == {"kwargs": {"drop_rate": 0.1}}  # nested sections created
    assert out["run"] == {"name": "exp_7", "catalog": None, "publish_as": "spaced"}
    assert out["description"] == ""
    assert base == {"optim": {"lr": 0.1, "epochs": 5}, "data": {"classes": ["x"]}}  # input untouched


def test_overrides_apply_in_order_and_keep_unparsable_text():
    out = apply_overrides({}, ["a.b=1", "a.b=2", "a.c=[unclosed", "a.d=x=y"])
    assert out == {"a": {"b": 2, "c": "[unclosed", "d": "x=y"}}


def test_override_errors():
    with pytest.raises(ConfigError, match=r"override 'optim\.lr\.x=1': optim\.lr is a float \(0\.1\), not a section"):
        apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr.x=1"])
    with pytest.raises(ConfigError, match=r"data\.classes is a list"):
        apply_overrides({"data": {"classes": ["a"]}}, ["data.classes.first=b"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="empty key"):
        apply_overrides({}, ["optim..lr=1"])
    with pytest.raises(ConfigError, match="empty key"):
        apply_overrides({}, ["=1"])


def test_load_job_with_overrides(tmp_path, alpha):
    path = _write(tmp_path, "job.yaml", "method: alpha\noptim: {lr: 0.1, epochs: 2}\n")
    job = load_job(path, ["optim.lr=5e-4", "data.classes=[a,b,c]", "scaling.use_gpu=false", "items=[{name: x}]"])
    assert isinstance(job, alpha)
    assert job.optim.lr == pytest.approx(5e-4) and job.optim.epochs == 2
    assert job.data.classes == ["a", "b", "c"] and job.scaling.use_gpu is False
    assert job.items[0].name == "x" and job.items[0].weight == 1.0
    with pytest.raises(ConfigError) as ei:
        load_job(path, ["optim.lrr=1"])
    assert str(ei.value) == f"{path} (with overrides optim.lrr=1): optim.lrr: unknown field; did you mean 'lr'?"
    with pytest.raises(ConfigError) as ei:
        load_job(path, ["optim.epochs=0"])
    assert "optim.epochs: Input should be greater than or equal to 1" in str(ei.value)


def test_load_spec_and_validate(tmp_path):
    path = _write(tmp_path, "optim.yaml", "lr: 1e-2\nscheduler: step\n")
    spec = load_spec(OptimSpec, path, ["step_size=3"])
    assert isinstance(spec, OptimSpec) and spec.lr == pytest.approx(0.01) and spec.step_size == 3
    with pytest.raises(ConfigError) as ei:
        load_spec(OptimSpec, path, ["gama=0.5"])
    assert str(ei.value) == f"{path} (with overrides gama=0.5): gama: unknown field; did you mean 'gamma'?"
    with pytest.raises(ConfigError) as ei:
        validate(ScalingSpec, {"num_workers": 0}, "preset.yaml")
    assert str(ei.value) == "preset.yaml: num_workers: Input should be greater than or equal to 1 (got 0)"


def test_spec_field_named_like_a_method_is_not_mistaken_for_a_tag(beta):
    class Preset(StrictModel):
        alpha: dict[str, int] = Field(default_factory=dict)

    with pytest.raises(ConfigError) as ei:
        validate(Preset, {"alpha": {"x": "y"}}, "p.yaml")
    assert str(ei.value).startswith("p.yaml: alpha.x: Input should be a valid integer")


# --------------------------------------------------------------------------------------------
# `method`-keyed dispatch and the registry


def test_dispatch_on_method(beta, alpha):
    a = parse_job({"method": "alpha", "threshold": 0.9})
    b = parse_job({"method": "beta", "depth": 7})
    assert type(a) is alpha and a.threshold == 0.9
    assert type(b) is beta and b.depth == 7
    assert set(config.job_classes()) == {"alpha", "beta"}
    # the adapter is a discriminated union: it picks the class by tag, not by trying each
    assert type(job_adapter().validate_python({"method": "beta"})) is beta


def test_single_method_registry(alpha):
    adapter = job_adapter()
    assert type(adapter.validate_python({"method": "alpha"})) is alpha
    assert type(parse_job({"method": "alpha"})) is alpha
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "alhpa"}, "j.yaml")
    assert str(ei.value) == "j.yaml: method: unknown method 'alhpa'; known: alpha; did you mean 'alpha'?"


@pytest.mark.parametrize("fixture", ["alpha", "beta"])
def test_unknown_or_missing_method(request, fixture):
    request.getfixturevalue(fixture)
    known = "alpha" if fixture == "alpha" else "alpha, beta"
    with pytest.raises(ConfigError) as ei:
        parse_job({"method": "gamma"}, "j.yaml")
    assert str(ei.value) == f"j.yaml: method: unknown method 'gamma'; known: {known}"
    with pytest.raises(ConfigError) as ei:
        parse_job({"optim": {}}, "j.yaml")
    assert str(ei.value) == f"j.yaml: method: missing (one of: {known})"
    with pytest.raises(ConfigError, match="method: unknown method 3"):
        parse_job({"method": 3}, "j.yaml")
    with pytest.raises(ConfigError, match="expected a mapping, got list"):
        parse_job(["method", "alpha"], "j.yaml")  # type: ignore[arg-type]


def test_no_methods_registered(registry):
    with pytest.raises(ConfigError, match="no training methods are registered"):
        parse_job({"method": "alpha"})


def test_register_job_rejects_bad_classes(registry, alpha):
    class Two(JobBase):
        method: Literal["a", "b"]

    class Plain(JobBase):
        method: str = "plain"

    class NotAJob(StrictModel):
        method: Literal["x"] = "x"

    class Clash(JobBase):
        method: Literal["alpha"]

    for cls, words in ((Two, "Literal"), (Plain, "Literal"), (NotAJob, "not a JobBase"), (Clash, "already registered")):
        with pytest.raises(TypeError, match=words):
            register_job(cls)
    assert register_job(alpha) is alpha  # registering the same class again is harmless
    assert config.job_classes() == {"alpha": alpha}


def test_method_modules_are_imported_on_demand(registry, monkeypatch, tmp_path):
    pkg = tmp_path / "medray_test_methods_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "gamma.py").write_text(textwrap.dedent("""\
        from typing import Literal
        from medray.config import JobBase, register_job

        @register_job
        class GammaJob(JobBase):
            method: Literal["gamma"]
            rate: float = 1.0
        """))
    (pkg / "broken.py").write_text("import medray_test_dependency_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        monkeypatch.setattr(config, "METHOD_MODULES", {
            "gamma": "medray_test_methods_pkg.gamma",
            "later": "medray_test_methods_pkg.not_written_yet",  # a method not built yet: skipped
            "other": "medray_test_package_not_written_yet.method",  # nor its package
        })
        job = parse_job({"method": "gamma", "rate": 1e-2})
        assert type(job).__name__ == "GammaJob" and job.rate == 0.01
        # a method module that exists but fails to import is an error, not a silently missing method
        monkeypatch.setattr(config, "METHOD_MODULES", {"broken": "medray_test_methods_pkg.broken"})
        with pytest.raises(ModuleNotFoundError, match="medray_test_dependency_that_does_not_exist"):
            config.job_classes()
    finally:
        for name in [m for m in sys.modules if m.startswith("medray_test_methods_pkg")]:
            del sys.modules[name]


# --------------------------------------------------------------------------------------------
# Specs


def test_specs_are_strict_and_validate_assignment(alpha):
    job = parse_job({"method": "alpha"})
    assert job.optim.lr == 1e-3 and job.scaling.use_gpu == "auto" and job.run.name == "run"
    with pytest.raises(ValidationError):
        job.optim.lr = -1.0
    with pytest.raises(ValidationError):
        OptimSpec(lrr=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        RunSpec(name="../escape")
    assert ScalingSpec(use_gpu="auto").use_gpu == "auto"


def test_resolve_relative(tmp_path):
    spec = tmp_path / "jobs" / "a.yaml"
    assert config.resolve_relative(spec, "../data/m.parquet") == str(tmp_path / "data" / "m.parquet")
    assert config.resolve_relative(spec, "s3://bucket/m.parquet") == "s3://bucket/m.parquet"
    assert config.resolve_relative(spec, "/abs/m.parquet") == "/abs/m.parquet"
