"""Built-in problems: the tutorials' y = 2x, noisy linear regression, the purchase classifier,
test functions (rosenbrock, quadratic, rastrigin) and any CSV file."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gdzoo import Hyper, hookimpl
from gdzoo.train.data import CsvData, load_csv, standardize
from gdzoo import Dataset, Optimum, Problem

DTYPE = torch.float64  # data and starting points are made in float64; the engine converts


# --- shared helpers -------------------------------------------------------------------------------
def _at_least(options: dict[str, Any], name: str, low: float) -> None:
    if options[name] < low:  # (nan and inf never get here: gdzoo.Hyper refuses them)
        raise ValueError(f"{name} must be >= {low}, got {options[name]}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_bias(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)


def least_squares_optimum(data: Dataset) -> Optimum:
    """The exact optimum of mse regression with a linear model (params: weights, then bias).

    With at least as many rows as parameters and independent columns the minimiser is unique:
    QR gives it (deterministic to the bit).  Otherwise (one row, a column that repeats another)
    every minimiser has the same loss but there are many: the loss comes from the minimum-norm
    solution (lstsq's SVD driver), and no parameters are given (a distance to one of many
    minimisers would mean nothing)."""
    X, y = _with_bias(data.X.to(DTYPE)), data.y.to(DTYPE)
    n, d = X.shape
    if n >= d:
        q, r = torch.linalg.qr(X)
        diag = r.diagonal().abs()
        if float(diag.max()) > 0 and bool((diag > 1e-10 * diag.max()).all()):
            params = torch.linalg.solve_triangular(r, (q.T @ y).unsqueeze(1), upper=True).squeeze(1)
            return Optimum(loss=float(((X @ params - y) ** 2).mean()), params=params)
    params = torch.linalg.lstsq(X, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return Optimum(loss=float(((X @ params - y) ** 2).mean()))


def logistic_optimum(data: Dataset, iterations: int = 100) -> Optimum | None:
    """The optimum of bce with a logistic model, by Newton's method (loss 0 without params if separable)."""
    X, y = _with_bias(data.X.to(DTYPE)), data.y.to(DTYPE)
    w = torch.zeros(X.shape[1], dtype=DTYPE)
    for _ in range(iterations):
        p = torch.sigmoid(X @ w)
        grad = X.T @ (p - y) / len(y)
        if float(grad.abs().max()) < 1e-10:
            loss = float(F.binary_cross_entropy_with_logits(X @ w, y))
            # Separable classes: the loss only tends to 0 as the weights grow, there is no minimiser.
            return Optimum(loss=loss, params=w) if loss > 1e-9 else Optimum(loss=0.0)
        hessian = (X.T * (p * (1 - p))) @ X / len(y)
        try:  # deterministic to the bit (lstsq's threaded LAPACK path is not); lstsq when singular
            w = w - torch.linalg.solve(hessian, grad)
        except RuntimeError:
            w = w - torch.linalg.lstsq(hessian, grad.unsqueeze(1)).solution.squeeze(1)
        if not bool(torch.isfinite(w).all()) or float(w.abs().max()) > 1e6:
            return None
    return None


def linear_summary(module: nn.Module, names: list[str], target: str) -> list[str]:
    """'Fitted: target = w1·x1 + w2·x2 + b' for a single-output linear model; nothing for other models."""
    if not isinstance(module, nn.Linear) or module.out_features != 1:
        return []
    terms = [(float(w), f"·{name}") for w, name in zip(module.weight.detach().reshape(-1), names)]
    if module.bias is not None:
        terms.append((float(module.bias.detach()), ""))
    text = " ".join(f"{'-' if w < 0 else '+'} {abs(w):.3f}{name}" for w, name in terms)
    return [f"Fitted: {target} = {text[2:] if text.startswith('+') else '-' + text[2:]}"]


# --- data problems --------------------------------------------------------------------------------
class Doubling(Problem):
    """The tutorials' y = 2x: x = 1..n, one weight w starting at w0, mse (optimum w = 2)."""

    name = "doubling"
    hyperparameters = (
        Hyper("n", 4, "int", "number of points x = 1, 2, ..., n"),
        Hyper("w0", 0.0, "float", "starting weight"),
    )
    task = "regression"
    model = "linear:bias=false"
    loss = "mse"
    zoo = ("sgd:lr=0.01", "momentum:lr=0.01", "nesterov:lr=0.01", "adam:lr=0.2", "adagrad:lr=1",
           "rmsprop:lr=0.05")
    budget = {"epochs": 200}

    @classmethod
    def check(cls, options):
        _at_least(options, "n", 1)

    def load(self):
        x = torch.arange(1, self.options["n"] + 1, dtype=DTYPE)
        return Dataset(x.unsqueeze(1), 2 * x, ["x"], "y")

    def init_model(self, module):
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.fill_(self.options["w0"])
                if module.bias is not None:
                    module.bias.zero_()

    def optimum(self):
        return Optimum(loss=0.0, params=torch.tensor([2.0], dtype=DTYPE))

    def summary(self, module):
        weight = next(module.parameters())
        with torch.no_grad():
            prediction = module(torch.tensor([[5.0]], dtype=weight.dtype, device=weight.device))
        return [f"Prediction after training: f(5) = {float(prediction.reshape(-1)[0]):.3f}"]


class LinearRegression(Problem):
    """Noisy linear regression y = a·x + b + noise·N(0, 1), x uniform in [-2, 2]; exact least-squares optimum."""

    name = "linear"
    hyperparameters = (
        Hyper("a", 2.0, "float", "slope"),
        Hyper("b", 3.0, "float", "intercept"),
        Hyper("n", 100, "int", "number of points"),
        Hyper("noise", 1.0, "float", "standard deviation of the Gaussian noise"),
        Hyper("seed", 0, "int", "seed of the data generator"),
    )
    task = "regression"
    model = "linear"
    loss = "mse"
    zoo = ("sgd:lr=0.1", "momentum:lr=0.05", "nesterov:lr=0.05", "adam:lr=0.2", "adagrad:lr=1",
           "rmsprop:lr=0.03")
    budget = {"epochs": 200}

    @classmethod
    def check(cls, options):
        _at_least(options, "n", 2)
        _at_least(options, "noise", 0)

    def load(self):
        o = self.options
        g = _generator(o["seed"])
        x = torch.rand(o["n"], generator=g, dtype=DTYPE) * 4 - 2
        y = o["a"] * x + o["b"] + o["noise"] * torch.randn(o["n"], generator=g, dtype=DTYPE)
        return Dataset(x.unsqueeze(1), y, ["x"], "y")

    def optimum(self):
        return least_squares_optimum(self.data())

    def summary(self, module):
        return linear_summary(module, ["x"], "y")


class Purchase(Problem):
    """The tutorial's 1,000 people: age, income and education; does each buy the product? (synthetic)"""

    name = "purchase"
    hyperparameters = (
        Hyper("n", 1000, "int", "number of people"),
        Hyper("seed", 0, "int", "seed of the data generator"),
    )
    task = "classification"
    model = "logistic"
    loss = "bce"
    zoo = ("sgd:lr=1", "momentum:lr=0.3", "nesterov:lr=0.3", "adam:lr=0.1", "adagrad:lr=1",
           "rmsprop:lr=0.03")
    budget = {"epochs": 200}

    @classmethod
    def check(cls, options):
        _at_least(options, "n", 2)

    def load(self):
        """People with an age, an income and an education level, and whether each buys."""
        # Ages 18–75; education 0–4 (high school, some college, bachelor, master, doctorate);
        # log-normal income rising with both; purchase odds rising with income and education and
        # peaking in middle age (which a logistic model cannot capture), plus noise.
        n, g = self.options["n"], _generator(self.options["seed"])

        def normal():
            return torch.randn(n, generator=g, dtype=DTYPE)

        age = (42 + 14 * normal()).round().clamp(18, 75)
        shares = torch.tensor([0.32, 0.24, 0.27, 0.13, 0.04], dtype=DTYPE)
        education = torch.multinomial(shares, n, replacement=True, generator=g).to(DTYPE)
        education = torch.minimum(education, ((age - 18) / 2.5).floor())  # degrees take years
        years = age - 18
        log_income = 10.1 + 0.22 * education + 0.035 * years - 0.0006 * years ** 2 + 0.45 * normal()
        income = log_income.exp().round(decimals=-2)
        logit = (0.7 + 2.4 * (log_income - 10.9) + 0.35 * (education - 1.3) - ((age - 45) / 15) ** 2
                 + 0.5 * normal())
        buys = (torch.rand(n, generator=g, dtype=DTYPE) < torch.sigmoid(logit)).to(DTYPE)
        X, _, _ = standardize(torch.stack([age, income, education], dim=1))
        return Dataset(X, buys, ["age", "income", "education"], "purchase", classes=2)

    def optimum(self):
        return logistic_optimum(self.data())

    def summary(self, module):
        return linear_summary(module, self.data().feature_names, "logit(purchase)")


class _PerInstance:
    """A class attribute that an instance settles from its data (csv's task and zoo); the class shows ``default``."""

    def __init__(self, default, resolve):
        self.default, self.resolve = default, resolve

    def __get__(self, problem, owner=None):
        return self.default if problem is None else self.resolve(problem)


class Csv(Problem):
    """Your CSV file: csv:PATH,target=COLUMN,task=regression|classification (default auto).

    The file needs a header row and numeric cells (a classification target may hold words).
    The target is the last column unless named; every other column is a feature, standardised
    (a regression target is left as it is).  task=auto picks classification when the target
    holds words, or whole numbers that read as class labels (counting up from 0 or 1 without a
    gap, 2 to 10 of them, some repeated: 0/1, 1..5); else regression (3, 5, 8, 8, 6 is a quantity).  Defaults: linear model and mse for regression; logistic model with bce
    (2 classes) or cross_entropy (more) for classification; the zoo is linear's or purchase's.
    """

    name = "csv"
    hyperparameters = (
        Hyper("path", None, "str", "the CSV file (a header row, then one row per example)"),
        Hyper("target", None, "str", "the column to predict (default: the last column)"),
        Hyper("task", "auto", "str", "what to predict; auto: classification for words or class-like whole "
              "numbers (0/1, 1..k), else regression", choices=("auto", "regression", "classification")),
    )
    task = _PerInstance("auto", lambda problem: problem.csv().task)
    model = "linear"
    loss = "mse"
    zoo = _PerInstance(LinearRegression.zoo, lambda problem: Purchase.zoo if problem.task == "classification"
                       else LinearRegression.zoo)
    budget = {"epochs": 200}

    def __init__(self, **options):
        super().__init__(**options)
        self._csv: CsvData | None = None

    @classmethod
    def check(cls, options):
        if not options["path"]:
            raise ValueError("needs the path of a CSV file, e.g. csv:data.csv,target=price")

    def csv(self) -> CsvData:
        """The file, read once."""
        if self._csv is None:
            self._csv = load_csv(self.options["path"], self.options["target"], self.options["task"])
        return self._csv

    def load(self):
        return self.csv().dataset

    def default_model(self):
        return "logistic" if self.task == "classification" else "linear"

    def default_loss(self):
        if self.task == "regression":
            return "mse"
        return "bce" if self.data().classes == 2 else "cross_entropy"

    def optimum(self):
        if self.task == "regression":
            return least_squares_optimum(self.data())
        return logistic_optimum(self.data()) if self.data().classes == 2 else None

    def summary(self, module):
        data, csv = self.data(), self.csv()
        kind = f"{csv.task}, {data.classes} classes: {', '.join(csv.labels)}" if data.classes else csv.task
        lines = [f"{self.options['path']}: {len(data)} rows, {len(data.feature_names)} standardised features, "
                 f"target {data.target_name!r} ({kind})"]
        return lines + linear_summary(module, data.feature_names, data.target_name)


# --- function problems ----------------------------------------------------------------------------
class FunctionProblem(Problem):
    """A test function of a point x: no data, model or loss; starts at x0."""

    supports = ("batched",)  # vmap of these objectives gives the separate runs' numbers (tested)
    task = "function"
    model = ""
    loss = ""
    dims = 2  # the dimension when there is no dim option

    @classmethod
    def dimension(cls, options) -> int:
        return options.get("dim", cls.dims)

    @classmethod
    def check(cls, options):
        if "dim" in options:
            _at_least(options, "dim", 1)
        dim, x0 = cls.dimension(options), options["x0"]
        if len(x0) not in (1, dim):
            raise ValueError(f"x0 has {len(x0)} values but the point has {dim}: give 1 (repeated) or {dim}")

    def init(self):
        x0 = torch.tensor(self.options["x0"], dtype=DTYPE)
        return x0.expand(self.dimension(self.options)).clone()

    def optimum(self):
        return Optimum(loss=0.0, params=self.minimizer())

    def minimizer(self) -> torch.Tensor:
        """Where the function is 0 (its minimum)."""
        return torch.zeros(self.dimension(self.options), dtype=DTYPE)


class Rosenbrock(FunctionProblem):
    """Rosenbrock's banana valley (a − x)² + b(y − x²)², minimum 0 at (a, a²)."""

    name = "rosenbrock"
    hyperparameters = (
        Hyper("a", 1.0, "float", "the minimum is at (a, a²)"),
        Hyper("b", 100.0, "float", "steepness of the valley walls, > 0"),
        Hyper("x0", (-1.5, 2.0), "floats", "starting point (x, y)", length=2),
    )
    zoo = ("sgd:lr=0.001", "momentum:lr=0.0005", "nesterov:lr=0.0005", "adam:lr=0.01", "adagrad:lr=1",
           "rmsprop:lr=0.001")
    budget = {"steps": 10000}

    @classmethod
    def check(cls, options):
        super().check(options)
        if not options["b"] > 0:
            raise ValueError(f"b must be > 0, got {options['b']}")

    def objective(self, x):
        a, b = self.options["a"], self.options["b"]
        return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2

    def minimizer(self):
        a = self.options["a"]
        return torch.tensor([a, a * a], dtype=DTYPE)


class Quadratic(FunctionProblem):
    """Ill-conditioned bowl ½ Σ λᵢ xᵢ² with λ log-spaced from 1 to cond; minimum 0 at the origin."""

    name = "quadratic"
    hyperparameters = (
        Hyper("dim", 10, "int", "number of coordinates"),
        Hyper("cond", 100.0, "float", "condition number: the largest λ over the smallest, >= 1"),
        Hyper("x0", (1.0,), "floats", "starting point (one value is used for every coordinate)"),
    )
    zoo = ("sgd:lr=0.015", "momentum:lr=0.01", "nesterov:lr=0.01", "adam:lr=0.1", "adagrad:lr=1",
           "rmsprop:lr=0.01")
    budget = {"steps": 1000}

    @classmethod
    def check(cls, options):
        super().check(options)
        _at_least(options, "cond", 1)

    def __init__(self, **options):
        super().__init__(**options)
        self.curvatures = torch.logspace(0, math.log10(self.options["cond"]), self.options["dim"], dtype=DTYPE)

    def objective(self, x):
        return 0.5 * (self.curvatures.to(x) * x ** 2).sum()


class Rastrigin(FunctionProblem):
    """Rastrigin's egg crate 10·d + Σ (xᵢ² − 10 cos 2πxᵢ): minimum 0 at the origin amid many local minima."""

    name = "rastrigin"
    hyperparameters = (
        Hyper("dim", 2, "int", "number of coordinates"),
        Hyper("x0", (2.5,), "floats", "starting point (one value is used for every coordinate)"),
    )
    zoo = ("sgd:lr=0.002", "momentum:lr=0.002", "nesterov:lr=0.002", "adam:lr=0.1", "adagrad:lr=0.5",
           "rmsprop:lr=0.01")
    budget = {"steps": 1000}

    def objective(self, x):
        return 10 * x.numel() + (x ** 2 - 10 * torch.cos(2 * math.pi * x)).sum()


@hookimpl
def register_problems(register):
    for problem in (Doubling, LinearRegression, Purchase, Csv, Rosenbrock, Quadratic, Rastrigin):
        register(problem)
