"""The ``gdzoo`` command line: a thin click layer over the library."""

from __future__ import annotations

import math
import os
import sys

import click

from .show import render as output
from .errors import GdzooError, SpecError, UnknownComponent
from .plugins.registry import KINDS, default_registry
from .optim.spec import format_value
from .train import loop as engine
from .study import execute as study


class GdzooGroup(click.Group):
    """Turns gdzoo's errors into one clear line: exit 2 for bad input, 1 for runtime failures.

    Plugins' ``register_commands`` hooks run when a command is first looked up, and again for
    plugins registered (or unregistered) in-process since: their commands come and go with them.
    """

    # (plugin name, id of the plugin object) -> the commands its hook added
    _plugin_commands: dict[tuple[str, int], list[str]] = {}
    _builtin_commands: set[str] | None = None

    def _load_plugins(self) -> None:
        registry = default_registry()  # may raise in strict mode: then try again next time
        if GdzooGroup._builtin_commands is None:
            GdzooGroup._builtin_commands = set(self.commands)
        impls = {(info.name, id(impl.plugin)): (info, impl)
                 for info, impl in registry.plugins.hookimpls("register_commands")}
        for key in [k for k in self._plugin_commands if k not in impls]:  # plugins gone or reloaded
            for command in self._plugin_commands.pop(key):
                if command not in GdzooGroup._builtin_commands:
                    self.commands.pop(command, None)
        for key, (info, impl) in impls.items():
            if key in self._plugin_commands:
                continue
            before = set(self.commands)
            self._plugin_commands[key] = []
            try:
                impl.function(cli=self)
            except Exception as exc:
                registry.plugins.fail(info, f"register_commands failed: {type(exc).__name__}: {exc}", exc)
            self._plugin_commands[key] = sorted(set(self.commands) - before)

    def get_command(self, ctx, cmd_name):
        self._load_plugins()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        self._load_plugins()
        return super().list_commands(ctx)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (SpecError, UnknownComponent) as exc:
            # No context: the group's usage line would mislead; the message and caret say it all.
            raise click.UsageError(str(exc)) from None
        except GdzooError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # `gdzoo ... | head`: the reader left; end quietly
            _quiet_stdout()
            raise click.exceptions.Exit(0) from None
        except KeyboardInterrupt:  # Ctrl-C outside a study (which keeps what finished itself)
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise  # Exit (from --help in a command) and Abort are RuntimeErrors that click handles itself
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def _quiet_stdout() -> None:
    """The reader of stdout went away: send what is still buffered nowhere, without a message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's stdout)
        pass


class FormatChoice(click.Choice):
    """tabulate's formats, json and csv: checked like a Choice, shown in one short line."""

    def get_metavar(self, param, *args, **kwargs):
        return "FORMAT"


def format_option(f):
    common = ("simple", "github", "grid", "plain", "json", "csv")
    return click.option("--format", "fmt", type=FormatChoice(output.FORMATS), default=output.DEFAULT_FORMAT,
                        show_default=True,
                        help=f"table format: {', '.join(common)}, or any other of tabulate's "
                             f"({len(output.FORMATS) - len(common)} more: see tabulate's docs)")(f)


def _output_path(ctx, param, value):
    """--output is checked before any work: a study must not run for an hour, then fail to save."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("an empty file name; give a path, or leave the option out", ctx, param)
    folder = os.path.dirname(os.path.abspath(value))
    if os.path.isdir(value):
        raise click.BadParameter(f"{value!r} is a directory; give a file name", ctx, param)
    if not os.path.isdir(folder):
        raise click.BadParameter(f"the folder {folder!r} does not exist", ctx, param)
    if not os.access(folder, os.W_OK) or (os.path.exists(value) and not os.access(value, os.W_OK)):
        raise click.BadParameter(f"{value!r} is not writable", ctx, param)
    return value


def output_option(f):
    return click.option("--output", "-o", "output_path", callback=_output_path, metavar="FILE",
                        help="also write the table to FILE (checked before any work starts)")(f)


def emit(text: str, output_path: str | None = None) -> None:
    click.echo(text)
    if output_path:
        with open(output_path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


def complete_component(kinds):
    def complete(ctx, param, incomplete):
        try:
            registry = default_registry()
        except Exception:
            return []
        head, plus, last = incomplete.rpartition("+")
        prefix = head + plus
        names = [n for k in kinds for n in registry.names(k)]
        return [prefix + n for n in names if n.startswith(last)]
    return complete


@click.group(cls=GdzooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gdzoo")
def cli():
    """gdzoo: compose, run and compare gradient-descent optimizers.

    A SPEC names an optimizer and the transforms composed with it, e.g.
    'adam:lr=0.01+clip_norm:max_norm=1+l2:weight=1e-4'.  'gdzoo list' shows every
    component with its hyperparameters and defaults.
    """


class FiniteFloat(click.ParamType):
    """A finite number (nan and inf are refused, naming the option), at least ``min`` if given."""

    name = "float"

    def __init__(self, min: float | None = None):
        self.min = min

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and number < self.min:
            self.fail(f"{number:g} is below {self.min:g}", param, ctx)
        return number


SEED = click.IntRange(min=0, max=2 ** 63 - 1)  # what torch.Generator.manual_seed takes


def budget_options(f):
    """Options every training command shares."""
    options = [
        click.option("--model", "model", default=None, metavar="NAME[:OPTIONS]",
                     shell_complete=complete_component(["model"]),
                     help="model of a data problem, e.g. mlp:hidden=32 (default: the problem's; 'gdzoo list models')"),
        click.option("--loss", "loss", default=None, metavar="NAME[:OPTIONS]", shell_complete=complete_component(["loss"]),
                     help="loss, e.g. huber:delta=0.5 (default: the problem's; one that does not fit its task is refused)"),
        click.option("--epochs", type=click.IntRange(min=1), help="passes over the data (default: the problem's)"),
        click.option("--steps", type=click.IntRange(min=1), help="optimizer steps (instead of, or capping, epochs)"),
        click.option("--batch-size", "batch_size", default="full", show_default=True, metavar="full|N",
                     callback=_batch_size, help="'full' for gradient descent, 1 for SGD, N for mini-batches"),
        click.option("--tol", type=FiniteFloat(min=0), default=None,
                     help="stop when the loss changes by at most TOL (0: never; compare and sweep: 1e-6)"),
        click.option("--target", type=FiniteFloat(), default=None, metavar="LOSS",
                     help="stop when the loss reaches LOSS (a number: the loss value to reach)"),
        click.option("--dtype", type=click.Choice(sorted(engine.DTYPES)), default="float32", show_default=True,
                     help="floating-point type of the parameters and data"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _batch_size(ctx, param, value):
    if value is None or str(value).strip().lower() == "full":
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise click.BadParameter(f"{value!r} is neither 'full' nor a positive integer", ctx, param)
    return size


def _tol_default(tol, default):
    return default if tol is None else (None if tol <= 0 else tol)


class Progress:
    """A progress bar on stderr, one tick per finished run."""

    def __init__(self, total: int, label: str):
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=False)
        self.started = False  # shown from the first finished run: a bad spec fails before any bar

    def __call__(self, trial, result):
        if not self.started:
            self.bar.__enter__()
            self.started = True
        self.bar.update(1)

    def close(self):
        if self.started:
            self.bar.__exit__(None, None, None)


def _run_study(make, total: int, label: str):
    progress = Progress(total, label)
    try:
        return make(progress)
    finally:
        progress.close()


def _report(result, fmt, output_path):
    """The table; an interrupted study shows what finished, then exits 130 (scripts can tell a
    partial study from a whole one)."""
    if result.interrupted:
        click.echo(f"Interrupted: showing the {len(result.runs)} run(s) that finished.", err=True)
    if not result.runs:
        if result.interrupted:
            click.echo("Interrupted before any run finished.", err=True)
            raise click.exceptions.Exit(INTERRUPTED)
        raise click.ClickException("no run finished")
    emit(result.render(fmt), output_path)
    if result.interrupted:
        raise click.exceptions.Exit(INTERRUPTED)


@cli.command("run")
@click.argument("problem", shell_complete=complete_component(["problem"]))
@click.argument("spec", shell_complete=complete_component(["optimizer", "transform"]))
@budget_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="seeds the model's initialisation and the data order")
@click.option("--every", type=click.IntRange(min=1), help="print progress every N epochs (default: about 10 lines)")
@click.option("--quiet", "-q", is_flag=True, help="no progress lines, only the summary")
@click.option("--save", "save_path", callback=_output_path,
              metavar="FILE", help="write the trained model's state_dict to FILE (torch.save)")
@format_option
@output_option
def run_command(problem, spec, model, loss, epochs, steps, batch_size, tol, target, dtype, seed, every, quiet,
                save_path, fmt, output_path):
    """Train one PROBLEM with one optimizer SPEC and print progress like the tutorials do.

    Example: gdzoo run doubling sgd:lr=0.01 --epochs 20
    """
    registry = default_registry()
    prob, _ = engine.build_problem(problem, registry)
    if epochs is None and steps is None:
        epochs, steps = prob.budget.get("epochs"), prob.budget.get("steps")
    if every is None:  # about ten progress lines; an epoch of a function problem is one step
        total = epochs or steps if prob.task == "function" or epochs is None else epochs
        every = max(1, (total or 10) // 10)
    unit = "step" if prob.task == "function" else "epoch"
    to_stderr = fmt in output.EXTRA_FORMATS  # json and csv: keep stdout machine-readable

    def on_epoch(epoch, loss, module):
        if quiet or (epoch - 1) % every:
            return
        shown = _small_params(module)
        click.echo(f"{unit} {epoch}: " + "".join(f"{k} = {v}, " for k, v in shown) + f"loss = {loss:.8f}",
                   err=to_stderr)

    result = engine.run(spec, prob, seed=seed, epochs=epochs, steps=steps, batch_size=batch_size,
                        tol=_tol_default(tol, None), target=target, dtype=dtype, on_epoch=on_epoch,
                        registry=registry, model=model, loss=loss)
    result.problem = problem
    if result.status == "interrupted":
        click.echo("Interrupted.", err=True)
    for line in result.summary:
        click.echo(line, err=to_stderr)
    row = result.row()
    row.pop("seed")
    if result.diverged_at is not None:
        row["status"] = f"diverged at step {result.diverged_at}"
    data = result.to_dict()
    data["params"] = {n: p.detach().tolist() for n, p in result.module.named_parameters()}  # any model
    text = output.render([row], fmt, data=data)
    emit(text, output_path)
    if save_path:
        import torch

        torch.save(result.module.state_dict(), save_path)
    if result.status == "interrupted":
        raise click.exceptions.Exit(INTERRUPTED)


_SHORT = {"weight": "w", "bias": "b", "x": "x"}


def _small_params(module):
    named = list(module.named_parameters())
    if sum(p.numel() for _, p in named) > engine.SMALL_MODEL:
        return []
    out = []
    for name, p in named:
        leaf = name.rsplit(".", 1)[-1]
        label = _SHORT.get(leaf, name) if len(named) <= 2 or leaf == "x" else name
        values = p.detach().reshape(-1).tolist()
        text = f"{values[0]:.3f}" if len(values) == 1 else "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
        out.append((label, text))
    return out


@cli.command("compare")
@click.argument("specs", nargs=-1, shell_complete=complete_component(["optimizer", "transform"]))
@click.option("--problem", "-p", default=study.COMPARE_DEFAULTS["problem"], show_default=True,
              shell_complete=complete_component(["problem"]), help="problem spec, e.g. linear:n=200")
@click.option("--seeds", type=click.IntRange(min=1), default=study.COMPARE_DEFAULTS["seeds"], show_default=True,
              help="seeds 0..N-1 per spec")
@budget_options
@click.option("--batch/--no-batch", "batched", default=True, show_default=True,
              help="train configurations that differ only in numbers and seeds as one batched problem")
@format_option
@output_option
def compare_command(specs, problem, seeds, model, loss, epochs, steps, batch_size, tol, target, dtype, batched,
                    fmt, output_path):
    """Run every SPEC on the same problem, data order and seeds; one table, best first.

    With no SPEC, the built-in zoo at learning rates that suit the problem.
    """
    registry = default_registry()
    prob, _ = engine.build_problem(problem, registry)
    specs = list(specs) or list(prob.zoo)
    result = _run_study(lambda progress: study.compare(
        specs, problem, seeds=seeds, epochs=epochs, steps=steps, batch_size=batch_size,
        tol=_tol_default(tol, study.COMPARE_DEFAULTS["tol"]), target=target, dtype=dtype, registry=registry,
        on_result=progress, batched=batched, model=model, loss=loss),
        len(specs) * seeds, "comparing")
    _report(result, fmt, output_path)


@cli.command("sweep")
@click.argument("spec", shell_complete=complete_component(["optimizer", "transform"]))
@click.option("--param", "params", multiple=True, required=True, metavar="NAME=VALUES",
              help="values to try: lr=0.001,0.01,0.1 or lr=log(1e-4,1,9); repeat for a grid")
@click.option("--problem", "-p", default=study.SWEEP_DEFAULTS["problem"], show_default=True,
              shell_complete=complete_component(["problem"]), help="problem spec")
@click.option("--seeds", type=click.IntRange(min=1), default=study.SWEEP_DEFAULTS["seeds"], show_default=True,
              help="seeds 0..N-1 per value")
@budget_options
@click.option("--batch/--no-batch", "batched", default=True, show_default=True,
              help="train configurations that differ only in numbers and seeds as one batched problem")
@click.option("--max-runs", "max_runs", type=click.IntRange(min=1), default=study.MAX_RUNS, show_default=True,
              help="refuse a grid of more runs (values x seeds) than this")
@format_option
@output_option
def sweep_command(spec, params, problem, seeds, model, loss, epochs, steps, batch_size, tol, target, dtype, batched,
                  max_runs, fmt, output_path):
    """Vary hyperparameters of SPEC and tabulate iterations to convergence, final loss, divergence.

    Example: gdzoo sweep sgd --param lr=0.001,0.01,0.1,1,10 --problem doubling
    """
    registry = default_registry()
    parsed = study.parse_params(params, max_runs)
    total = seeds
    for values in parsed.values():
        total *= len(values)
    result = _run_study(lambda progress: study.sweep(
        spec, parsed, problem, seeds=seeds, epochs=epochs, steps=steps, batch_size=batch_size,
        tol=_tol_default(tol, study.SWEEP_DEFAULTS["tol"]), target=target, dtype=dtype, registry=registry,
        on_result=progress, batched=batched, max_runs=max_runs, model=model, loss=loss),
        total, "sweeping")
    _report(result, fmt, output_path)


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(KINDS + tuple(k + ("es" if k.endswith("s") else "s") for k in KINDS)))
@format_option
@output_option
def list_command(kind, fmt, output_path):
    """List registered components (optimizers, transforms, losses, models, problems)."""
    registry = default_registry()
    kind = next((k for k in KINDS if kind in (k, k + "s", k + "es")), None) if kind else None
    comps = registry.components(kind)
    if fmt == "json":
        emit(output.to_json([c.as_dict() for c in comps]), output_path)
        return
    rows = []
    for c in comps:
        d = c.as_dict()
        rows.append({
            "kind": c.kind,
            "name": c.name,
            "stage": d["stage"] or "",
            "hyperparameters (defaults)": ", ".join(f"{h.name}={format_value(h.default)}"
                                                    for h in c.hyperparameters),
            "description": c.description,
            "plugin": c.plugin,
        })
    if kind:
        for row in rows:
            row.pop("kind")
        if kind not in ("optimizer", "transform"):
            for row in rows:
                row.pop("stage")
    emit(output.render(rows, fmt), output_path)


@cli.command("plugins")
@click.option("--all", "show_all", is_flag=True, help="include gdzoo's built-in plugins")
@format_option
@output_option
def plugins_command(show_all, fmt, output_path):
    """List installed plugins with their versions, hooks and load failures."""
    registry = default_registry()
    infos = [i for i in registry.plugins.infos.values() if show_all or not i.builtin]
    if fmt == "json":
        emit(output.to_json([i.as_dict() for i in infos]), output_path)
        return
    if not infos:
        emit("No third-party plugins installed (gdzoo plugins --all lists the built-in ones).", output_path)
        return
    rows = [{
        "name": i.name,
        "distribution": f"{i.distribution} {i.version}".strip() or "-",
        "module": i.module,
        "hooks": ", ".join(i.hooks),
        "status": "ok" if i.ok else "FAILED: " + "; ".join(i.errors),
    } for i in infos]
    emit(output.render(rows, fmt), output_path)


def main() -> None:
    try:
        cli(prog_name="gdzoo")
    except BrokenPipeError:  # `gdzoo ... | head`: the reader left; say nothing more
        sys.stderr.close()
        sys.exit(0)
    except GdzooError as exc:  # strict plugin mode: a broken plugin is fatal, but still one clear line
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


@cli.command("verify")
@click.argument("names", nargs=-1, metavar="NAME...", shell_complete=complete_component(["optimizer", "transform"]))
@click.option("--check", "checks", multiple=True, metavar="CHECK",
              help="run only this check (repeat it, or separate names with commas); default: every check")
@click.option("--list-checks", "list_checks", is_flag=True, help="list the checks and what each asserts, then exit")
@format_option
@output_option
def verify_command(names, checks, list_checks, fmt, output_path):
    """Run the conformance checks on optimizers and transforms, built-in or third-party.

    The checks are those gdzoo's own tests apply to the built-ins (the loss falls, dtypes, param
    groups, missing grads, state_dict, deepcopy, pickle, schedulers, p.grad left alone, bad
    hyperparameters, determinism, batched, fused, complex, sparse).  One row per check: passed,
    failed with the reason, skipped with why, or xfail (a failure the component declares in
    expected_failures).  Exit status 1 if any check fails.

    Example: gdzoo verify adam clip_norm
    """
    import time

    from . import verify

    if list_checks:
        rows = [{"check": c.name, "asserts": c.doc} for c in verify.CHECKS.values()]
        emit(output.render(rows, fmt), output_path)
        return
    if not names:
        raise click.UsageError("name one or more optimizers or transforms, e.g. gdzoo verify adam clip_norm "
                               "('gdzoo list' shows them)")
    wanted = [c.strip() for item in checks for c in item.split(",") if c.strip()] or None
    unknown = [c for c in wanted or () if c not in verify.CHECKS]
    if unknown:
        raise click.BadParameter(f"unknown check {unknown[0]!r}; choose from {', '.join(verify.CHECKS)}",
                                 param_hint="'--check'")
    registry = default_registry()
    subjects = [verify.subject(name, registry) for name in dict.fromkeys(names)]  # unknown names: exit 2
    results = []
    for subject in subjects:
        start = time.perf_counter()
        own = verify.run_checks(subject, checks=wanted)
        results += own
        counts = ", ".join(f"{n} {status}" for status in verify.STATUSES
                           if (n := sum(r.status == status for r in own)))
        click.echo(f"{subject.name}: {counts} ({time.perf_counter() - start:.1f} s)", err=True)
    rows = [r.as_row() for r in results]
    emit(output.render(rows, fmt, headers=["component", "check", "result", "reason"]), output_path)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        click.echo(f"Error: {len(failed)} check(s) failed: "
                   + ", ".join(f"{r.name} {r.check}" for r in failed), err=True)
        raise click.exceptions.Exit(1)
