"""SGD, SGD with momentum, and Nesterov momentum, as torch.optim.SGD computes them."""

from __future__ import annotations

import torch

from gdzoo import Hyper, Transform, checks, hookimpl
from gdzoo.ops import add, add_, nonzero, per


class SGD(Transform):
    """Stochastic gradient descent, with optional (Nesterov) momentum: torch.optim.SGD."""

    name = "sgd"
    stage = "update"
    hyperparameters = (
        Hyper("lr", 1e-3, "float", "learning rate"),
        Hyper("momentum", 0, "float", "momentum factor, 0 <= momentum < 1"),
        Hyper("dampening", 0, "float", "dampening for momentum, 0 <= dampening <= 1"),
        Hyper("weight_decay", 0, "float", "coupled L2 penalty: g += weight_decay * param"),
        Hyper("nesterov", False, "bool", "use Nesterov momentum (needs momentum > 0, dampening = 0)"),
        Hyper("maximize", False, "bool", "maximize the objective instead of minimizing"),
    )

    def check(self, hp):
        checks.learning_rate(hp["lr"])
        checks.nonnegative("momentum", hp["momentum"])
        checks.below_one("momentum", hp["momentum"])
        checks.unit_interval("dampening", hp["dampening"])
        checks.nonnegative("weight_decay", hp["weight_decay"])
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def update(self, params, grads, states, hp, ctx):
        lr, momentum, dampening = hp["lr"], hp["momentum"], hp["dampening"]
        weight_decay, nesterov, maximize = hp["weight_decay"], hp["nesterov"], hp["maximize"]
        decay, heavy = nonzero(weight_decay), nonzero(momentum)  # per group, not per tensor
        keep, step = 1 - dampening, -lr
        m, k, s = momentum, keep, step  # numbers; batched, [K] tensors shaped for each parameter
        for param, grad, state in zip(params, grads, states):
            if ctx.batch:
                m, k, s = per(momentum, param), per(keep, param), per(step, param)
            if maximize:
                grad = torch.neg(grad, out=ctx.buffer(param))
            if decay:
                grad = add(grad, param, per(weight_decay, param), out=ctx.buffer(param))
            if heavy:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    add_(buf.mul_(m), grad, k)
                if nesterov:
                    grad = add(grad, buf, m, out=ctx.buffer(param))
                else:
                    grad = buf
            add_(param, grad, s)


@hookimpl
def register_optimizers(register):
    register(SGD)
    register(SGD, name="momentum", defaults={"lr": 0.01, "momentum": 0.9},
             description="SGD with heavy-ball momentum (torch.optim.SGD, momentum=0.9)")
    register(SGD, name="nesterov", defaults={"lr": 0.01, "momentum": 0.9, "nesterov": True},
             description="SGD with Nesterov momentum (torch.optim.SGD, momentum=0.9, nesterov=True)")
