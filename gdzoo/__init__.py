"""gdzoo: a plugin-based zoo of gradient-descent optimizers for PyTorch.

>>> opt = gdzoo.optimizer("adam:lr=0.01+clip_norm:max_norm=1", model.parameters())

is a drop-in ``torch.optim.Optimizer`` (``gdzoo.optimizer_class(spec)`` for code that takes a
class).  Plugins add optimizers, transforms, losses, models and problems through the ``gdzoo``
entry-point group, or in-process with ``gdzoo.register_plugin(obj)`` (see the README's "Writing
a plugin"); ``gdzoo.verify`` checks them.  Layout: ``gdzoo.optim`` (transforms, the Chain, specs),
``gdzoo.plugins`` (hooks, loading, the registry), then the engine, studies and the CLI.
"""

from __future__ import annotations

from typing import Iterable

import sys

from .optim import checks, ops
from .optim.chain import Chain
from .optim.transform import STAGES, GroupView, Link, StepContext, Transform, step_counter
from .errors import GdzooError, PluginError, SpecError, UnknownComponent
from .plugins.hookspecs import hookimpl
from .plugins.registry import KINDS, Component, Registry, default_registry, register_plugin, unregister_plugin
from .optim.spec import Hyper
from .train.loop import RunResult, run
from .train.problem import Dataset, Loss, Model, Optimum, Problem
from .study.execute import Study, compare, sweep

# Plugin authors import the helpers as ``gdzoo.ops`` and ``gdzoo.checks`` (the README's names).
sys.modules.setdefault(__name__ + ".ops", ops)
sys.modules.setdefault(__name__ + ".checks", checks)

__all__ = [
    "Chain", "Component", "Dataset", "Loss", "Model", "Optimum", "Problem", "RunResult", "Study",
    "compare", "run", "sweep", "GdzooError", "GroupView", "Hyper", "KINDS", "Link", "PluginError", "Registry",
    "STAGES", "SpecError", "Transform", "UnknownComponent", "checks", "components", "get", "hookimpl",
    "optimizer", "optimizer_class", "register_plugin", "registry", "step_counter", "unregister_plugin",
    "StepContext",
]


def registry(reload: bool = False) -> Registry:
    """The registry of every loaded plugin's components (built once; ``reload=True`` rebuilds it)."""
    return default_registry(reload)


def optimizer(spec: str, params: Iterable, **hyperparameters) -> Chain:
    """A ``torch.optim.Optimizer`` for a spec: ``optimizer("adam", model.parameters(), lr=1e-3)``."""
    return default_registry().optimizer(spec, params, **hyperparameters)


def optimizer_class(spec: str, *, fused: bool = False, **hyperparameters) -> type[Chain]:
    """A ``torch.optim.Optimizer`` class for a spec, for code that takes a class rather than an
    instance: ``ZeroRedundancyOptimizer(params, optimizer_class=gdzoo.optimizer_class("adam"), lr=1e-3)``."""
    return default_registry().optimizer_class(spec, fused=fused, **hyperparameters)


def components(kind: str | None = None) -> list[Component]:
    """Registered components of one kind (optimizer, transform, loss, model, problem), or all."""
    return default_registry().components(kind)


def get(kind: str, name: str) -> Component:
    """One registered component; an unknown name raises UnknownComponent with close matches."""
    return default_registry().get(kind, name)
