"""Built-in losses: mse, mae, huber, bce (on logits) and cross_entropy, as torch.nn.functional computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gdzoo import GdzooError, Hyper, checks, hookimpl
from gdzoo.problem import Loss


def _same_shape(loss: Loss, prediction: torch.Tensor, target: torch.Tensor, hint: str) -> None:
    """Refuse the silent broadcasting torch does when a prediction and its target differ in shape."""
    if prediction.shape != target.shape:
        raise GdzooError(f"loss {loss.name}: prediction shape {list(prediction.shape)} does not match "
                         f"target shape {list(target.shape)}; {hint}")


class _Elementwise(Loss):
    """A loss comparing each prediction with its target: one model output per target value."""

    hint = "it needs one output per target value (use cross_entropy for class-index targets)"

    def __call__(self, prediction, target):
        _same_shape(self, prediction, target, self.hint)
        return self.compute(prediction, target.to(prediction.dtype))

    def batched(self, prediction, target):
        _same_shape(self, prediction[0], target if target.dim() < prediction.dim() else target[0], self.hint)
        return self.rows(prediction, target.to(prediction.dtype))

    def rows(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each configuration (row) of a stacked prediction; ``target`` broadcasts to it."""
        target = target.expand_as(prediction)
        return self.compute(prediction, target, "none").mean(dim=tuple(range(1, prediction.dim())))

    def compute(self, prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError


class MSE(_Elementwise):
    """Mean squared error: mean((prediction - target)²), torch.nn.functional.mse_loss."""

    name = "mse"

    def compute(self, prediction, target, reduction="mean"):
        return F.mse_loss(prediction, target, reduction=reduction)

    def rows(self, prediction, target):
        return _RowsMSE.apply(prediction, target)


class MAE(_Elementwise):
    """Mean absolute error: mean(|prediction - target|), torch.nn.functional.l1_loss."""

    name = "mae"

    def compute(self, prediction, target, reduction="mean"):
        return F.l1_loss(prediction, target, reduction=reduction)


class Huber(_Elementwise):
    """Huber loss: squared below delta, linear above it, torch.nn.functional.huber_loss."""

    name = "huber"
    hyperparameters = (Hyper("delta", 1.0, "float", "where the loss turns from quadratic to linear, > 0"),)

    @classmethod
    def check(cls, hp):
        checks.positive("delta", hp["delta"])

    def compute(self, prediction, target, reduction="mean"):
        return F.huber_loss(prediction, target, reduction=reduction, delta=self.hp["delta"])


class BCE(_Elementwise):
    """Binary cross-entropy on logits (targets 0/1), torch.nn.functional.binary_cross_entropy_with_logits."""

    name = "bce"
    hint = "bce needs one logit per row (binary targets); use cross_entropy for more than 2 classes"

    def compute(self, prediction, target, reduction="mean"):
        return F.binary_cross_entropy_with_logits(prediction, target, reduction=reduction)

    def rows(self, prediction, target):
        return _RowsBCE.apply(prediction.contiguous(), target)


def _per_row(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """The [K] upstream gradient of the row losses, shaped to broadcast over [K, ...] rows."""
    return grad.view((-1,) + (1,) * (dim - 1))


def _row_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.dim()))


class _RowsMSE(torch.autograd.Function):
    """mse_loss of every row, forward and backward in torch's own formulas: bit for bit the
    unbatched loss of each row (mean((x - t)²); gradient (x - t) * (2 / n) * grad), with one
    autograd node instead of autograd's five."""

    @staticmethod
    def forward(ctx, x, t):
        diff = x - t
        ctx.save_for_backward(diff)
        return diff.square().mean(dim=_row_dims(x))

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        return diff.mul(2.0 / diff[0].numel()).mul_(_per_row(grad, diff.dim())), None


class _RowsBCE(torch.autograd.Function):
    """binary_cross_entropy_with_logits of every row, forward and backward in torch's own formulas.

    Bit for bit what the unbatched loss gives each row (loss (1 - t) x - log_sigmoid(x), mean;
    gradient (sigmoid(x) - t) * grad / n), at a third of autograd's cost on stacked rows: no
    [K, n] copies of the target, of the ones or of the 1/n that autograd's generic graph makes.
    """

    @staticmethod
    def forward(ctx, x, t):
        ctx.save_for_backward(x, t)
        return torch.mul(1 - t, x).sub_(F.logsigmoid(x)).mean(dim=_row_dims(x))

    @staticmethod
    def backward(ctx, grad):
        x, t = ctx.saved_tensors
        n = x[0].numel()
        return torch.sigmoid(x).sub_(t).mul_(_per_row(grad, x.dim())).div_(n), None


class CrossEntropy(Loss):
    """Cross-entropy of logits [n, C] against class indices [n], torch.nn.functional.cross_entropy."""

    name = "cross_entropy"

    def __call__(self, prediction, target):
        if prediction.dim() != 2 or target.shape != prediction.shape[:1]:
            raise GdzooError(f"loss cross_entropy: expected logits [n, classes] and class indices [n], got "
                             f"prediction shape {list(prediction.shape)} and target shape {list(target.shape)}"
                             f" (use bce for binary targets with one logit per row)")
        return F.cross_entropy(prediction, target.long())

    def batched(self, prediction, target):
        K, n = prediction.shape[:2]
        target = target.long().expand(K, n)
        self(prediction[0], target[0])  # shape checks
        return F.cross_entropy(prediction.reshape(K * n, -1), target.reshape(-1), reduction="none").view(K, n).mean(1)


@hookimpl
def register_losses(register):
    for loss in (MSE, MAE, Huber, BCE, CrossEntropy):
        register(loss)
