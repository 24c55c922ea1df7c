"""Gradient transforms and the chain that runs them as a ``torch.optim.Optimizer``.

A :class:`Transform` is one piece of an optimizer.  Its ``stage`` says where it acts:

``grad``    on the gradient, before the update (clipping, L2, L1 subgradient), in spec order;
``pre``     on the parameters, before the update (decoupled weight decay);
``update``  computes and applies the step (sgd, adam, ...): exactly one per chain;
``post``    on the parameters, after the update (the L1 proximal step).

A transform may act in more than one stage (``stage = ("grad", "post")``, like ``l1``, whose
mode chooses between a subgradient and a proximal step); ``ctx.stage`` tells it which one runs.
So ``adam+clip_norm`` and ``clip_norm+adam`` are the same optimizer: the clip always sees the
gradient before Adam does.  Transforms never write into ``p.grad``: a transform that changes
the gradient writes into a per-parameter scratch buffer (``ctx.buffer``), allocated once.  (The
one exception is opt-in: under ``fused=True`` a clip folded into torch's fused Adam or SGD kernel
leaves the clipped gradient in ``p.grad``, as ``torch.nn.utils.clip_grad_norm_`` does.)

State lives in ``optimizer.state[p]`` so that ``state_dict()`` works.  The update transform
owns the top level of that dict with torch.optim's key names (``exp_avg``, ``momentum_buffer``...);
any other stateful transform gets ``state[p][transform.name]``.

Hyperparameters live in ``param_groups``.  The update transform's use torch.optim's names
unqualified (``lr``, ``betas``...), so ``torch.optim.lr_scheduler`` works unchanged; the other
transforms' are qualified with the transform's name (``clip_norm.max_norm``, ``l2.weight``).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import torch

from .spec import Hyper

STAGES = ("grad", "pre", "update", "post")
SCRATCH_MIN = 1 << 16  # elements: below this, per-step results are allocated instead of kept


class Transform:
    """Base class of every gradient transform; subclass it and register it from a plugin.

    Class attributes describe it: ``name``, ``description``, ``hyperparameters`` (a tuple of
    :class:`~gdzoo.spec.Hyper`), ``stage`` (see the module doc) and ``stateful``.
    Override :meth:`update` (one parameter group at a time) or, for a transform that needs
    every parameter at once like a global norm clip, :meth:`step`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hyperparameters: ClassVar[tuple[Hyper, ...]] = ()
    stage: ClassVar[str | tuple[str, ...]] = "grad"
    stateful: ClassVar[bool] = False
    # Optional, for Chain(fused=True).  An update transform with a torch fused kernel sets
    # ``native`` (True: use it always; "whole": only when it does the whole chain) and the folds
    # its kernel can do, in the kernel's order, and implements can_fold() and native_step().
    native: ClassVar[bool | str] = False
    native_folds: ClassVar[tuple[str, ...]] = ()
    # A stateless grad-stage transform whose work such a kernel can do in its own pass names that
    # work ("grad_scale": one factor per group dividing every grad; "weight_decay": grad +=
    # weight * param) and returns its per-group values from fold_values().
    fold: ClassVar[str | None] = None

    def fold_values(self, groups: list["GroupView"], ctx: "Chain") -> list[Any]:
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
        raise NotImplementedError(f"transform {self.name!r} declares native={self.native!r} but no native_step()")

    def check(self, hp: dict[str, Any]) -> None:
        """Raise ValueError (torch's wording where torch has one) if ``hp`` is invalid."""

    def update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict],
               hp: dict[str, Any], ctx: "Chain") -> None:
        """Act on one parameter group: ``grads[i]`` is the gradient of ``params[i]`` so far.

        A grad-stage transform replaces entries of ``grads`` (never writing into ``p.grad``);
        other stages change ``params`` in place.  ``states[i]`` is this transform's state for
        ``params[i]`` (an empty dict when the transform is not stateful).
        """
        raise NotImplementedError(f"transform {self.name!r} implements neither update() nor step()")

    def step(self, groups: list["GroupView"], ctx: "Chain") -> None:
        """Act on all parameter groups of one optimizer step (default: :meth:`update` per group)."""
        for g in groups:
            self.update(g.params, g.grads, g.states, g.hp, ctx)


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



class Chain(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs an ordered chain of transforms.

    Build one with :func:`gdzoo.optimizer`; ``Chain(params, links, defaults)`` is the low-level
    constructor (``defaults`` maps group keys to values).  With ``batch=K`` every parameter has a
    leading dimension of K configurations, and a hyperparameter may be a float64 tensor of shape
    [K] (one value per configuration; see :mod:`gdzoo.ops`).

    With ``fused=True`` the update runs torch's own fused CPU kernel where torch has one and the
    optimizer declares it: Adam and AdamW always (``native = True``: twice as fast as Inductor's
    code for them), SGD when the kernel can do the whole chain (``native = "whole"``).  The
    grad-stage transforms the kernel can do for it (``Transform.fold``: clip_norm as its gradient
    scale, l2 as its weight decay) run inside that kernel, so that ``adam+clip_norm+l2`` is one
    norm pass and one update pass; other transforms run eagerly before it.  Otherwise every step
    after the first runs the whole chain as one ``torch.compile``d function (Inductor fuses it
    into a pass or two over memory): worth its compile time (seconds) for large parameters.  The learning rate enters as
    data, so schedulers do not recompile it; other hyperparameters are compiled in as constants
    (changing them recompiles).
    """

    def __init__(self, params: Iterable, links: list[Link], defaults: dict[str, Any], spec: str = "",
                 batch: int | None = None, fused: bool = False):
        for link in links:
            bad = [s for s in link.stages if s not in STAGES] or \
                (["update"] if "update" in link.stages and len(link.stages) > 1 else [])
            if bad:
                raise ValueError(f"transform {link.transform.name!r} has stage {link.transform.stage!r}; "
                                 f"stages are {', '.join(STAGES)} (update alone)")
        updates = [link for link in links if link.stages == ("update",)]
        if len(updates) != 1:
            raise ValueError(f"a chain needs exactly one optimizer (update transform), got {len(updates)}")
        names = [link.transform.name for link in links]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"transform {name!r} appears twice in the chain; give it once")
        self.links = list(links)
        self.schedule = [(stage, link) for stage in STAGES for link in links if stage in link.stages]
        self.stage = ""
        self.spec = spec
        self.batch = batch  # K when parameters carry a leading dimension of K configurations
        self.fused = fused  # run steps (after the first) as one torch.compile'd function...
        # ...unless the optimizer has a native fused kernel: Adam's (native = True) beats Inductor's
        # code even beside eager transforms; SGD's (native = "whole") only when it does the whole chain
        kind = updates[0].transform.native
        plan = self._fold_plan()
        self.native = fused and not batch and (kind is True or (kind == "whole" and plan is not None))
        self._folds = plan if self.native else None
        self._compiled = None
        self._stepped: set[int] = set()
        self._fused_lr: dict[int, torch.Tensor] = {}  # per group: lr enters the compiled step as data
        self._fused_ctx = _Fused(batch)
        lone = self.links[0].transform if len(self.links) == 1 else None
        self._direct = (lone, self.links[0].keys) if lone is not None and not fused \
            and type(lone).step is Transform.step else None
        self._buffers: dict[str, dict[torch.Tensor, torch.Tensor]] = {}  # key -> param -> scratch
        super().__init__(params, defaults)

    def __repr__(self) -> str:
        return f"gdzoo.Chain({self.spec!r}, {len(self.param_groups)} param group(s))"

    def _fold_plan(self) -> tuple[Link, list[Link]] | None:
        """(update link, the other links) when the native kernel can do every other link's work
        (a lone optimizer: no other links).

        The kernel applies its folds in the order it lists them (``native_folds``: scale the
        gradient, then add weight decay); the chain's grad stage must ask for them in that order.
        """
        update = next(link for link in self.links if link.stages == ("update",))
        accepts = update.transform.native_folds
        others = [link for _, link in self.schedule if link is not update]
        kinds = [link.transform.fold for link in others]
        if any(link.stages != ("grad",) or link.transform.stateful for link in others) \
                or any(kind not in accepts for kind in kinds) or len(set(kinds)) != len(kinds) \
                or kinds != sorted(kinds, key=accepts.index):
            return None
        return update, others

    def _apply_folded(self, groups, states) -> bool:
        """The whole chain as one native kernel call per group; False (nothing done) if it can't."""
        update, others = self._folds
        t = update.transform
        hps = [{n: group[k] for n, k in update.keys} for group, _, _ in groups]
        kinds = {link.transform.fold for link in others}
        if not all(t.can_fold(params, hp, kinds, own) for (_, params, _), hp, own in zip(groups, hps, states)):
            return False
        folds: list[dict[str, Any]] = [{} for _ in groups]
        for link in others:
            views = [GroupView(params, grads, [{}] * len(params), {n: group[k] for n, k in link.keys}, group)
                     for group, params, grads in groups]
            for fold, value in zip(folds, link.transform.fold_values(views, self)):
                if value is not None:
                    fold[link.transform.fold] = value
        self.stage = "update"
        for (group, params, grads), own, hp, fold in zip(groups, states, hps, folds):
            t.native_step(params, grads, own, hp, **fold)
        self.stage = ""
        return True

    # --- hyperparameters --------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        known = set(self.defaults) | {"params"}
        unknown = [k for k in param_group if k not in known and not k.startswith("initial_")]
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} in param group; "
                             f"valid: {', '.join(sorted(self.defaults))}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for link in self.links:
                hp = {}
                for name, key in link.keys:
                    hyper = next(h for h in type(link.transform).hyperparameters if h.name == name)
                    value = group[key]
                    group[key] = hp[name] = self._batched(key, value) if _is_batched(value) and self.batch \
                        else hyper.coerce(value)
                for k in range(self.batch or 1):  # each configuration of a batch must be valid alone
                    link.transform.check({n: _config(v, k) for n, v in hp.items()})
                _check_range(group, link)
        except Exception:
            self.param_groups.pop()  # a rejected group must not stay in the optimizer
            raise

    def _batched(self, key: str, value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(self._batched(key, v) for v in value)
        if not isinstance(value, torch.Tensor):
            return value
        if value.numel() != self.batch:
            raise ValueError(f"{key}: {value.numel()} values for a batch of {self.batch}")
        return value.to(torch.float64)

    # --- scratch space ----------------------------------------------------------------------
    def buffer(self, param: torch.Tensor, key: str = "grad") -> torch.Tensor | None:
        """A scratch tensor shaped like ``param``, allocated once and reused every step, or None.

        Its contents are garbage on entry; it is not part of ``state_dict()``.  For parameters
        under ``SCRATCH_MIN`` elements it is None: ops then allocate their result (``out=None``),
        which is cheaper than an ``out=`` call there, while a fresh full-size temporary of a large
        parameter would cost page faults every step.
        """
        if param.numel() < SCRATCH_MIN:
            return None
        table = self._buffers.get(key)
        if table is None:
            table = self._buffers[key] = {}
        buf = table.get(param)
        if buf is None or buf.dtype is not param.dtype or buf.shape != param.shape:
            buf = table[param] = torch.empty_like(param, memory_format=torch.preserve_format)
        return buf

    # --- the step ---------------------------------------------------------------------------
    def _views(self) -> list[tuple[dict, list[torch.Tensor], list[torch.Tensor]]]:
        groups = []
        for group in self.param_groups:
            params, grads = [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"{self.spec or 'gdzoo'} does not support sparse gradients")
                params.append(p)
                grads.append(grad)
            if params:
                groups.append((group, params, grads))
        return groups

    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_mode = torch.is_grad_enabled()  # as torch.no_grad(), without its per-call objects
        torch.set_grad_enabled(False)
        try:
            self.apply()
        finally:
            torch.set_grad_enabled(grad_mode)
        return loss

    def apply(self) -> None:
        """The update itself, without the closure and torch's step hooks; call it under ``torch.no_grad()``.

        gdzoo's engine calls this in its inner loop: torch.optim's hook and profiler machinery
        around ``step()`` costs more than a whole update of a small model.
        """
        groups = self._views()
        if not groups:
            return
        states = [[self.state[p] for p in params] for _, params, _ in groups]
        if self.native:  # torch's own fused kernel: the whole chain in it, or the rest of it eager
            if self._folds is None or not self._apply_folded(groups, states):
                _run(self.schedule, groups, states, self)
        elif self.fused and all(id(p) in self._stepped for _, params, _ in groups for p in params):
            if self._compiled is None:
                # A code object of its own: Dynamo's cache (8 versions) is per code object, and every
                # fused chain with other constants is another version.
                own = types.FunctionType(_run.__code__.replace(), _run.__globals__, f"_run_{len(self.links)}")
                self._compiled = torch.compile(own, dynamic=False)
            fused_groups = []
            for group, params, grads in groups:
                lr = group["lr"]
                if not isinstance(lr, torch.Tensor):  # batched lrs already are data
                    lr = self._fused_lr.get(id(group))
                    if lr is None:
                        lr = self._fused_lr[id(group)] = torch.zeros((), dtype=torch.float64)
                    lr.fill_(group["lr"])
                fused_groups.append(({**group, "lr": lr}, params, grads))
            self._compiled(self.schedule, fused_groups, states, self._fused_ctx)
        elif self._direct is not None:  # a lone optimizer: no views to build, one update per group
            t, keys = self._direct
            self.stage = "update"
            for (group, params, grads), own in zip(groups, states):
                t.update(params, grads, own, {n: group[k] for n, k in keys}, self)
            self.stage = ""
        else:
            _run(self.schedule, groups, states, self)
            if self.fused:  # state now exists: later steps can run compiled
                self._stepped.update(id(p) for _, params, _ in groups for p in params)


def _check_range(group: dict, link: Link) -> None:
    """Numbers the parameters' dtype cannot hold (lr=1e39 for float32) are errors, not divergence."""
    dtypes = {p.dtype for p in group["params"] if p.is_floating_point()}
    if not dtypes:
        return
    dtype = min(dtypes, key=lambda d: torch.finfo(d).max)
    limit = torch.finfo(dtype).max
    for name, key in link.keys:
        values = group[key] if isinstance(group[key], tuple) else (group[key],)
        for value in values:
            numbers = value.tolist() if isinstance(value, torch.Tensor) else [value]
            for x in numbers:
                if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) > limit:
                    raise ValueError(f"{key}={x:g} does not fit in {str(dtype).replace('torch.', '')} parameters "
                                     f"(largest: {limit:.3g})")


def _is_batched(value: Any) -> bool:
    """A per-configuration value: a 1-D tensor, or a tuple holding one (betas)."""
    if isinstance(value, tuple):
        return any(_is_batched(v) for v in value)
    return isinstance(value, torch.Tensor) and value.dim() == 1


def _config(value: Any, k: int) -> Any:
    """Configuration k's value of a possibly batched hyperparameter."""
    if isinstance(value, tuple):
        return tuple(_config(v, k) for v in value)
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return value[k].item()
    return value


class _Fused:
    """The ``ctx`` of a compiled step: no scratch buffers (functional ops let Inductor fuse them)."""

    def __init__(self, batch: int | None):
        self.batch = batch
        self.stage = ""

    def buffer(self, param, key="grad"):
        return None


def _run(schedule, groups, param_states, ctx) -> None:
    """One step of a chain: every stage's transforms, over every group's parameters with a grad."""
    # Transforms replace entries of these lists: copies keep that local (compiled, a replaced entry
    # of a caller's list would have to be returned as a fresh full-size tensor every step).
    groups = [(group, params, list(grads)) for group, params, grads in groups]
    for stage, link in schedule:
        t = link.transform
        views = []
        for (group, params, grads), states in zip(groups, param_states):
            if stage == "update":
                own = states
            elif t.stateful:
                own = [s.setdefault(t.name, {}) for s in states]
            else:
                own = [{}] * len(params)
            views.append(GroupView(params, grads, own, {n: group[k] for n, k in link.keys}, group))
        ctx.stage = stage
        t.step(views, ctx)
    ctx.stage = ""


def step_counter() -> torch.Tensor:
    """A fresh step count, stored as torch.optim stores it (a 0-d float tensor)."""
    return torch.tensor(0.0, dtype=torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32)
