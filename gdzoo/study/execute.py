"""Many runs: plan, execute, aggregate (``compare`` and ``sweep``)."""

from __future__ import annotations

import itertools
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..train.batched import batch_key, can_batch, train_batched, why_separate
from ..train.loop import RunResult, build_problem, make_budget, resolve_dtype, setup, train
from ..defaults import COMPARE_DEFAULTS, MAX_RUNS, SWEEP_DEFAULTS
from ..errors import GdzooError, SpecError
from ..show.render import render
from ..plugins.registry import Registry, default_registry
from ..optim.spec import format_value


@dataclass(frozen=True)
class Trial:
    """One planned run: a spec, keyword hyperparameters on top of it, and a seed."""

    spec: str
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.spec
        return self.spec + " [" + ",".join(f"{k}={format_value(v)}" for k, v in self.overrides) + "]"


@dataclass
class Study:
    """The runs of a comparison or sweep, and how they aggregate into a table."""

    problem: str
    runs: list[RunResult] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    interrupted: bool = False
    kind: str = "compare"
    params: list[str] = field(default_factory=list)  # swept hyperparameters
    notes: list[str] = field(default_factory=list)  # what ran otherwise than asked, and why

    def groups(self) -> list[tuple[Trial, list[RunResult]]]:
        """Runs grouped by configuration (all seeds of one spec and overrides), in plan order."""
        by_key: dict[tuple, list[RunResult]] = {}
        firsts: dict[tuple, Trial] = {}
        for trial, result in zip(self.trials, self.runs):
            key = (trial.spec, trial.overrides)
            by_key.setdefault(key, []).append(result)
            firsts.setdefault(key, trial)
        return [(firsts[k], v) for k, v in by_key.items()]

    def rows(self) -> list[dict[str, Any]]:
        groups = self.groups()
        rows = [self._row(trial, results) for trial, results in groups]
        if self.kind == "compare":
            rows.sort(key=lambda r: (r["_rank"], r["_key"]))
        else:  # a sweep reads down its grid: rows in the order of the swept values
            order = sorted(range(len(rows)), key=lambda i: tuple(_order_key(v) for _, v in groups[i][0].overrides))
            rows = [rows[i] for i in order]
        for r in rows:
            r.pop("_rank")
            r.pop("_key")
        return rows

    def _row(self, trial: Trial, results: list[RunResult]) -> dict[str, Any]:
        ok = [r for r in results if r.status != "diverged"]
        finals = [r.final_loss for r in ok if math.isfinite(r.final_loss)]
        row: dict[str, Any] = {}
        if self.kind == "sweep":
            values = dict(trial.overrides)
            for p in self.params:
                row[p] = format_value(values[p])
        else:
            row["spec"] = trial.spec
        row["final loss"] = _mean_std(finals) if finals else "diverged"
        row["best loss"] = _fmt(min(r.best_loss for r in ok)) if ok else "-"
        hit = [r.converged_at or r.target_at for r in results if (r.converged_at or r.target_at)]
        row["steps to tol" if self.kind == "compare" else "iterations to convergence"] = \
            _fmt(statistics.mean(hit)) if hit else ("diverged" if not ok else "-")
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        row["status"] = ", ".join(f"{n} {s}" for s, n in counts.items())
        metric_names = [k for r in ok for k in r.metrics]
        for name in dict.fromkeys(metric_names):
            vals = [r.metrics[name] for r in ok if name in r.metrics and math.isfinite(r.metrics[name])]
            row[name] = _fmt(statistics.mean(vals)) if vals else "-"
        row["time (s)"] = _fmt(statistics.mean(r.wall_time for r in results))
        row["_rank"] = 0 if finals and len(ok) == len(results) else (1 if finals else 2)
        row["_key"] = statistics.mean(finals) if finals else math.inf
        return row

    def render(self, fmt: str = "simple") -> str:
        rows = self.rows()
        return render(rows, fmt, data=self.to_dict() if fmt == "json" else None)

    def to_dict(self) -> dict[str, Any]:
        return {"problem": self.problem, "kind": self.kind, "interrupted": self.interrupted, "notes": self.notes,
                "summary": self.rows(), "runs": [r.to_dict() for r in self.runs]}

    def __str__(self) -> str:
        return self.render()


def _order_key(value: Any) -> tuple:
    """Swept values in numeric order where they are numbers (tuples item by item), else as text."""
    if isinstance(value, (tuple, list)):
        return tuple(_order_key(v) for v in value)
    try:
        return (0, float(str(value).strip("()")), "")
    except ValueError:
        return (1, 0.0, str(value))


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}"


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.6g}"
    return f"{statistics.mean(values):.6g} ± {statistics.stdev(values):.2g}"


def execute(problem, trials: Sequence[Trial], *, epochs=None, steps=None, batch_size=None, tol=None,
            target=None, blowup=1e6, dtype="float32", model=None, loss=None, data=None,
            registry: Registry | None = None, on_result: Callable[[Trial, RunResult], None] | None = None,
            kind: str = "compare", params: list[str] | None = None, batched: bool = True) -> Study:
    """Run every trial on the same problem, data and seeds; Ctrl-C keeps what finished.

    With ``batched`` (the default), trials that differ only in numbers and seeds are trained as
    one batched problem (see :mod:`gdzoo.train.batched`); their results equal separate runs.
    """
    registry = registry or default_registry()
    dtype = resolve_dtype(dtype)
    name = problem if isinstance(problem, str) else getattr(problem, "name", "custom") if problem else "custom"
    study = Study(problem=name, kind=kind, params=params or [])
    problem_obj = None
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        key = batch_key(trial.spec, dict(trial.overrides), registry) if batched else (id(trial),)
        groups.setdefault(key, []).append(trial)
    for group in groups.values():  # every spec and value is checked before the first run starts
        _validate(group, registry, dtype)

    def make(seed: int):
        nonlocal problem_obj
        s = setup(problem_obj or problem, seed=seed, dtype=dtype, registry=registry,
                  model=model, loss=loss, data=data)
        problem_obj = s.problem or problem_obj
        return s

    for group in groups.values():
        try:
            by_seed = {}  # one set-up per seed: a batch's configurations of one seed start alike
            for trial in group:
                if trial.seed not in by_seed:
                    by_seed[trial.seed] = make(trial.seed)
            budget = make_budget(problem_obj, epochs, steps, batch_size, tol, target, blowup)
            separate = why_separate(group[0].spec, list(by_seed.values()), registry) if len(group) > 1 else None
            if separate:
                note = f"{group[0].spec}: {separate}; its {len(group)} runs train separately"
                study.notes.append(note)
                print(f"gdzoo: note: {note}", file=sys.stderr)
            if len(group) > 1 and not separate and can_batch(list(by_seed.values())):
                results = train_batched(group[0].spec, [by_seed[t.seed] for t in group], [t.seed for t in group],
                                        [dict(t.overrides) for t in group], budget, registry)
            else:  # separate runs train their own modules: a fresh set-up for each after the first
                results = [train(t.spec, by_seed.pop(t.seed, None) or make(t.seed), budget, seed=t.seed,
                                 registry=registry, overrides=dict(t.overrides)) for t in group]
        except KeyboardInterrupt:
            study.interrupted = True
            break
        for trial, result in zip(group, results):
            if result.status == "interrupted":
                study.interrupted = True
                break
            result.problem = name
            study.trials.append(trial)
            study.runs.append(result)
            if on_result is not None:
                try:
                    on_result(trial, result)
                except KeyboardInterrupt:  # Ctrl-C while reporting: this run finished, keep it
                    study.interrupted = True
        if study.interrupted:
            break
    order = {trial: i for i, trial in enumerate(trials)}
    pairs = sorted(zip(study.trials, study.runs), key=lambda pair: order[pair[0]])
    study.trials, study.runs = [t for t, _ in pairs], [r for _, r in pairs]
    return study


def _validate(group: list[Trial], registry: Registry, dtype: torch.dtype) -> None:
    """Build the group's optimizer on a probe parameter (one batched build for a batch, where the
    chain declares batching; one build per configuration otherwise)."""
    distinct = list(dict.fromkeys(Trial(t.spec, 0, t.overrides) for t in group))
    if len(distinct) > 1 and not registry.declares(distinct[0].spec, "batched"):
        for trial in distinct:
            _validate([trial], registry, dtype)
        return
    try:
        if len(distinct) > 1:
            keys = sorted({k for t in distinct for k, _ in t.overrides})
            values = [dict(t.overrides) for t in distinct]
            probe = [torch.zeros(len(distinct), 1, dtype=dtype, requires_grad=True)]
            registry.optimizer(distinct[0].spec, probe, batch=len(distinct), **{k: [v[k] for v in values] for k in keys})
        else:
            registry.optimizer(distinct[0].spec, [torch.zeros(1, dtype=dtype, requires_grad=True)],
                               **dict(distinct[0].overrides))
    except SpecError as exc:
        if len(distinct) == 1 and distinct[0].overrides:
            raise SpecError(f"{distinct[0].label}: {exc.reason}") from None
        raise


def seeds_of(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise GdzooError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    return list(seeds)




def compare(specs: Sequence[str] | str | None = None, problem=None, *,
            seeds: int | Sequence[int] = COMPARE_DEFAULTS["seeds"], registry: Registry | None = None,
            **kwargs) -> Study:
    """Run every spec on the same problem, data order and seeds; ``str(result)`` is the table.

    With no specs, the problem's own zoo (the built-in optimizers at learning rates that suit it).
    Other keywords as :func:`gdzoo.run` (epochs, steps, batch_size, tol, target, dtype, model, ...).
    Defaults (the CLI's too): problem purchase, 3 seeds, tol 1e-6 (``tol=None``: no tolerance stop).
    """
    registry = registry or default_registry()
    if isinstance(specs, str):  # one spec, not its characters
        specs = [specs]
    kwargs.setdefault("tol", COMPARE_DEFAULTS["tol"])
    if problem is None and kwargs.get("model") is None:
        problem = COMPARE_DEFAULTS["problem"]
    if not specs:
        if problem is None:
            raise GdzooError("give specs to compare on your own model")
        specs = list(build_problem(problem, registry)[0].zoo)
    for spec in specs:
        if list(specs).count(spec) > 1:
            raise SpecError(f"spec {spec!r} given {list(specs).count(spec)} times; give each spec once "
                            f"(--seeds repeats a spec)")
    trials = [Trial(spec, seed) for spec in specs for seed in seeds_of(seeds)]
    return execute(problem, trials, registry=registry, **kwargs)



_RANGE = re.compile(r"^(log|lin)\(\s*([^,]+),\s*([^,]+),\s*(\d+)\s*\)$")


def parse_param(text: str, max_runs: int = MAX_RUNS) -> tuple[str, list[str]]:
    """``lr=0.001,0.01,0.1`` or ``lr=log(1e-4,1,9)`` / ``lin(a,b,n)`` -> (name, values as text)."""
    name, eq, values = text.partition("=")
    name = name.strip()
    if not eq or not name or not values.strip():
        raise SpecError("expected NAME=V1,V2,... or NAME=log(LOW,HIGH,N)", text, 0, len(text))
    m = _RANGE.match(values.strip())
    if m:
        kind, lo, hi, n = m.groups()
        try:
            lo_f, hi_f, count = float(lo), float(hi), int(n)
        except ValueError:
            raise SpecError("range bounds must be numbers", text, len(name) + 1, len(text)) from None
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
            raise SpecError("range bounds must be finite numbers", text, len(name) + 1, len(text))
        if count < 1:
            raise SpecError(f"a {kind} range needs N >= 1 values", text, len(name) + 1, len(text))
        if count > max_runs:
            raise SpecError(f"a {kind} range of {count:,} values is more than the {max_runs:,} runs a study may "
                            f"plan (--max-runs raises the limit)", text, len(name) + 1, len(text))
        if kind == "log" and (lo_f <= 0 or hi_f <= 0):
            raise SpecError("a log range needs positive bounds", text, len(name) + 1, len(text))
        grid = np.geomspace(lo_f, hi_f, count) if kind == "log" else np.linspace(lo_f, hi_f, count)
        return name, _distinct(name, [repr(float(f"{v:.6g}")) for v in grid], text)
    if re.match(r"^(log|lin)\s*\(", values.strip()):  # a range, but not a well-formed one
        raise SpecError("a range is log(LOW,HIGH,N) or lin(LOW,HIGH,N): two numbers and a whole number N",
                        text, len(name) + 1, len(text))
    items = [v.strip() for v in _top_level_split(values)]  # tuples: betas=(0.9,0.999),(0.5,0.9)
    if any(not v for v in items):
        raise SpecError("empty value in the list", text, len(name) + 1, len(text))
    return name, _distinct(name, items, text)


def _distinct(name: str, values: list[str], text: str) -> list[str]:
    """Values given twice (0.1 and 1e-1 too, or a range rounded to the same 6 digits) would be
    one row twice: an error, naming the value."""
    seen: dict[Any, str] = {}
    for value in values:
        try:
            key: Any = float(value)
        except (TypeError, ValueError):  # tuples (betas) and other text
            key = str(value).replace(" ", "")
        if key in seen:
            raise SpecError(f"{name}: the value {value} is given twice" + (f" (as {seen[key]})" if seen[key] != value
                            else "") + "; give each value once", text, 0, len(text))
        seen[key] = value
    return values


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return items + [text[start:]]


def parse_params(texts: Sequence[str], max_runs: int = MAX_RUNS) -> dict[str, list[str]]:
    """Several ``NAME=VALUES`` texts (one per ``--param``) -> {name: values}; a name given twice is an error."""
    parsed = [parse_param(text, max_runs) for text in texts]
    names = [name for name, _ in parsed]
    for name in names:
        if names.count(name) > 1:
            raise SpecError(f"--param {name} given {names.count(name)} times; put all its values in one: "
                            f"{name}=V1,V2,...")
    return dict(parsed)


def sweep(spec: str, params: dict[str, Sequence[Any]] | Sequence[str], problem=None, *,
          seeds: int | Sequence[int] = SWEEP_DEFAULTS["seeds"], registry: Registry | None = None,
          max_runs: int = MAX_RUNS, **kwargs) -> Study:
    """Vary hyperparameters of ``spec`` over a grid; one table row per combination.

    ``params`` maps a hyperparameter (as ``gdzoo.optimizer`` keywords take it) to its values, or
    is a list of ``"lr=0.001,0.01"`` / ``"lr=log(1e-4,1,9)"`` strings.  A grid of more than
    ``max_runs`` runs (values x seeds) is refused with its size.  Defaults (the CLI's too):
    problem doubling, 1 seed, tol 1e-6.
    """
    if not isinstance(params, dict):
        params = parse_params(params, max_runs)
    if not params:
        raise GdzooError("sweep needs at least one --param NAME=VALUES")
    names = list(params)
    for name in names:
        if isinstance(params[name], (str, bytes)) or not hasattr(params[name], "__iter__"):
            raise GdzooError(f"sweep: the values of {name!r} must be a list, got {params[name]!r}")
        params[name] = _distinct(name, list(params[name]), name)
    size = math.prod(len(params[n]) for n in names) * len(seeds_of(seeds))
    if size > max_runs:
        raise SpecError(f"this sweep plans {size:,} runs, more than the limit of {max_runs:,} "
                        f"(raise it with --max-runs, or max_runs= in Python)")
    grid = list(itertools.product(*(params[n] for n in names)))
    trials = [Trial(spec, seed, tuple(zip(names, combo))) for combo in grid for seed in seeds_of(seeds)]
    kwargs.setdefault("tol", SWEEP_DEFAULTS["tol"])
    problem = problem if problem is not None or kwargs.get("model") is not None else SWEEP_DEFAULTS["problem"]
    return execute(problem, trials, registry=registry, kind="sweep", params=names, **kwargs)

