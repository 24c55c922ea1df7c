"""Adam, AMSGrad and AdamW, as torch.optim.Adam / AdamW compute them."""

from __future__ import annotations

import torch

from gdzoo import Hyper, Transform, checks, hookimpl, step_counter
from gdzoo.ops import add, addcdiv_, addcmul_, divide, native_foldable, nonzero, per, power, step_number


def _init_state(param, state: dict, amsgrad: bool) -> None:
    """torch.optim.Adam's state for one parameter, created on its first step."""
    if "step" not in state:
        state["step"] = step_counter()
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    if amsgrad and "max_exp_avg_sq" not in state:
        state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


class Adam(Transform):
    """Adam with bias correction; amsgrad and decoupled (AdamW) weight decay: torch.optim.Adam."""

    name = "adam"
    stage = "update"
    hyperparameters = (
        Hyper("lr", 1e-3, "float", "learning rate"),
        Hyper("betas", (0.9, 0.999), "floats", "decay rates of the first and second moments", length=2),
        Hyper("eps", 1e-8, "float", "added to the denominator, outside the square root"),
        Hyper("weight_decay", 0, "float", "L2 penalty (coupled unless decoupled_weight_decay)"),
        Hyper("amsgrad", False, "bool", "keep the running maximum of the second moment"),
        Hyper("maximize", False, "bool", "maximize the objective instead of minimizing"),
        Hyper("decoupled_weight_decay", False, "bool", "AdamW: param *= 1 - lr * weight_decay"),
    )

    def check(self, hp):
        checks.learning_rate(hp["lr"])
        checks.nonnegative("epsilon", hp["eps"])
        checks.betas(hp["betas"])
        checks.nonnegative("weight_decay", hp["weight_decay"])

    supports = ("batched", "complex")
    # Chain(fused=True) runs torch's fused CPU kernel (native_step), even beside eager transforms:
    # Inductor's code for Adam is twice as slow.  The kernel can do clip_norm and l2, in this order.
    native_preferred = True
    native_folds = ("grad_scale", "weight_decay")

    def update(self, params, grads, states, hp, ctx):
        lr, (beta1, beta2), eps = hp["lr"], hp["betas"], hp["eps"]
        weight_decay, amsgrad, maximize = hp["weight_decay"], hp["amsgrad"], hp["maximize"]
        decoupled = hp["decoupled_weight_decay"]
        decay = nonzero(weight_decay)
        factors = (1 - beta1, beta2, 1 - beta2, eps)
        keep1, b2, keep2, e = factors  # numbers; batched, [K] tensors shaped for each parameter
        for param, grad, state in zip(params, grads, states):
            if ctx.batch:
                keep1, b2, keep2, e = (per(v, param) for v in factors)
            _init_state(param, state, amsgrad)
            if maximize:
                grad = torch.neg(grad, out=ctx.buffer(param))
            exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
            step_t += 1
            if decay:
                if decoupled:
                    param.mul_(per(1 - lr * weight_decay, param))
                else:
                    grad = add(grad, param, per(weight_decay, param), out=ctx.buffer(param))
            scratch = ctx.buffer(param, "denom")
            exp_avg.lerp_(grad, keep1)
            addcmul_(exp_avg_sq.mul_(b2), grad, grad, keep2, scratch=scratch)
            step = step_number(step_t)
            bias_correction1 = 1 - power(beta1, step)
            bias_correction2 = 1 - power(beta2, step)
            step_size = divide(lr, bias_correction1)
            bias_correction2_sqrt = power(bias_correction2, 0.5)
            second = exp_avg_sq
            if amsgrad:
                second = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            denom = torch.sqrt(second, out=scratch)
            denom.div_(per(bias_correction2_sqrt, param)).add_(e)
            addcdiv_(param, exp_avg, denom, per(-step_size, param), scratch=ctx.buffer(param) if ctx.batch else None)

    def can_fold(self, params, hp, kinds: set[str], states=None) -> bool:
        """Whether :meth:`native_step` can do this group, with the folds ``kinds``, as the chain would."""
        return native_foldable(params, hp, kinds, own_decay=hp["weight_decay"] or hp["decoupled_weight_decay"])

    def native_step(self, params, grads, states, hp, grad_scale=None, weight_decay=None) -> None:
        """torch._fused_adam(w)_ over the whole group, as torch.optim.Adam(fused=True) runs it.

        ``grad_scale`` (a folded clip_norm) divides the gradients, in place; ``weight_decay`` (a
        folded l2) is added to the gradient as Adam's own coupled decay.
        """
        for param, state in zip(params, states):
            _init_state(param, state, hp["amsgrad"])
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if hp["decoupled_weight_decay"] else torch._fused_adam_
        kernel(params, list(grads), [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
               [s["max_exp_avg_sq"] for s in states] if hp["amsgrad"] else [], steps,
               amsgrad=hp["amsgrad"], lr=hp["lr"], beta1=hp["betas"][0], beta2=hp["betas"][1],
               weight_decay=hp["weight_decay"] if weight_decay is None else weight_decay, eps=hp["eps"],
               maximize=hp["maximize"], grad_scale=grad_scale, found_inf=None)


@hookimpl
def register_optimizers(register):
    register(Adam)
    register(Adam, name="adamw", defaults={"weight_decay": 1e-2, "decoupled_weight_decay": True},
             description="Adam with decoupled weight decay (torch.optim.AdamW)")
