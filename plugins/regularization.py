"""Regularisation: coupled L2, decoupled weight decay, and L1 (subgradient or proximal)."""

from __future__ import annotations

import torch

from gdzoo import Hyper, Transform, checks, hookimpl
from gdzoo.ops import add, nonzero, per


class L2(Transform):
    """Coupled L2 penalty on the gradient, g += weight * param (torch.optim's weight_decay)."""

    name = "l2"
    stage = "grad"
    hyperparameters = (Hyper("weight", 1e-4, "float", "penalty weight; adds weight/2 * ||param||^2 to the loss"),)

    supports = ("batched", "complex")

    def check(self, hp):
        checks.nonnegative("weight", hp["weight"])

    def update(self, params, grads, states, hp, ctx):
        weight = hp["weight"]
        if not nonzero(weight):
            return
        for i, (param, grad) in enumerate(zip(params, grads)):
            grads[i] = add(grad, param, per(weight, param), out=ctx.buffer(param))

    fold = "weight_decay"  # under fused=True, torch's fused Adam or SGD adds it as its own coupled decay

    def fold_values(self, groups, ctx):
        return [g.hp["weight"] if nonzero(g.hp["weight"]) else None for g in groups]


class WeightDecay(Transform):
    """Decoupled weight decay before the update, param *= 1 - lr * weight (AdamW's)."""

    name = "weight_decay"
    stage = "pre"
    hyperparameters = (Hyper("weight", 1e-2, "float", "decay rate, multiplied by the optimizer's lr"),)
    supports = ("batched", "complex")

    def check(self, hp):
        checks.nonnegative("weight", hp["weight"])

    def step(self, groups, ctx):
        for g in groups:
            if nonzero(g.hp["weight"]):
                factor = 1 - g.group["lr"] * g.hp["weight"]
                for param in g.params:
                    param.mul_(per(factor, param))


class L1(Transform):
    """L1 penalty weight * ||param||_1: subgradient on the gradient, or a proximal soft-threshold.

    mode=subgradient adds weight * sign(param) to the gradient (grad stage); mode=prox
    soft-thresholds the parameters by lr * weight after the update (post stage), which sets
    small weights to exactly zero.
    """

    name = "l1"
    stage = ("grad", "post")
    hyperparameters = (
        Hyper("weight", 1e-4, "float", "penalty weight"),
        Hyper("mode", "subgradient", "str", "subgradient or prox", choices=("subgradient", "prox")),
    )
    supports = ("batched",)

    def check(self, hp):
        checks.nonnegative("weight", hp["weight"])

    def step(self, groups, ctx):
        for g in groups:
            weight, mode = g.hp["weight"], g.hp["mode"]
            if not nonzero(weight):
                continue
            if ctx.stage == "grad" and mode == "subgradient":
                for i, (param, grad) in enumerate(zip(g.params, g.grads)):
                    sign = torch.sign(param, out=ctx.buffer(param, "l1"))
                    g.grads[i] = add(grad, sign, per(weight, param), out=ctx.buffer(param))
            elif ctx.stage == "post" and mode == "prox":
                threshold = g.group["lr"] * weight
                for param in g.params:
                    shrunk = torch.abs(param, out=ctx.buffer(param, "l1")).sub_(per(threshold, param)).clamp_(min=0)
                    param.sign_().mul_(shrunk)


@hookimpl
def register_transforms(register):
    register(L2)
    register(WeightDecay)
    register(L1)
