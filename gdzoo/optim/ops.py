"""Tensor helpers for writing transforms whose hyperparameters may be batched.

In a batched study (K configurations trained as one problem, parameters of shape [K, ...]) a
hyperparameter that differs between configurations arrives as a float64 tensor of shape [K];
otherwise it is a Python number.  These helpers take either, so one kernel serves both, and the
scalar path runs exactly torch.optim's arithmetic.  ``out``/``scratch`` may be None (in a fused,
compiled step there are no scratch buffers: the ops stay functional for Inductor to fuse).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def per(value: Any, param: Tensor) -> Any:
    """``value`` shaped to broadcast against ``param``: a [K] tensor becomes [K, 1, ...]."""
    if value.__class__ in _NUMBERS:
        return value
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return value.to(param.dtype)
        return value.to(param.dtype).view(-1, *([1] * (param.dim() - 1)))
    return value


def step_number(step_t: Tensor) -> Any:
    """A step count (torch's 0-d tensor) as bias corrections use it: a number, or a tensor inside
    a compiled step (where ``.item()`` would break the graph)."""
    return step_t.double() if torch.compiler.is_compiling() else step_t.item()


def nonzero(value: Any) -> bool:
    """Whether a (possibly batched) hyperparameter is switched on; a batch agrees on this."""
    if value.__class__ in _NUMBERS:
        return value != 0
    if isinstance(value, Tensor):
        return bool((value != 0).any())
    return value != 0


_NUMBERS = (float, int)


def add_(x: Tensor, y: Tensor, a: Any) -> Tensor:
    """x += a * y, in place (``a`` already shaped by :func:`per`)."""
    if a.__class__ not in _NUMBERS:
        return x.addcmul_(y, a)
    return x.add_(y, alpha=a)


def add(x: Tensor, y: Tensor, a: Any, out: Tensor | None) -> Tensor:
    """out = x + a * y (a fresh tensor when ``out`` is None)."""
    if a.__class__ not in _NUMBERS:
        return torch.addcmul(x, y, a, out=out)
    if out is None:  # the method: torch.add(..., out=None) parses its arguments more slowly
        return x.add(y, alpha=a)
    return torch.add(x, y, alpha=a, out=out)


def addcmul_(x: Tensor, y: Tensor, z: Tensor, a: Any, scratch: Tensor | None) -> Tensor:
    """x += a * y * z, in place; ``scratch`` (shaped like x) is used when ``a`` is batched."""
    if a.__class__ not in _NUMBERS:
        return x.addcmul_(torch.mul(y, a, out=scratch), z)
    return x.addcmul_(y, z, value=a)


def addcdiv_(x: Tensor, y: Tensor, z: Tensor, a: Any, scratch: Tensor | None) -> Tensor:
    """x += a * y / z, in place, computed as (a * y) / z like torch's addcdiv; ``scratch`` is used
    when ``a`` is batched."""
    if a.__class__ not in _NUMBERS:
        return x.addcdiv_(torch.mul(y, a, out=scratch), z)
    return x.addcdiv_(y, z, value=a)


def power(base: Any, exponent: Any) -> Any:
    """base ** exponent for per-step scalars; a batched base is raised per configuration in Python,
    so that each configuration gets exactly the number its separate run computes."""
    if isinstance(base, Tensor) and base.dim() == 1 and exponent.__class__ in _NUMBERS:
        return torch.tensor([b ** exponent for b in base.tolist()], dtype=base.dtype)
    return base ** exponent


def divide(a: Any, b: Any) -> Any:
    """a / b for per-step scalars; a number over a batched tensor is a true division per element
    (torch computes ``float / tensor`` as ``reciprocal() * float``, one rounding more)."""
    if a.__class__ in _NUMBERS and isinstance(b, Tensor):
        return torch.full_like(b, a) / b
    return a / b


def native_foldable(params: list[Tensor], hp: dict[str, Any], kinds: set[str], own_decay: Any) -> bool:
    """What torch's fused Adam and SGD kernels need to do a group exactly as a chain's eager
    transforms would, with the folds ``kinds``: one device and dtype per call and plain-number
    hyperparameters; for a folded clip (``grad_scale``), float32 (the kernel's scale is one); for
    a folded l2 (``weight_decay``), no decay of the optimizer's own (``own_decay``: that would be
    a second addition) and no maximize (the kernel adds the decay after negating the gradient,
    a chain's l2 comes before)."""
    if len({(p.device, p.dtype) for p in params}) != 1 or any(isinstance(v, Tensor) for v in hp.values()):
        return False
    if "grad_scale" in kinds and params[0].dtype != torch.float32:
        return False
    return "weight_decay" not in kinds or not (own_decay or hp["maximize"])


class Scratch:
    """Named tensors reused from one training step to the next.

    ``scratch(name, shape, dtype)`` returns the same tensor every step (contents garbage) as long
    as the shape and dtype stay; batched training's [K, n] temporaries go here, because a fresh
    tensor of that size costs page faults every step (glibc maps it fresh and unmaps it on free).
    """

    def __init__(self):
        self._tensors: dict[str, Tensor] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        t = self._tensors.get(name)
        if t is None or t.shape != shape or t.dtype != dtype:
            t = self._tensors[name] = torch.empty(shape, dtype=dtype)
        return t
