"""RMSprop (plain, centered, with momentum), as torch.optim.RMSprop computes it."""

from __future__ import annotations

import torch

from gdzoo import Hyper, Transform, checks, hookimpl, step_counter


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

    def update(self, params, grads, states, hp, ctx):
        lr, alpha, eps, weight_decay = hp["lr"], hp["alpha"], hp["eps"], hp["weight_decay"]
        momentum, centered = hp["momentum"], hp["centered"]
        for param, grad, state in zip(params, grads, states):
            if "step" not in state:
                state["step"] = step_counter()
                state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if momentum > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if centered and "grad_avg" not in state:
                state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if hp["maximize"]:
                grad = torch.neg(grad, out=ctx.buffer(param))
            square_avg = state["square_avg"]
            state["step"] += 1
            if weight_decay != 0:
                grad = torch.add(grad, param, alpha=weight_decay, out=ctx.buffer(param))
            square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
            avg = ctx.buffer(param, "denom")
            if centered:
                grad_avg = state["grad_avg"]
                grad_avg.lerp_(grad, 1 - alpha)
                torch.addcmul(square_avg, grad_avg, grad_avg, value=-1, out=avg).sqrt_()
            else:
                torch.sqrt(square_avg, out=avg)
            avg.add_(eps)
            if momentum > 0:
                buf = state["momentum_buffer"]
                buf.mul_(momentum).addcdiv_(grad, avg)
                param.add_(buf, alpha=-lr)
            else:
                param.addcdiv_(grad, avg, value=-lr)


@hookimpl
def register_optimizers(register):
    register(RMSprop)
