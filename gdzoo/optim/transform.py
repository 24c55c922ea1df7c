"""The authoring contract: what a plugin author subclasses, and what a transform is handed.

A :class:`Transform` is one piece of an optimizer.  Its ``stage`` says where it acts:

``grad``    on the gradient, before the update (clipping, L2, L1 subgradient), in spec order;
``pre``     on the parameters, before the update (decoupled weight decay);
``update``  computes and applies the step (sgd, adam, ...): exactly one per chain;
``post``    on the parameters, after the update (the L1 proximal step).

A transform may act in more than one stage (``stage = ("grad", "post")``, like ``l1``, whose
mode chooses between a subgradient and a proximal step); ``ctx.stage`` tells it which one runs.
So ``adam+clip_norm`` and ``clip_norm+adam`` are the same optimizer: the clip always sees the
gradient before Adam does.  Transforms never write into ``p.grad``: a transform that changes
the gradient writes into a scratch buffer of its own (``ctx.buffer``), allocated once, which no
other transform is ever handed.  (The one exception is opt-in: under ``fused=True`` a clip folded
into torch's fused Adam or SGD kernel leaves the clipped gradient in ``p.grad``, as
``torch.nn.utils.clip_grad_norm_`` does.)

State lives in ``optimizer.state[p]`` so that ``state_dict()`` works.  The update transform
owns the top level of that dict with torch.optim's key names (``exp_avg``, ``momentum_buffer``...);
any other stateful transform gets ``state[p][transform.name]``.

Hyperparameters live in ``param_groups``.  The update transform's use torch.optim's names
unqualified (``lr``, ``betas``...), so ``torch.optim.lr_scheduler`` works unchanged; the other
transforms' are qualified with the transform's name (``clip_norm.max_norm``, ``l2.weight``).

How a step runs is the core's business (:class:`gdzoo.optim.chain.Chain`), decided from what a
transform *declares* in ``supports``:

``"batched"``  ``update`` also handles K configurations at once: every parameter has a leading
               dimension of K, and a hyperparameter that differs between them is a float64
               tensor of shape [K] (use :mod:`gdzoo.ops`), with the numbers of K separate runs.
               Undeclared, a study trains each configuration separately.
``"complex"``  the math is elementwise over real and imaginary parts, so complex parameters run
               as ``torch.view_as_real`` pairs (what torch.optim does).  Undeclared, a complex
               parameter is refused when the optimizer is built.
``"sparse"``   ``grads[i]`` may be a sparse tensor and the transform handles it (torch's SGD
               and Adagrad do); such a step runs eagerly, also under ``fused=True``.
               Undeclared, a sparse gradient is refused at the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .spec import Hyper

STAGES = ("grad", "pre", "update", "post")
CAPABILITIES = ("batched", "complex", "sparse")


class Transform:
    """Base class of every gradient transform; subclass it and register it from a plugin.

    Class attributes describe it: ``name``, ``description``, ``hyperparameters`` (a tuple of
    :class:`~gdzoo.optim.spec.Hyper`), ``stage`` (see the module doc), ``stateful`` and
    ``supports`` (the capabilities it declares: ``batched``, ``complex``, ``sparse``).
    Override :meth:`update` (one parameter group at a time) or, for a transform that needs
    every parameter at once like a global norm clip, :meth:`step`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hyperparameters: ClassVar[tuple[Hyper, ...]] = ()
    stage: ClassVar[str | tuple[str, ...]] = "grad"
    stateful: ClassVar[bool] = False
    supports: ClassVar[tuple[str, ...]] = ()
    # Checks of `gdzoo verify` this transform knowingly fails: {check name: reason} (reported xfail).
    expected_failures: ClassVar[dict[str, str]] = {}

    # Optional, for Chain(fused=True).  An update transform with a torch fused kernel implements
    # native_step() and can_fold(), and lists the grad-stage work its kernel can do, in the kernel's
    # order (``native_folds``).  The chain runs that kernel when it can do the whole chain, or, with
    # ``native_preferred``, also beside eagerly run transforms (rather than compiling the chain).
    native_folds: ClassVar[tuple[str, ...]] = ()
    native_preferred: ClassVar[bool] = False
    # A stateless grad-stage transform whose work such a kernel can do in its own pass names that
    # work ("grad_scale": one factor per group dividing every grad; "weight_decay": grad +=
    # weight * param) and returns its per-group values from fold_values().
    fold: ClassVar[str | None] = None

    def check(self, hp: dict[str, Any]) -> None:
        """Raise ValueError (torch's wording where torch has one) if ``hp`` is invalid."""

    def update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict],
               hp: dict[str, Any], ctx: "StepContext") -> None:
        """Act on one parameter group: ``grads[i]`` is the gradient of ``params[i]`` so far.

        A grad-stage transform replaces entries of ``grads`` (never writing into ``p.grad``);
        other stages change ``params`` in place.  ``states[i]`` is this transform's state for
        ``params[i]`` (an empty dict when the transform is not stateful).
        """
        raise NotImplementedError(f"transform {self.name!r} implements neither update() nor step()")

    def step(self, groups: list["GroupView"], ctx: "StepContext") -> None:
        """Act on all parameter groups of one optimizer step (default: :meth:`update` per group)."""
        for g in groups:
            self.update(g.params, g.grads, g.states, g.hp, ctx)

    # --- the fused-kernel protocol (optional) -------------------------------------------------
    def fold_values(self, groups: list["GroupView"], ctx: "StepContext") -> list[Any]:
        """This step's value of ``fold`` for every group (None: nothing to do in that group)."""
        raise NotImplementedError(f"transform {self.name!r} declares fold={self.fold!r} but no fold_values()")

    def can_fold(self, params: list[torch.Tensor], hp: dict[str, Any], kinds: set[str],
                 states: list[dict] | None = None) -> bool:
        """Whether :meth:`native_step` can do this group, with the folds ``kinds``, exactly as the
        chain's eager transforms would."""
        return False

    def native_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict],
                    hp: dict[str, Any], **folds: Any) -> None:
        """One step of this group in torch's fused kernel, with the folded transforms' values."""
        raise NotImplementedError(f"transform {self.name!r} has no native_step()")

    @classmethod
    def has_native(cls) -> bool:
        return cls.native_step is not Transform.native_step


def declares(obj: Any, capability: str) -> bool:
    """Whether a component (a class or an instance) declares ``capability`` in ``supports``."""
    return capability in (getattr(obj, "supports", ()) or ())


def check_supports(obj: Any, where: str) -> None:
    """``supports`` must be a tuple of known capabilities: a typo would silently declare nothing."""
    supports = getattr(obj, "supports", ())
    if isinstance(supports, str) or not isinstance(supports, (tuple, list, set, frozenset)):
        raise TypeError(f"{where}: supports must be a tuple of capabilities, got {supports!r}")
    unknown = [s for s in supports if s not in CAPABILITIES]
    if unknown:
        raise TypeError(f"{where}: unknown capability {unknown[0]!r} in supports; known: {', '.join(CAPABILITIES)}")


class StepContext:
    """What a transform is handed as ``ctx`` during a step.

    ``ctx.stage``     the stage that is running (for transforms that act in several);
    ``ctx.batch``     K in a batched study (every parameter has a leading dimension of K), else None;
    ``ctx.buffer(param, key="grad")``  a scratch tensor shaped like ``param``, this transform's
                      own (no other transform, and no gradient it reads, ever shares it), kept
                      from step to step; contents are garbage on entry; None where allocating is
                      cheaper (small parameters), for sparse gradients and in a compiled step;
    ``ctx.is_complex(tensor)``  whether a parameter or gradient handed on is a complex one's real view;
    ``ctx.optimizer`` the :class:`~gdzoo.optim.chain.Chain` itself (its ``param_groups``, ``state``).
    """

    def __init__(self, optimizer, batch: int | None, scratch: bool = True):
        self.optimizer = optimizer
        self.batch = batch
        self.stage = ""
        self.owner = ""  # the transform now running: buffers are per transform
        self._scratch = scratch

    def is_complex(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` (a parameter or gradient handed to this transform) is the real view of
        a complex one: its last dimension holds (real, imaginary)."""
        return self.optimizer.is_complex(tensor)

    def buffer(self, param: torch.Tensor, key: str = "grad") -> torch.Tensor | None:
        if not self._scratch:
            return None
        return self.optimizer._buffer(param, self.owner, key)

class EagerContext(StepContext):
    """The eager step's context: plugins written when ``ctx`` was the Chain itself and read its
    attributes keep working, with a DeprecationWarning.  (A compiled step gets a plain
    StepContext: Dynamo traces it without a ``__getattr__`` in the way.)"""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("optimizer", "batch", "stage", "owner", "_scratch", "is_complex"):
            raise AttributeError(name)
        import warnings

        warnings.warn(f"ctx.{name}: ctx is no longer the optimizer itself; use ctx.optimizer.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(self.optimizer, name)


@dataclass
class GroupView:
    """What one transform sees of one parameter group during a step."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[dict]
    hp: dict[str, Any]
    group: dict[str, Any]  # the whole param group, e.g. for the optimizer's ``lr``


@dataclass(frozen=True)
class Link:
    """A transform placed in a chain: the instance and its hyperparameter -> group-key map."""

    transform: Transform
    keys: tuple[tuple[str, str], ...]  # (hyperparameter name, param_group key)

    @property
    def stages(self) -> tuple[str, ...]:
        stage = self.transform.stage
        return (stage,) if isinstance(stage, str) else tuple(stage)


def group_key(transform: Transform, hyper: str) -> str:
    """The ``param_groups`` key of one of a transform's hyperparameters."""
    return hyper if transform.stage == "update" else f"{transform.name}.{hyper}"


def step_counter() -> torch.Tensor:
    """A fresh step count, stored as torch.optim stores it (a 0-d float tensor)."""
    return torch.tensor(0.0, dtype=torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32)

