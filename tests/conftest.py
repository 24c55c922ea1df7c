"""Shared fixtures: a real, throw-away third-party gdzoo plugin distribution, and registry hygiene.

``install_plugin(source)`` writes a module and a ``*.dist-info`` (METADATA + entry_points.txt)
into a fresh directory under ``tmp_path``, puts that directory on ``sys.path`` and rebuilds the
process-wide registry, so gdzoo discovers the plugin exactly as it discovers an installed one:
through ``importlib.metadata`` entry points of the group ``gdzoo``.

Every test ends with the process-wide registry rebuilt from the restored environment, so a test
that installs a plugin or sets ``GDZOO_*`` variables cannot leak into another test (or file).
"""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import gdzoo

PLUGIN_ENV = ("GDZOO_LOAD_PLUGINS", "GDZOO_DISABLE_PLUGINS", "GDZOO_STRICT_PLUGINS")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds a wheel or starts Python subprocesses (seconds)")


@pytest.fixture(autouse=True)
def _reset_registry():
    """Rebuild gdzoo's process-wide registry after every test.

    Autouse fixtures are set up before the ones a test requests, so this teardown runs after
    ``monkeypatch`` (and ``install_plugin``) have restored ``os.environ``, ``sys.path`` and
    ``sys.modules``: the registry is rebuilt from the untouched environment.
    """
    yield
    for name in [info.name for info in gdzoo.registry().plugins.infos.values() if info.in_process]:
        gdzoo.unregister_plugin(name)  # a test that registered a plugin in-process and failed
    importlib.invalidate_caches()
    gdzoo.registry(reload=True)


@pytest.fixture
def clean_env(monkeypatch):
    """No GDZOO_* plugin variables, and a registry built without them."""
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    gdzoo.registry(reload=True)
    return monkeypatch


@dataclass
class FakeDistribution:
    """What ``install_plugin`` installed (and, unless ``load=False``, the registry it built)."""

    root: Path  # the directory put on sys.path
    module: str
    distribution: str
    version: str
    entry_point: str
    registry: gdzoo.Registry | None


@pytest.fixture
def strict_plugins(monkeypatch):
    """GDZOO_STRICT_PLUGINS=1, with any built-in plugin that fails to load blocked.

    Strict mode raises at the first failure and built-ins load first; blocking the broken ones
    (test_plugins.py::test_builtin_plugins_load_cleanly reports them) keeps a strict-mode test
    about the plugin it installs.  Returns the environment changes as a dict.
    """
    monkeypatch.delenv("GDZOO_STRICT_PLUGINS", raising=False)
    broken = [i.name for i in gdzoo.registry(reload=True).plugins.failures() if i.builtin]
    env = {"GDZOO_STRICT_PLUGINS": "1"}
    if broken:
        env["GDZOO_DISABLE_PLUGINS"] = ",".join(broken)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """A factory: ``install_plugin(source, module=..., distribution=..., version=..., name=...)``.

    ``source`` is the plugin module's text (dedented); the distribution defaults to
    ``gdzoo-fake-plugin 1.2.3`` with the entry point ``fake = gdzoo_fake_plugin`` in group ``gdzoo``.

    ``name`` is the entry point's name (the plugin's name), ``target`` its value (default: the
    module).  ``load=False`` skips the registry rebuild (e.g. to expect it to raise).
    """
    counter = itertools.count()
    modules: list[str] = []

    def install(source: str, *, module: str = "gdzoo_fake_plugin",
                distribution: str = "gdzoo-fake-plugin", version: str = "1.2.3", name: str = "fake",
                target: str | None = None, load: bool = True) -> FakeDistribution:
        root = tmp_path / f"site-{next(counter)}"
        root.mkdir()
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = root / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[gdzoo]\n{name} = {target or module}\n", encoding="utf-8")
        modules.append(module)
        sys.modules.pop(module, None)
        monkeypatch.syspath_prepend(str(root))  # also invalidates the import caches
        registry = gdzoo.registry(reload=True) if load else None
        return FakeDistribution(root, module, distribution, version, name, registry)

    yield install
    for module in modules:
        sys.modules.pop(module, None)
    # monkeypatch removes the directories from sys.path after this; _reset_registry then reloads.


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """The suite's tensors are small: intra-op threads only add contention on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
