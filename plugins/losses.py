"""Built-in losses: mse, mae, huber, bce (on logits) and cross_entropy, as torch.nn.functional computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gdzoo import GdzooError, Hyper, checks, hookimpl
from gdzoo.ops import Scratch
from gdzoo import Loss


def _same_shape(loss: Loss, prediction: torch.Tensor, target: torch.Tensor, hint: str) -> None:
    """Refuse the silent broadcasting torch does when a prediction and its target differ in shape."""
    if prediction.shape != target.shape:
        raise GdzooError(f"loss {loss.name}: prediction shape {list(prediction.shape)} does not match "
                         f"target shape {list(target.shape)}; {hint}")


class _Elementwise(Loss):
    """A loss comparing each prediction with its target: one model output per target value."""

    supports = ("batched",)  # batched() computes each row in torch's own formula, bit for bit
    hint = "it needs one output per target value (use cross_entropy for class-index targets)"
    closed_form = False  # True: rows_and_grad() gives the stacked losses with their gradient

    def __call__(self, prediction, target):
        _same_shape(self, prediction, target, self.hint)
        return self.compute(prediction, target.to(prediction.dtype))

    def batched(self, prediction, target):
        target = self._stacked_target(prediction, target)
        if self.closed_form:
            return _ClosedForm.apply(prediction, target, self)
        return self.compute(prediction, target.expand_as(prediction), "none").mean(dim=_row_dims(prediction))

    def batched_with_grad(self, prediction, target, scratch=None):
        if not self.closed_form:
            return None
        return self.rows_and_grad(prediction, self._stacked_target(prediction, target), scratch)

    def rows_and_grad(self, prediction: torch.Tensor, target: torch.Tensor,
                      scratch: Scratch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of each row of a stacked prediction ([K]) and its gradient with respect to the
        prediction, in torch's own formulas (bit for bit the unbatched loss and autograd gradient
        of each row); ``target`` broadcasts to the prediction.  The gradient may live in
        ``scratch`` (overwritten next step); the losses are fresh."""
        raise NotImplementedError

    def _stacked_target(self, prediction, target):
        _same_shape(self, prediction[0], target if target.dim() < prediction.dim() else target[0], self.hint)
        return target.to(prediction.dtype)

    def compute(self, prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError


def _row_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.dim()))


GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: from this many elements torch splits an op across threads


def _rowwise(op, x: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``op(x)`` for a contiguous stack x of K rows, each row's elements computed exactly as ``op``
    computes them on that row alone, a contiguous 1-D tensor (a separate run's).

    Torch's vectorised elementwise kernels compute each run of 2 x (vector width) elements with
    the vector code and the rest of the run with the scalar code, and for some ops (sigmoid: a
    vectorised exp) the two round differently; on K rows flattened into one run, a row's last
    elements would take the other code.  So the result is written with rows ``m + 1`` apart
    (``buffer``: [K, m + 1], or a fresh one), where the dimensions cannot merge into one run:
    every row is its own run, from its first element.  Row blocks under torch's grain size are
    computed in one thread each, so no block boundary falls inside a row either (a row that
    alone reaches the grain is computed alone, split across threads as it would be alone)."""
    K, m = x.shape[0], x[0].numel()
    if buffer is None:
        buffer = torch.empty((K, m + 1), dtype=x.dtype)
    out, rows = buffer[:, :m], x.view(K, m)
    step = K if torch.get_num_threads() == 1 else max(1, (GRAIN_SIZE - 1) // max(m, 1))
    for i in range(0, K, step):
        op(rows[i:i + step], out=out[i:i + step])
    return out.view(x.shape)


def _row_means(x: torch.Tensor) -> torch.Tensor:
    """The mean of each row of a contiguous stack x ([K]), exactly as ``torch.mean`` of that row
    alone computes it.  A reduction over the stack reduces every row in one thread, in a 1-D
    row's order; but a row that alone reaches torch's grain size is reduced by several threads
    (in parts, then combined), so such rows are reduced one by one, as a separate run does."""
    if x[0].numel() < GRAIN_SIZE or torch.get_num_threads() == 1:
        return x.mean(dim=_row_dims(x))
    return torch.stack([row.mean() for row in x])


class _ClosedForm(torch.autograd.Function):
    """Stacked row losses as one autograd node, their gradient computed with them (rows_and_grad):
    no [K, n] copies of the target, the ones or the 1/n that autograd's generic graph would make."""

    @staticmethod
    def forward(ctx, prediction, target, loss):
        values, grad = loss.rows_and_grad(prediction, target)
        ctx.save_for_backward(grad)
        return values

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return grad.mul(upstream.view((-1,) + (1,) * (grad.dim() - 1))), None, None


class MSE(_Elementwise):
    """Mean squared error: mean((prediction - target)²), torch.nn.functional.mse_loss."""

    name = "mse"
    closed_form = True

    def compute(self, prediction, target, reduction="mean"):
        return F.mse_loss(prediction, target, reduction=reduction)

    def rows_and_grad(self, prediction, target, scratch=None):  # mean((x - t)²); (x - t) * (2 / n)
        shape, dtype = prediction.shape, prediction.dtype
        diff = torch.sub(prediction, target, out=scratch and scratch("mse.diff", shape, dtype))
        square = torch.square(diff, out=scratch and scratch("mse.square", shape, dtype))
        return _row_means(square), diff.mul_(2.0 / diff[0].numel())


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
    tasks = ("classification",)
    hint = "bce needs one logit per row (binary targets); use cross_entropy for more than 2 classes"
    closed_form = True

    def compute(self, prediction, target, reduction="mean"):
        return F.binary_cross_entropy_with_logits(prediction, target, reduction=reduction)

    def rows_and_grad(self, prediction, target, scratch=None):  # (1 - t) x - log_sigmoid(x); (sigmoid(x) - t) / n
        x = prediction.contiguous()  # log_sigmoid is 6x slower on a transposed layout
        shape, dtype = x.shape, x.dtype
        if scratch is None:
            log_sigmoid = F.logsigmoid(x)
        else:
            log_sigmoid, _ = torch.ops.aten.log_sigmoid_forward.output(
                x, output=scratch("bce.log_sigmoid", shape, dtype), buffer=scratch("bce.buffer", shape, dtype))
        values = torch.mul(1 - target, x, out=scratch and scratch("bce.loss", shape, dtype)).sub_(log_sigmoid)
        grad = _rowwise(torch.sigmoid, x, scratch and scratch("bce.grad", (shape[0], x[0].numel() + 1), dtype))
        return _row_means(values), grad.sub_(target).div_(x[0].numel())


class CrossEntropy(Loss):
    """Cross-entropy of logits [n, C] against class indices [n], torch.nn.functional.cross_entropy."""

    name = "cross_entropy"
    tasks = ("classification",)
    supports = ("batched",)

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
