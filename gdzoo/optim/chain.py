"""The Chain optimizer: an ordered chain of transforms behind ``torch.optim.Optimizer``.

This is the one place that decides how a step runs.  Transforms write their math once (see
:mod:`gdzoo.optim.transform`); the chain picks, from what they declare:

- eager: every stage's transforms in turn, with scratch buffers of their own;
- native (``fused=True``, an optimizer with torch's fused kernel): the kernel, with the grad-stage
  transforms it can do folded into its pass, the others eagerly before it;
- compiled (``fused=True`` otherwise): every step after the first as one ``torch.compile``d
  function, which falls back to the eager step, with one warning, if compilation fails;
- batched (``batch=K``): parameters carry a leading dimension of K configurations, only for
  transforms that declare ``batched``;
- complex parameters as ``torch.view_as_real`` pairs (transforms that declare ``complex``), and
  sparse gradients (transforms that declare ``sparse``), as torch.optim handles them.

Inside a training step that the user compiles (``torch.compile`` of forward, backward and
``opt.step()``), the chain's step is traced into the user's graph like torch.optim's, and never
compiles a function of its own; torch's fused kernels run outside the graph, as torch.optim's
fused Adam and SGD run them.  A step with a sparse gradient runs eagerly (neither torch's fused
kernels nor Inductor take sparse tensors).
"""

from __future__ import annotations

import difflib
import math
import types
import warnings
from collections.abc import MutableMapping
from typing import Any, Iterable

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .transform import STAGES, EagerContext, GroupView, Link, StepContext, Transform, check_supports, declares

SCRATCH_MIN = 1 << 16  # elements: below this, per-step results are allocated instead of kept
_PICKLED = ("defaults", "state", "param_groups", "links", "spec", "batch", "fused")  # the rest is derived


class Chain(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs an ordered chain of transforms.

    Build one with :func:`gdzoo.optimizer`; ``Chain(params, links, defaults)`` is the low-level
    constructor (``defaults`` maps group keys to values).  With ``batch=K`` every parameter has a
    leading dimension of K configurations, and a hyperparameter may be a float64 tensor of shape
    [K] (one value per configuration; see :mod:`gdzoo.ops`).

    With ``fused=True`` the update runs torch's own fused CPU kernel where the optimizer has one
    (Adam and AdamW always: twice as fast as Inductor's code for them; SGD when the kernel can do
    the whole chain).  The grad-stage transforms the kernel can do for it (``Transform.fold``:
    clip_norm as its gradient scale, l2 as its weight decay) run inside that kernel, so that
    ``adam+clip_norm+l2`` is one norm pass and one update pass; other transforms run eagerly
    before it.  Otherwise every step after the first runs the whole chain as one
    ``torch.compile``d function (Inductor fuses it into a pass or two over memory): worth its
    compile time (seconds) for large parameters.  The learning rate enters as data, so
    schedulers do not recompile it; other hyperparameters are compiled in as constants.

    ``opt.path`` says which of ``eager``, ``native`` and ``compiled`` this chain takes.
    """

    def __init__(self, params: Iterable, links: list[Link], defaults: dict[str, Any], spec: str = "",
                 batch: int | None = None, fused: bool = False):
        for link in links:
            bad = [s for s in link.stages if s not in STAGES] or \
                (["update"] if "update" in link.stages and len(link.stages) > 1 else [])
            if bad:
                raise ValueError(f"transform {link.transform.name!r} has stage {link.transform.stage!r}; "
                                 f"stages are {', '.join(STAGES)} (update alone)")
            check_supports(link.transform, f"transform {link.transform.name!r}")
        updates = [link for link in links if link.stages == ("update",)]
        if len(updates) != 1:
            raise ValueError(f"a chain needs exactly one optimizer (update transform), got {len(updates)}")
        names = [link.transform.name for link in links]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"transform {name!r} appears twice in the chain; give it once")
        if batch:
            missing = [link.transform.name for link in links if not declares(link.transform, "batched")]
            if missing:
                raise ValueError(f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not declare "
                                 f"batched support (supports = ('batched',)); train its configurations separately")
        self.links = list(links)
        self.spec = spec
        self.batch = batch  # K when parameters carry a leading dimension of K configurations
        self.fused = fused
        self._prepare()
        super().__init__(params, defaults)

    def _prepare(self) -> None:
        """Everything derived from the links and flags (rebuilt after unpickling and deepcopy)."""
        self.order = [(stage, link) for stage in STAGES for link in self.links if stage in link.stages]
        update = next(link.transform for link in self.links if link.stages == ("update",))
        plan = self._fold_plan()
        self.path = "eager"
        if self.fused:
            preferred = update.native_preferred or getattr(update, "native", None) is True  # 0.1's flag
            native = not self.batch and update.has_native() and (plan is not None or preferred)
            self.path = "native" if native else "compiled"
        self._folds = plan if self.path == "native" else None
        self._compiled = None
        self._compile_failed = False
        self._stepped = WeakIdKeyDictionary()  # parameters whose state exists (tensors hash by id)
        self._fused_lr: dict[int, torch.Tensor] = {}  # per group index: lr enters the compiled step as data
        self.ctx = EagerContext(self, self.batch)
        self._compiled_ctx = StepContext(self, self.batch, scratch=False)  # functional ops for Inductor
        lone = self.links[0] if len(self.links) == 1 else None
        self._direct = lone if lone is not None and self.path == "eager" \
            and type(lone.transform).step is Transform.step else None
        self._buffers: dict[tuple[str, str], WeakIdKeyDictionary] = {}
        self._complex: dict[int, torch.Tensor] = {}  # this step: id of a real view -> its complex tensor

    @property
    def native(self) -> bool:
        """Whether steps run torch's own fused kernel (``fused=True`` with an optimizer that has one)."""
        return self.path == "native"

    def __repr__(self) -> str:
        return f"gdzoo.Chain({self.spec!r}, {len(self.param_groups)} param group(s))"

    # --- copies: deepcopy, pickle, torch.save(opt) ------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # torch.optim keeps defaults, state and param_groups: hooks, and the step wrappers that
        # schedulers and trainers set on the instance, stay behind, as torch's do.  A chain also
        # needs its links and flags; everything derived from them is rebuilt on load.
        return {k: self.__dict__[k] for k in _PICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # also what load_state_dict calls, with state and param_groups
        if "links" in state:
            self._prepare()
        if "differentiable" not in {key for link in self.links for _, key in link.keys}:
            self.defaults.pop("differentiable", None)  # torch's __setstate__ adds it; not a chain's
        self._stepped.update((p, True) for p, s in self.state.items() if s and isinstance(p, torch.Tensor))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's, and a group saved without some of this chain's hyperparameters (a
        torch.optim.Adam state_dict loaded into ``adam+clip_norm``) keeps the chain's values."""
        before = [dict(group) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, old in zip(self.param_groups, before):
            for key, value in old.items():
                group.setdefault(key, value)

    def _fold_plan(self) -> tuple[Link, list[Link]] | None:
        """(update link, the other links) when the native kernel can do every other link's work
        (a lone optimizer: no other links).

        The kernel applies its folds in the order it lists them (``native_folds``: scale the
        gradient, then add weight decay); the chain's grad stage must ask for them in that order.
        """
        update = next(link for link in self.links if link.stages == ("update",))
        accepts = update.transform.native_folds
        others = [link for _, link in self.order if link is not update]
        kinds = [link.transform.fold for link in others]
        if any(link.stages != ("grad",) or link.transform.stateful for link in others) \
                or any(kind not in accepts for kind in kinds) or len(set(kinds)) != len(kinds) \
                or kinds != sorted(kinds, key=accepts.index):
            return None
        return update, others

    # --- hyperparameters --------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        known = set(self.defaults) | {"params"}
        # keys that schedulers and wrappers (ZeroRedundancyOptimizer) carry over are let through,
        # but not a misspelt hyperparameter ("initial_acumulator_value")
        unknown = [k for k in param_group if k not in known and not (k.startswith("initial_")
                   and not difflib.get_close_matches(k, list(self.defaults), n=1, cutoff=0.8))]
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} in param group; "
                             f"valid: {', '.join(sorted(self.defaults))}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if any(p.is_complex() for p in group["params"]):
                missing = [link.transform.name for link in self.links if not declares(link.transform, "complex")]
                if missing:
                    raise ValueError(f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not support "
                                     f"complex parameters (a transform declares supports = ('complex',) when its "
                                     f"math is elementwise); view them as real with torch.view_as_real")
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
    def _origin(self, tensor: torch.Tensor) -> torch.Tensor:
        """The parameter a tensor handed to transforms stands for: the complex parameter of a
        real view made this step, else the tensor itself."""
        return self._complex.get(id(tensor), tensor)

    def is_complex(self, tensor: torch.Tensor) -> bool:
        """Whether a tensor handed to transforms this step is the real view of a complex parameter
        (or of its gradient)."""
        return id(tensor) in self._complex

    def _buffer(self, param: torch.Tensor, owner: str, key: str) -> torch.Tensor | None:
        """Transform ``owner``'s scratch tensor ``key`` shaped like ``param`` (see StepContext.buffer).

        For parameters under ``SCRATCH_MIN`` elements it is None: ops then allocate their result
        (``out=None``), which is cheaper than an ``out=`` call there, while a fresh full-size
        temporary of a large parameter would cost page faults every step.
        """
        if param.numel() < SCRATCH_MIN:
            return None
        base = self._origin(param)  # a complex parameter's real view is made afresh every step
        grad = base.grad
        if grad is not None and grad.is_sparse:
            return None
        table = self._buffers.get((owner, key))
        if table is None:
            table = self._buffers[(owner, key)] = WeakIdKeyDictionary()
        buf = table.get(base)
        if buf is None or buf.dtype is not param.dtype or buf.shape != param.shape:
            buf = table[base] = torch.empty_like(param, memory_format=torch.preserve_format)
        return buf

    # --- the step ---------------------------------------------------------------------------
    def _views(self) -> tuple[list[tuple[dict, list[torch.Tensor], list[torch.Tensor]]], list[list[dict]], bool]:
        """Per group with a gradient: (group, params, grads); the params' state dicts; and whether
        any gradient is sparse.

        Complex parameters, their gradients and their state are handed on as real views; a sparse
        gradient is refused unless every transform declares ``sparse``."""
        groups, states, sparse = [], [], False
        if self._complex:  # last step's real views (no fresh dict on the hot path otherwise)
            self._complex = {}
        for group in self.param_groups:
            params, grads, own = [], [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    sparse = True
                    missing = [link.transform.name for link in self.links if not declares(link.transform, "sparse")]
                    if missing:
                        raise RuntimeError(f"{self.spec or 'gdzoo'}: {', '.join(missing)} "
                                           f"{'does' if len(missing) == 1 else 'do'} not support sparse gradients")
                if p.is_complex():
                    real, real_grad = torch.view_as_real(p), _real_grad(grad)
                    self._complex[id(real)] = p
                    self._complex[id(real_grad)] = p
                    params.append(real)
                    grads.append(real_grad)
                    own.append(_RealView(self.state[p], p.shape))
                else:
                    params.append(p)
                    grads.append(grad)
                    own.append(self.state[p])
            if params:
                groups.append((group, params, grads))
                states.append(own)
        return groups, states, sparse

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
        groups, states, sparse = self._views()
        if not groups:
            return
        # Inside a training step the user compiles, the step is traced (or run, in a frame Dynamo
        # gave back to Python) as torch.optim's is: no torch.compile of the chain's own, no scratch
        # buffers, and torch's fused kernels called outside the graph, as torch.optim calls them.
        compiling = _in_compile()
        ctx = self._compiled_ctx if compiling else self.ctx
        if self._direct is not None and not compiling:  # a lone optimizer: one update per group
            link = self._direct
            t, keys = link.transform, link.keys
            ctx.stage, ctx.owner = "update", t.name
            for (group, params, grads), own in zip(groups, states):
                t.update(params, grads, own, {n: group[k] for n, k in keys}, ctx)
            ctx.stage = ctx.owner = ""
        elif self.path == "native" and not sparse:  # torch's fused kernel: the whole chain, or the rest eager
            native = _native_outside_graph if compiling else _native
            if self._folds is None or not self._apply_folded(groups, states, ctx, native):
                _run(self.order, groups, states, ctx, native=native)
        elif self.path == "compiled" and not (compiling or sparse or self._compile_failed) \
                and all(p in self._stepped for _, params, _ in groups for p in map(self._origin, params)):
            self._apply_compiled(groups, states)
        else:  # eager; sparse gradients (neither torch's kernels nor Inductor take them) and compiled
            _run(self.order, groups, states, ctx)
            if self.path == "compiled" and not compiling:  # state now exists: later steps can run compiled
                self._stepped.update((p, True) for _, params, _ in groups for p in map(self._origin, params))

    def _apply_folded(self, groups, states, ctx, native) -> bool:
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
            ctx.stage, ctx.owner = "grad", link.transform.name
            for fold, value in zip(folds, link.transform.fold_values(views, ctx)):
                if value is not None:
                    fold[link.transform.fold] = value
        ctx.stage, ctx.owner = "update", t.name
        for (group, params, grads), own, hp, fold in zip(groups, states, hps, folds):
            native(t, params, grads, own, hp, fold)
        ctx.stage = ctx.owner = ""
        return True

    def _apply_compiled(self, groups, states) -> None:
        if self._compiled is None:
            # A code object of its own: Dynamo's cache (8 versions) is per code object, and every
            # fused chain with other constants is another version.  fullgraph: a chain that cannot
            # be compiled fails before anything runs, so the eager step can take over.
            own = types.FunctionType(_run.__code__.replace(), _run.__globals__, f"_run_{len(self.links)}",
                                     _run.__defaults__)
            self._compiled = torch.compile(own, dynamic=False, fullgraph=True)
        fused_groups = []
        for index, (group, params, grads) in enumerate(groups):
            lr = group.get("lr")
            if isinstance(lr, (int, float)) and not isinstance(lr, bool):  # batched lrs already are data
                holder = self._fused_lr.get(index)
                if holder is None:
                    holder = self._fused_lr[index] = torch.zeros((), dtype=torch.float64)
                holder.fill_(lr)
                group = {**group, "lr": holder}
            fused_groups.append((group, params, grads))
        try:
            self._compiled(self.order, fused_groups, states, self._compiled_ctx)
        except Exception as exc:  # torch.compile could not build this chain: the eager step is exact
            self._compile_failed = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            warnings.warn(f"gdzoo: {self.spec or 'this chain'}: torch.compile failed ({type(exc).__name__}: "
                          f"{first[:200]}); running the eager step instead", RuntimeWarning, stacklevel=3)
            _run(self.order, groups, states, self.ctx)


class _RealView(MutableMapping):
    """A complex parameter's state, seen as real: complex tensors come out as ``view_as_real``,
    and a tensor of the real view's shape that a transform stores goes in as complex (so the
    state is what torch.optim keeps for a complex parameter)."""

    def __init__(self, state: dict, shape: torch.Size):
        self._state, self._real_shape = state, tuple(shape) + (2,)

    def __getitem__(self, key):
        value = self._state[key]
        if isinstance(value, torch.Tensor) and value.is_complex():
            if value.is_sparse:  # a sparse view_as_real is a copy: keep the real form, for in-place updates
                value = self._state[key] = _real_grad(value)
                return value
            return torch.view_as_real(value)
        if isinstance(value, dict):
            return _RealView(value, self._real_shape[:-1])
        return value

    def __setitem__(self, key, value):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.is_sparse \
                and tuple(value.shape) == self._real_shape:
            try:
                value = torch.view_as_complex(value)
            except RuntimeError:  # not viewable (strides): keep it real
                pass
        self._state[key] = value

    def __delitem__(self, key):
        del self._state[key]

    def __iter__(self):
        return iter(self._state)

    def __len__(self):
        return len(self._state)

    def setdefault(self, key, default=None):
        if key not in self._state:
            self[key] = default
        return self[key]


def _real_grad(grad: torch.Tensor) -> torch.Tensor:
    """A complex gradient as real pairs; a sparse one stays sparse, its values viewed as pairs
    (a hybrid sparse tensor shaped like the parameter's real view)."""
    if not grad.is_sparse:
        return torch.view_as_real(grad)
    grad = grad.coalesce()
    return torch.sparse_coo_tensor(grad._indices(), torch.view_as_real(grad._values()), grad.shape + (2,),
                                   is_coalesced=True)


try:
    from torch._C._dynamo.eval_frame import get_eval_frame_callback as _eval_frame_callback
except ImportError:  # an older torch: only a traced step is recognised
    _eval_frame_callback = None


def _in_compile() -> bool:
    """Whether this step runs inside a ``torch.compile``d function: traced by Dynamo, or in a frame
    of it that Dynamo left to Python after a graph break (where ``is_compiling()`` is False, but
    a torch.compile of the chain's own would nest inside the user's)."""
    if torch.compiler.is_compiling():
        return True
    return _eval_frame_callback is not None and _eval_frame_callback() not in (None, False)


def _native(t: Transform, params, grads, states, hp, folds) -> None:
    t.native_step(params, grads, states, hp, **folds)


# In a compiled training step torch's fused kernels run outside the graph, as torch.optim's fused
# Adam and SGD run them (torch._fused_sgd_ has no fake kernel; state made inside a graph cannot
# be handed to torch._fused_adam_).  The step's other work stays in the graph.  (torch's lazy
# form of torch.compiler.disable: importing gdzoo does not import Dynamo.)
_native_outside_graph = torch._disable_dynamo(_native)


def _run(order, groups, param_states, ctx, native=None) -> None:
    """One step of a chain: every stage's transforms, over every group's parameters with a grad;
    with ``native`` (how to call it), the update runs torch's fused kernel in the groups where it can."""
    # Transforms replace entries of these lists: copies keep that local (compiled, a replaced entry
    # of a caller's list would have to be returned as a fresh full-size tensor every step).
    groups = [(group, params, list(grads)) for group, params, grads in groups]
    for stage, link in order:
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
        ctx.stage, ctx.owner = stage, t.name
        if native is not None and stage == "update":
            for v in views:
                if t.can_fold(v.params, v.hp, set(), v.states):
                    native(t, v.params, v.grads, v.states, v.hp, {})
                else:
                    t.update(v.params, v.grads, v.states, v.hp, ctx)
        else:
            t.step(views, ctx)
    ctx.stage = ctx.owner = ""


def _check_range(group: dict, link: Link) -> None:
    """Numbers the parameters' dtype cannot hold (lr=1e39 for float32) are errors, not divergence."""
    dtypes = {p.real.dtype if p.is_complex() else p.dtype for p in group["params"] if p.is_floating_point() or p.is_complex()}
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


