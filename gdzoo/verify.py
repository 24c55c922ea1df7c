"""The conformance kit: the checks gdzoo's own tests apply to the built-ins, for any component.

``gdzoo verify NAME...`` runs them from the command line; :func:`run_checks` from Python; and
:func:`parametrize_with_checks` in a plugin author's own test suite, in the style of
scikit-learn's ``parametrize_with_checks``::

    from gdzoo.verify import parametrize_with_checks

    @parametrize_with_checks(["my_optimizer", "my_transform"],
                             expected_failures={("my_optimizer", "sparse"): "why it fails"})
    def test_gdzoo_conformance(subject, check):
        check(subject)

**What is checked.**  Every check takes a :class:`Subject` (a registered optimizer or transform
and the spec that builds it: an optimizer ``NAME`` is built as the spec ``NAME``, a transform
``NAME`` as ``sgd:lr=0.01+NAME``, SGD being the host optimizer) and returns normally when it
passes, raises :class:`SkipCheck` when it does not apply (the reason says why) and raises an
exception (an ``AssertionError`` with the reason) when it fails.  :data:`CHECKS` lists them, in
the order they run; their names are what ``--check`` and ``expected_failures`` take.  They use
small problems (a few parameters, 5 to 50 steps): a component takes a few seconds, most of it
in ``fused_equals_eager`` when the chain is compiled (torch.compile, which resets Dynamo).

Many checks also run *variants* of the component's own hyperparameters, one at a time: each
boolean flipped, each other choice of a string option, each float that defaults to 0 set to 0.1,
and all of those at once (a variant that the component refuses is left out), so that the code
behind ``amsgrad=true`` or ``mode=prox`` is checked too.  ``batched_equals_separate`` moreover
gives every float hyperparameter of the chain 3 values across the batch, one at a time and all
together; ``complex`` compares complex parameters with their real and imaginary parts trained as
separate real parameters.

**Expected failures.**  A component that knowingly fails a check declares it on its class,
with the reason, and the check is then reported as ``xfail`` instead of failed::

    class MyOptimizer(gdzoo.Transform):
        expected_failures = {"sparse": "sparse gradients need a dense second moment"}

A declared check that passes is reported as failed (a stale declaration hides a fix), and so is
a declaration naming a check that does not exist.  The Python forms also take
``expected_failures={(name, check): reason}`` (or ``{check: reason}`` for :func:`run_checks`).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
import time
import unittest
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from .errors import SpecError, UnknownComponent
from .optim.spec import format_value
from .optim.transform import declares
from .plugins.registry import Component, Registry, default_registry

HOST = "sgd:lr=0.01"  # the optimizer a transform is verified behind
STATUSES = ("passed", "failed", "skipped", "xfail")
F64, F32 = torch.float64, torch.float32
SHAPES = ((4, 3), (3,))  # a small model: a weight matrix and a bias
K = 3  # configurations in the batched check
FUSED_STEPS = 5  # compiled from the second step on: a few compiled steps say it all
FUSED_RTOL = 1e-6  # float32, relative to the largest element of each parameter
LR_GRID = (0.1, 0.01, 1e-3)  # tried after the default lr when the loss must decrease
DECREASE = 0.9  # "the loss decreases": by at least 10% within the budget


class SkipCheck(unittest.SkipTest):
    """A check that does not apply to this component; the message says why.

    It is a ``unittest.SkipTest``, so a check called inside a pytest test is reported as skipped.
    """


@dataclass(frozen=True)
class CheckResult:
    """One check of one component: status is passed, failed, skipped or xfail."""

    name: str  # the component
    check: str
    status: str
    reason: str = ""
    seconds: float = 0.0

    def as_row(self) -> dict[str, Any]:
        return {"component": self.name, "check": self.check, "result": self.status, "reason": self.reason}


class Subject:
    """A registered optimizer or transform, and how the checks build it into an optimizer."""

    def __init__(self, component: Component, registry: Registry):
        if component.kind not in ("optimizer", "transform"):
            raise ValueError(f"gdzoo verify checks optimizers and transforms, not a {component.kind}")
        self.component = component
        self.registry = registry
        self.name = component.name
        self.kind = component.kind
        self.spec = self.spec_with()
        self._probe = None

    def __repr__(self) -> str:  # pytest shows it in ids
        return self.name

    def spec_with(self, **values: Any) -> str:
        """The spec of this component with some of its own hyperparameters set."""
        opts = ",".join(f"{k}={format_value(v)}" for k, v in values.items())
        element = f"{self.name}:{opts}" if opts else self.name
        return element if self.kind == "optimizer" else f"{HOST}+{element}"

    def build(self, params, values: dict[str, Any] | None = None, **kwargs):
        """The optimizer over ``params``: this component with ``values`` (its own hyperparameters)
        in the spec; ``kwargs`` go to :meth:`Registry.optimizer` (``lr=``, ``batch=``, ``fused=``...)."""
        return self.registry.optimizer(self.spec_with(**(values or {})), params, **kwargs)

    def key(self, hyper: str) -> str:
        """The ``param_groups`` key of one of this component's hyperparameters."""
        return hyper if self.kind == "optimizer" else f"{self.name}.{hyper}"

    @property
    def probe(self):
        """The optimizer built once over a throw-away parameter: its links and defaults."""
        if self._probe is None:
            self._probe = self.build([torch.zeros(2, dtype=F64, requires_grad=True)])
        return self._probe

    @property
    def lr(self) -> float | None:
        value = self.probe.defaults.get("lr")
        return float(value) if _is_number(value) else None

    def lacking(self, capability: str) -> list[str]:
        """The chain's transforms that do not declare ``capability``."""
        return [link.transform.name for link in self.probe.links if not declares(link.transform, capability)]

    def expected_failures(self) -> dict[str, str]:
        """The expected failures declared by this component's class (and every class in its chain)."""
        classes = [self.component.obj] if isinstance(self.component.obj, type) else []
        try:
            classes += [type(link.transform) for link in self.probe.links]
        except Exception:  # the checks will report why it cannot be built
            pass
        declared: dict[str, str] = {}
        for cls in classes:
            table = getattr(cls, "expected_failures", None) or {}
            if not isinstance(table, dict):
                raise TypeError(f"{cls.__name__}.expected_failures must be a dict of check name -> reason")
            for check, reason in table.items():
                declared.setdefault(str(check), str(reason))
        return declared


def subject(name: str | Subject, registry: Registry | None = None) -> Subject:
    """The :class:`Subject` of a registered optimizer or transform (UnknownComponent if neither)."""
    if isinstance(name, Subject):
        return name
    registry = registry if registry is not None else default_registry()
    for kind in ("optimizer", "transform"):
        if name in registry.tables[kind]:
            return Subject(registry.tables[kind][name], registry)
    raise UnknownComponent("optimizer or transform", name, registry.names("optimizer") + registry.names("transform"))


# --- the checks -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """A named check: ``check(subject)`` returns (perhaps a note) or raises."""

    name: str
    function: Callable[[Subject], Any]
    doc: str

    def __call__(self, subject: Subject) -> Any:
        return self.function(subject)

    def __repr__(self) -> str:
        return self.name


CHECKS: dict[str, Check] = {}


def _check(name: str):
    def register(function):
        doc = " ".join((function.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        CHECKS[name] = Check(name, function, doc)
        return function
    return register


# helpers ---------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _start(dtype=F64, seed=0, shapes=SHAPES, lead=()) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(lead) + s, generator=gen, dtype=F64).to(dtype).requires_grad_() for s in shapes]


def _copies(params) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def _coefs(params, seed=1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype) for p in params]


def _grad(p: torch.Tensor, c: torch.Tensor, t: int) -> torch.Tensor:
    """The gradient of sum(x⁴/4 − x²/2 + cos(0.3 t)·c·x): only elementwise + and ·, so row k of a
    stacked [K, ...] parameter gets bitwise what configuration k's own parameter gets."""
    x = p.detach()
    return x * x * x - x + c * math.cos(0.3 * t)


def _train(opt, params, coefs, steps, start=0) -> None:
    for t in range(start, start + steps):
        for p, c in zip(params, coefs):
            p.grad = _grad(p, c, t)
        opt.step()


def _nan_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    an, bn = torch.isnan(a), torch.isnan(b)
    return torch.equal(an, bn) and torch.equal(torch.where(an, 0, a), torch.where(bn, 0, b))


def _diff(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shape {list(a.shape)} != {list(b.shape)}"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} != {b.dtype}"
    d = (a.double() - b.double()).abs()
    d = torch.where(torch.isnan(d), torch.inf, d)
    return f"max |diff| {d.max().item():.3g} in {int((d != 0).sum())} of {d.numel()} elements"


def _assert_same(actual, expected, what: str) -> None:
    """Bit for bit (NaN where NaN)."""
    for i, (a, b) in enumerate(zip(actual, expected)):
        a, b = a.detach(), b.detach()
        if not _nan_equal(a, b):
            raise AssertionError(f"{what}: parameter {i} differs ({_diff(a, b)})")


def _assert_close(actual, expected, what: str, rtol: float) -> None:
    """Within ``rtol`` of the largest element of each expected parameter."""
    for i, (a, b) in enumerate(zip(actual, expected)):
        a, b = a.detach().double(), b.detach().double()
        scale = b.abs().max().item() if b.numel() else 0.0
        err = (a - b).abs().max().item() if b.numel() else 0.0
        if not (err <= rtol * max(scale, 1e-30)):
            raise AssertionError(f"{what}: parameter {i} differs by {err:.3g}, more than {rtol:g} of its "
                                 f"largest element ({scale:.3g})")


def _assert_moved(params, initial, what: str) -> None:
    if all(torch.equal(p.detach(), q.detach()) for p, q in zip(params, initial)):
        raise AssertionError(f"{what}: the parameters did not move at all, so this check proves nothing")


def _variants(s: Subject) -> list[dict[str, Any]]:
    """{} and the component's own hyperparameters switched on one at a time, then all together."""
    single: list[dict[str, Any]] = []
    for h in s.component.hyperparameters:
        if h.kind == "bool" and isinstance(h.default, bool):
            single.append({h.name: not h.default})
        elif h.kind == "str" and h.choices:
            single += [{h.name: c} for c in h.choices if c != h.default]
        elif h.kind == "float" and h.default == 0 and _is_number(h.default):
            single.append({h.name: 0.1})
    together: dict[str, Any] = {}
    for v in single:
        for k, value in v.items():
            together.setdefault(k, value)
    candidates = single + ([together] if len(single) > 1 else [])
    out: list[dict[str, Any]] = [{}]
    for v in candidates:
        try:
            s.build([torch.zeros(2, dtype=F64, requires_grad=True)], v)
        except (SpecError, ValueError):
            continue
        out.append(v)
    return out


def _label(s: Subject, values: dict[str, Any]) -> str:
    return s.spec_with(**values)


def _extra(s: Subject):
    """The component's first float hyperparameter other than lr with a nonzero default, if any."""
    for h in s.component.hyperparameters:
        if h.kind == "float" and h.name != "lr" and _is_number(h.default) and h.default != 0 \
                and math.isfinite(h.default):
            return h
    return None


def _flat_state(state: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_flat_state(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# 1. it optimizes ------------------------------------------------------------------------------

QUADRATIC_A = (0.5, 1.0, 4.0)


def _quadratic(x):
    a = torch.tensor(QUADRATIC_A, dtype=x.dtype)
    return 0.5 * (a * x * x).sum()


def _rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _lr_grid(s: Subject) -> list[float | None]:
    if s.lr is None:
        return [None]
    grid = [s.lr] + [lr for lr in LR_GRID if lr != s.lr]
    return grid


def _descends(s: Subject, loss_fn, x0, dtype, steps=50):
    """Train from x0 at the default lr, then the grid; the first lr that lowers the loss by 10% wins."""
    tried = []
    for lr in _lr_grid(s):
        x = torch.tensor(x0, dtype=F64).to(dtype).requires_grad_()
        opt = s.build([x], **({} if lr is None else {"lr": lr}))
        first = float(loss_fn(x.detach().double()))
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(x).backward()
            opt.step()
        if x.dtype != dtype:
            raise AssertionError(f"the parameter's dtype changed from {dtype} to {x.dtype}")
        final = float(loss_fn(x.detach().double()))
        if math.isfinite(final) and final <= DECREASE * first:
            return lr, opt
        tried.append(f"{'default lr' if lr is None else f'lr={lr:g}'}: {first:.4g} -> {final:.4g}")
    raise AssertionError(f"the loss did not fall by {1 - DECREASE:.0%} in {steps} steps at any learning rate "
                         f"tried ({'; '.join(tried)})")


@_check("loss_decreases_quadratic")
def check_loss_decreases_quadratic(s: Subject):
    """The loss of ½·Σ aᵢxᵢ² (a = 0.5, 1, 4) falls by 10% in 50 float64 steps at some lr tried."""
    lr, _ = _descends(s, _quadratic, [1.0, -2.0, 0.5], F64)
    return "" if lr is None or lr == s.lr else f"at lr={lr:g}"


@_check("loss_decreases_rosenbrock")
def check_loss_decreases_rosenbrock(s: Subject):
    """The Rosenbrock loss from (-1.2, 1) falls by 10% in 50 float64 steps at some lr tried."""
    lr, _ = _descends(s, _rosenbrock, [-1.2, 1.0], F64)
    return "" if lr is None or lr == s.lr else f"at lr={lr:g}"


def _dtype_check(s: Subject, dtype, state_dtype: bool):
    lr, _ = _descends(s, _quadratic, [1.0, -2.0, 0.5], dtype)
    for values in _variants(s):
        params = _start(dtype)
        opt = s.build(params, values)
        _train(opt, params, _coefs(params), 3)
        for i, p in enumerate(params):
            if p.dtype != dtype:
                raise AssertionError(f"{_label(s, values)}: parameter {i} became {p.dtype}")
            if not bool(torch.isfinite(p).all()):
                raise AssertionError(f"{_label(s, values)}: parameter {i} is not finite after 3 steps")
            if state_dtype:
                for key, value in _flat_state(opt.state[p]).items():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape and value.dtype != dtype:
                        raise AssertionError(f"{_label(s, values)}: state {key!r} of a {dtype} parameter is "
                                             f"{value.dtype} (precision silently lost or wasted)")
    return "" if lr is None or lr == s.lr else f"loss falls at lr={lr:g}"


@_check("dtype_float64")
def check_dtype_float64(s: Subject):
    """float64 parameters: the loss falls, parameters and their state stay float64 and finite."""
    return _dtype_check(s, F64, state_dtype=True)


@_check("dtype_float32")
def check_dtype_float32(s: Subject):
    """float32 parameters: the loss falls, parameters and their state stay float32 and finite."""
    return _dtype_check(s, F32, state_dtype=True)


@_check("dtype_bfloat16")
def check_dtype_bfloat16(s: Subject):
    """bfloat16 parameters: the loss falls, parameters stay bfloat16 and finite (state may be wider)."""
    return _dtype_check(s, torch.bfloat16, state_dtype=False)


# 2. the torch.optim.Optimizer contract -----------------------------------------------------------

def _fixed_grads(params, t: int) -> None:
    """Gradients that do not depend on the parameters (so every run sees the same ones)."""
    for i, p in enumerate(params):
        gen = torch.Generator().manual_seed(1000 + i)
        c1 = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
        c2 = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
        p.grad = c1 * math.cos(0.3 * t) + c2 * math.sin(0.7 * t)


@_check("param_groups")
def check_param_groups(s: Subject):
    """Two param groups with different lr (and another hyperparameter) give each group what a
    one-group optimizer with that group's values gives it (global transforms such as clip_norm
    see the same gradients in both)."""
    extra = _extra(s)
    a_values, b_values = {}, {}
    if s.lr is not None:
        a_values["lr"], b_values["lr"] = s.lr, s.lr * 0.5
    if extra is not None:
        a_values[s.key(extra.name)], b_values[s.key(extra.name)] = extra.default, extra.default * 0.5
    for values in _variants(s):
        group_a, group_b = _start(seed=0), _start(seed=1)
        initial = _copies(group_a + group_b)
        two = s.build([{"params": group_a, **a_values}, {"params": group_b, **b_values}], values)
        refs = []
        for own in (a_values, b_values):
            ps = _copies(initial)
            refs.append((ps, s.build([{"params": ps, **own}], values)))
        for t in range(10):
            _fixed_grads(group_a + group_b, t)
            two.step()
            for ps, opt in refs:
                _fixed_grads(ps, t)
                opt.step()
        n = len(group_a)
        _assert_moved(group_a + group_b, initial, _label(s, values))
        _assert_same(group_a, refs[0][0][:n], f"{_label(s, values)}: group 0 ({a_values})")
        _assert_same(group_b, refs[1][0][n:], f"{_label(s, values)}: group 1 ({b_values})")


@_check("missing_and_zero_grads")
def check_missing_and_zero_grads(s: Subject):
    """A parameter whose grad is None (always, or after some steps) does not change; one at zero
    with zero gradients stays zero."""
    for values in _variants(s):
        moving, missing, late = _start(seed=0)[0], _start(seed=1)[0], _start(seed=2)[0]
        zero = torch.zeros(SHAPES[0], dtype=F64, requires_grad=True)
        params = [moving, missing, zero, late]
        missing0 = missing.detach().clone()
        moving0 = moving.detach().clone()
        c = _coefs([moving])[0]
        opt = s.build(params, values)
        label = _label(s, values)
        for t in range(6):
            moving.grad = _grad(moving, c, t)
            zero.grad = torch.zeros_like(zero)
            late.grad = _grad(late, c, t) if t < 3 else None
            if t == 3:
                late3 = late.detach().clone()
            opt.step()
        if not torch.equal(missing.detach(), missing0):
            raise AssertionError(f"{label}: a parameter whose grad is None changed ({_diff(missing, missing0)})")
        if not torch.equal(late.detach(), late3):
            raise AssertionError(f"{label}: a parameter changed in steps where its grad was None "
                                 f"({_diff(late, late3)}); torch.optim skips such parameters")
        if not bool((zero.detach() == 0).all()):
            raise AssertionError(f"{label}: a parameter at 0 with zero gradients moved to "
                                 f"{zero.detach().abs().max().item():.3g} (max |value|)")
        if torch.equal(moving.detach(), moving0):
            raise AssertionError(f"{label}: the parameter with a gradient did not move either")


@_check("state_dict_round_trip")
def check_state_dict_round_trip(s: Subject):
    """state_dict() through torch.save and torch.load(weights_only=True) into a fresh optimizer
    over copies of the parameters resumes bit for bit."""
    for values in _variants(s):
        label = _label(s, values)
        params = _start()
        coefs = _coefs(params)
        opt = s.build(params, values)
        _train(opt, params, coefs, 5)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        try:
            loaded = torch.load(buffer, weights_only=True)
        except Exception as exc:
            raise AssertionError(f"{label}: torch.load(weights_only=True) cannot read its state_dict: "
                                 f"{str(exc).strip().splitlines()[0][:200]}") from None
        copies = _copies(params)
        fresh = s.build(copies, values)
        fresh.load_state_dict(loaded)
        before = _copies(params)
        _train(opt, params, coefs, 5, start=5)
        _train(fresh, copies, coefs, 5, start=5)
        _assert_moved(params, before, label)
        _assert_same(copies, params, f"{label}: after loading its state_dict, 5 more steps")


def _copy_check(s: Subject, make_copy, how: str):
    for values in _variants(s):
        label = _label(s, values)
        params = _start()
        coefs = _coefs(params)
        opt = s.build(params, values)
        _train(opt, params, coefs, 3)
        try:
            params2, opt2 = make_copy((params, opt))
        except Exception as exc:
            raise AssertionError(f"{label}: {how} failed: {type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}") from None
        before = _copies(params)
        _train(opt, params, coefs, 3, start=3)
        _train(opt2, params2, coefs, 3, start=3)
        _assert_moved(params, before, label)
        _assert_same(params2, params, f"{label}: after {how} of (params, optimizer), 3 more steps")


@_check("deepcopy")
def check_deepcopy(s: Subject):
    """copy.deepcopy((params, optimizer)) takes the same next steps as the original."""
    _copy_check(s, copy.deepcopy, "copy.deepcopy")


@_check("pickle")
def check_pickle(s: Subject):
    """pickle of (params, optimizer) takes the same next steps as the original."""
    _copy_check(s, lambda obj: pickle.loads(pickle.dumps(obj)), "pickle")


@_check("lr_scheduler")
def check_lr_scheduler(s: Subject):
    """torch.optim.lr_scheduler.StepLR halves param_groups' lr, and the steps change with it."""
    if s.lr is None:
        raise SkipCheck("no lr hyperparameter")
    runs = []
    for scheduled in (True, False):
        params = _start()
        coefs = _coefs(params)
        opt = s.build(params)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if scheduled else None
        seen = []
        for t in range(6):
            _train(opt, params, coefs, 1, start=t)
            if scheduler is not None:
                scheduler.step()
            seen.append(opt.param_groups[0]["lr"])
        runs.append((params, seen))
    expected = [s.lr * 0.5 ** ((t + 1) // 2) for t in range(6)]
    seen = runs[0][1]
    if not all(_is_number(a) and math.isclose(a, b, rel_tol=1e-12) for a, b in zip(seen, expected)):
        raise AssertionError(f"param_groups[0]['lr'] after each scheduler step: {seen}, expected {expected}")
    if all(torch.equal(a.detach(), b.detach()) for a, b in zip(runs[0][0], runs[1][0])):
        raise AssertionError("the steps did not change when the scheduler changed lr (is lr read once, "
                             "at construction, instead of from param_groups at every step?)")


@_check("grad_untouched")
def check_grad_untouched(s: Subject):
    """step() leaves every p.grad as it was (the same tensor, the same bits) and keeps no state
    that shares memory with it."""
    for values in _variants(s):
        label = _label(s, values)
        params = _start(shapes=SHAPES + ((256, 257),))  # one above the scratch-buffer threshold
        coefs = _coefs(params)
        opt = s.build(params, values)
        for t in range(3):
            for p, c in zip(params, coefs):
                p.grad = _grad(p, c, t)
            grads = [p.grad for p in params]
            saved = [g.clone() for g in grads]
            opt.step()
            for i, (p, g, g0) in enumerate(zip(params, grads, saved)):
                if p.grad is not g:
                    raise AssertionError(f"{label}: step {t + 1} replaced p.grad of parameter {i}")
                if not _nan_equal(g, g0):
                    raise AssertionError(f"{label}: step {t + 1} wrote into p.grad of parameter {i} "
                                         f"({_diff(g, g0)})")
                ptr = g.untyped_storage().data_ptr()
                for key, value in _flat_state(opt.state[p]).items():
                    if isinstance(value, torch.Tensor) and value.numel() and \
                            value.untyped_storage().data_ptr() == ptr:
                        raise AssertionError(f"{label}: state {key!r} of parameter {i} shares memory with "
                                             f"p.grad (a later backward() would change it)")


@_check("closure")
def check_closure(s: Subject):
    """step(closure) runs the closure with gradients enabled, returns its loss, and steps as
    step() after backward() does."""
    params = _start()
    copies = _copies(params)
    coefs = _coefs(params)
    opt, opt2 = s.build(params), s.build(copies)

    def loss_of(ps, t):
        total = 0.0
        for p, c in zip(ps, coefs):
            x2 = p * p
            total = total + (0.25 * x2 * x2 - 0.5 * x2 + math.cos(0.3 * t) * c * p).sum()
        return total

    for t in range(4):
        enabled = []

        def closure():
            enabled.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = loss_of(params, t)
            loss.backward()
            return loss

        with torch.no_grad():
            returned = opt.step(closure)
        if enabled != [True]:
            raise AssertionError(f"step(closure) called the closure {len(enabled)} time(s), with gradients "
                                 f"enabled: {enabled} (expected once, enabled)")
        if not isinstance(returned, torch.Tensor) or returned.dim() != 0:
            raise AssertionError(f"step(closure) returned {returned!r}, not the closure's loss")
        opt2.zero_grad()
        loss_of(copies, t).backward()
        opt2.step()
    _assert_same(params, copies, "step(closure) vs backward() then step()")


@_check("bad_hyperparameters")
def check_bad_hyperparameters(s: Subject):
    """Every float hyperparameter set to nan (and lr=-1) is refused with a message naming it, in
    a spec, as a keyword and in add_param_group."""
    hypers = [h for h in s.component.hyperparameters if h.kind in ("float", "floats")]
    if not hypers:
        raise SkipCheck("no float hyperparameters")
    cases = []
    for h in hypers:
        if h.kind == "float":
            cases.append((h, math.nan))
        else:
            default = tuple(h.default) if isinstance(h.default, (tuple, list)) and h.default else (1.0,)
            cases.append((h, (math.nan,) + default[1:]))
    if any(h.name == "lr" for h in hypers):
        cases.append((next(h for h in hypers if h.name == "lr"), -1))
    problems = []
    for h, value in cases:
        shown = f"{h.name}={format_value(value)}"
        forms = {
            "in a spec": lambda: s.registry.optimizer(s.spec_with(**{h.name: value}), _start()),
            "as a keyword": lambda: s.registry.optimizer(s.spec, _start(), **{s.key(h.name): value}),
            "in add_param_group": lambda: s.build(_start()).add_param_group(
                {"params": _start(seed=1), s.key(h.name): value}),
        }
        for form, attempt in forms.items():
            try:
                attempt()
            except ValueError as exc:  # SpecError is a ValueError
                message = exc.reason if isinstance(exc, SpecError) else str(exc)
                if form != "in add_param_group" and not isinstance(exc, SpecError):
                    problems.append(f"{shown} {form}: raised {type(exc).__name__}, not gdzoo.SpecError")
                elif not _names(message, h.name):
                    problems.append(f"{shown} {form}: the message does not name {h.name}: {message!r}")
                continue
            except Exception as exc:
                problems.append(f"{shown} {form}: raised {type(exc).__name__} ({exc}), not a ValueError")
                continue
            problems.append(f"{shown} {form}: accepted")
    if problems:
        raise AssertionError("; ".join(problems))


_ALIASES = {"lr": ("learning rate",), "eps": ("epsilon",)}


def _names(message: str, name: str) -> bool:
    """Whether an error message names hyperparameter ``name`` (torch's words count: 'learning
    rate' for lr, 'epsilon' for eps, 'beta' for betas)."""
    text = message.lower()
    name = name.lower()
    if name in text or any(alias in text for alias in _ALIASES.get(name, ())):
        return True
    words = re.findall(r"[a-z_][a-z0-9_]*", text)
    return any(w == name.rstrip("s") or (len(name) >= 3 and w.startswith(name)) for w in words)


@_check("deterministic")
def check_deterministic(s: Subject):
    """The same seed gives the same parameters, bit for bit."""
    for values in _variants(s):
        runs = []
        for _ in range(2):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1234)
                params = [torch.randn(shape, dtype=F64).requires_grad_() for shape in SHAPES]
                coefs = [torch.randn(shape, dtype=F64) for shape in SHAPES]
                opt = s.build(params, values)
                _train(opt, params, coefs, 10)
            runs.append(params)
        _assert_same(runs[1], runs[0], f"{_label(s, values)}: two runs from seed 1234")


# 3. what the core does with declared capabilities ------------------------------------------------

def _chain_floats(s: Subject, opt) -> list[tuple[str, Any]]:
    """(group key, Hyper) of every float and floats hyperparameter of every link of ``opt``'s chain,
    the subject's own component's first."""
    links = sorted(opt.links, key=lambda link: link.transform.name != s.name)
    out = []
    for link in links:
        hypers = {h.name: h for h in type(link.transform).hyperparameters}
        for name, key in link.keys:
            h = hypers.get(name)
            if h is not None and h.kind in ("float", "floats"):
                out.append((key, h))
    return out


def _around(base: float) -> list[float]:
    """Candidate values around ``base``, base first: ×½ and ×2, then ×¼, ×¾ and ×1.5 (for a number
    in (0, 1), a step towards 1 instead of one to 1 or past it).  A 0 is varied around 0.1, and an
    infinity around 1: the configurations of one batch agree on which numbers are 0 (see
    gdzoo.ops.nonzero; gdzoo.train.batched.batch_key never batches 0 with non-0), so 0 is not among them."""
    if base == 0:
        base = 0.1
    elif not math.isfinite(base):
        base = 1.0
    inside = 0 < base < 1  # a factor, a decay rate, a probability: stay below 1
    out = [base, base * 0.5, base * 2 if not inside or base * 2 < 1 else 1 - (1 - base) * 0.5,
           base * 0.25, base * 0.75, base * 1.5 if not inside or base * 1.5 < 1 else 1 - (1 - base) * 0.25]
    return list(dict.fromkeys(v for v in out if math.isfinite(v)))


def _valid(s: Subject, values: dict[str, Any], extra: dict[str, Any]) -> bool:
    """Whether the component builds with ``values`` in its spec and ``extra`` as keywords."""
    try:
        s.build([torch.zeros(2, dtype=F64, requires_grad=True)], values, **extra)
    except (SpecError, ValueError):
        return False
    return True


def _spread(s: Subject, values: dict[str, Any], key: str, hyper, base: Any) -> list[Any] | None:
    """K distinct values of one float (or floats, elementwise) hyperparameter around ``base`` that
    the component accepts (with the rest at ``values`` and their defaults); None if fewer than 2."""
    if hyper.kind == "float":
        if not _is_number(base):
            return None
        found = [v for v in _around(float(base)) if _valid(s, values, {key: v})][:K]
    else:
        if not isinstance(base, (tuple, list)) or not base or not all(_is_number(b) for b in base):
            return None
        base = tuple(float(b) for b in base)
        columns = []
        for i, b in enumerate(base):
            column = [v for v in _around(b) if _valid(s, values, {key: base[:i] + (v,) + base[i + 1:]})][:K]
            columns.append(column if len(column) > 1 else [b])
        if all(len(c) == 1 for c in columns):
            return None
        found = []
        for k in range(K):
            candidate = tuple(c[k % len(c)] for c in columns)
            if candidate not in found and _valid(s, values, {key: candidate}):
                found.append(candidate)
    if len(found) < 2:
        return None
    return [found[k % len(found)] for k in range(K)]


def _batched_plans(s: Subject, values: dict[str, Any], singles: bool) -> tuple[list[dict[str, list]], list[str]]:
    """The per-configuration values to run under one variant: every float hyperparameter of the
    chain varied alone (with ``singles``), then all together (each rotated by its position, so
    that no two move in step), and the keys that could not be varied."""
    opt = s.build([torch.zeros(2, dtype=F64, requires_grad=True)], values)
    spreads: dict[str, list[Any]] = {}
    fixed = []
    for key, hyper in _chain_floats(s, opt):
        spread = _spread(s, values, key, hyper, opt.defaults.get(key))
        if spread is None:
            fixed.append(key)
        else:
            spreads[key] = spread
    plans = [{key: spread} for key, spread in spreads.items()] if singles else []
    together: dict[str, list[Any]] = {}
    for j, (key, spread) in enumerate(spreads.items()):
        rotated = [spread[(k + j) % K] for k in range(K)]
        trial = {**together, key: rotated}
        if all(_valid(s, values, {k2: v[k] for k2, v in trial.items()}) for k in range(K)):
            together = trial
    if len(together) > 1 or not singles and together:
        plans.append(together)
    return plans, fixed


def _batched_run(s: Subject, values: dict[str, Any], per: dict[str, list[Any]]) -> None:
    """K configurations (``per``: their values) batched on stacked [K, ...] float64 parameters vs
    K separate optimizers, 10 steps: the parameters and every per-parameter state, bit for bit."""
    label = _label(s, values) + "".join(f", {key}={' | '.join(format_value(v) for v in vs)}"
                                        for key, vs in per.items())
    stacked = _start(lead=(K,))
    coefs = _coefs(_start())  # shared by the K rows
    opt = s.build(stacked, values, batch=K, **per)
    separate = []
    for k in range(K):
        rows = [p.detach()[k].clone().requires_grad_() for p in stacked]
        own = s.build(rows, values, **{key: v[k] for key, v in per.items()})
        _train(own, rows, coefs, 10)
        separate.append((rows, own))
    initial = _copies(stacked)
    try:
        _train(opt, stacked, coefs, 10)
    except Exception as exc:  # say which values it cannot take
        raise AssertionError(f"{label}: the batched step raised {_one_line(exc)}") from None
    _assert_moved(stacked, initial, label)
    for k, (rows, own) in enumerate(separate):
        _assert_same([p[k] for p in stacked], rows, f"{label}: configuration {k} of {K}")
        for p, q in zip(stacked, rows):
            theirs = _flat_state(own.state[q])
            for key, value in _flat_state(opt.state[p]).items():
                other = theirs.get(key)
                if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) \
                        and value.shape == (K,) + tuple(other.shape) and other.dim() > 0:
                    if not _nan_equal(value[k], other):
                        raise AssertionError(f"{label}: state {key!r} of configuration {k} differs "
                                             f"({_diff(value[k], other)})")


@_check("batched_equals_separate")
def check_batched_equals_separate(s: Subject):
    """batch=3 configurations on stacked [3, ...] float64 parameters give bit for bit what 3
    separate optimizers give (where declared): every float hyperparameter of the chain (the host
    SGD's too) takes 3 values, one hyperparameter at a time and then all together.

    The values lie around the default (×½, ×2; for a number in (0, 1) halfway to 1 instead of
    ×2; one that defaults to 0 around 0.1, as a batch agrees on which numbers are 0), and every
    element of a tuple such as betas varies; values the component refuses are left out.  Each
    hyperparameter alone runs with the defaults, and all of them together also under every
    variant of the flags.
    """
    missing = s.lacking("batched")
    if missing:
        raise SkipCheck(f"not declared ({', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not "
                        f"declare supports = ('batched',))")
    varied: list[str] = []
    fixed: list[str] = []
    for values in _variants(s):
        plans, not_varied = _batched_plans(s, values, singles=not values)
        if not values:
            varied = [key for plan in plans if len(plan) == 1 for key in plan]
            fixed = not_varied
        for per in plans or [{}]:
            _batched_run(s, values, per)
    note = f"varied alone and together: {', '.join(varied)}" if varied else "shared hyperparameters only"
    if fixed:
        note += f"; not varied (fewer than 2 accepted values): {', '.join(fixed)}"
    return note


@_check("fused_equals_eager")
def check_fused_equals_eager(s: Subject):
    """fused=True (torch's fused kernel, or the chain compiled) gives the eager numbers within
    1e-6 of each parameter's largest element, in float32."""
    torch._dynamo.reset()  # a fresh Dynamo: its cache per code object holds 8 versions
    try:
        fused_params, eager_params = _start(F32), _start(F32)
        coefs = _coefs(fused_params)
        fused = s.build(fused_params, fused=True)
        eager = s.build(eager_params)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(fused, fused_params, coefs, FUSED_STEPS)
        _train(eager, eager_params, coefs, FUSED_STEPS)
        _assert_moved(eager_params, _start(F32), "eager")
        _assert_close(fused_params, eager_params, f"fused=True ({fused.path}) vs eager after {FUSED_STEPS} steps",
                      FUSED_RTOL)
        failed = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
        if failed:
            return f"path {fused.path}, but it fell back to the eager step: {failed[0][:200]}"
        return f"path {fused.path}"
    finally:
        torch._dynamo.reset()


COMPLEX = ((torch.complex64, F32, 1e-6), (torch.complex128, F64, 1e-12))  # and the tolerance of each
COMPLEX_STEPS = 5


def _complex_and_parts(s: Subject, values: dict[str, Any], cdtype, rdtype):
    """Complex parameters z = a + ib of SHAPES trained by one optimizer, and their parts a and b
    trained as independent real parameters by another (the same spec and values).  Each part's
    gradient is a function of that part's own values (_grad), the same numbers in both runs: the
    complex gradient is torch.complex(grad of a, grad of b)."""
    re, im = _start(rdtype, seed=0), _start(rdtype, seed=1)
    c_re, c_im = _coefs(re, seed=2), _coefs(im, seed=3)
    cplx = [torch.complex(a.detach(), b.detach()).requires_grad_() for a, b in zip(re, im)]
    parts = [t for pair in zip(re, im) for t in pair]
    opt_c, opt_r = s.build(cplx, values), s.build(parts, values)
    initial = _copies(parts)
    for t in range(COMPLEX_STEPS):
        for z, a, b, ca, cb in zip(cplx, re, im, c_re, c_im):
            a.grad, b.grad = _grad(a, ca, t), _grad(b, cb, t)
            zd = z.detach()
            z.grad = torch.complex(_grad(zd.real, ca, t), _grad(zd.imag, cb, t))
        opt_c.step()
        opt_r.step()
    _assert_moved(parts, initial, _label(s, values))
    for i, z in enumerate(cplx):
        if z.dtype != cdtype:
            raise AssertionError(f"{_label(s, values)}: complex parameter {i} became {z.dtype}")
    return cplx, re, im


def _clip_norm_by_modulus(s: Subject, cdtype, rtol: float) -> list[str]:
    """clip_norm with norm_type 1 and inf counts |z| for each complex element, as
    torch.nn.utils.clip_grad_norm_ does: not elementwise over real and imaginary parts (only the
    2-norm is the same either way), so those values are compared with clip_grad_norm_ and then
    torch.optim.SGD at the host's lr, on the complex gradients."""
    if s.kind != "transform" or s.name != "clip_norm" or \
            {"max_norm", "norm_type"} - {h.name for h in s.component.hyperparameters}:
        return []
    done = []
    rdtype = F32 if cdtype == torch.complex64 else F64
    max_norm = s.probe.defaults[s.key("max_norm")]
    for norm_type in (1.0, math.inf):
        values = {"norm_type": norm_type, "max_norm": 0.5 * max_norm}  # so that it clips
        re, im = _start(rdtype, seed=0), _start(rdtype, seed=1)
        coefs = _coefs(re, seed=2)
        mine = [torch.complex(a.detach(), b.detach()).requires_grad_() for a, b in zip(re, im)]
        ref = _copies(mine)
        opt = s.build(mine, values)
        opt_ref = torch.optim.SGD(ref, lr=s.lr, foreach=False)
        for t in range(COMPLEX_STEPS):
            for zs in (mine, ref):
                for z, c in zip(zs, coefs):
                    zd = z.detach()
                    z.grad = torch.complex(_grad(zd.real, c, t), _grad(zd.imag, c, t))
            opt.step()
            torch.nn.utils.clip_grad_norm_(ref, values["max_norm"], norm_type=norm_type, foreach=False)
            opt_ref.step()
        _assert_close([torch.view_as_real(z.detach()) for z in mine], [torch.view_as_real(z.detach()) for z in ref],
                      f"{_label(s, values)}: {str(cdtype).replace('torch.', '')} parameters vs "
                      f"torch.nn.utils.clip_grad_norm_ then "
                      f"torch.optim.SGD", rtol)
        done.append(f"norm_type={format_value(norm_type)}")
    return done


@_check("complex")
def check_complex(s: Subject):
    """Declared: complex64 and complex128 parameters z = a + ib step as their parts a and b do when
    trained as two independent real parameters (float32, float64), within 1e-6 (1e-12) of each
    parameter's largest element.  Not declared: complex parameters are refused when the optimizer
    is built, naming complex.

    The complex gradient's parts are the parts' own gradients.  This is what declaring complex
    promises: math elementwise over real and imaginary parts (a transform that mixes the two, say
    by centralizing over the last dimension of the real view, fails).  A global 2-norm is the same
    over the complex parameters as over their parts, so clip_norm's defaults compare; its 1- and
    inf-norm count |z| for each complex element, as torch.nn.utils.clip_grad_norm_ does, and are
    compared with clip_grad_norm_ instead.
    """
    missing = s.lacking("complex")
    if missing:
        p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
        return _refused(missing, "complex", "complex parameters", ValueError, lambda: s.build([p]), "clearly")
    torch_compared: list[str] = []
    for cdtype, rdtype, rtol in COMPLEX:
        for values in _variants(s):
            cplx, re, im = _complex_and_parts(s, values, cdtype, rdtype)
            _assert_close([torch.view_as_real(z.detach()) for z in cplx],
                          [torch.stack([a.detach(), b.detach()], dim=-1) for a, b in zip(re, im)],
                          f"{_label(s, values)}: {str(cdtype).replace('torch.', '')} parameters vs their real and "
                          f"imaginary parts as two {str(rdtype).replace('torch.', '')} parameters each, after "
                          f"{COMPLEX_STEPS} steps", rtol)
        torch_compared = _clip_norm_by_modulus(s, cdtype, rtol)
    if torch_compared:
        return f"{', '.join(torch_compared)}: compared with torch.nn.utils.clip_grad_norm_ (|z| per element)"
    return ""


def _refused(missing: list[str], capability: str, what: str, error: type, attempt: Callable[[], Any],
             where: str) -> str:
    """An undeclared capability passes when ``attempt`` refuses it with ``error`` naming it."""
    try:
        attempt()
    except error as exc:
        if capability not in str(exc).lower():
            raise AssertionError(f"{what} refused, but the message does not say why: {exc}") from None
        return f"not declared by {', '.join(missing)}: refused {where}"
    raise AssertionError(f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not declare "
                         f"{capability!r}, yet {what} {'were' if what.endswith('s') else 'was'} accepted")


@_check("sparse")
def check_sparse(s: Subject):
    """Declared: a sparse gradient (as nn.Embedding(sparse=True) gives) steps as its dense form
    does, to rounding.  Not declared: a sparse gradient is refused at the step, naming sparse."""
    missing = s.lacking("sparse")
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(8, 3, generator=gen, dtype=F64)

    def sparse_grad(t):
        rows = torch.tensor([[t % 8, (t + 3) % 8, t % 8]])  # uncoalesced: row t twice
        values = torch.randn(3, 3, generator=torch.Generator().manual_seed(t), dtype=F64)
        return torch.sparse_coo_tensor(rows, values, (8, 3), check_invariants=True)

    if missing:
        p = table.clone().requires_grad_()
        opt = s.build([p])
        p.grad = sparse_grad(0)
        return _refused(missing, "sparse", "a sparse gradient", RuntimeError, opt.step, "at the step")
    sparse_p, dense_p = table.clone().requires_grad_(), table.clone().requires_grad_()
    opt_sparse, opt_dense = s.build([sparse_p]), s.build([dense_p])
    with torch.sparse.check_sparse_tensor_invariants(enable=True):  # a malformed sparse tensor fails here
        for t in range(6):
            grad = sparse_grad(t)
            sparse_p.grad = grad
            dense_p.grad = grad.to_dense()
            opt_sparse.step()
            opt_dense.step()
    _assert_moved([dense_p], [table], "dense")
    _assert_close([sparse_p], [dense_p], "sparse vs dense gradients, 6 steps", 1e-12)
    return ""


# --- running them -------------------------------------------------------------------------------

def _select(checks: Iterable[str] | None) -> list[Check]:
    if checks is None:
        return list(CHECKS.values())
    names = [c for c in checks]
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(map(repr, unknown))}; checks: {', '.join(CHECKS)}")
    return [CHECKS[c] for c in names]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, AssertionError):
        return text or "assertion failed"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_check(check: Check | str, s: Subject) -> tuple[str, str]:
    """(status, reason) of one check on one subject: passed, failed or skipped (no declarations)."""
    check = CHECKS[check] if isinstance(check, str) else check
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            note = check(s)
    except SkipCheck as exc:
        return "skipped", str(exc)
    except Exception as exc:
        return "failed", _one_line(exc)
    return "passed", note or ""


def run_checks(name: str | Subject, registry: Registry | None = None,
               expected_failures: dict | None = None, checks: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the checks (all, or those named in ``checks``) on one optimizer or transform.

    ``expected_failures`` maps a check name (or ``(component, check)``) to the reason it is
    expected to fail, on top of what the component's class declares (see the module doc).
    """
    s = subject(name, registry)
    selected = _select(checks)
    results: list[CheckResult] = []
    try:
        expected = s.expected_failures()
    except TypeError as exc:
        expected = {}
        results.append(CheckResult(s.name, "expected_failures", "failed", str(exc)))
    for key, reason in (expected_failures or {}).items():
        if isinstance(key, tuple):
            if key[0] != s.name:
                continue
            key = key[1]
        expected[key] = reason
    unknown = [c for c in expected if c not in CHECKS]
    if unknown:
        results.append(CheckResult(s.name, "expected_failures", "failed",
                                   f"declares unknown check(s) {', '.join(map(repr, unknown))}; "
                                   f"checks: {', '.join(CHECKS)}"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only add contention
    try:
        for check in selected:
            results.append(_judged(check, s, expected))
    finally:
        torch.set_num_threads(threads)
    return results


def _judged(check: Check, s: Subject, expected: dict[str, str]) -> CheckResult:
    """One check's result, with the declared expected failures applied (strictly)."""
    start = time.perf_counter()
    status, reason = run_check(check, s)
    if check.name in expected:
        declared = expected[check.name]
        if status == "failed":
            status, reason = "xfail", f"{declared} (failed as declared: {reason})"
        elif status == "passed":
            status, reason = "failed", f"declared an expected failure ({declared}) but passed; remove the declaration"
    return CheckResult(s.name, check.name, status, reason, time.perf_counter() - start)


def parametrize_with_checks(names: Iterable[str | Subject], expected_failures: dict | None = None,
                            registry: Registry | None = None, checks: Iterable[str] | None = None):
    """A ``pytest.mark.parametrize`` decorator giving a test ``subject`` and ``check`` arguments,
    one test per (component, check); the test body calls ``check(subject)``.

    ``expected_failures={(name, check): reason}`` (and what a component's class declares) become
    ``pytest.mark.xfail(reason=..., strict=True)``: a declared failure that passes fails the test.
    """
    import pytest

    selected = _select(checks)
    subjects = [subject(n, registry) for n in names]
    expected = dict(expected_failures or {})
    known = {x.name for x in subjects}
    for key in expected:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"expected_failures keys are (component, check) pairs, got {key!r}")
        if key[0] not in known:
            raise ValueError(f"expected_failures names {key[0]!r}, which is not among {sorted(known)}")
        if key[1] not in CHECKS:
            raise ValueError(f"expected_failures names unknown check {key[1]!r}; checks: {', '.join(CHECKS)}")
    params = []
    for s in subjects:
        declared = s.expected_failures()
        for name in declared:
            if name not in CHECKS:
                raise ValueError(f"{s.name} declares an expected failure of unknown check {name!r}; "
                                 f"checks: {', '.join(CHECKS)}")
        for check in selected:
            reason = expected.get((s.name, check.name)) or declared.get(check.name)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            params.append(pytest.param(s, check, id=f"{s.name}-{check.name}", marks=marks))
    return pytest.mark.parametrize("subject,check", params)
