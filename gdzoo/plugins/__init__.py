"""Plugins: the hook specifications, the plugin manager that loads them, and the registry of
the components they register.

``hookspecs``  the hooks a plugin implements (``register_optimizers``...);
``manager``    loading: built-ins first, then the ``gdzoo`` entry points, one at a time, and
               plugins registered in-process (:func:`gdzoo.register_plugin`);
``registry``   name -> component tables, and spec strings -> optimizers.
"""

from .manager import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, PluginInfo, Plugins
from .registry import KINDS, Component, Registry, default_registry

__all__ = ["BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "KINDS", "Component", "PluginInfo", "Plugins", "Registry",
           "default_registry"]
