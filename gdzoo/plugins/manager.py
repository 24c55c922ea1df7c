"""The plugin manager: built-in plugins first, then third-party entry points, one at a time.

Environment variables:

``GDZOO_LOAD_PLUGINS``     comma-separated allow-list of third-party plugins (entry point or
                           distribution names); set but empty loads none.
``GDZOO_DISABLE_PLUGINS``  comma-separated block-list; built-in plugins (``sgd``, ``clipping``...)
                           can be blocked too.
``GDZOO_STRICT_PLUGINS=1`` re-raise the first plugin failure instead of reporting it.

Plugins registered in-process (:func:`gdzoo.register_plugin`) load after the entry points, and
stay registered when the registry is rebuilt, until :func:`gdzoo.unregister_plugin`.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import traceback
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from ..errors import PluginError

ENTRY_POINT_GROUP = "gdzoo"
BUILTIN_PLUGINS = ("sgd", "adam", "adagrad", "rmsprop", "clipping", "regularization",
                   "losses", "models", "problems")


IN_PROCESS: dict[str, object] = {}  # name -> plugin object, from gdzoo.register_plugin()


@dataclass
class PluginInfo:
    """What gdzoo knows of one plugin, loaded or failed."""

    name: str
    builtin: bool
    module: str = ""
    distribution: str = ""
    version: str = ""
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    in_process: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {"name": self.name, "builtin": self.builtin, "module": self.module,
                "distribution": self.distribution, "version": self.version,
                "hooks": list(self.hooks), "errors": list(self.errors), "in_process": self.in_process}


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def strict() -> bool:
    return os.environ.get("GDZOO_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Plugins:
    """A loaded pluggy manager plus what was loaded and what failed."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("gdzoo")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.strict = strict()
        self._load()

    # --- loading ------------------------------------------------------------------------
    def _load(self) -> None:
        blocked = set(_env_list("GDZOO_DISABLE_PLUGINS") or [])
        allowed = _env_list("GDZOO_LOAD_PLUGINS")
        version = metadata.version("gdzoo") if _installed("gdzoo") else ""
        for name in BUILTIN_PLUGINS:
            if name in blocked:
                continue
            module_name = f"gdzoo.default_plugins.{name}"
            info = PluginInfo(name, builtin=True, module=module_name, distribution="gdzoo", version=version)
            self._register(info, lambda m=module_name: importlib.import_module(m))
        for ep in _entry_points():
            dist = ep.dist.name if getattr(ep, "dist", None) is not None else ""
            dist_version = ep.dist.version if getattr(ep, "dist", None) is not None else ""
            if ep.name in blocked or dist in blocked:
                continue
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                continue
            if ep.name in self.infos:
                info = PluginInfo(ep.name, builtin=False, module=ep.value, distribution=dist, version=dist_version)
                self.fail(info, f"plugin name {ep.name!r} is already taken by "
                                 f"{self.who(self.infos[ep.name])}; rename the entry point")
                self.infos[f"{ep.name} ({dist})"] = info
                continue
            info = PluginInfo(ep.name, builtin=False, module=ep.value, distribution=dist, version=dist_version)
            self._register(info, ep.load)
        for name, plugin in IN_PROCESS.items():
            if name in self.infos:
                info = in_process_info(name, plugin)
                self.fail(info, f"plugin name {name!r} is already taken by {self.who(self.infos[name])}; "
                                f"register it under another name")
                self.infos[f"{name} (in-process)"] = info
                continue
            self._register(in_process_info(name, plugin), lambda p=plugin: p)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            # Find the culprit: a hook implementation with no matching spec.
            for name, info in self.infos.items():
                plugin = self.pm.get_plugin(name)
                if plugin is None:
                    continue
                unknown = [h for h in _hook_names(plugin) if not hasattr(hookspecs, h)]
                if unknown:
                    self.fail(info, f"unknown hook(s) {', '.join(unknown)}; known hooks: "
                                     f"{', '.join(_spec_names())}")
                    self.pm.unregister(name=name)
            if self.strict:
                raise PluginError(str(exc)) from exc

    def _register(self, info: PluginInfo, load) -> None:
        self.infos[info.name] = info
        try:
            plugin = load()
            info.hooks = sorted(_hook_names(plugin))
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # a broken plugin must not take gdzoo down
            self.fail(info, f"failed to load: {_describe(exc)}", exc)

    def fail(self, info: PluginInfo, message: str, exc: BaseException | None = None) -> None:
        info.errors.append(message)
        if self.strict:
            raise PluginError(f"plugin {self.who(info)}: {message}") from exc

    @staticmethod
    def who(info: PluginInfo) -> str:
        if info.builtin:
            return f"{info.name!r} (built-in)"
        if info.in_process:
            return f"{info.name!r} (registered in-process from {info.module or '?'})"
        dist = f"{info.distribution} {info.version}".strip()
        return f"{info.name!r} ({dist or info.module})"

    def hookimpls(self, hook: str):
        """(plugin info, hook implementation) pairs for ``hook``, in load order (built-ins first)."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            info = self.infos.get(impl.plugin_name)
            if info is not None:
                yield info, impl

    def failures(self) -> list[PluginInfo]:
        return [info for info in self.infos.values() if info.errors]


def in_process_info(name: str, plugin: object) -> PluginInfo:
    module = plugin.__name__ if isinstance(plugin, type(os)) else getattr(plugin, "__module__", "") or ""
    return PluginInfo(name, builtin=False, module=module, distribution="(in-process)", in_process=True)


def plugin_name(plugin: object) -> str:
    """The default name of an in-process plugin: a module's or class's name (a module in a package:
    its last part), else its class's."""
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return name.rsplit(".", 1)[-1]


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def _entry_points():
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen, result = set(), []
    for ep in eps:  # the same distribution can be visible twice on sys.path
        key = (ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            result.append(ep)
    return result


def _spec_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith("register_")]


def _hook_names(plugin) -> list[str]:
    names = []
    for attr in dir(plugin):
        try:
            value = getattr(plugin, attr)
        except Exception:
            continue
        if callable(value) and hasattr(value, "gdzoo_impl"):
            names.append(attr)
    return names
