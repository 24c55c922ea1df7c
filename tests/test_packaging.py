"""Packaging: the wheel ships gdzoo and its built-in plugins (as gdzoo.default_plugins), not a
top-level ``plugins`` package, declares the ``gdzoo`` console script, and works once unpacked.

The wheel is built from a copy of the source tree (without .venv, .git and build outputs), so
the build cannot collide with the working tree's own ``build/`` or ``*.egg-info``.
"""

from __future__ import annotations

import configparser
import email.parser
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gdzoo.plugins.manager import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 60
IGNORED = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".gdzoo", "*.pyc")


def _env_without_gdzoo_settings(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDZOO_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(base / "dist"), str(src)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=_env_without_gdzoo_settings())
    assert result.returncode == 0, f"wheel build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert time.monotonic() - start < BUILD_TIMEOUT_S
    wheels = list((base / "dist").glob("gdzoo-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _dist_info(names: list[str]) -> str:
    dirs = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert len(dirs) == 1, dirs
    return dirs.pop()


@pytest.mark.slow
def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "gdzoo/__init__.py" in names
    assert "gdzoo/__main__.py" in names
    assert "gdzoo/cli.py" in names
    assert "gdzoo/plugins/hookspecs.py" in names
    source = Path(__file__).resolve().parents[1] / "gdzoo"
    for module in source.rglob("*.py"):  # every subpackage is listed in pyproject.toml
        assert f"gdzoo/{module.relative_to(source).as_posix()}" in names, module
    assert "gdzoo/default_plugins/__init__.py" in names
    assert "gdzoo/default_plugins/sgd.py" in names
    for name in BUILTIN_PLUGINS:  # every built-in plugin the plugin manager loads
        assert f"gdzoo/default_plugins/{name}.py" in names, name
    assert not [n for n in names if n.startswith("plugins/")], "a top-level plugins/ package is in the wheel"
    assert not [n for n in names if n.startswith("tests/")]
    assert {n.split("/")[0] for n in names} == {"gdzoo", _dist_info(names)}


@pytest.mark.slow
def test_wheel_declares_console_script_and_metadata(wheel):
    archive = zipfile.ZipFile(wheel)
    info = _dist_info(archive.namelist())
    entry_points = configparser.ConfigParser()
    entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    assert entry_points.get("console_scripts", "gdzoo").strip() == "gdzoo.cli:main"
    metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    assert metadata["Name"] == "gdzoo"
    requires = " ".join(metadata.get_all("Requires-Dist") or [])
    for dependency in ("pluggy", "torch", "numpy", "click", "tabulate"):
        assert dependency in requires, dependency


@pytest.mark.slow
def test_unpacked_wheel_loads_its_builtin_plugins(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = _env_without_gdzoo_settings(PYTHONPATH=str(site))
    script = (
        "import json, gdzoo, gdzoo.default_plugins as d\n"
        "r = gdzoo.registry()\n"
        "print(json.dumps({'gdzoo': gdzoo.__file__, 'plugins': d.__file__,\n"
        "                  'infos': [i.as_dict() for i in r.plugins.infos.values()],\n"
        "                  'optimizers': r.names('optimizer')}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert Path(data["gdzoo"]).is_relative_to(site)  # the wheel's copy, not the working tree's
    assert Path(data["plugins"]).is_relative_to(site)
    builtins = [i for i in data["infos"] if i["builtin"]]
    assert [i["name"] for i in builtins] == list(BUILTIN_PLUGINS)
    assert all(not i["errors"] for i in builtins), [(i["name"], i["errors"]) for i in builtins if i["errors"]]
    assert {"sgd", "adam", "adagrad", "rmsprop"} <= set(data["optimizers"])

    result = subprocess.run([sys.executable, "-m", "gdzoo", "list", "optimizer", "--format", "json"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {r["name"]: r["plugin"] for r in json.loads(result.stdout)}["sgd"] == "sgd"


@pytest.mark.slow
def test_python_m_gdzoo_help(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gdzoo", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env=_env_without_gdzoo_settings(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    for command in ("list", "plugins", "run", "compare", "sweep"):
        assert f"  {command} " in result.stdout, command
    assert "Traceback" not in result.stderr
