"""The package layout: `platform/` is a source root, never a package."""

import importlib
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_platform_init():
    assert not (REPO / "platform" / "__init__.py").exists(), "platform/__init__.py shadows the stdlib"


def test_import_platform_is_stdlib():
    import platform

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert callable(platform.system) and platform.system()


def test_medray_imports_from_platform_dir():
    import medray

    assert Path(medray.__file__).resolve().parent == REPO / "platform" / "medray"
    assert importlib.import_module("medray.cli").main


def test_ray_pinned_exactly():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_dep = [d for d in deps if d.startswith("ray[")]
    assert len(ray_dep) == 1 and "==" in ray_dep[0], ray_dep
    import ray

    assert ray_dep[0].split("==")[1] == ray.__version__


def test_console_script():
    import shutil

    exe = Path(sys.executable).parent / "medray"
    assert exe.exists() or shutil.which("medray")
