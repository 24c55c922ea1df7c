"""The hooks a gdzoo plugin can implement (see README "Hook reference").

Each ``register_*`` hook receives a ``register`` callback; call it once per component:
``register(obj, name=None, description=None, defaults=None)``.
Hook specs take no default argument values (pluggy versions differ there).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gdzoo")
hookimpl = pluggy.HookimplMarker("gdzoo")


@hookspec
def register_optimizers(register):
    """Register optimizers: an update Transform subclass, or a chain spec string, with a name."""


@hookspec
def register_transforms(register):
    """Register gradient transforms (Transform subclasses) that compose with any optimizer."""


@hookspec
def register_losses(register):
    """Register losses: Loss subclasses mapping (prediction, target) to a scalar tensor."""


@hookspec
def register_models(register):
    """Register models: Model subclasses that build a torch.nn.Module for given input/output sizes."""


@hookspec
def register_problems(register):
    """Register problems: Problem subclasses with data, a default model and loss, metrics, optimum."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``gdzoo`` command group ``cli``."""
