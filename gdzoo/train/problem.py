"""Base classes for losses, models and problems (registered by plugins, used by the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..optim.spec import Hyper

TASKS = ("regression", "classification", "function")


class Loss:
    """A loss: ``Loss(**hp)(prediction, target)`` is a scalar tensor (the mean over the batch).

    Subclasses set ``name``, ``description``, ``hyperparameters`` and implement :meth:`__call__`.
    ``supports = ("batched",)`` declares that :meth:`batched` gives, row by row, the numbers of
    :meth:`__call__` (bit for bit): only then do batched studies use it; otherwise each
    configuration trains separately.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hyperparameters: ClassVar[tuple[Hyper, ...]] = ()
    supports: ClassVar[tuple[str, ...]] = ()
    # The problem tasks this loss fits (a problem of another task refuses it); None: any.
    tasks: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, **hp: Any):
        self.hp = {h.name: h.default for h in self.hyperparameters} | hp

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batched(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The losses of K configurations at once: ``prediction`` [K, ...] against ``target`` (shared,
        or [K, ...]) gives [K].  The default maps :meth:`__call__` with ``torch.func.vmap``; override
        it with one vectorised pass where torch has one (the built-in losses do)."""
        in_dims = (0, 0 if target.dim() == prediction.dim() else None)
        return torch.func.vmap(self.__call__, in_dims=in_dims)(prediction, target)

    def batched_with_grad(self, prediction: torch.Tensor, target: torch.Tensor,
                          scratch: Any = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`batched` ([K] losses) with their gradient with respect to ``prediction`` (of their
        sum), in closed form, for batched training without autograd; None (the default) where there
        is none.  ``scratch`` (a :class:`gdzoo.ops.Scratch`, or None) may hold the [K, n]
        temporaries and the gradient from one step to the next; the losses must be fresh."""
        return None


class Model:
    """A model family: ``Model(**hp).build(in_features, out_features)`` returns an ``nn.Module``.

    Linear layers and MLPs (``nn.Sequential`` of ``nn.Linear`` and elementwise activations)
    train batched by gdzoo's own stacked forward pass.  Any other module trains batched through
    ``torch.func.vmap`` only if its model declares ``supports = ("batched",)`` (vmap gives it the
    numbers of separate runs); otherwise each configuration trains separately.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hyperparameters: ClassVar[tuple[Hyper, ...]] = ()
    supports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **hp: Any):
        self.hp = {h.name: h.default for h in self.hyperparameters} | hp

    def build(self, in_features: int, out_features: int) -> nn.Module:
        raise NotImplementedError


@dataclass
class Dataset:
    """Features ``X`` [n, d] and targets ``y`` ([n] for regression/binary, class indices otherwise)."""

    X: torch.Tensor
    y: torch.Tensor
    feature_names: list[str] = field(default_factory=list)
    target_name: str = "y"
    classes: int = 0  # number of classes for classification (2 = binary, logits [n])

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def to(self, dtype: torch.dtype) -> "Dataset":
        y = self.y if self.classes > 2 else self.y.to(dtype)
        return Dataset(self.X.to(dtype), y, self.feature_names, self.target_name, self.classes)


@dataclass
class Optimum:
    """A known optimum: the optimal loss and, where known, the optimal parameters (flattened)."""

    loss: float
    params: torch.Tensor | None = None


class Problem:
    """A problem: data (or an objective function), a default model and loss, metrics and optimum.

    Data problems return a :class:`Dataset` from :meth:`data`; the engine trains
    ``model(X) -> prediction`` against ``y`` with ``loss``.  Function problems (``task =
    "function"``) have no data: :meth:`init` gives the starting point and :meth:`objective`
    maps the point (a 1-D tensor) to the loss.  A function problem trains batched (its objective
    through ``torch.func.vmap``) only if it declares ``supports = ("batched",)``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hyperparameters: ClassVar[tuple[Hyper, ...]] = ()
    supports: ClassVar[tuple[str, ...]] = ()
    task: ClassVar[str] = "regression"
    model: ClassVar[str] = "linear"  # default model spec
    loss: ClassVar[str] = "mse"  # default loss spec
    # Specs compared by ``gdzoo compare`` with no SPEC, at learning rates that suit this problem.
    zoo: ClassVar[tuple[str, ...]] = ("sgd:lr=0.1", "momentum:lr=0.05", "nesterov:lr=0.05", "adam:lr=0.05",
                                      "adagrad:lr=0.5", "rmsprop:lr=0.01")
    budget: ClassVar[dict[str, Any]] = {"epochs": 100}  # default budget of a run

    def __init__(self, **options: Any):
        self.options = {h.name: h.default for h in self.hyperparameters} | options
        self._data: Dataset | None = None

    @classmethod
    def check(cls, options: dict[str, Any]) -> None:
        """Raise ValueError for bad options."""

    def default_model(self) -> str:
        """The model spec used when none is given (the class's ``model``; csv picks one by task)."""
        return self.model

    def default_loss(self) -> str:
        """The loss spec used when none is given (the class's ``loss``; csv picks one by task)."""
        return self.loss

    # --- data problems -------------------------------------------------------------------
    def load(self) -> Dataset | None:
        """Build the data (called once, cached by :meth:`data`); None for function problems."""
        return None

    def data(self) -> Dataset | None:
        if self._data is None:
            self._data = self.load()
        return self._data

    def out_features(self) -> int:
        data = self.data()
        if data is not None and data.classes > 2:
            return data.classes
        return 1

    def init_model(self, module: nn.Module) -> None:
        """Set a freshly built model's starting parameters (default: leave torch's seeded init)."""

    # --- function problems ---------------------------------------------------------------
    def init(self) -> torch.Tensor:
        """The starting point of a function problem."""
        raise NotImplementedError

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """The function problem's value at ``x`` (0-d tensor)."""
        raise NotImplementedError

    # --- results -------------------------------------------------------------------------
    def optimum(self) -> Optimum | None:
        """The known optimum of this problem (with its default model and loss), if any."""
        return None

    def known_optimum(self) -> Optimum | None:
        """:meth:`optimum`, computed once per problem instance."""
        if not hasattr(self, "_optimum"):
            self._optimum = self.optimum()
        return self._optimum

    def metrics(self, prediction: torch.Tensor | None, data: Dataset | None) -> dict[str, float]:
        """Task metrics of a trained model's predictions on the full data (see gdzoo.train.metrics)."""
        if prediction is None:
            return {}
        return self.metrics_rows(prediction.unsqueeze(0), data)[0]

    def metrics_rows(self, predictions: torch.Tensor, data: Dataset | None) -> list[dict[str, float]]:
        """:meth:`metrics` of K configurations' stacked predictions [K, ...] at once (batched studies).

        A problem that overrides :meth:`metrics` alone gets it called once per configuration.
        """
        from . import metrics

        if type(self).metrics is not Problem.metrics:
            return [self.metrics(row, data) for row in predictions]
        if self.task == "function" or data is None:
            return [{} for _ in predictions]
        if self.task == "classification":
            return metrics.classification_rows(predictions, data.y, data.classes)
        return metrics.regression_rows(predictions, data.y)

    def summary(self, module: nn.Module) -> list[str]:
        """Lines printed after a run (e.g. the tutorial's 'Prediction after training: f(5) = 10.000')."""
        return []
