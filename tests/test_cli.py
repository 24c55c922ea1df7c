"""The gdzoo command line: run, compare, sweep, list and plugins, their formats, and bad input.

Commands run in-process with click's CliRunner; one test starts ``python -m gdzoo`` for real.
Bad input must end with one clear message and no traceback: exit 2 for usage errors (bad
options, specs, problems), 1 for runtime failures (unreadable or malformed data).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import gdzoo
from gdzoo.cli import cli


def invoke(*args, code=0):
    """Run ``gdzoo ARGS``; check the exit code and that no traceback escaped."""
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="gdzoo")
    assert "Traceback" not in result.output
    if not isinstance(result.exception, (SystemExit, type(None))):
        raise AssertionError(f"gdzoo {' '.join(map(str, args))} raised {result.exception!r}") \
            from result.exception
    assert result.exit_code == code, result.output
    return result


def table_lines(text):
    """The lines of a 'simple' table: header, rule, rows (ignoring anything printed before it)."""
    lines = text.rstrip("\n").splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) <= {"-", " "})
    return lines[rule - 1:]


def parse_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


# --- the tutorial ---------------------------------------------------------------------------------
TUTORIAL_20 = """\
epoch 1: w = 0.300, loss = 30.00000000
epoch 3: w = 0.772, loss = 15.66018772
epoch 5: w = 1.113, loss = 8.17471695
epoch 7: w = 1.359, loss = 4.26725292
epoch 9: w = 1.537, loss = 2.22753215
epoch 11: w = 1.665, loss = 1.16278565
epoch 13: w = 1.758, loss = 0.60698116
epoch 15: w = 1.825, loss = 0.31684780
epoch 17: w = 1.874, loss = 0.16539653
epoch 19: w = 1.909, loss = 0.08633806
Prediction after training: f(5) = 9.612
"""

TUTORIAL_100 = """\
epoch 1: w = 0.300, loss = 30.00000000
epoch 11: w = 1.665, loss = 1.16278565
epoch 21: w = 1.934, loss = 0.04506890
epoch 31: w = 1.987, loss = 0.00174685
epoch 41: w = 1.997, loss = 0.00006770
epoch 51: w = 1.999, loss = 0.00000262
epoch 61: w = 2.000, loss = 0.00000010
epoch 71: w = 2.000, loss = 0.00000000
epoch 81: w = 2.000, loss = 0.00000000
epoch 91: w = 2.000, loss = 0.00000000
Prediction after training: f(5) = 10.000
"""


@pytest.mark.parametrize("epochs, expected", [(20, TUTORIAL_20), (100, TUTORIAL_100)])
def test_run_reproduces_the_tutorial_table(epochs, expected):
    result = invoke("run", "doubling", "sgd:lr=0.01", "--epochs", epochs)
    assert result.stdout.startswith(expected)
    header, rule, row = table_lines(result.stdout[len(expected):])
    assert header.split()[:3] == ["spec", "status", "steps"]
    assert row.split()[:3] == ["sgd:lr=0.01", "budget", str(epochs)]
    assert result.stderr == ""


def test_run_every_and_quiet():
    result = invoke("run", "doubling", "sgd:lr=0.01", "--epochs", 6, "--every", 3)
    assert [line.split(":")[0] for line in result.stdout.splitlines()[:2]] == ["epoch 1", "epoch 4"]
    quiet = invoke("run", "doubling", "sgd:lr=0.01", "--epochs", 6, "--quiet")
    assert quiet.stdout.startswith("Prediction after training: f(5) = ")


def test_run_on_a_function_problem_counts_steps():
    result = invoke("run", "rosenbrock", "adam:lr=0.02", "--steps", 50)
    lines = result.stdout.splitlines()
    # like the tutorial: the point after the step, the loss before it (rosenbrock at (-1.5, 2) is 12.5)
    assert lines[0] == "step 1: x = [-1.480, 2.020], loss = 12.50000000"
    assert lines[1].startswith("step 6: x = [")
    assert table_lines(result.stdout)[2].split()[:3] == ["adam:lr=0.02", "budget", "50"]


def test_same_command_twice_gives_identical_numbers():
    args = ["run", "purchase:n=100", "adam:lr=0.05", "--epochs", 3, "--batch-size", 32, "--seed", 2,
            "--format", "json"]
    a, b = json.loads(invoke(*args).stdout), json.loads(invoke(*args).stdout)
    for d in (a, b):
        d.pop("wall_time")
        d["metrics"].pop("distance")  # to an optimum found by lstsq, which may differ in the last bit
    assert a == b
    assert a["steps"] == 3 * 4 and a["config"]["batch_size"] == 32


def test_seeds_change_the_history():
    runs = [json.loads(invoke("run", "purchase:n=100", "sgd:lr=0.5", "--epochs", 3, "--batch-size", 32,
                              "--seed", seed, "--format", "json").stdout) for seed in (0, 1)]
    assert runs[0]["history"] != runs[1]["history"]
    assert runs[0]["seed"] == 0 and runs[1]["seed"] == 1


@pytest.mark.parametrize("batch_size, epochs, steps", [("1", 2, 40), ("8", 3, 9), ("full", 3, 3), ("20", 2, 2)])
def test_run_batch_sizes(batch_size, epochs, steps):
    data = json.loads(invoke("run", "linear:n=20", "sgd:lr=0.01", "--batch-size", batch_size, "--epochs", epochs,
                             "--format", "json").stdout)
    assert (data["steps"], data["epochs"], len(data["history"])) == (steps, epochs, steps)


def test_run_steps_tol_and_target():
    capped = json.loads(invoke("run", "doubling", "sgd:lr=0.01", "--epochs", 50, "--steps", 7, "--format",
                               "json").stdout)
    assert capped["steps"] == 7 and capped["status"] == "budget"
    converged = json.loads(invoke("run", "doubling", "sgd:lr=0.1", "--tol", "1e-6", "--format", "json").stdout)
    assert converged["status"] == "converged" and converged["converged_at"] == converged["steps"] < 200
    target = json.loads(invoke("run", "doubling", "sgd:lr=0.01", "--target", "0.5", "--format", "json").stdout)
    assert target["status"] == "target" and target["history"][-1] <= 0.5 < target["history"][-2]
    text = invoke("run", "doubling", "sgd:lr=0.1", "--tol", "1e-6", "-q").stdout
    assert table_lines(text)[2].split()[1] == "converged"


# --- divergence -----------------------------------------------------------------------------------
def test_run_a_diverging_learning_rate():
    result = invoke("run", "doubling", "sgd:lr=10", "--epochs", 20)
    assert "diverged at step 3" in table_lines(result.stdout)[2]
    data = json.loads(invoke("run", "doubling", "sgd:lr=10", "--epochs", 20, "--format", "json").stdout)
    assert data["status"] == "diverged" and data["diverged_at"] == 3


def test_run_producing_nan():
    result = invoke("run", "rosenbrock:x0=(1e20,1e20)", "adam", "--steps", 20)
    row = table_lines(result.stdout)[2]
    assert "diverged at step 1" in row and "nan" in row
    data = json.loads(invoke("run", "rosenbrock:x0=(1e20,1e20)", "adam", "--steps", 20, "--format", "json").stdout)
    assert data["status"] == "diverged" and data["final_loss"] is None  # JSON has no NaN


def test_compare_with_a_diverging_spec_lists_it_last():
    result = invoke("compare", "sgd:lr=10", "sgd:lr=0.01", "--problem", "doubling", "--seeds", 1, "--epochs", 20)
    rows = table_lines(result.stdout)[2:]
    assert [r.split()[0] for r in rows] == ["sgd:lr=0.01", "sgd:lr=10"]
    assert rows[1].split()[1:4] == ["diverged", "-", "diverged"]


# --- compare --------------------------------------------------------------------------------------
def test_compare_explicit_specs_on_linear_best_first():
    specs = ["sgd:lr=0.01", "sgd:lr=2", "adam:lr=0.1", "sgd:lr=0.1"]
    result = invoke("compare", *specs, "--problem", "linear", "--seeds", 2, "--epochs", 50, "--format", "csv")
    rows = parse_csv(result.stdout)
    assert [r["spec"] for r in rows] == ["sgd:lr=0.1", "adam:lr=0.1", "sgd:lr=0.01", "sgd:lr=2"]
    assert [r["status"] for r in rows] == ["2 converged", "2 budget", "2 budget", "2 diverged"]
    finals = [float(r["final loss"].split()[0]) for r in rows[:3]]
    assert finals == sorted(finals)
    assert rows[-1]["final loss"] == "diverged"
    assert "comparing" in result.stderr  # the progress bar is on stderr, out of the table's way


def test_compare_without_specs_runs_the_problems_zoo():
    result = invoke("compare", "--problem", "doubling", "--seeds", 1, "--epochs", 5, "--format", "json")
    data = json.loads(result.stdout)
    assert sorted(r["spec"] for r in data["runs"]) == sorted(gdzoo.get("problem", "doubling").obj.zoo)
    assert data["problem"] == "doubling" and data["interrupted"] is False


def test_compare_seeds_give_one_row_per_spec():
    data = json.loads(invoke("compare", "sgd:lr=0.1", "adam:lr=0.1", "--problem", "purchase:n=100", "--seeds", 3,
                             "--epochs", 2, "--batch-size", 32, "--format", "json").stdout)
    assert len(data["summary"]) == 2 and len(data["runs"]) == 6
    assert [r["seed"] for r in data["runs"]] == [0, 1, 2, 0, 1, 2]
    assert all(r["steps"] == 2 * 4 for r in data["runs"])


# --- sweep ----------------------------------------------------------------------------------------
def test_sweep_the_tutorials_learning_rates():
    result = invoke("sweep", "sgd", "--param", "lr=0.001,0.01,0.1,1,10", "--problem", "doubling", "--steps", 2000)
    header, _, *rows = table_lines(result.stdout)
    assert header.split()[0] == "lr" and "iterations to convergence" in header
    cells = [row.split() for row in rows]
    assert [c[0] for c in cells] == ["0.001", "0.01", "0.1", "1", "10"]
    iterations = [int(c[3]) for c in cells[:3]]
    assert iterations[0] > iterations[1] > iterations[2]
    assert [c[3] for c in cells[3:]] == ["diverged", "diverged"]
    assert [c[1] for c in cells[3:]] == ["diverged", "diverged"]


def test_sweep_log_range_csv():
    result = invoke("sweep", "sgd", "--param", "lr=log(1e-3,1,4)", "--steps", 2000, "--format", "csv")
    rows = parse_csv(result.stdout)  # the default problem is doubling
    assert [float(r["lr"]) for r in rows] == [0.001, 0.01, 0.1, 1]
    assert [r["status"] for r in rows] == ["1 converged"] * 3 + ["1 diverged"]
    iterations = [int(r["iterations to convergence"]) for r in rows[:3]]
    assert iterations == sorted(iterations, reverse=True) and len(set(iterations)) == 3


def test_sweep_grid():
    data = json.loads(invoke("sweep", "sgd", "--param", "lr=0.01,0.1", "--param", "momentum=0,0.9", "--epochs", 5,
                             "--format", "json").stdout)
    assert [(r["lr"], r["momentum"]) for r in data["summary"]] == \
        [("0.01", "0"), ("0.01", "0.9"), ("0.1", "0"), ("0.1", "0.9")]
    assert len(data["runs"]) == 4


# --- formats and --output -------------------------------------------------------------------------
COMMANDS = {
    "run": ["run", "doubling", "sgd:lr=0.01", "--epochs", "5"],
    "compare": ["compare", "sgd:lr=0.01", "adam:lr=0.1", "--problem", "doubling", "--seeds", "1", "--epochs", "5"],
    "sweep": ["sweep", "sgd", "--param", "lr=0.01,0.1", "--epochs", "5"],
    "list": ["list", "optimizers"],
    "plugins": ["plugins", "--all"],
}
FIRST_COLUMN = {"run": "spec", "compare": "spec", "sweep": "lr", "list": "name", "plugins": "name"}


def check_format(command, fmt, text):
    """``text`` (the table alone) is a well-formed table of ``fmt``."""
    first = FIRST_COLUMN[command]
    lines = text.splitlines()
    if fmt == "json":
        data = json.loads(text)
        if command in ("compare", "sweep"):
            assert {"problem", "interrupted", "summary", "runs"} <= set(data)
            assert len(data["runs"]) == 2 and first in data["summary"][0]
        elif command == "run":
            assert data["spec"] == "sgd:lr=0.01" and len(data["history"]) == 5
        else:
            assert isinstance(data, list) and "sgd" in [d["name"] for d in data]
    elif fmt == "csv":
        rows = parse_csv(text)
        assert rows and list(rows[0])[0] == first
        if command == "run":
            assert rows[0]["spec"] == "sgd:lr=0.01" and rows[0]["steps"] == "5"
    elif fmt == "simple":
        assert lines[0].split()[0] == first and set(lines[1]) <= {"-", " "}
    elif fmt == "github":
        assert lines[0].split("|")[1].strip() == first and lines[1].startswith("|--")
    elif fmt == "grid":
        assert lines[0].startswith("+--") and lines[1].split("|")[1].strip() == first
        assert lines[2].startswith("+==") and lines[-1].startswith("+--")
    if command == "list" and fmt != "json":
        assert "adam" in text and "clip_norm" not in text  # list optimizers: no transforms


@pytest.mark.parametrize("fmt", ["simple", "github", "grid", "json", "csv"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_formats_and_output_file(command, fmt, tmp_path):
    path = tmp_path / "out.txt"
    result = invoke(*COMMANDS[command], "--format", fmt, "--output", path)
    written = path.read_text(encoding="utf-8")
    assert written.endswith("\n")
    if command == "run" and fmt not in ("json", "csv"):
        # the tutorial's progress lines come first on stdout; the file holds the table
        assert result.stdout.endswith(written) and result.stdout.startswith("epoch 1: w = 0.300")
    else:
        assert result.stdout == written
    check_format(command, fmt, written.rstrip("\n"))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_run_keeps_stdout_machine_readable(fmt):
    result = invoke("run", "doubling", "sgd:lr=0.01", "--epochs", 3, "--format", fmt)
    assert "epoch 1: w = 0.300" in result.stderr and "Prediction after training" in result.stderr
    assert "epoch" not in result.stdout.split("\n", 1)[0]


@pytest.mark.parametrize("fmt", ["pipe", "rst", "tsv", "latex", "html"])
def test_other_tabulate_formats(fmt):
    text = invoke("list", "problems", "--format", fmt).stdout
    assert "doubling" in text and "rosenbrock" in text


def test_list_kinds():
    everything = invoke("list").stdout
    for name in ("sgd", "clip_norm", "mse", "logistic", "purchase"):
        assert name in everything
    problems = [d["name"] for d in json.loads(invoke("list", "problem", "--format", "json").stdout)]
    assert {"doubling", "linear", "purchase", "csv", "rosenbrock", "quadratic", "rastrigin"} <= set(problems)


def test_plugins_without_third_party_plugins():
    assert json.loads(invoke("plugins", "--format", "json").stdout) == []
    assert "No third-party plugins" in invoke("plugins").stdout


def test_help_of_every_command():
    for command in ("run", "compare", "sweep", "list", "plugins"):
        assert "Usage: gdzoo " + command in invoke(command, "--help").stdout
    top = invoke("--help").stdout
    assert all(c in top for c in ("run", "compare", "sweep", "list", "plugins"))


# --- bad input ------------------------------------------------------------------------------------
USAGE_ERRORS = [
    (["run", "doublin", "sgd"], ["unknown problem 'doublin'", "did you mean doubling"]),
    (["run", "doubling", "adma"], ["'adma'", "did you mean adam"]),
    (["run", "doubling", "adam+clip_nrm"], ["'clip_nrm'", "did you mean clip_norm"]),
    (["run", "doubling", "adam:lr=abc"], ["lr expects float", "'abc'"]),
    (["run", "doubling", "adam:lrr=0.1"], ["lrr"]),
    (["run", "doubling", "sgd:"], ["nothing after ':'"]),
    (["run", "doubling", "sgd:lr=-1"], ["learning rate"]),
    (["run", "doubling:n=0", "sgd"], ["doubling", "n must be >= 1"]),
    (["run", "doubling:m=3", "sgd"], ["'m'"]),
    (["run", "csv", "sgd"], ["csv", "path"]),
    (["run", "doubling", "sgd", "--batch-size", "0"], ["--batch-size", "'0'"]),
    (["run", "doubling", "sgd", "--batch-size", "abc"], ["--batch-size", "'abc'"]),
    (["run", "doubling", "sgd", "--batch-size", "-3"], ["--batch-size"]),
    (["run", "doubling", "sgd", "--epochs", "0"], ["--epochs"]),
    (["run", "doubling", "sgd", "--epochs", "abc"], ["--epochs"]),
    (["run", "doubling", "sgd", "--steps", "0"], ["--steps"]),
    (["run", "doubling", "sgd", "--tol", "abc"], ["--tol"]),
    (["run", "doubling", "sgd", "--dtype", "float16"], ["--dtype"]),
    (["run", "doubling", "sgd", "--format", "nope"], ["--format", "'nope'"]),
    (["run", "doubling"], ["Missing argument 'SPEC'"]),
    (["compare", "--seeds", "0"], ["--seeds"]),
    (["compare", "adma", "--problem", "doubling"], ["did you mean adam"]),
    (["compare", "--problem", "doublin"], ["did you mean doubling"]),
    (["compare", "sgd", "--problem", "doubling:n=0", "--epochs", "2"], ["n must be >= 1"]),
    (["compare", "sgd", "--format", "nope"], ["--format"]),
    (["sweep", "sgd", "--param", "lr"], ["NAME=V1,V2"]),
    (["sweep", "sgd", "--param", "lr="], ["NAME=V1,V2"]),
    (["sweep", "sgd", "--param", "lr=abc"], ["lr expects float", "'abc'"]),
    (["sweep", "sgd", "--param", "lr=0.1,,1"], ["empty value"]),
    (["sweep", "sgd", "--param", "lr=log(0,1,3)"], ["positive bounds"]),
    (["sweep", "sgd", "--param", "lr=log(1e-3,1,x)"], ["log(LOW,HIGH,N)"]),
    (["sweep", "sgd", "--param", "lrr=0.1"], ["lrr", "did you mean lr"]),
    (["sweep", "sgd"], ["--param"]),
    (["sweep", "adma", "--param", "lr=0.1"], ["did you mean adam"]),
    (["sweep", "sgd", "--param", "lr=0.1", "--problem", "doublin"], ["did you mean doubling"]),
    (["sweep", "sgd", "--param", "lr=0.1", "--seeds", "0"], ["--seeds"]),
    (["sweep", "sgd", "--param", "lr=0.1", "--format", "nope"], ["--format"]),
    (["list", "bogus"], ["'bogus'"]),
    (["list", "--format", "nope"], ["--format"]),
    (["plugins", "--format", "nope"], ["--format"]),
    (["nope"], ["No such command 'nope'"]),
]


@pytest.mark.parametrize("args, messages", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_2_with_a_clear_message(args, messages):
    result = invoke(*args, code=2)
    assert result.stdout == ""
    assert "Error: " in result.stderr
    for message in messages:
        assert message in result.stderr


@pytest.fixture
def csv_files(tmp_path):
    files = {
        "ok": "age,income,buys\n30,40000,0\n45,80000,1\n25,30000,0\n50,90000,1\n",
        "empty": "",
        "header_only": "a,b,y\n",
        "text_cell": "a,b,y\n1,2,3\n4,x,6\n7,8,9\n",
        "empty_cell": "a,b,y\n1,2,3\n4,,6\n7,8,9\n",
        "nan_cell": "a,b,y\n1,2,3\n4,nan,6\n7,8,9\n",
        "ragged": "a,b,y\n1,2,3\n4,5\n",
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text, encoding="utf-8")
    paths["missing"] = tmp_path / "missing.csv"
    paths["directory"] = tmp_path
    return paths


@pytest.mark.parametrize("name, target, messages", [
    ("missing", None, ["no such file", "missing.csv"]),
    ("directory", None, ["is a directory"]),
    ("empty", None, ["empty.csv is empty"]),
    ("header_only", None, ["no data rows"]),
    ("ok", "nope", ["no column 'nope'", "age, income, buys"]),
    ("text_cell", None, ["line 3", "column 'b'", "'x' is not a number"]),
    ("empty_cell", None, ["line 3", "column 'b'", "is empty"]),
    ("nan_cell", None, ["line 3", "column 'b'", "'nan' is not a finite number"]),
    ("ragged", None, ["line 3", "2 values"]),
])
@pytest.mark.parametrize("command", ["run", "compare"])
def test_bad_csv_data_exits_1_naming_the_problem(csv_files, command, name, target, messages):
    spec = f"csv:{csv_files[name]}" + (f",target={target}" if target else "")
    args = ["run", spec, "sgd", "--epochs", "2"] if command == "run" else \
        ["compare", "sgd", "--problem", spec, "--seeds", "1", "--epochs", "2"]
    result = invoke(*args, code=1)
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("Error: ")  # (compare's progress label may come first)
    for message in messages:
        assert message in result.stderr


def test_a_good_csv_file_trains(csv_files):
    result = invoke("run", f"csv:{csv_files['ok']},target=buys", "sgd:lr=0.5", "--epochs", 20, "--format", "json")
    data = json.loads(result.stdout)
    assert data["status"] == "budget" and "accuracy" in data["metrics"]
    result = invoke("sweep", "sgd", "--param", "lr=0.1,1", "--problem", f"csv:{csv_files['ok']}", "--epochs", 5)
    assert len(table_lines(result.stdout)) == 4


# --- Ctrl-C ---------------------------------------------------------------------------------------
INTERRUPTING = """
    import torch
    from gdzoo import Hyper, Problem, hookimpl

    class Interrupting(Problem):
        \"\"\"x² that raises KeyboardInterrupt (as Ctrl-C would) on its call number `after`.\"\"\"

        name = "interrupting"
        task = "function"
        model = ""
        loss = ""
        hyperparameters = (Hyper("after", 9, "int", "the call that is interrupted"),)
        budget = {"steps": 5}
        zoo = ("sgd:lr=0.1", "sgd:lr=0.2", "adam:lr=0.1")
        calls = 0

        def init(self):
            return torch.tensor([1.0], dtype=torch.float64)

        def objective(self, x):
            Interrupting.calls += 1
            if Interrupting.calls == self.options["after"]:
                raise KeyboardInterrupt
            return (x ** 2).sum()

    @hookimpl
    def register_problems(register):
        register(Interrupting)
"""


@pytest.fixture
def interrupting(install_plugin):
    install_plugin(INTERRUPTING, module="gdzoo_interrupting", distribution="gdzoo-interrupting")
    return gdzoo.get("problem", "interrupting").obj


def test_ctrl_c_during_run_prints_the_partial_result(interrupting):
    result = invoke("run", "interrupting:after=4", "sgd:lr=0.1", "--format", "csv", code=130)
    row = parse_csv(result.stdout)[0]
    assert (row["status"], row["steps"]) == ("interrupted", "3")
    assert "Interrupted." in result.stderr


def test_ctrl_c_during_compare_prints_the_finished_runs(interrupting):
    # every run: 5 steps and a final evaluation, 6 objective calls; call 15 is in the third run
    result = invoke("compare", "sgd:lr=0.1", "sgd:lr=0.2", "adam:lr=0.1", "sgd:lr=0.05", "--problem",
                    "interrupting:after=15", "--seeds", 1, "--format", "csv", code=130)
    rows = parse_csv(result.stdout)
    assert sorted(r["spec"] for r in rows) == ["sgd:lr=0.1", "sgd:lr=0.2"]
    assert all(r["status"] == "1 budget" for r in rows)
    assert "Interrupted: showing the 2 run(s) that finished." in result.stderr
    assert interrupting.calls <= 16  # at most the interrupted run's final evaluation: the 4th never started


def test_ctrl_c_before_any_run_finished(interrupting):
    """Ctrl-C exits 130 (a script can tell a partial study from a whole one), here with nothing to show."""
    result = invoke("sweep", "sgd", "--param", "lr=0.1,0.2", "--problem", "interrupting:after=2", code=130)
    assert result.stdout == ""
    assert "Interrupted before any run finished." in result.stderr


# --- python -m gdzoo ------------------------------------------------------------------------------
@pytest.mark.slow
def test_python_m_gdzoo_compare():
    proc = subprocess.run([sys.executable, "-m", "gdzoo", "compare", "--seeds", "1", "--epochs", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    header, rule, *rows = table_lines(proc.stdout)
    assert header.split()[0] == "spec" and "accuracy" in header
    assert sorted(r.split()[0] for r in rows) == sorted(gdzoo.get("problem", "purchase").obj.zoo)


@pytest.mark.parametrize("args, message", [
    (["run", "doubling", "sgd:lr=1e39"], "lr=1e+39 does not fit in float32"),
    (["compare", "sgd:lr=1e39", "-p", "doubling", "--steps", "3"], "lr=1e+39 does not fit in float32"),
    (["sweep", "sgd", "--param", "lr=0.1", "--param", "lr=0.2", "-p", "doubling", "--steps", "3"],
     "--param lr given 2 times"),
    (["compare", "sgd:lr=0.1", "sgd:lr=0.1", "-p", "doubling", "--steps", "3"], "given 2 times"),
    (["run", "doubling", "sgd", "--tol", "-1"], "-1 is below 0"),
    (["run", "doubling", "sgd", "--tol", "nan"], "'nan' is not a finite number"),
    (["compare", "sgd", "-p", "doubling", "--tol", "inf"], "'inf' is not a finite number"),
    (["sweep", "sgd", "--param", "lr=0.1", "--target", "nan"], "'nan' is not a finite number"),
    (["run", "doubling", "sgd", "--target", "y"], "'y' is not a number"),
    (["run", "doubling", "sgd", "--seed", "99999999999999999999"], "--seed"),
    (["run", "doubling", "sgd:lr=inf"], "lr expects float, got 'inf' (must be finite)"),
    (["run", "doubling:w0=nan", "sgd"], "w0 expects float, got 'nan' (not a number)"),
    (["sweep", "sgd", "--param", "lr=lin(0,1,0)", "-p", "doubling"], "a lin range needs N >= 1 values"),
])
def test_the_same_bad_value_is_a_usage_error_in_every_command(args, message):
    result = CliRunner().invoke(gdzoo.cli.cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert "comparing" not in result.output and "sweeping" not in result.output  # no bar before the error


def test_tol_zero_means_no_tolerance_stop():
    result = invoke("sweep", "sgd", "--param", "lr=0.1", "-p", "doubling", "--steps", 40, "--tol", 0,
                    "--format", "json")
    runs = json.loads(result.stdout)["runs"]
    assert runs[0]["status"] == "budget" and runs[0]["steps"] == 40


@pytest.mark.parametrize("value, message", [
    ("/nonexistent-folder/x.txt", "does not exist"), ("", "an empty file name"), (".", "is a directory")])
def test_output_is_checked_before_any_work(value, message, monkeypatch):
    """A bad --output is a usage error at once, not after the study ran."""
    from gdzoo import study

    monkeypatch.setattr(study, "execute", lambda *a, **k: pytest.fail("the study ran"))
    result = invoke("compare", "sgd", "-p", "doubling", "--output", value, code=2)
    assert message in result.output and "--output" in result.output


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    """`gdzoo ... | head -1`: exit 0, nothing on stderr."""
    command = f"set -o pipefail; {sys.executable} -m gdzoo run doubling sgd:lr=0.01 --steps 20000 --every 1 | head -1"
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert proc.stdout.startswith("step 1") or proc.stdout.startswith("epoch 1"), proc.stdout
    assert proc.stderr == "" and proc.returncode == 0, proc.stderr


def test_sweep_table_keeps_every_column_and_reads_down_the_grid():
    """Headers came from the first row: when it diverged, every metric column vanished. Rows are
    in the order of the swept values, not the order given."""
    result = invoke("sweep", "sgd", "--param", "lr=10,1,0.1,0.01", "--problem", "doubling", "--steps", 200,
                    "--format", "csv")
    rows = parse_csv(result.stdout)
    assert [r["lr"] for r in rows] == ["0.01", "0.1", "1", "10"]
    assert {"mse", "mae", "r2", "loss gap", "distance"} <= set(rows[0])
    assert rows[0]["mse"] and rows[-1]["final loss"] == "diverged" and rows[-1]["mse"] == ""


def test_the_cli_reaches_every_model_and_loss(tmp_path):
    """--model and --loss on run, compare and sweep; a loss that does not fit the task is refused;
    run --save writes the trained state_dict; JSON carries the final parameters of any model."""
    import torch

    saved = tmp_path / "model.pt"
    data = json.loads(invoke("run", "purchase:n=100", "sgd:lr=0.5", "--model", "mlp:hidden=4", "--epochs", 3,
                             "--save", saved, "--format", "json").stdout)
    state = torch.load(saved, weights_only=True)
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"] == list(data["params"])
    assert torch.equal(state["0.weight"], torch.tensor(data["params"]["0.weight"]))
    rows = parse_csv(invoke("compare", "sgd:lr=0.1", "-p", "linear", "--loss", "huber:delta=0.5", "--seeds", 1,
                            "--epochs", 3, "--format", "csv").stdout)
    assert rows[0]["spec"] == "sgd:lr=0.1" and "loss gap" not in rows[0]  # the optimum is mse's
    rows = parse_csv(invoke("sweep", "sgd", "--param", "lr=0.1,0.2", "-p", "purchase:n=100", "--model", "mlp",
                            "--epochs", 2, "--format", "csv").stdout)
    assert len(rows) == 2
    result = invoke("compare", "sgd", "-p", "linear", "--loss", "bce", code=2)
    assert "loss 'bce' is for classification" in result.output and "mse, mae, huber" in result.output


def test_python_run_returns_the_trained_module():
    import torch

    net = torch.nn.Linear(1, 1)
    before = net.weight.detach().clone()
    X = torch.arange(1.0, 5.0).unsqueeze(1)
    result = gdzoo.run("sgd:lr=0.05", model=net, loss="mse", data=(X, 2 * X.squeeze(1)), epochs=50)
    assert torch.equal(net.weight, before)  # the user's module is left as it was
    assert result.module is not net and abs(result.module(torch.tensor([[3.0]])).item() - 6) < 0.2
    assert "module" not in result.to_dict()


def test_every_option_has_help_and_help_fits_a_terminal():
    """--format listed 39 formats on one 375-character line; --seed and --dtype had no help."""
    import click

    for name, command in gdzoo.cli.cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help",):
                assert param.help, f"gdzoo {name} {param.opts[0]} has no help"
        text = invoke(name, "--help").stdout
        assert max(map(len, text.splitlines())) <= 100, f"gdzoo {name} --help"
