"""The training engine and studies through the Python API: gdzoo.run, gdzoo.compare, gdzoo.sweep.

Covers the tutorial's numbers, reaching known optima, stop rules (budget, steps, tol, target),
batching and seeding, divergence and NaN, Ctrl-C during a study, results as tables and dicts,
and training the user's own module, loss and data.
"""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gdzoo
from gdzoo.train import loop as engine
from gdzoo.show import render as output
from gdzoo.errors import GdzooError, SpecError
from gdzoo.study.execute import parse_param


def problem(spec: str) -> gdzoo.Problem:
    comp, values = gdzoo.registry().bind("problem", spec)
    return comp.obj(**values)


# The tutorial's PyTorch autograd table (lr = 0.01, every other epoch of 20): w after the step, loss before it.
TUTORIAL_20 = [(0.300, "30.00000000"), (0.772, "15.66018772"), (1.113, "8.17471695"), (1.359, "4.26725292"),
               (1.537, "2.22753215"), (1.665, "1.16278565"), (1.758, "0.60698116"), (1.825, "0.31684780"),
               (1.874, "0.16539653"), (1.909, "0.08633806")]


# --- the tutorial ---------------------------------------------------------------------------------
def test_doubling_reproduces_the_tutorial_losses():
    weights = {}
    result = gdzoo.run("sgd:lr=0.01", "doubling", epochs=20,
                       on_epoch=lambda epoch, loss, module: weights.setdefault(epoch, module.weight.item()))
    assert result.status == "budget" and result.steps == 20 and result.epochs == 20
    assert [f"{loss:.8f}" for loss in result.history[::2]] == [loss for _, loss in TUTORIAL_20]
    assert [round(weights[e], 3) for e in range(1, 20, 2)] == [w for w, _ in TUTORIAL_20]
    assert result.summary == ["Prediction after training: f(5) = 9.612"]
    assert result.config["dtype"] == "float32"


# --- reaching known optima ------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["sgd:lr=0.1", "adam:lr=0.1"])
def test_linear_reaches_the_closed_form_optimum(spec):
    data = problem("linear").data()
    X = np.column_stack([data.X.numpy().reshape(-1), np.ones(len(data))])
    y = data.y.numpy()
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    best = float(np.mean((X @ coef - y) ** 2))  # computed here, independently of the problem's optimum()
    result = gdzoo.run(spec, "linear", steps=500, dtype="float64")
    assert result.status == "budget"
    assert abs(result.final_loss - best) <= 1e-6 * best
    assert abs(result.metrics["loss gap"]) <= 1e-6 * best
    assert result.params is not None
    np.testing.assert_allclose([result.params["weight"][0], result.params["bias"][0]], coef, rtol=1e-4)


def test_linear_optimum_is_not_reached_by_a_short_run():
    """The tolerance above is tight enough to tell a finished run from an unfinished one."""
    best = problem("linear").optimum().loss
    result = gdzoo.run("sgd:lr=0.1", "linear", steps=10, dtype="float64")
    assert result.final_loss - best > 1e-6 * best


def test_purchase_zoo_reaches_comparable_accuracy():
    prob = problem("purchase")
    specs = list(prob.zoo) + ["adamw:lr=0.1"]  # adamw is not in the zoo: give it the zoo's adam rate
    assert {s.split(":")[0] for s in specs} == set(gdzoo.registry().names("optimizer"))  # every built-in
    accuracy = {}
    for spec in specs:
        result = gdzoo.run(spec, "purchase")  # the problem's default budget (200 epochs, full batch)
        assert result.status == "budget" and result.epochs == 200
        accuracy[spec] = result.metrics["accuracy"]
    best = max(accuracy.values())
    majority = max(float(prob.data().y.mean()), 1 - float(prob.data().y.mean()))
    assert best > majority + 0.2  # the models learned something
    assert {spec: acc for spec, acc in accuracy.items() if acc < 0.9 * best} == {}


def test_rosenbrock_adam_reaches_the_minimum():
    result = gdzoo.run("adam:lr=0.02", "rosenbrock", steps=5000, dtype="float64")
    assert result.status == "budget" and result.steps == 5000
    x, y = result.params["x"]
    assert abs(x - 1) < 1e-3 and abs(y - 1) < 1e-3
    assert result.metrics["distance"] < 1e-3
    assert result.final_loss < 1e-6


# --- sweeps ---------------------------------------------------------------------------------------
def test_sweep_on_doubling_shows_the_tutorial_pattern():
    study = gdzoo.sweep("sgd", ["lr=0.001,0.01,0.1,1,10"], "doubling", steps=2000)
    assert [dict(t.overrides)["lr"] for t in study.trials] == ["0.001", "0.01", "0.1", "1", "10"]
    runs = study.runs
    assert [r.status for r in runs] == ["converged"] * 3 + ["diverged"] * 2
    converged_at = [r.converged_at for r in runs[:3]]
    assert all(a > b for a, b in zip(converged_at, converged_at[1:])), converged_at
    assert converged_at[-1] < 2000
    assert all(r.diverged_at is not None and r.converged_at is None for r in runs[3:])
    rows = study.rows()
    assert [row["lr"] for row in rows] == ["0.001", "0.01", "0.1", "1", "10"]
    column = [row["iterations to convergence"] for row in rows]
    assert [int(c) for c in column[:3]] == converged_at
    assert column[3:] == ["diverged", "diverged"]
    assert [row["final loss"] for row in rows][3:] == ["diverged", "diverged"]


def test_sweep_log_range():
    assert parse_param("lr=log(1e-3,1,4)") == ("lr", ["0.001", "0.01", "0.1", "1.0"])
    assert parse_param("lr=lin(0,1,3)") == ("lr", ["0.0", "0.5", "1.0"])
    assert parse_param(" lr = 0.1, 1 ") == ("lr", ["0.1", "1"])
    assert parse_param("betas=(0.9,0.999),(0.5, 0.9)") == ("betas", ["(0.9,0.999)", "(0.5, 0.9)"])
    study = gdzoo.sweep("sgd", {"lr": parse_param("lr=log(1e-3,1,4)")[1]}, "doubling", steps=2000)
    assert [r.status for r in study.runs] == ["converged"] * 3 + ["diverged"]


def test_sweep_grid_of_two_parameters_and_seeds():
    study = gdzoo.sweep("sgd", ["lr=0.01,0.1", "momentum=0,0.5"], "doubling", seeds=2, epochs=5)
    assert len(study.runs) == 8
    assert [list(row)[:2] for row in study.rows()] == [["lr", "momentum"]] * 4
    assert [(row["lr"], row["momentum"]) for row in study.rows()] == \
        [("0.01", "0"), ("0.01", "0.5"), ("0.1", "0"), ("0.1", "0.5")]


@pytest.mark.parametrize("text", ["lr", "lr=", "=0.1", "lr=0.1,,1", "lr=log(0,1,3)", "lr=log(1e-3,1,x)",
                                  "lr=lin(1,2)"])
def test_parse_param_rejects_malformed_values(text):
    with pytest.raises(SpecError):
        parse_param(text)


# --- determinism, seeds and batching --------------------------------------------------------------
def test_same_run_twice_gives_identical_numbers():
    a = gdzoo.run("adam:lr=0.05", "purchase:n=200", epochs=3, batch_size=32, seed=3)
    b = gdzoo.run("adam:lr=0.05", "purchase:n=200", epochs=3, batch_size=32, seed=3)
    assert a.history == b.history and a.final_loss == b.final_loss and a.params == b.params
    # "distance" is to the optimum found by torch.linalg.lstsq (Newton), which can differ in the last bit
    assert a.metrics.pop("distance") == pytest.approx(b.metrics.pop("distance"), rel=1e-12)
    assert a.metrics == b.metrics


def test_different_seeds_give_different_histories_on_the_same_data():
    a = gdzoo.run("sgd:lr=0.5", "purchase:n=200", epochs=3, batch_size=32, seed=0)
    b = gdzoo.run("sgd:lr=0.5", "purchase:n=200", epochs=3, batch_size=32, seed=1)
    assert a.history != b.history
    assert a.steps == b.steps == 3 * 7
    registry = gdzoo.registry()
    s0 = engine.setup("purchase:n=200", seed=0, dtype=torch.float32, registry=registry)
    s1 = engine.setup("purchase:n=200", seed=1, dtype=torch.float32, registry=registry)
    assert torch.equal(s0.data.X, s1.data.X) and torch.equal(s0.data.y, s1.data.y)


def test_the_seed_does_not_leak_into_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gdzoo.run("sgd:lr=0.5", "purchase:n=50", epochs=2, batch_size=8, seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("batch_size, epochs, steps", [
    (None, 4, 4), ("full", 4, 4), (50, 3, 3), (100, 2, 2), (1, 2, 100), (32, 3, 6), (7, 2, 16), ("8", 2, 14),
])
def test_steps_per_epoch_follow_the_batch_size(batch_size, epochs, steps):
    result = gdzoo.run("sgd:lr=0.01", "linear:n=50", epochs=epochs, batch_size=batch_size)
    assert (result.steps, result.epochs) == (steps, epochs)
    assert len(result.history) == steps and len(result.epoch_losses) == epochs
    expected = "full" if batch_size in (None, "full") else int(batch_size)
    assert result.config["batch_size"] == expected


def test_mini_batches_cover_every_example_once_per_epoch_in_shuffled_order():
    X = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(10, dtype=torch.float32)
    seen = []

    def loss(prediction, target):
        seen.append(target.tolist())
        return F.mse_loss(prediction, target)

    result = gdzoo.run("sgd:lr=0.001", model=nn.Linear(1, 1), loss=loss, data=(X, y), epochs=3, batch_size=3)
    # The full objective is evaluated at the start, after every epoch and once more at the end.
    evaluation = list(range(10))
    assert [len(b) for b in seen] == [10] + ([3, 3, 3, 1] + [10]) * 3 + [10] and result.steps == 12
    assert seen[0] == seen[5] == seen[10] == seen[15] == seen[16] == evaluation
    batches = [b for i, b in enumerate(seen) if i % 5]
    epochs = [sum(batches[i:i + 4], []) for i in range(0, 12, 4)]
    assert all(sorted(e) == evaluation for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != evaluation
    assert len(result.evaluations) == 4  # start and three epoch ends


@pytest.mark.parametrize("epochs, steps, batch_size, expected", [
    (10, 7, None, 7), (None, 15, None, 15), (10, 10, 8, 10), (1, 100, 8, 7),
])
def test_steps_cap_the_run(epochs, steps, batch_size, expected):
    result = gdzoo.run("sgd:lr=0.01", "linear:n=50", epochs=epochs, steps=steps, batch_size=batch_size)
    assert result.steps == len(result.history) == expected
    assert result.status == "budget"


def test_default_budget_is_the_problems():
    assert gdzoo.run("sgd:lr=0.01", "doubling").steps == 200
    assert gdzoo.run("sgd:lr=0.01", "quadratic:dim=2").steps == 1000


# --- stop rules -----------------------------------------------------------------------------------
def test_tol_stops_a_full_batch_run_as_converged():
    result = gdzoo.run("sgd:lr=0.1", "doubling", epochs=1000, tol=1e-6)
    assert result.status == "converged"
    assert result.converged_at == result.steps == len(result.history) < 1000
    h = result.history
    assert abs(h[-1] - h[-2]) <= 1e-6
    assert all(abs(a - b) > 1e-6 for a, b in zip(h[:-2], h[1:-1]))
    assert result.target_at is None and result.diverged_at is None


def test_tol_on_mini_batches_compares_the_full_objective_at_epoch_ends():
    result = gdzoo.run("sgd:lr=0.05", "linear:n=40", epochs=500, batch_size=10, tol=1e-3)
    assert result.status == "converged" and result.epochs < 500
    assert result.converged_at == result.steps == 4 * result.epochs
    assert len(result.evaluations) == result.epochs + 1
    assert abs(result.evaluations[-1] - result.evaluations[-2]) <= 1e-3
    assert all(abs(a - b) > 1e-3 for a, b in zip(result.evaluations[:-2], result.evaluations[1:-1]))
    assert result.final_loss == result.evaluations[-1]  # the same parameters, the same loss


def test_target_stops_when_the_loss_reaches_it():
    result = gdzoo.run("sgd:lr=0.01", "doubling", epochs=1000, target=0.1)
    assert result.status == "target"
    assert result.target_at == result.steps
    assert result.history[-1] <= 0.1 < result.history[-2]
    assert result.converged_at is None


def test_budget_status_when_no_rule_fires():
    result = gdzoo.run("sgd:lr=0.001", "doubling", epochs=5, tol=1e-12, target=1e-12)
    assert result.status == "budget" and result.steps == 5
    assert result.converged_at is None and result.target_at is None


# --- divergence -----------------------------------------------------------------------------------
def test_a_diverging_learning_rate_ends_the_run_without_raising():
    result = gdzoo.run("sgd:lr=10", "doubling", epochs=20)
    assert result.status == "diverged"
    assert result.diverged_at == result.steps == len(result.history) == 3
    assert result.history[0] == 30.0 and result.history[-1] > 1e6 * 30
    assert result.metrics == {}
    assert result.best_loss == 30.0
    json.loads(output.to_json(result.to_dict()))


def test_blowup_sets_the_divergence_threshold():
    # lr = 0.15 overshoots by a factor 1.25 a step: the loss grows by 1.5625 a step, slowly
    result = gdzoo.run("sgd:lr=0.15", "doubling", epochs=20, blowup=10)
    assert result.status == "diverged" and result.diverged_at == 7
    assert result.history[-1] > 10 * 30 >= max(result.history[:-1])
    slow = gdzoo.run("sgd:lr=0.15", "doubling", epochs=20)
    assert slow.status == "budget" and slow.history[-1] > 1000 * 30


def test_a_nan_loss_is_divergence():
    X, y = torch.randn(8, 2), torch.randn(8)
    result = gdzoo.run("sgd:lr=0.1", model=nn.Linear(2, 1), data=(X, y), epochs=5,
                       loss=lambda p, t: F.mse_loss(p, t) * math.nan)
    assert result.status == "diverged" and result.diverged_at == 1 == result.steps
    assert math.isnan(result.final_loss) and math.isnan(result.best_loss)
    assert json.loads(output.to_json(result.to_dict()))["final_loss"] is None


def test_nan_parameters_are_divergence():
    result = gdzoo.run("adam", "rosenbrock:x0=(1e20,1e20)", steps=20)
    assert result.status == "diverged" and result.diverged_at == 1
    assert all(math.isnan(v) for v in result.params["x"])


# --- Ctrl-C ---------------------------------------------------------------------------------------
def _interrupting_loss(after: int):
    """mse that raises KeyboardInterrupt on its call number ``after`` (as Ctrl-C would)."""
    calls = [0]

    def loss(prediction, target):
        calls[0] += 1
        if calls[0] == after:
            raise KeyboardInterrupt
        return F.mse_loss(prediction, target)
    return loss


DATA = (torch.linspace(-1, 1, 16).unsqueeze(1), 3 * torch.linspace(-1, 1, 16) + 1)


def test_ctrl_c_during_a_run_marks_it_interrupted():
    result = gdzoo.run("sgd:lr=0.1", model=nn.Linear(1, 1), loss=_interrupting_loss(4), data=DATA, epochs=10)
    assert result.status == "interrupted"
    assert result.steps == 3 and len(result.history) == 3


def test_ctrl_c_during_a_study_keeps_the_finished_runs():
    # every run: 5 training steps plus one final evaluation = 6 loss calls; call 9 is in the second run
    study = gdzoo.compare(["sgd:lr=0.1", "adam:lr=0.1", "sgd:lr=0.01"], model=nn.Linear(1, 1),
                          loss=_interrupting_loss(9), data=DATA, epochs=5)
    assert study.interrupted
    assert [r.spec for r in study.runs] == ["sgd:lr=0.1"]
    assert study.runs[0].status == "budget" and study.runs[0].steps == 5
    assert [row["spec"] for row in study.rows()] == ["sgd:lr=0.1"]
    assert json.loads(output.to_json(study.to_dict()))["interrupted"] is True


def test_ctrl_c_in_on_result_keeps_the_finished_runs():
    seen = []

    def on_result(trial, result):
        seen.append(trial.spec)
        if len(seen) == 2:
            raise KeyboardInterrupt

    study = gdzoo.compare(["sgd:lr=0.01", "sgd:lr=0.1", "adam:lr=0.1"], "doubling", seeds=1, epochs=5,
                          on_result=on_result)
    assert study.interrupted
    assert [r.spec for r in study.runs] == seen == ["sgd:lr=0.01", "sgd:lr=0.1"]


# --- results as tables and dicts ------------------------------------------------------------------
def test_run_result_renders_as_a_table_and_converts_to_a_dict():
    result = gdzoo.run("sgd:lr=0.01", "doubling", epochs=20)
    text = str(result)
    header, rule, row = text.splitlines()
    assert header.split()[:2] == ["spec", "seed"] and set(rule) <= {"-", " "}
    assert row.split()[:4] == ["sgd:lr=0.01", "0", "budget", "20"]
    d = result.to_dict()
    assert d["spec"] == "sgd:lr=0.01" and d["steps"] == 20 and d["params"] == {"weight": result.params["weight"]}
    back = json.loads(output.to_json(d))
    assert back["history"] == result.history and back["final_loss"] == result.final_loss
    assert back["config"]["batch_size"] == "full" and back["config"]["epochs"] == 20
    assert back["metrics"]["loss gap"] == pytest.approx(result.final_loss)


def test_compare_renders_best_first_and_converts_to_a_dict():
    specs = ["sgd:lr=0.001", "sgd:lr=10", "adam:lr=0.2", "sgd:lr=0.01"]
    study = gdzoo.compare(specs, "doubling", epochs=30, seeds=2)
    assert len(study.runs) == 8 and not study.interrupted
    rows = study.rows()
    assert [r["spec"] for r in rows] == ["sgd:lr=0.01", "adam:lr=0.2", "sgd:lr=0.001", "sgd:lr=10"]
    finals = {r.spec: r.final_loss for r in study.runs}
    assert finals["sgd:lr=0.01"] < finals["adam:lr=0.2"] < finals["sgd:lr=0.001"]
    assert rows[-1]["final loss"] == "diverged" and rows[-1]["status"] == "2 diverged"
    lines = str(study).splitlines()
    assert lines[0].split()[0] == "spec"
    assert [line.split()[0] for line in lines[2:]] == [r["spec"] for r in rows]
    d = json.loads(output.to_json(study.to_dict()))
    assert d["problem"] == "doubling" and d["kind"] == "compare" and d["interrupted"] is False
    assert [r["spec"] for r in d["summary"]] == [r["spec"] for r in rows]
    assert [(r["spec"], r["seed"]) for r in d["runs"]] == \
        [(s, seed) for s in specs for seed in (0, 1)]


def test_compare_without_specs_uses_the_problems_zoo():
    study = gdzoo.compare(problem="doubling:n=3", epochs=2, seeds=1)
    assert [t.spec for t in study.trials] == list(problem("doubling").zoo)
    assert {r.problem for r in study.runs} == {"doubling:n=3"}


# --- the user's own model, loss and data ----------------------------------------------------------
def _regression_data(n=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 2, generator=g, dtype=dtype)
    y = X @ torch.tensor([1.5, -2.0], dtype=dtype) + 0.5
    return X, y


def test_user_module_loss_and_tensors():
    X, y = _regression_data()
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    before = copy.deepcopy(model.state_dict())
    result = gdzoo.run("adam:lr=0.1", model=model, loss=lambda p, t: ((p - t) ** 2).mean(), data=(X, y), epochs=300)
    assert result.problem == "custom" and result.status == "budget" and result.steps == 300
    assert result.final_loss < 1e-4
    np.testing.assert_allclose(result.params["weight"], [1.5, -2.0], atol=1e-2)
    # gdzoo.run trains a copy: the user's module is left as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(result.metrics) == {"mse", "mae", "r2"} and result.metrics["r2"] > 0.999


def test_user_module_with_a_dataloader():
    X, y = _regression_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=False)
    result = gdzoo.run("sgd:lr=0.1", model=nn.Linear(2, 1), loss="mse", data=loader, epochs=20)
    assert result.steps == 20 * 4 and result.epochs == 20
    assert result.final_loss < 1e-3 < result.history[0]
    assert result.status == "budget"


def test_user_module_with_a_dataloader_and_tol():
    X, y = _regression_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    result = gdzoo.run("sgd:lr=0.1", model=nn.Linear(2, 1), loss="mse", data=loader, epochs=500, tol=1e-9)
    assert result.status == "converged" and result.epochs < 500


def test_loss_as_a_spec_string():
    X, y = _regression_data(32)
    y = y + 3 * torch.sign(X[:, 0])  # outliers, so that huber's delta matters
    result = gdzoo.run("sgd:lr=0.05", model=nn.Linear(2, 1), loss="huber:delta=0.5", data=(X, y), epochs=10)
    w, b = torch.tensor(result.params["weight"]), torch.tensor(result.params["bias"])
    prediction = X @ w + b
    assert result.final_loss == pytest.approx(float(F.huber_loss(prediction, y, delta=0.5)), rel=1e-5)
    assert result.final_loss != pytest.approx(float(F.huber_loss(prediction, y, delta=1.0)), rel=1e-3)
    # and on a registered problem, instead of its default loss
    on_problem = gdzoo.run("sgd:lr=0.1", "linear", loss="huber:delta=0.5", epochs=5)
    assert on_problem.final_loss < gdzoo.run("sgd:lr=0.1", "linear", epochs=5).final_loss


def test_user_module_is_trained_in_the_runs_dtype():
    X, y = _regression_data(dtype=torch.float64)
    model = nn.Linear(2, 1).double()
    result = gdzoo.run("sgd:lr=0.1", model=model, loss="mse", data=(X, y), epochs=5)
    assert result.config["dtype"] == "float32" and result.status == "budget"
    result = gdzoo.run("sgd:lr=0.1", model=nn.Linear(2, 1), loss="mse", data=(X.float(), y.float()),
                       epochs=5, dtype="float64")
    assert result.config["dtype"] == "float64" and result.status == "budget"
    loader = DataLoader(TensorDataset(X.float(), y.float()), batch_size=16)
    result = gdzoo.run("sgd:lr=0.1", model=nn.Linear(2, 1), loss="mse", data=loader, epochs=2, dtype="float64")
    assert result.config["dtype"] == "float64" and result.steps == 8
    assert model.weight.dtype == torch.float64  # still the user's module, untouched


def test_user_module_on_a_registered_problem():
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(0.0)
    result = gdzoo.run("sgd:lr=0.1", "linear", model=model, epochs=200, dtype="float64")
    assert result.metrics["loss gap"] < 1e-6
    assert model.weight.item() == 0.0 and model.weight.dtype == torch.float32


def test_compare_on_a_user_module():
    X, y = _regression_data()
    study = gdzoo.compare(["sgd:lr=0.001", "adam:lr=0.1"], model=nn.Linear(2, 1), loss="mse", data=(X, y),
                          epochs=50, seeds=2)
    assert study.problem == "custom"
    assert [r["spec"] for r in study.rows()] == ["adam:lr=0.1", "sgd:lr=0.001"]


# --- bad input through the API --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"steps": -1}, "steps must be a positive integer"),
    ({"batch_size": 0}, "batch size"),
    ({"batch_size": "abc"}, "batch size"),
    ({"tol": -1.0}, "tol must be >= 0"),
    ({"blowup": 1.0}, "blowup must be > 1"),
    ({"dtype": "float16"}, "unknown dtype"),
])
def test_bad_budgets_raise_gdzoo_errors(kwargs, message):
    with pytest.raises(GdzooError, match=message):
        gdzoo.run("sgd", "doubling", **kwargs)


def test_bad_user_setups_raise_gdzoo_errors():
    X, y = _regression_data()
    with pytest.raises(GdzooError, match="give model="):
        gdzoo.run("sgd", model=nn.Linear(2, 1), data=(X, y))
    with pytest.raises(GdzooError, match="64 rows but y has 10"):
        gdzoo.run("sgd", model=nn.Linear(2, 1), loss="mse", data=(X, y[:10]))
    with pytest.raises(GdzooError, match="no trainable parameters"):
        gdzoo.run("sgd", model=nn.Linear(2, 1).requires_grad_(False), loss="mse", data=(X, y))
    with pytest.raises(GdzooError, match="seeds must be >= 1"):
        gdzoo.compare(["sgd"], "doubling", seeds=0)
    with pytest.raises(SpecError, match="lr expects float"):
        gdzoo.sweep("sgd", ["lr=abc"], "doubling", epochs=2)


# --- batched studies ------------------------------------------------------------------------------
@pytest.mark.parametrize("problem_spec, budget, statuses", [
    ("doubling", {"steps": 300}, {"converged", "budget", "diverged"}),
    ("purchase:n=100", {"epochs": 3, "batch_size": 32}, {"budget"}),
    ("linear:n=30", {"epochs": 20, "batch_size": 8, "tol": 1e-3}, {"converged", "budget", "diverged"}),
    ("rosenbrock", {"steps": 200}, {"budget", "diverged"}),
])
def test_a_sweep_gives_the_numbers_of_separate_runs(problem_spec, budget, statuses):
    """However a study schedules its runs (one by one or batched), each equals its own gdzoo.run."""
    study = gdzoo.sweep("sgd", ["lr=0.001,0.1,10", "momentum=0,0.5"], problem_spec, seeds=2, **budget)
    assert len(study.runs) == 12
    seen = set()
    for trial, result in zip(study.trials, study.runs):
        overrides = {k: float(v) for k, v in trial.overrides}
        alone = gdzoo.run("sgd", problem_spec, seed=trial.seed, **overrides, **({"tol": 1e-6} | budget))
        assert (result.seed, result.status, result.steps, result.epochs) == \
            (alone.seed, alone.status, alone.steps, alone.epochs), trial
        assert result.history == alone.history and result.epoch_losses == alone.epoch_losses
        assert (result.converged_at, result.diverged_at) == (alone.converged_at, alone.diverged_at)
        assert result.params == alone.params
        assert result.final_loss == alone.final_loss or math.isnan(result.final_loss) and math.isnan(alone.final_loss)
        seen.add(result.status)
    assert seen == statuses


def test_sweep_over_a_tuple_hyperparameter():
    study = gdzoo.sweep("adam", ["lr=0.1", "betas=(0.9,0.999),(0.5,0.9)"], "doubling", epochs=3)
    alone = gdzoo.sweep("adam", ["lr=0.1", "betas=(0.9,0.999),(0.5,0.9)"], "doubling", epochs=3, batched=False)
    assert [r.history for r in study.runs] == [r.history for r in alone.runs]
    assert [row["betas"] for row in study.rows()] == ["(0.5,0.9)", "(0.9,0.999)"]  # in grid order


@pytest.mark.parametrize("text, message", [
    ("lr=lin(0,inf,3)", "range bounds must be finite numbers"),
    ("lr=log(1e-3,1e400,3)", "range bounds must be finite numbers"),
    ("lr=0.1,0.1", "the value 0.1 is given twice"),
    ("lr=0.1,1e-1", "the value 1e-1 is given twice (as 0.1)"),
    ("lr=inf,inf", "the value inf is given twice"),
    ("betas=(0.9,0.99),(0.9, 0.99)", "given twice"),
    ("lr=lin(0.001,0.1,100000000)", "a lin range of 100,000,000 values is more than the 10,000 runs"),
])
def test_sweep_values_that_would_mislead_are_refused(text, message):
    """No nan learning rate from a range to inf, no row twice, no grid that eats the memory."""
    with pytest.raises(gdzoo.SpecError, match=re.escape(message)):
        parse_param(text)


def test_a_grid_over_the_limit_is_refused_with_its_size_unless_raised():
    with pytest.raises(gdzoo.SpecError, match="plans 300 runs, more than the limit of 100"):
        gdzoo.sweep("sgd", {"lr": [0.1, 0.2, 0.3], "momentum": [i / 200 for i in range(100)]}, "doubling",
                    max_runs=100)
    with pytest.raises(gdzoo.SpecError, match="0.1 is given twice"):
        gdzoo.sweep("sgd", {"lr": [0.1, 0.1]}, "doubling")
    assert len(gdzoo.sweep("sgd", {"lr": [0.1, 0.2]}, "doubling", steps=2, max_runs=2).runs) == 2


def test_the_python_api_and_the_cli_share_their_defaults():
    """The README writes compare(..., seeds=3): gdzoo.compare(None, "purchase") is gdzoo compare."""
    import inspect

    from gdzoo import cli, defaults as study

    assert inspect.signature(gdzoo.compare).parameters["seeds"].default == 3
    options = {p.name: p.default for p in cli.compare_command.params}
    assert (options["problem"], options["seeds"]) == ("purchase", 3)
    options = {p.name: p.default for p in cli.sweep_command.params}
    assert (options["problem"], options["seeds"]) == ("doubling", 1) == \
        (study.SWEEP_DEFAULTS["problem"], study.SWEEP_DEFAULTS["seeds"])
    one = gdzoo.compare("sgd:lr=0.1", "doubling", epochs=3)  # a string is one spec, not its letters
    assert {r.spec for r in one.runs} == {"sgd:lr=0.1"} and len(one.runs) == 3
    assert one.runs[0].config["tol"] == 1e-6


def test_an_overflow_on_the_last_step_is_diverged_in_every_column():
    """lr=1e18 for one step: the loss was finite before the step and infinite after it."""
    result = gdzoo.run("sgd:lr=1e18", "doubling", steps=1)
    assert (result.status, result.diverged_at) == ("diverged", 1) and not result.metrics
    row = gdzoo.compare(["sgd:lr=1e18"], "doubling", steps=1, seeds=2).rows()[0]
    assert (row["final loss"], row["status"]) == ("diverged", "2 diverged") and "mse" not in row


def test_no_progress_is_stalled_not_converged():
    """lr=0 'converged' at step 2 with the loss it started with."""
    result = gdzoo.run("sgd:lr=0", "doubling", epochs=50, tol=1e-6)
    assert (result.status, result.converged_at) == ("stalled", None)
    assert gdzoo.run("sgd:lr=0.1", "doubling", epochs=200, tol=1e-6).status == "converged"
    batched = gdzoo.sweep("sgd", {"lr": [0.0, 0.1]}, "doubling", epochs=200)
    assert [r.status for r in batched.runs] == ["stalled", "converged"]
