"""k8s/: every manifest (base and rendered overlays) validates against the KubeRay CRD schemas / core
schemas (strict: unknown fields rejected), rayVersion equals the pinned Ray, the generated RayJobs and
RayServices are fresh, their entrypoints are valid medray jobs, serveConfigV2 is a valid Serve config."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from k8s.schemas import CRD_DIR, CRD_FILES, crd_version, errors
from medray.errors import ConfigError
from medray.k8s import kustomize
from medray.k8s.render import check_stale, render, render_all, serve_config_v2, Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
BUILDS = ["base", "overlays/cpu-dev", "overlays/gpu"]

pytestmark = pytest.mark.skipif(not CRD_DIR.is_dir(), reason=f"KubeRay CRDs not found at {CRD_DIR}")


def ray_pin() -> str:
    m = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert m, "pyproject.toml must pin ray[...]==X"
    return m.group(1)


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under k8s/ (kustomizations and JSON patches are not objects)."""
    out = []
    for p in sorted(K8S.rglob("*.yaml")):
        if p.name in ("kustomization.yaml", "render.yaml") or p.name.endswith(".patch.yaml"):
            continue
        out.append(p)
    return out


@functools.lru_cache(maxsize=None)
def _built(name: str) -> list[dict]:
    return kustomize.build(K8S / name)


def built(name: str) -> list[dict]:
    return copy.deepcopy(_built(name))


def cluster_specs(obj: dict) -> list[dict]:
    spec = obj.get("spec") or {}
    return {"RayCluster": [spec], "RayJob": [spec.get("rayClusterSpec")],
            "RayService": [spec.get("rayClusterConfig")]}.get(obj["kind"], [])


def test_crds_have_no_preserve_unknown_fields():
    """schemas.strict() closes every object with listed properties; it would leave such a node open."""
    for kind in CRD_FILES:
        assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(crd_version(kind))


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path):
    docs = kustomize.load_docs(path)
    assert docs
    for doc in docs:
        assert errors(doc) == [], f"{path}: {doc['kind']}"


@pytest.mark.parametrize("name", BUILDS)
def test_every_rendered_overlay_validates(name):
    objs = built(name)
    kinds = [o["kind"] for o in objs]
    assert {"Namespace", "ConfigMap", "Secret", "RayCluster", "RayJob", "RayService"} <= set(kinds)
    for obj in objs:
        assert errors(obj) == [], f"{name}: {obj['kind']}/{obj['metadata']['name']}: {errors(obj)}"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), "duplicate objects"


def test_overlays_differ_where_they_should():
    cpu = {o["kind"] + "/" + o["metadata"]["name"]: o for o in built("overlays/cpu-dev")}
    gpu = {o["kind"] + "/" + o["metadata"]["name"]: o for o in built("overlays/gpu")}
    n_ray = 0
    for key, obj in cpu.items():
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "medray-dev"
            continue
        assert obj["metadata"]["namespace"] == "medray-dev"
        for spec in cluster_specs(obj):
            n_ray += 1
            w = spec["workerGroupSpecs"][0]
            res = w["template"]["spec"]["containers"][0]["resources"]
            assert "nvidia.com/gpu" not in res["limits"] and "tolerations" not in w["template"]["spec"]
            assert all(c["image"].endswith("-cpu") for c in w["template"]["spec"]["containers"])
    assert n_ray >= 1 + 6 + 1
    for key, obj in gpu.items():
        for spec in cluster_specs(obj):
            w = spec["workerGroupSpecs"][0]
            pod = w["template"]["spec"]
            assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert spec["enableInTreeAutoscaling"] is True and w["minReplicas"] == 0 < w["maxReplicas"]
            vols = {v["name"]: v for v in pod["volumes"]}
            assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
            head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
            assert "nvidia.com/gpu" not in head["resources"]["limits"]
            for c in (head, pod["containers"][0]):
                assert c["image"] == f"registry.example.com/medray/medray:ray{ray_pin()}-gpu"
                secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e}
                assert secret_keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
                assert {"configMapRef": {"name": "medray-storage"}} in c["envFrom"]


# -- a misspelt field is caught ---------------------------------------------------------------------


def _cluster() -> dict:
    return kustomize.load_docs(K8S / "base" / "ray-cluster.medray.yaml")[0]


def _first(kind: str, folder: str = "base") -> dict:
    return next(o for o in built(folder) if o["kind"] == kind)


def _rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


MISSPELLINGS = {
    "RayCluster spec.rayVerison": lambda: (c := _cluster(), _rename(c["spec"], "rayVersion", "rayVerison"), c)[-1],
    "RayCluster worker rayStartParam": lambda: (c := _cluster(), _rename(c["spec"]["workerGroupSpecs"][0],
                                                                         "rayStartParams", "rayStartParam"), c)[-1],
    "RayCluster pod toleration": lambda: (c := _cluster(), _rename(
        c["spec"]["workerGroupSpecs"][0]["template"]["spec"], "tolerations", "toleration"), c)[-1],
    "RayCluster container volumeMount": lambda: (c := _cluster(), _rename(
        c["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0], "volumeMounts", "volumeMount"), c)[-1],
    "RayCluster metadata lables": lambda: (c := _cluster(), _rename(c["metadata"], "labels", "lables"), c)[-1],
    "RayJob shutdownAfterJobFinished": lambda: (j := _first("RayJob"), _rename(
        j["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinished"), j)[-1],
    "RayJob submitterConfig.backofflimit": lambda: (j := _first("RayJob"), _rename(
        j["spec"]["submitterConfig"], "backoffLimit", "backofflimit"), j)[-1],
    "RayJob ttl as string": lambda: (j := _first("RayJob"), j["spec"].update(ttlSecondsAfterFinished="1h"), j)[-1],
    "RayService serveConfigV2 as mapping": lambda: (s := _first("RayService"), s["spec"].update(
        serveConfigV2=yaml.safe_load(s["spec"]["serveConfigV2"])), s)[-1],
    "RayService rayClusterConfg": lambda: (s := _first("RayService"), _rename(
        s["spec"], "rayClusterConfig", "rayClusterConfg"), s)[-1],
    "Secret stringdata": lambda: (s := _first("Secret"), _rename(s, "stringData", "stringdata"), s)[-1],
    "ConfigMap datas": lambda: (s := _first("ConfigMap"), _rename(s, "data", "datas"), s)[-1],
    "Namespace bad name": lambda: (s := _first("Namespace"), s["metadata"].update(name="Med_Ray"), s)[-1],
    "label value with space": lambda: (c := _cluster(), c["metadata"]["labels"].update(x="a b"), c)[-1],
}


@pytest.mark.parametrize("case", list(MISSPELLINGS))
def test_misspelt_field_in_a_copy_is_caught(case):
    broken = MISSPELLINGS[case]()
    assert errors(broken), f"{case} was not caught"


def test_unmodified_copies_are_valid():
    """The control for the cases above: the same objects, unmodified, validate."""
    for obj in (_cluster(), _first("RayJob"), _first("RayService"), _first("Secret"), _first("ConfigMap")):
        assert errors(copy.deepcopy(obj)) == []


def test_misspelt_field_in_a_copied_manifest_file_is_caught(tmp_path):
    """The same check on files: a copy of k8s/ with one typo fails its overlay build's validation."""
    shutil.copytree(K8S, tmp_path / "k8s")
    f = tmp_path / "k8s" / "base" / "ray-cluster.medray.yaml"
    f.write_text(f.read_text().replace("minReplicas: 0", "minReplica: 0"))
    bad = [e for o in kustomize.build(tmp_path / "k8s" / "overlays" / "gpu") for e in errors(o)]
    assert any("minReplica" in e for e in bad), bad


# -- versions, image -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILDS)
def test_ray_version_matches_pyproject_pin(name):
    pin = ray_pin()
    n = 0
    for obj in built(name):
        for spec in cluster_specs(obj):
            n += 1
            assert spec["rayVersion"] == pin, f"{obj['kind']}/{obj['metadata']['name']}"
            images = re.findall(r"image: (\S+)", yaml.safe_dump(obj))
            assert images and all(f"ray{pin}-" in i for i in images), images
    assert n == 1 + 6 + len(list((REPO / "serve").glob("*.yaml")))  # cluster + 6 jobs + one service per config


def test_dockerfile_uses_pinned_ray_and_ships_the_specs():
    text = (K8S / "Dockerfile").read_text()
    pin = ray_pin()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pin)}$", text, re.M)
    assert re.search(rf"^ARG RAY_IMAGE_TAG={re.escape(pin)}-py311-gpu$", text, re.M)
    assert "FROM rayproject/ray:${RAY_IMAGE_TAG}" in text
    assert "WORKDIR /app" in text
    for d in ("jobs/", "tune/", "serve/", "platform/"):
        assert re.search(rf"^COPY .*{d} {d}$", text, re.M), d
    assert "constraints.txt" in text and "TORCH_INDEX" in text


# -- generated files -------------------------------------------------------------------------------


def test_committed_generated_files_are_fresh():
    rep = render(REPO, check=True)
    assert not check_stale(rep), f"run `medray k8s render`: {rep}"
    assert len(rep["unchanged"]) == 6 + len(list((REPO / "serve").glob("*.yaml"))) + 1


def _copy_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for d in ("k8s", "jobs", "tune", "serve"):
        shutil.copytree(REPO / d, root / d)
    return root


def test_stale_copy_is_detected_and_rerender_fixes_it(tmp_path, cli):
    root = _copy_repo(tmp_path)
    assert not check_stale(render(root, check=True))
    serve_file = sorted((root / "serve").glob("*.yaml"))[0]
    cfg = yaml.safe_load(serve_file.read_text())
    cfg["applications"][0].setdefault("deployments", []).append({"name": "Extra", "num_replicas": 3})
    serve_file.write_text(yaml.safe_dump(cfg))
    rep = render(root, check=True)
    assert rep["stale"] == [str(root / "k8s" / "base" / f"ray-service.{serve_file.stem}.yaml")]
    code, out, err = cli("k8s", "render", "--check", "--repo", str(root))
    assert code == 1 and "out of date" in err and "stale:" in out
    # a hand edit of the generated copy is stale too
    code, out, _ = cli("k8s", "render", "--repo", str(root))
    assert code == 0 and "1 written" in out
    gen = root / "k8s" / "base" / f"ray-service.{serve_file.stem}.yaml"
    svc = yaml.safe_load(gen.read_text())
    assert yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["deployments"][-1]["num_replicas"] == 3
    gen.write_text(gen.read_text().replace("num_replicas: 3", "num_replicas: 4"))
    assert render(root, check=True)["stale"] == [str(gen)]
    render(root)
    # a new Serve config is a missing RayService; a removed one leaves an orphan
    shutil.copy(serve_file, root / "serve" / "extra_preset.yaml")
    assert render(root, check=True)["missing"]
    render(root)
    assert (root / "k8s" / "base" / "ray-service.extra_preset.yaml").is_file()
    (root / "serve" / "extra_preset.yaml").unlink()
    rep = render(root, check=True)
    assert rep["orphaned"] == [str(root / "k8s" / "base" / "ray-service.extra_preset.yaml")]
    assert render(root)["removed"] and not check_stale(render(root, check=True))
    # the cluster spec is the single source of every embedded copy
    c = root / "k8s" / "base" / "ray-cluster.medray.yaml"
    c.write_text(c.read_text().replace("maxReplicas: 4", "maxReplicas: 6"))
    assert len(render(root, check=True)["stale"]) == 6 + len(list((root / "serve").glob("*.yaml")))


def test_render_errors_name_the_file(tmp_path, cli):
    root = _copy_repo(tmp_path)
    (root / "jobs" / "rop.yaml").unlink()
    with pytest.raises(ConfigError, match="rop.yaml does not exist"):
        render_all(root)
    code, _, err = cli("k8s", "render", "--repo", str(root))
    assert code == 2 and "jobs/rop.yaml" in err
    shutil.copy(REPO / "jobs" / "rop.yaml", root / "jobs" / "rop.yaml")
    (root / "serve" / "broken.yaml").write_text("proxy_location: EveryNode\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not a multi-application Serve config"):
        render_all(root)
    (root / "serve" / "broken.yaml").unlink()
    (root / "k8s" / "render.yaml").write_text("cluster: base/ray-cluster.medray.yaml\n")
    with pytest.raises(ConfigError, match=r"render.yaml: missing field 'out'"):
        render_all(root)
    code, _, err = cli("k8s", "render", "--repo", str(tmp_path / "nowhere"))
    assert code == 2 and "render.yaml" in err


def _jobs() -> list[dict]:
    return [o for o in built("base") if o["kind"] == "RayJob"]


def test_one_rayjob_per_method_and_the_tune_study():
    jobs = {o["metadata"]["labels"]["medray.io/name"]: o for o in _jobs()}
    assert set(jobs) == {"fundus_disease", "retinal_age", "oct_layers", "skin", "rop", "oct_candidates"}
    for name, job in jobs.items():
        spec = job["spec"]
        argv = shlex.split(spec["entrypoint"])
        if name == "oct_candidates":
            assert argv[:3] == ["medray", "tune", "/app/tune/oct_candidates.yaml"]
        else:
            assert argv[:3] == ["medray", "train", f"/app/jobs/{name}.yaml"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["submitterConfig"]["backoffLimit"] >= 1
        assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
        assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]


@pytest.mark.parametrize("job", _jobs() if CRD_DIR.is_dir() else [], ids=lambda j: j["metadata"]["name"])
def test_rayjob_entrypoints_are_valid_jobs_on_object_storage(job):
    """The entrypoint, with /app mapped to this checkout, loads and validates as medray would run it."""
    from medray.config import load_job

    argv = shlex.split(job["spec"]["entrypoint"])
    path = REPO / argv[2].removeprefix("/app/")
    if argv[1] == "train":
        cfg = load_job(path, argv[3:])
        assert cfg.run.storage_path.startswith("s3://") and cfg.run.catalog.startswith("s3://")
        data = cfg.data.model_dump()
        uris = data.get("manifests") or [data.get("manifest")]
        assert uris and all(u.startswith("s3://") for u in uris), uris
        if cfg.method == "retinal_age":
            assert cfg.responses.classifier_catalog.startswith("s3://")
    else:
        from medray.tuning import load_study

        spec, base = load_study(str(path), argv[3:])
        assert spec.storage_path.startswith("s3://") and spec.catalog.startswith("s3://")
        assert all(u.startswith("s3://") for u in base["data"]["manifests"])
        assert base["scaling"]["num_workers"] == 1


# -- RayService / serveConfigV2 --------------------------------------------------------------------


def _validate_serve(cfg: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(cfg) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(cfg)


def test_one_rayservice_per_serve_config_and_serve_config_v2_is_valid():
    files = sorted((REPO / "serve").glob("*.yaml"))
    if not files:
        pytest.skip("no serve/*.yaml yet")
    settings = Settings.load(REPO)
    svcs = {o["metadata"]["labels"]["medray.io/name"]: o for o in built("base") if o["kind"] == "RayService"}
    assert set(svcs) == {f.stem for f in files}
    for f in files:
        text = svcs[f.stem]["spec"]["serveConfigV2"]
        cfg = yaml.safe_load(text)
        schema = _validate_serve(cfg)
        assert schema.http_options.host == "0.0.0.0"
        source = yaml.safe_load(f.read_text())
        _validate_serve(source)  # the local file is a valid Serve config too
        assert cfg == serve_config_v2(settings, f)
        # identical to the source except the two documented cluster-side fields
        for app_src, app in zip(source["applications"], cfg["applications"], strict=True):
            if "catalog" in (app_src.get("args") or {}):
                assert app["args"]["catalog"] == settings.catalog
                app = {**app, "args": {**app["args"], "catalog": app_src["args"]["catalog"]}}
            assert app == app_src
        assert {k: v for k, v in cfg.items() if k != "http_options"} == \
               {k: v for k, v in source.items() if k not in ("http_options", "applications")} | \
               {"applications": cfg["applications"]}


def test_renderer_handles_any_valid_serve_config(tmp_path):
    """A Serve config unlike medray's own (two apps, no args.catalog, no http_options) renders as is."""
    root = _copy_repo(tmp_path)
    other = {"applications": [
        {"name": "a", "route_prefix": "/a", "import_path": "some.module:app", "args": {"x": 1}},
        {"name": "b", "route_prefix": "/b", "import_path": "other.module:app",
         "runtime_env": {"env_vars": {"K": "v"}}, "deployments": [{"name": "D", "num_replicas": 2}]}]}
    _validate_serve(other)
    (root / "serve" / "zz_other.yaml").write_text(yaml.safe_dump(other))
    render(root)
    svc = kustomize.load_docs(root / "k8s" / "base" / "ray-service.zz_other.yaml")[0]
    assert errors(svc) == []
    cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    _validate_serve(cfg)
    assert cfg["applications"] == other["applications"] and cfg["http_options"] == {"host": "0.0.0.0"}


# -- the kustomize subset itself -------------------------------------------------------------------


def test_json_patch_errors_are_clear():
    doc = {"spec": {"a": [1, 2], "b": {"c": 1}}}
    assert kustomize.json_patch(doc, [{"op": "add", "path": "/spec/a/-", "value": 3},
                                      {"op": "remove", "path": "/spec/b/c"},
                                      {"op": "replace", "path": "/spec/a/0", "value": 0}], "t") == \
        {"spec": {"a": [0, 2, 3], "b": {}}}
    with pytest.raises(ConfigError, match="no field 'x'"):
        kustomize.json_patch(doc, [{"op": "replace", "path": "/spec/x/y", "value": 1}], "p.yaml")
    with pytest.raises(ConfigError, match="test failed"):
        kustomize.json_patch(doc, [{"op": "test", "path": "/spec/b/c", "value": 2}], "p.yaml")


def test_kustomize_subset_rejects_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(ConfigError, match="unsupported kustomization field"):
        kustomize.build(tmp_path)


def test_cli_build_prints_the_overlay(cli):
    code, out, _ = cli("k8s", "build", str(K8S / "overlays" / "cpu-dev"))
    assert code == 0
    objs = list(yaml.safe_load_all(out))
    assert [o["kind"] for o in objs] == [o["kind"] for o in built("overlays/cpu-dev")]
    assert all(errors(o) == [] for o in objs)
    code, _, err = cli("k8s", "build", str(K8S / "nowhere"))
    assert code == 2 and "no kustomization.yaml" in err
