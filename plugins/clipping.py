"""Gradient clipping: by global norm (torch.nn.utils.clip_grad_norm_) and by value."""

from __future__ import annotations

import math

import torch

from gdzoo import Hyper, Transform, checks, hookimpl
from gdzoo.ops import per


class ClipNorm(Transform):
    """Scale all gradients so that their global norm is at most max_norm (clip_grad_norm_).

    The norm is over every parameter the optimizer holds: under DDP that is the global norm
    (every rank has the whole, all-reduced gradient); under ZeroRedundancyOptimizer each rank's
    optimizer holds one shard, so it clips by that shard's norm (clip with clip_grad_norm_
    before step() there).
    """

    name = "clip_norm"
    stage = "grad"
    hyperparameters = (
        Hyper("max_norm", 1.0, "float", "largest allowed norm of all gradients together, > 0", allow_inf=True),
        Hyper("norm_type", 2.0, "float", "p of the p-norm; inf for the largest absolute value", allow_inf=True),
    )

    def check(self, hp):
        checks.positive("max_norm", hp["max_norm"])
        if not (hp["norm_type"] > 0 or math.isinf(hp["norm_type"])):
            raise ValueError(f"Invalid norm_type value: {hp['norm_type']} (must be > 0 or inf)")

    supports = ("batched", "complex")
    fold = "grad_scale"  # under fused=True, torch's fused Adam or SGD divides the grads by 1/coefficient

    def coefficients(self, groups, ctx, dot: bool = False) -> list[torch.Tensor]:
        """Each group's clip coefficient min(1, max_norm / (norm + 1e-6)), as clip_grad_norm_ computes it.

        ``dot``: a 2-norm from BLAS dot products (one read of the grads at memory speed, and no
        less accurate) instead of ``torch._foreach_norm`` (clip_grad_norm_'s, twice as slow).
        """
        # One norm over every parameter of every group, like clip_grad_norm_(model.parameters()).
        norm_types = {tuple(v.tolist()) if isinstance(v, torch.Tensor) else float(v)
                      for v in (g.hp["norm_type"] for g in groups)}
        if len(norm_types) > 1:
            raise ValueError(f"clip_norm: param groups disagree on norm_type ({sorted(map(str, norm_types))}); "
                             f"the global norm needs one")
        norm_type = norm_types.pop()
        if isinstance(norm_type, tuple):  # batched, a p per configuration: each row by its own p
            totals = {p: self._total(groups, ctx, p, dot) for p in set(norm_type)}
            total = torch.stack([totals[p][k] for k, p in enumerate(norm_type)])
        else:
            total = self._total(groups, ctx, norm_type, dot)
        coefs = []
        for g in groups:
            max_norm = g.hp["max_norm"]
            if isinstance(max_norm, torch.Tensor):  # batched: as torch computes float / tensor, per row
                coefs.append(torch.clamp((total + 1e-6).reciprocal() * max_norm.to(total.dtype), max=1.0))
            else:
                coefs.append(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return coefs

    @staticmethod
    def _total(groups, ctx, norm_type: float, dot: bool) -> torch.Tensor:
        """The norm of every gradient of every group together (batched: one per configuration)."""
        grads = [grad for g in groups for grad in g.grads]
        if norm_type != 2:  # a complex parameter's gradient counts |z|, as clip_grad_norm_ counts it,
            # not its real and imaginary parts (the same 2-norm, but not the same 1- or inf-norm)
            grads = [torch.linalg.vector_norm(grad, dim=-1) if ctx.is_complex(param) else grad
                     for g in groups for param, grad in zip(g.params, g.grads)]
        if dot and norm_type == 2 and not ctx.batch and all(grad.is_contiguous() for grad in grads):
            return torch.stack([torch.dot(grad.view(-1), grad.view(-1)) for grad in grads]).sum().sqrt()
        if ctx.batch:  # one norm per configuration: over every dimension but the first
            norms = [torch.linalg.vector_norm(grad.reshape(grad.shape[0], -1), norm_type, dim=1) for grad in grads]
            return torch.linalg.vector_norm(torch.stack(norms, dim=1), norm_type, dim=1)
        norms = torch._foreach_norm(grads, norm_type)
        return torch.linalg.vector_norm(torch.stack(norms), norm_type)

    def step(self, groups, ctx):
        for g, coef in zip(groups, self.coefficients(groups, ctx)):
            for i, (param, grad) in enumerate(zip(g.params, g.grads)):
                g.grads[i] = torch.mul(grad, per(coef, param) if ctx.batch else coef, out=ctx.buffer(param))

    def fold_values(self, groups, ctx):
        return [coef.reciprocal().to(torch.float32) for coef in self.coefficients(groups, ctx, dot=True)]


class ClipValue(Transform):
    """Clamp every gradient element to [-clip_value, clip_value] (clip_grad_value_)."""

    name = "clip_value"
    stage = "grad"
    hyperparameters = (Hyper("clip_value", 1.0, "float", "largest allowed absolute gradient element, > 0", allow_inf=True),)

    supports = ("batched",)

    def check(self, hp):
        checks.positive("clip_value", hp["clip_value"])

    def update(self, params, grads, states, hp, ctx):
        c = hp["clip_value"]
        for i, (param, grad) in enumerate(zip(params, grads)):
            c_p = per(c, param)
            grads[i] = torch.clamp(grad, -c_p, c_p, out=ctx.buffer(param))


@hookimpl
def register_transforms(register):
    register(ClipNorm)
    register(ClipValue)
