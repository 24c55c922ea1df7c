"""One training run: problem x chain spec x seed x budget x batching, with stop rules.

``gdzoo.run("sgd:lr=0.01", "doubling", epochs=20)`` trains a registered problem;
``gdzoo.run("adam", model=net, loss="mse", data=(X, y))`` trains your own module on your tensors
(or a DataLoader).  A run never raises for a diverging optimizer: it ends with status
``diverged`` and the step where it happened.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..defaults import SMALL_MODEL, STATUSES  # noqa: F401 (STATUSES: re-exported)
from ..errors import GdzooError, SpecError
from .problem import Dataset, Problem
from ..plugins.registry import Registry, default_registry

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Budget:
    """How long a run may go and how it batches.

    ``epochs`` or ``steps`` (optimizer steps); ``batch_size`` None for full batch (gradient descent),
    1 for stochastic, N for mini-batches shuffled by the run's seed.  ``tol`` stops when the loss
    changes by at most tol between epochs (between steps for full batch); ``target`` stops when the
    loss reaches it; ``blowup`` marks a run diverged when its loss exceeds blowup x its start.
    """

    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    tol: float | None = None
    target: float | None = None
    blowup: float = 1e6

    def __post_init__(self):
        for name in ("epochs", "steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise GdzooError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise GdzooError(f"batch size must be 'full' or a positive integer, got {self.batch_size!r}")
        if self.tol is not None and not self.tol >= 0:
            raise GdzooError(f"tol must be >= 0, got {self.tol!r}")
        if not self.blowup > 1:
            raise GdzooError(f"blowup must be > 1, got {self.blowup!r}")


@dataclass
class RunResult:
    """What one run records."""

    problem: str
    spec: str
    seed: int
    status: str
    steps: int
    epochs: int
    final_loss: float
    best_loss: float
    history: list[float]  # the loss of every step's batch, before that step's update
    epoch_losses: list[float]  # mean batch loss of every epoch
    converged_at: int | None = None  # step at which the tol rule fired
    target_at: int | None = None  # step at which the loss first reached the target
    diverged_at: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, list[float]] | None = None  # final parameters of small models
    summary: list[str] = field(default_factory=list)
    wall_time: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    # gdzoo.run's trained module (the user's own module is trained as a copy); not in to_dict()
    module: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, module=None))
        data.pop("module")
        return data

    def row(self) -> dict[str, Any]:
        """A one-line summary (used by tables)."""
        row = {"spec": self.spec, "seed": self.seed, "status": self.status, "steps": self.steps,
               "final loss": self.final_loss, "best loss": self.best_loss}
        row.update(self.metrics)
        row["time (s)"] = round(self.wall_time, 4)
        return row

    def __str__(self) -> str:
        from ..show.render import render

        return render([self.row()])


class Point(nn.Module):
    """The parameters of a function problem, as a module: ``forward()`` returns the point."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(x0.clone())

    def forward(self, *_):
        return self.x


@dataclass
class Setup:
    """Everything a run trains: module, loss function, data (or objective), and the problem."""

    module: nn.Module
    loss_fn: Callable[..., torch.Tensor]
    data: Dataset | None
    loader: Iterable | None
    problem: Problem | None
    problem_name: str
    objective: Callable[[torch.Tensor], torch.Tensor] | None = None
    model_component: Any = None  # the registered Model that built ``module`` (None: the user's module)
    defaults: bool = True  # trained with the problem's own model and loss (its optimum is theirs)


def _squeeze(pred: torch.Tensor) -> torch.Tensor:
    return pred.squeeze(-1) if pred.dim() == 2 and pred.shape[-1] == 1 else pred


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise GdzooError(f"unknown dtype {dtype!r}; choose {' or '.join(DTYPES)}")
    return DTYPES[dtype]


def build_problem(problem: str | Problem, registry: Registry) -> tuple[Problem, str]:
    """A Problem instance from a spec string (``doubling:n=5``) or an instance."""
    if isinstance(problem, Problem):
        return problem, problem.name or type(problem).__name__
    comp, values = registry.bind("problem", problem)
    return comp.obj(**values), problem


def setup(problem: str | Problem | None, *, seed: int, dtype: torch.dtype, registry: Registry,
          model: nn.Module | str | None = None, loss: Callable | str | None = None,
          data: Any = None) -> Setup:
    """Build the module (seeded), loss and data of one run."""
    loss_fn = None
    if isinstance(loss, str):
        comp, values = registry.bind("loss", loss)
        loss_fn = comp.obj(**values)
    elif loss is not None:
        loss_fn = loss
    if problem is None:
        if not isinstance(model, nn.Module) or loss_fn is None or data is None:
            raise GdzooError("without a problem, give model= (an nn.Module), loss= and data=")
        dataset, loader = _user_data(data, dtype)
        _not_empty(dataset, "data")
        # Train a copy in the run's dtype: the data is converted to it, so the module must be too.
        return Setup(copy.deepcopy(model).to(dtype), loss_fn, dataset, loader, None, "custom")
    prob, name = build_problem(problem, registry)
    model_spec = None if model is None else model if isinstance(model, str) else object()
    # The seed drives torch's own initialisation of the model; only the CPU generator is touched
    # (torch.manual_seed would also seed every accelerator backend, at 0.5 ms a call).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if prob.task == "function":
            x0 = prob.init().to(dtype)
            return Setup(Point(x0), None, None, None, prob, name, objective=prob.objective)
        dataset = prob.data()
        if dataset is None:
            raise GdzooError(f"problem {name!r} has no data and is not a function problem")
        dataset = dataset.to(dtype)
        _not_empty(dataset, f"problem {name!r}")
        if isinstance(model, nn.Module):
            module = copy.deepcopy(model)
            comp, values = registry.bind("model", prob.default_model())
            default = comp.obj(**values).build(dataset.X.shape[1], prob.out_features())
            if _same_structure(module, default):  # the problem's own model, built by the user
                model_spec = None
        else:
            comp, values = registry.bind("model", model or prob.default_model())
            model = comp.obj(**values)
            module = model.build(dataset.X.shape[1], prob.out_features())
            prob.init_model(module)
        module = module.to(dtype)
    if loss_fn is None:
        comp, values = registry.bind("loss", prob.default_loss())
        loss_fn = comp.obj(**values)
    tasks = getattr(loss_fn, "tasks", None)
    if tasks is not None and prob.task not in tasks:
        fitting = [c.name for c in registry.components("loss") if getattr(c.obj, "tasks", None) is None
                   or prob.task in c.obj.tasks]
        raise SpecError(f"loss {getattr(loss_fn, 'name', loss)!r} is for {' or '.join(tasks)}, and problem "
                         f"{name!r} is {prob.task}; losses for {prob.task}: {', '.join(fitting)}")
    own = (model_spec is None or model_spec == prob.default_model()) and \
        (loss is None or (isinstance(loss, str) and loss == prob.default_loss()))
    return Setup(module, loss_fn, dataset, None, prob, name,
                 model_component=model if not isinstance(model, (nn.Module, str, type(None))) else None,
                 defaults=own)


def _same_structure(a: nn.Module, b: nn.Module) -> bool:
    """The same module classes with the same parameter names and shapes (the same model family)."""
    return [type(m) for m in a.modules()] == [type(m) for m in b.modules()] and \
        [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]


def _not_empty(dataset: Dataset | None, what: str) -> None:
    if dataset is not None and len(dataset) == 0:
        raise GdzooError(f"{what} has no rows: there is nothing to train on")


def _user_data(data: Any, dtype: torch.dtype) -> tuple[Dataset | None, Iterable | None]:
    if isinstance(data, Dataset):
        return data.to(dtype), None
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        X, y = data
        if X.shape[0] != y.shape[0]:
            raise GdzooError(f"data: X has {X.shape[0]} rows but y has {y.shape[0]}")
        y = y.to(dtype) if y.is_floating_point() else y
        return Dataset(X.to(dtype), y), None
    if isinstance(data, Iterable):
        return None, _CastBatches(data, dtype)  # a DataLoader (or any re-iterable of (X, y) batches)
    raise GdzooError("data must be (X, y) tensors, a gdzoo Dataset or a DataLoader")


class _CastBatches:
    """A DataLoader's (X, y) batches with floating tensors converted to the run's dtype."""

    def __init__(self, loader: Iterable, dtype: torch.dtype):
        self.loader, self.dtype = loader, dtype

    def __iter__(self):
        for Xb, yb in self.loader:
            yield (Xb.to(self.dtype) if Xb.is_floating_point() else Xb,
                   yb.to(self.dtype) if yb.is_floating_point() else yb)


def run(spec: str, problem: str | Problem | None = None, *, seed: int = 0, epochs: int | None = None,
        steps: int | None = None, batch_size: int | str | None = None, tol: float | None = None,
        target: float | None = None, blowup: float = 1e6, dtype: str | torch.dtype = "float32",
        model: nn.Module | str | None = None, loss: Callable | str | None = None, data: Any = None,
        on_epoch: Callable[[int, float, nn.Module], None] | None = None,
        registry: Registry | None = None, **hyperparameters) -> RunResult:
    """Train once and return a :class:`RunResult`.

    ``problem`` is a registered problem's spec (``"linear:n=200"``) or a Problem; or leave it out
    and give ``model`` (an nn.Module), ``loss`` (a callable or a loss spec) and ``data`` ((X, y),
    a Dataset or a DataLoader).  With neither ``epochs`` nor ``steps`` the problem's default
    budget applies.  ``on_epoch(epoch, loss, module)`` is called after every epoch.
    """
    registry = registry or default_registry()
    dtype = resolve_dtype(dtype)
    s = setup(problem, seed=seed, dtype=dtype, registry=registry, model=model, loss=loss, data=data)
    budget = make_budget(s.problem, epochs, steps, batch_size, tol, target, blowup)
    result = train(spec, s, budget, seed=seed, registry=registry, on_epoch=on_epoch, overrides=hyperparameters)
    result.module = s.module  # the trained module: the copy of the user's, or the problem's model
    return result


def make_budget(problem: Problem | None, epochs, steps, batch_size, tol, target, blowup) -> Budget:
    if epochs is None and steps is None:
        default = dict(problem.budget) if problem is not None else {"epochs": 100}
        epochs, steps = default.get("epochs"), default.get("steps")
    if isinstance(batch_size, str):
        if batch_size.strip().lower() != "full":
            try:
                batch_size = int(batch_size)
            except ValueError:
                raise GdzooError(f"batch size must be 'full' or a positive integer, got {batch_size!r}") from None
        else:
            batch_size = None
    return Budget(epochs=epochs, steps=steps, batch_size=batch_size, tol=tol, target=target, blowup=blowup)


def epoch_batches(data: Dataset, batch_size: int | None, gen: torch.Generator):
    """One epoch's (X, y) batches: the whole data, or mini-batches in an order drawn from ``gen``."""
    n = len(data)
    if batch_size is None or batch_size >= n:
        return [(data.X, data.y)]
    perm = torch.randperm(n, generator=gen)
    X, y = data.X[perm], data.y[perm]
    return [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def train(spec: str, s: Setup, budget: Budget, *, seed: int = 0, registry: Registry | None = None,
          on_epoch: Callable[[int, float, nn.Module], None] | None = None,
          overrides: dict[str, Any] | None = None) -> RunResult:
    """The training loop of one run on a prepared :class:`Setup`."""
    registry = registry or default_registry()
    module = s.module
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise GdzooError("the model has no trainable parameters")
    opt = registry.optimizer(spec, params, **(overrides or {}))
    apply, no_grad = opt.apply, torch.no_grad
    gen = torch.Generator().manual_seed(seed)
    max_steps = budget.steps if budget.steps is not None else math.inf
    max_epochs = budget.epochs if budget.epochs is not None else math.inf
    full_batch = s.loader is None and (s.data is None or budget.batch_size is None
                                       or budget.batch_size >= len(s.data))
    history: list[float] = []
    epoch_losses: list[float] = []
    status = "budget"
    converged_at = target_at = diverged_at = None
    start_loss = None
    step = epoch = 0
    objective, loss_fn = s.objective, s.loss_fn
    t0 = time.perf_counter()
    with flush_denormals():
        try:
            while step < max_steps and epoch < max_epochs and status == "budget":
                if objective is not None:
                    batches = [None]
                elif s.loader is not None:
                    batches = s.loader
                else:
                    batches = epoch_batches(s.data, budget.batch_size, gen)
                epoch_sum, epoch_n = 0.0, 0
                for batch in batches:
                    for p in params:  # what zero_grad() does, without its profiler wrapping
                        p.grad = None
                    if objective is not None:
                        loss = objective(module.x)
                    else:
                        Xb, yb = batch
                        loss = loss_fn(_squeeze(module(Xb)), yb)
                    loss.backward()
                    with no_grad():
                        apply()
                    value = loss.item()
                    step += 1
                    history.append(value)
                    epoch_sum += value
                    epoch_n += 1
                    if start_loss is None:
                        start_loss = abs(value) if math.isfinite(value) else math.inf
                    if not math.isfinite(value) or value > budget.blowup * max(start_loss, 1e-12):
                        status, diverged_at = "diverged", step
                        break
                    if full_batch:
                        status, converged_at, target_at = _stop_rules(budget, history, step)
                        if status != "budget":
                            break
                    if step >= max_steps:
                        break
                epoch += 1
                epoch_losses.append(epoch_sum / max(epoch_n, 1))
                if on_epoch is not None:
                    on_epoch(epoch, epoch_losses[-1], module)
                if not full_batch and status == "budget":
                    status, converged_at, target_at = _stop_rules(budget, epoch_losses, step)
        except KeyboardInterrupt:
            status = "interrupted"
    wall = time.perf_counter() - t0
    if status != "diverged" and not all(torch.isfinite(p).all() for p in params):
        status, diverged_at = "diverged", step
    return _finish(spec, s, budget, seed, status, step, epoch, history, epoch_losses,
                   converged_at, target_at, diverged_at, wall)


@contextlib.contextmanager
def flush_denormals():
    """Treat subnormal floats as zero while training (where the CPU can).

    Losses like bce drive values into the subnormal range (below 1e-38 in float32, 1e-308 in
    float64), where CPU arithmetic is tens of times slower; flushing them changes nothing a
    result can show.  The process-wide setting is restored afterwards (torch's default: off).
    """
    changed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def _stop_rules(budget: Budget, losses: list[float], step: int):
    """(status, converged_at, target_at) after the newest loss."""
    if budget.target is not None and losses[-1] <= budget.target:
        return "target", None, step
    if budget.tol is not None and len(losses) >= 2 and abs(losses[-1] - losses[-2]) <= budget.tol:
        return "converged", step, None
    return "budget", None, None


@torch.no_grad()
def evaluate(s: Setup) -> tuple[float, torch.Tensor | None]:
    """The loss on the full data (or the objective) with the current parameters, and predictions."""
    if s.objective is not None:
        return float(s.objective(s.module.x)), None
    if s.data is None:  # DataLoader: mean of batch losses
        total, n = 0.0, 0
        for Xb, yb in s.loader:
            total += float(s.loss_fn(_squeeze(s.module(Xb)), yb)) * len(Xb)
            n += len(Xb)
        return total / max(n, 1), None
    pred = _squeeze(s.module(s.data.X))
    return float(s.loss_fn(pred, s.data.y)), pred


def _finish(spec, s: Setup, budget: Budget, seed, status, step, epoch, history, epoch_losses,
            converged_at, target_at, diverged_at, wall, evaluated: tuple[float, dict] | None = None) -> RunResult:
    """The RunResult of a finished run; ``evaluated``: its final loss and task metrics, when a
    batched study has computed them for all its configurations at once."""
    final, pred = evaluate(s) if evaluated is None else (evaluated[0], None)
    start = next((v for v in history if math.isfinite(v)), math.nan)
    if status not in ("diverged", "interrupted") and \
            (not math.isfinite(final) or final > budget.blowup * max(abs(start), 1e-12)):
        status, diverged_at, converged_at, target_at = "diverged", step, None, None  # the last step overflowed
    if status == "converged" and history and not final < history[0]:
        status, converged_at = "stalled", None  # the loss stopped changing without ever falling
    metrics: dict[str, float] = {}
    summary: list[str] = []
    if status != "diverged" and s.problem is not None:
        metrics.update(s.problem.metrics(pred, s.data) if evaluated is None else evaluated[1])
        optimum = s.problem.known_optimum() if s.defaults else None  # another model's or loss's optimum: none
        if optimum is not None:
            metrics["loss gap"] = final - optimum.loss
            if optimum.params is not None:
                flat = torch.cat([p.detach().reshape(-1) for p in s.module.parameters()])
                if flat.numel() == optimum.params.numel():
                    metrics["distance"] = float(torch.linalg.vector_norm(flat.double() - optimum.params.double()))
        summary = s.problem.summary(s.module)
    elif status != "diverged" and s.data is not None and pred is not None:
        from . import metrics as metrics_mod

        if s.data.y.is_floating_point() and pred.shape == s.data.y.shape:
            metrics.update(metrics_mod.regression(pred, s.data.y))
    candidates = [v for v in history + [final] if math.isfinite(v)]
    named = list(s.module.named_parameters())
    small = sum(p.numel() for _, p in named) <= SMALL_MODEL
    config = {"epochs": budget.epochs, "steps": budget.steps,
              "batch_size": "full" if budget.batch_size is None else budget.batch_size,
              "tol": budget.tol, "target": budget.target, "blowup": budget.blowup,
              "dtype": str(next(iter(s.module.parameters())).dtype).replace("torch.", "")}
    return RunResult(
        problem=s.problem_name, spec=spec, seed=seed, status=status, steps=step, epochs=epoch,
        final_loss=final, best_loss=min(candidates) if candidates else math.nan,
        history=history, epoch_losses=epoch_losses, converged_at=converged_at, target_at=target_at,
        diverged_at=diverged_at, metrics=metrics,
        params={n: p.detach().reshape(-1).tolist() for n, p in named} if small else None,
        summary=summary, wall_time=wall, config=config)
