"""RMSprop (plain, centered, with momentum), as torch.optim.RMSprop computes it."""

from __future__ import annotations

import torch

from gdzoo import Hyper, Transform, checks, hookimpl, step_counter
from gdzoo.ops import add, add_, addcdiv_, addcmul_, nonzero, per


class RMSprop(Transform):
    """Divide the gradient by a running root mean square of recent gradients: torch.optim.RMSprop."""

    name = "rmsprop"
    stage = "update"
    hyperparameters = (
        Hyper("lr", 1e-2, "float", "learning rate"),
        Hyper("alpha", 0.99, "float", "smoothing constant of the squared-gradient average, 0..1"),
        Hyper("eps", 1e-8, "float", "added to the denominator, after the square root"),
        Hyper("weight_decay", 0, "float", "coupled L2 penalty: g += weight_decay * param"),
        Hyper("momentum", 0, "float", "momentum factor, 0 <= momentum < 1"),
        Hyper("centered", False, "bool", "normalize by an estimate of the gradient's variance"),
        Hyper("maximize", False, "bool", "maximize the objective instead of minimizing"),
    )

    def check(self, hp):
        checks.learning_rate(hp["lr"])
        checks.nonnegative("epsilon", hp["eps"])
        checks.nonnegative("momentum", hp["momentum"])
        checks.below_one("momentum", hp["momentum"])
        checks.nonnegative("weight_decay", hp["weight_decay"])
        checks.nonnegative("alpha", hp["alpha"])
        checks.unit_interval("alpha", hp["alpha"])

    supports = ("batched", "complex")

    def update(self, params, grads, states, hp, ctx):
        lr, alpha, eps, weight_decay = hp["lr"], hp["alpha"], hp["eps"], hp["weight_decay"]
        momentum, centered = hp["momentum"], hp["centered"]
        decay, heavy = nonzero(weight_decay), nonzero(momentum)
        factors = (alpha, 1 - alpha, eps, momentum, -lr)
        a, keep, e, m, step = factors  # numbers; batched, [K] tensors shaped for each parameter
        for param, grad, state in zip(params, grads, states):
            if ctx.batch:
                a, keep, e, m, step = (per(v, param) for v in factors)
            if "step" not in state:
                state["step"] = step_counter()
                state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if heavy and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if centered and "grad_avg" not in state:
                state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if hp["maximize"]:
                grad = torch.neg(grad, out=ctx.buffer(param))
            square_avg = state["square_avg"]
            state["step"] += 1
            if decay:
                grad = add(grad, param, per(weight_decay, param), out=ctx.buffer(param))
            addcmul_(square_avg.mul_(a), grad, grad, keep,
                     scratch=ctx.buffer(param, "denom") if ctx.batch else None)
            if centered:
                grad_avg = state["grad_avg"]
                grad_avg.lerp_(grad, keep)
                avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1, out=ctx.buffer(param, "denom")).sqrt_()
            else:
                avg = torch.sqrt(square_avg, out=ctx.buffer(param, "denom"))
            avg.add_(e)
            if heavy:
                buf = state["momentum_buffer"]
                buf.mul_(m).addcdiv_(grad, avg)
                add_(param, buf, step)
            else:
                addcdiv_(param, grad, avg, step, scratch=ctx.buffer(param, "batch") if ctx.batch else None)


@hookimpl
def register_optimizers(register):
    register(RMSprop)
