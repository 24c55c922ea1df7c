"""Built-in models: linear, logistic (a linear layer giving logits) and mlp."""

from __future__ import annotations

from torch import nn

from gdzoo import Hyper, hookimpl
from gdzoo import Model

_BIAS = Hyper("bias", True, "bool", "learn an additive bias (intercept)")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class Linear(Model):
    """Linear regression: y = x·wᵀ + b (torch.nn.Linear)."""

    name = "linear"
    supports = ("batched",)
    hyperparameters = (_BIAS,)

    def build(self, in_features, out_features):
        return nn.Linear(in_features, out_features, bias=self.hp["bias"])


class Logistic(Linear):
    """Logistic regression: a linear layer whose outputs are logits (pair it with bce or cross_entropy)."""

    name = "logistic"


class MLP(Model):
    """Multi-layer perceptron: linear layers of the given hidden sizes with an activation between them."""

    name = "mlp"
    supports = ("batched",)
    hyperparameters = (
        Hyper("hidden", (32,), "ints", "sizes of the hidden layers, e.g. 64/32"),
        Hyper("activation", "relu", "str", "activation after each hidden layer", choices=tuple(ACTIVATIONS)),
        _BIAS,
    )

    @classmethod
    def check(cls, hp):
        if not hp["hidden"] or any(size < 1 for size in hp["hidden"]):
            raise ValueError(f"hidden needs one or more layer sizes >= 1, got {hp['hidden']} "
                             f"(for no hidden layer use the linear model)")

    def build(self, in_features, out_features):
        layers: list[nn.Module] = []
        width = in_features
        for size in self.hp["hidden"]:
            layers += [nn.Linear(width, size, bias=self.hp["bias"]), ACTIVATIONS[self.hp["activation"]]()]
            width = size
        layers.append(nn.Linear(width, out_features, bias=self.hp["bias"]))
        return nn.Sequential(*layers)


@hookimpl
def register_models(register):
    for model in (Linear, Logistic, MLP):
        register(model)
