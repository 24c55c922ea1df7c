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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Sequence

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
    # mini-batch runs: the full-objective loss at the start and at every epoch end (full batch:
    # empty, the step losses are the full objective)
    evaluations: list[float] = field(default_factory=list)
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResult":
        """The result that :meth:`to_dict` gave (from the store, or another process): the same numbers."""
        names = {f.name for f in fields(cls)} - {"module"}
        return cls(**{k: v for k, v in data.items() if k in names})

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


class Recorder:
    """Something that watches the training loop: attach instances with ``recorders=[...]``.

    The loop calls ``start`` once, ``step`` after every optimizer step (with the losses of the
    configurations still training), ``epoch`` after every epoch (with the full-objective losses
    where the loop evaluated them) and ``end`` once.  ``runner.ids`` maps batch positions to
    configurations; ``runner.parameters(pos)`` gives a position's current parameters.  A recorder
    never changes training: the numbers are the same with or without it.
    """

    def start(self, loop: "Loop") -> None:
        pass

    def step(self, loop: "Loop", values: list[float]) -> None:
        pass

    def epoch(self, loop: "Loop", evaluations: list[float] | None) -> None:
        pass

    def end(self, loop: "Loop") -> None:
        pass


class Trajectory(Recorder):
    """The parameters of every configuration at the start and after every step (small models:
    the path of a 2-D problem).  ``paths[k]`` is configuration k's list of flat parameter lists."""

    def __init__(self, max_parameters: int = SMALL_MODEL):
        self.max_parameters = max_parameters
        self.paths: dict[int, list[list[float]]] = {}

    def start(self, loop):
        self.enabled = bool(loop.runner.ids) and len(loop.runner.flat(0)) <= self.max_parameters
        if self.enabled:
            for pos, k in enumerate(loop.runner.ids):
                self.paths[k] = [loop.runner.flat(pos)]

    def step(self, loop, values):
        if self.enabled:
            for pos, k in enumerate(loop.runner.ids):
                if k not in loop.stopped:
                    self.paths[k].append(loop.runner.flat(pos))


class Checkpoint(Recorder):
    """Save the training state (parameters and optimizer state of every configuration, step and
    epoch) to ``path`` every ``every`` epochs and at the end, atomically (a crash mid-write
    leaves the previous checkpoint)."""

    def __init__(self, path: str, every: int = 1):
        if every < 1:
            raise GdzooError(f"checkpoint every must be >= 1 epoch, got {every}")
        self.path, self.every, self.saved = path, every, 0

    def _save(self, loop):
        import os

        state = {"step": loop.step, "epoch": loop.epoch, "configurations": list(loop.runner.ids),
                 **loop.runner.state()}
        tmp = f"{self.path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self.saved += 1

    def epoch(self, loop, evaluations):
        if loop.epoch % self.every == 0:
            self._save(loop)

    def end(self, loop):
        if loop.epoch % self.every:
            self._save(loop)


class EpochCallback(Recorder):
    """Calls ``fn(epoch, loss, module)`` after every epoch of a single run (the CLI's progress
    lines): ``loss`` is the epoch's mean batch loss (full batch: the loss of its one step)."""

    def __init__(self, fn: Callable[[int, float, nn.Module], None]):
        self.fn = fn

    def epoch(self, loop, evaluations):
        track = loop.tracks[loop.runner.ids[0]] if loop.runner.ids else loop.tracks[0]
        self.fn(loop.epoch, track.epoch_losses[-1], loop.runner.setup_of(0).module)


class StepProgress(Recorder):
    """Tells ``progress`` (an object with ``total``, ``update(n)`` and ``close()``, such as
    :class:`gdzoo.show.progress.Progress`) about every step: a long single run shows a count and
    an ETA."""

    def __init__(self, progress):
        self.progress = progress

    def start(self, loop):
        self.progress.total = loop.planned_steps

    def step(self, loop, values):
        self.progress.update(1)

    def end(self, loop):
        self.progress.close()


@dataclass
class Track:
    """What the loop records of one configuration."""

    status: str = "budget"
    steps: int = 0
    epochs: int = 0
    converged_at: int | None = None
    target_at: int | None = None
    diverged_at: int | None = None
    limit: float | None = None  # the loss above which it has blown up (blowup x its first loss)
    history: list[float] = field(default_factory=list)  # every step's batch loss, before the update
    epoch_losses: list[float] = field(default_factory=list)  # mean batch loss of every epoch
    evaluations: list[float] = field(default_factory=list)  # mini-batches: full objective at start, each epoch end
    epoch_sum: float = 0.0
    epoch_n: int = 0


class SingleRunner:
    """One configuration: its module, its optimizer, its generator."""

    def __init__(self, spec: str, s: Setup, budget: Budget, seed: int, registry: Registry,
                 overrides: dict[str, Any] | None):
        self.s = s
        self.params = [p for p in s.module.parameters() if p.requires_grad]
        if not self.params:
            raise GdzooError("the model has no trainable parameters")
        self.opt = registry.optimizer(spec, self.params, **(overrides or {}))
        self.gen = torch.Generator().manual_seed(seed)
        self.budget = budget
        self.ids = [0]
        self.full_batch = s.loader is None and (s.data is None or budget.batch_size is None
                                                or budget.batch_size >= len(s.data))
        self.batches_per_epoch = 1 if self.full_batch or s.data is None else -(-len(s.data) // budget.batch_size)

    def batches(self):
        s = self.s
        if s.objective is not None:
            return [None]
        if s.loader is not None:
            return s.loader
        return epoch_batches(s.data, self.budget.batch_size, self.gen)

    def step(self, batch) -> list[float]:
        s, module = self.s, self.s.module
        for p in self.params:  # what zero_grad() does, without its profiler wrapping
            p.grad = None
        if s.objective is not None:
            loss = s.objective(module.x)
        else:
            Xb, yb = batch
            loss = s.loss_fn(_squeeze(module(Xb)), yb)
        loss.backward()
        with torch.no_grad():
            self.opt.apply()
        return [loss.item()]

    def evaluate(self) -> list[float]:
        return [evaluate(self.s)[0]]

    def freeze(self, pos: int) -> None:
        pass  # the module holds the parameters; the loop ends with its only configuration

    def compact(self, keep: list[int]) -> None:
        self.ids = [self.ids[i] for i in keep]

    def flat(self, pos: int) -> list[float]:
        return torch.cat([p.detach().reshape(-1) for p in self.s.module.parameters()]).tolist()

    def state(self) -> dict[str, Any]:
        return {"model": [self.s.module.state_dict()], "optimizer": [self.opt.state_dict()]}

    def setup_of(self, k: int) -> Setup:
        return self.s

    def finite(self, k: int) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params)

    def evaluated(self) -> list[tuple[float, dict]] | None:
        return None


class Loop:
    """THE training loop, for one configuration or K batched ones (``runner``: a
    :class:`SingleRunner` or :class:`gdzoo.train.batched.StackedRunner`).

    Per configuration it applies the same rules: a batch loss that is not finite or exceeds
    ``blowup`` x the first one stops it as ``diverged`` at that step; full batch, the step losses
    are the full objective and the ``target`` / ``tol`` rules apply after every step; with
    mini-batches the full objective is evaluated at the start and at every epoch end, and the
    rules apply to those evaluations.  Budgets: ``steps`` and ``epochs``, whichever ends first.
    A configuration that stops is frozen (its parameters kept aside); the others train on.
    """

    def __init__(self, runner, budget: Budget, recorders: Sequence[Recorder] = ()):
        self.runner, self.budget, self.recorders = runner, budget, list(recorders)
        self.tracks = [Track() for _ in runner.ids]
        self.stopped: set[int] = set()  # configurations stopped but still in the batch until compacted
        self.step = self.epoch = 0
        self.interrupted = False
        self.wall = 0.0
        steps = budget.steps if budget.steps is not None else math.inf
        epochs = budget.epochs if budget.epochs is not None else math.inf
        per_epoch = getattr(runner, "batches_per_epoch", None)
        self.planned_steps = min(steps, epochs * per_epoch) if per_epoch else steps  # for progress (may be inf)

    def _stop(self, k: int, pos: int, why: str) -> None:
        t = self.tracks[k]
        t.status, t.steps, t.epochs = why, self.step, self.epoch + 1
        if why == "converged":
            t.converged_at = self.step
        elif why == "target":
            t.target_at = self.step
        elif why == "diverged":
            t.diverged_at = self.step
        self.runner.freeze(pos)
        self.stopped.add(k)

    def _rules(self, value: float, previous: float | None) -> str | None:
        budget = self.budget
        if budget.target is not None and value <= budget.target:
            return "target"
        if budget.tol is not None and previous is not None and abs(value - previous) <= budget.tol:
            return "converged"
        return None

    def _compact(self) -> None:
        runner = self.runner
        keep = [pos for pos, k in enumerate(runner.ids) if k not in self.stopped]
        runner.compact(keep)
        self.stopped.clear()

    def run(self) -> "Loop":
        runner, budget, tracks, recorders = self.runner, self.budget, self.tracks, self.recorders
        max_steps = budget.steps if budget.steps is not None else math.inf
        max_epochs = budget.epochs if budget.epochs is not None else math.inf
        full = runner.full_batch
        t0 = time.perf_counter()
        with flush_denormals():
            try:
                for r in recorders:
                    r.start(self)
                if not full:
                    for k, value in zip(runner.ids, runner.evaluate()):
                        tracks[k].evaluations.append(value)
                while self.step < max_steps and self.epoch < max_epochs and runner.ids:
                    for k in runner.ids:
                        tracks[k].epoch_sum, tracks[k].epoch_n = 0.0, 0
                    for batch in runner.batches():
                        values = runner.step(batch)
                        self.step += 1
                        stopping = []
                        for pos, (k, value) in enumerate(zip(runner.ids, values)):
                            if k in self.stopped:
                                continue
                            t = tracks[k]
                            t.history.append(value)
                            t.epoch_sum += value
                            t.epoch_n += 1
                            if t.limit is None:
                                t.limit = budget.blowup * max(abs(value) if math.isfinite(value) else math.inf, 1e-12)
                            if not (math.isfinite(value) and value <= t.limit):
                                stopping.append((k, pos, "diverged"))
                            elif full:
                                why = self._rules(value, t.history[-2] if len(t.history) >= 2 else None)
                                if why:
                                    stopping.append((k, pos, why))
                        for r in recorders:
                            r.step(self, values)
                        for k, pos, why in stopping:
                            self._stop(k, pos, why)
                        if self.step >= max_steps or len(self.stopped) == len(runner.ids):
                            break
                    self.epoch += 1
                    for k in runner.ids:
                        t = tracks[k]
                        if t.epoch_n and (k not in self.stopped or t.epochs == self.epoch):
                            t.epoch_losses.append(t.epoch_sum / t.epoch_n)
                    evaluations = None
                    if not full:
                        evaluations = runner.evaluate()
                        for pos, (k, value) in enumerate(zip(runner.ids, evaluations)):
                            if k in self.stopped:
                                continue
                            t = tracks[k]
                            t.evaluations.append(value)
                            if not math.isfinite(value):
                                self._stop(k, pos, "diverged")
                                tracks[k].epochs = self.epoch
                            else:
                                why = self._rules(value, t.evaluations[-2] if len(t.evaluations) >= 2 else None)
                                if why:
                                    self._stop(k, pos, why)
                                    tracks[k].epochs = self.epoch
                    for r in recorders:
                        r.epoch(self, evaluations)
                    if self.stopped and (not full or len(runner.ids) - len(self.stopped) <= 0.75 * len(runner.ids)):
                        self._compact()  # stopped configurations cost nothing more
            except KeyboardInterrupt:
                self.interrupted = True
        self.wall = time.perf_counter() - t0
        for pos, k in enumerate(runner.ids):
            if k not in self.stopped:
                t = tracks[k]
                t.steps, t.epochs = self.step, self.epoch
                if self.interrupted:
                    t.status = "interrupted"
                runner.freeze(pos)
        for r in recorders:
            r.end(self)
        return self

    def results(self, spec: str, budget: Budget, seeds: Sequence[int]) -> list[RunResult]:
        """One RunResult per configuration (``_finish`` decides the last-step rules and figures)."""
        runner = self.runner
        evaluated = runner.evaluated()
        K = len(self.tracks)
        results = []
        for k, t in enumerate(self.tracks):
            if t.status != "diverged" and not runner.finite(k):
                t.status, t.diverged_at = "diverged", t.steps
            results.append(_finish(spec, runner.setup_of(k), budget, seeds[k], t, self.wall / K,
                                   evaluated[k] if evaluated is not None else None))
        return results


def train(spec: str, s: Setup, budget: Budget, *, seed: int = 0, registry: Registry | None = None,
          on_epoch: Callable[[int, float, nn.Module], None] | None = None,
          overrides: dict[str, Any] | None = None, recorders: Sequence[Recorder] = ()) -> RunResult:
    """Train one configuration on a prepared :class:`Setup` (with :class:`Loop`)."""
    registry = registry or default_registry()
    runner = SingleRunner(spec, s, budget, seed, registry, overrides)
    recorders = list(recorders) + ([EpochCallback(on_epoch)] if on_epoch is not None else [])
    loop = Loop(runner, budget, recorders).run()
    return loop.results(spec, budget, [seed])[0]


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


def _finish(spec, s: Setup, budget: Budget, seed: int, t: Track, wall: float,
            evaluated: tuple[float, dict] | None = None) -> RunResult:
    """The RunResult of a finished configuration; ``evaluated``: its final loss and task metrics,
    when a batched study has computed them for all its configurations at once.

    The last-step rules: a final loss that is not finite or blew up makes the run ``diverged`` in
    every figure; a run that ``converged`` without its loss ever falling below its start is
    ``stalled``.  ``best_loss`` is the best full-objective loss: the step losses of a full-batch
    run (each is the loss on all the data), the evaluations of a mini-batch run (at its start and
    every epoch end), and the final loss."""
    final, pred = evaluate(s) if evaluated is None else (evaluated[0], None)
    status, diverged_at, converged_at, target_at = t.status, t.diverged_at, t.converged_at, t.target_at
    objective = t.evaluations if t.evaluations else t.history  # the full-objective losses seen
    start = next((v for v in objective if math.isfinite(v)), math.nan)
    if status not in ("diverged", "interrupted") and \
            (not math.isfinite(final) or final > budget.blowup * max(abs(start), 1e-12)):
        status, diverged_at, converged_at, target_at = "diverged", t.steps, None, None  # the last step overflowed
    if status == "converged" and objective and not final < objective[0]:
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
    candidates = [v for v in objective + [final] if math.isfinite(v)]
    named = list(s.module.named_parameters())
    small = sum(p.numel() for _, p in named) <= SMALL_MODEL
    config = {"epochs": budget.epochs, "steps": budget.steps,
              "batch_size": "full" if budget.batch_size is None else budget.batch_size,
              "tol": budget.tol, "target": budget.target, "blowup": budget.blowup,
              "dtype": str(next(iter(s.module.parameters())).dtype).replace("torch.", "")}
    return RunResult(
        problem=s.problem_name, spec=spec, seed=seed, status=status, steps=t.steps, epochs=t.epochs,
        final_loss=final, best_loss=min(candidates) if candidates else math.nan,
        history=t.history, epoch_losses=t.epoch_losses, evaluations=t.evaluations, converged_at=converged_at,
        target_at=target_at, diverged_at=diverged_at, metrics=metrics,
        params={n: p.detach().reshape(-1).tolist() for n, p in named} if small else None,
        summary=summary, wall_time=wall, config=config)
