"""SGD, SGD with momentum, and Nesterov momentum, as torch.optim.SGD computes them."""

from __future__ import annotations

import torch

from gdzoo import Hyper, Transform, checks, hookimpl
from gdzoo.ops import add, add_, native_foldable, nonzero, per


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

    supports = ("batched", "complex", "sparse")
    # Chain(fused=True) runs torch's fused CPU kernel (native_step) when it can do the whole chain
    # (clip_norm and l2 folded in, in this order); beside other transforms the chain is compiled.
    native_folds = ("grad_scale", "weight_decay")

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
                elif ctx.batch:
                    add_(buf.mul_(m), grad, k)
                else:  # numbers: torch.optim.SGD's own calls (the helpers cost ~5% on 1000 small tensors)
                    buf.mul_(m).add_(grad, alpha=k)
                if nesterov:
                    grad = add(grad, buf, m, out=ctx.buffer(param))
                else:
                    grad = buf
            if ctx.batch:
                add_(param, grad, s)
            else:
                param.add_(grad, alpha=s)

    def can_fold(self, params, hp, kinds: set[str], states=None) -> bool:
        """Whether :meth:`native_step` can do this group, with the folds ``kinds``, as the chain would."""
        if states is not None and hp["momentum"] != 0:  # the kernel starts all buffers or none
            if len({"momentum_buffer" in state for state in states}) > 1:
                return False
        return native_foldable(params, hp, kinds, own_decay=hp["weight_decay"])

    def native_step(self, params, grads, states, hp, grad_scale=None, weight_decay=None) -> None:
        """torch._fused_sgd_ over the whole group, as torch.optim.SGD(fused=True) runs it.

        ``grad_scale`` (a folded clip_norm) divides the gradients, in place; ``weight_decay`` (a
        folded l2) is added to the gradient as SGD's own decay.
        """
        momentum = hp["momentum"]
        buffers, first = [], False
        if momentum != 0:
            first = "momentum_buffer" not in states[0]
            if first:
                for grad, state in zip(grads, states):
                    state["momentum_buffer"] = torch.empty_like(grad, memory_format=torch.preserve_format)
            buffers = [state["momentum_buffer"] for state in states]
        torch._fused_sgd_(params, list(grads), buffers, weight_decay=hp["weight_decay"] if weight_decay is None
                          else weight_decay, momentum=momentum, lr=hp["lr"], dampening=hp["dampening"],
                          nesterov=hp["nesterov"], maximize=hp["maximize"], is_first_step=first,
                          grad_scale=grad_scale, found_inf=None)


@hookimpl
def register_optimizers(register):
    register(SGD)
    register(SGD, name="momentum", defaults={"lr": 0.01, "momentum": 0.9},
             description="SGD with heavy-ball momentum (torch.optim.SGD, momentum=0.9)")
    register(SGD, name="nesterov", defaults={"lr": 0.01, "momentum": 0.9, "nesterov": True},
             description="SGD with Nesterov momentum (torch.optim.SGD, momentum=0.9, nesterov=True)")
