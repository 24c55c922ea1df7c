"""AdaGrad, as torch.optim.Adagrad computes it."""

from __future__ import annotations

import torch

from gdzoo import Hyper, Transform, checks, hookimpl, step_counter
from gdzoo.ops import add, addcdiv_, divide, nonzero, per, step_number


class Adagrad(Transform):
    """Adaptive per-coordinate learning rates from the sum of squared gradients: torch.optim.Adagrad."""

    name = "adagrad"
    stage = "update"
    hyperparameters = (
        Hyper("lr", 1e-2, "float", "learning rate"),
        Hyper("lr_decay", 0, "float", "learning rate decay: lr / (1 + (step - 1) * lr_decay)"),
        Hyper("weight_decay", 0, "float", "coupled L2 penalty: g += weight_decay * param"),
        Hyper("initial_accumulator_value", 0, "float", "starting value of the sum of squares"),
        Hyper("eps", 1e-10, "float", "added to the denominator"),
        Hyper("maximize", False, "bool", "maximize the objective instead of minimizing"),
    )

    def check(self, hp):
        checks.learning_rate(hp["lr"])
        checks.nonnegative("lr_decay", hp["lr_decay"])
        checks.nonnegative("weight_decay", hp["weight_decay"])
        checks.nonnegative("initial_accumulator_value", hp["initial_accumulator_value"])
        checks.nonnegative("epsilon", hp["eps"])

    supports = ("batched", "complex", "sparse")

    def update(self, params, grads, states, hp, ctx):
        lr, lr_decay, weight_decay, eps = hp["lr"], hp["lr_decay"], hp["weight_decay"], hp["eps"]
        decay = nonzero(weight_decay)
        e = eps  # a number; batched, a [K] tensor shaped for each parameter
        for param, grad, state in zip(params, grads, states):
            if ctx.batch:
                e = per(eps, param)
            if "step" not in state:
                state["step"] = step_counter()
                init = hp["initial_accumulator_value"]
                state["sum"] = torch.zeros_like(param, memory_format=torch.preserve_format).add_(per(init, param)) \
                    if isinstance(init, torch.Tensor) else torch.full_like(param, init, memory_format=torch.preserve_format)
            state_sum, step_t = state["sum"], state["step"]
            step_t += 1
            step = step_number(step_t)
            if hp["maximize"]:
                grad = torch.neg(grad, out=ctx.buffer(param))
            if decay:
                if grad.is_sparse:
                    raise RuntimeError("weight_decay option is not compatible with sparse gradients")
                grad = add(grad, param, per(weight_decay, param), out=ctx.buffer(param))
            clr = divide(lr, 1 + (step - 1) * lr_decay)
            if grad.is_sparse:  # only the rows the gradient touches, as torch.optim.Adagrad does
                grad = grad.coalesce()  # the update is not linear: indices must be unique
                indices, values = grad._indices(), grad._values()
                state_sum.add_(torch.sparse_coo_tensor(indices, values.pow(2), grad.size()))
                std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
                param.add_(torch.sparse_coo_tensor(indices, values / std_values, grad.size()), alpha=-clr)
                continue
            state_sum.addcmul_(grad, grad, value=1)
            std = torch.sqrt(state_sum, out=ctx.buffer(param, "denom")).add_(e)
            addcdiv_(param, grad, std, per(-clr, param), scratch=ctx.buffer(param, "batch") if ctx.batch else None)


@hookimpl
def register_optimizers(register):
    register(Adagrad)
