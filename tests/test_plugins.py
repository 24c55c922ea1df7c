"""The plugin system: discovery through entry points, failures, environment switches, the CLI.

Third-party plugins here are real distributions written to a temporary directory on sys.path
(see ``install_plugin`` in conftest.py), found by ``importlib.metadata`` like installed ones.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import gdzoo
from gdzoo.plugins import hookspecs
from gdzoo.cli import cli
from gdzoo.plugins.manager import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_OPTIMIZERS = {"sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"}
BUILTIN_TRANSFORMS = {"clip_norm", "clip_value", "l2", "weight_decay", "l1"}
FAKE_WHO = "'fake' (gdzoo-fake-plugin 1.2.3)"

pytestmark = pytest.mark.usefixtures("clean_env")

GOOD_PLUGIN = '''
"""A fake third-party gdzoo plugin: an optimizer, a transform and a named chain."""

import torch

from gdzoo import Hyper, Transform, hookimpl


class SignSGD(Transform):
    """Sign SGD: param -= lr * sign(grad)."""

    name = "signsgd"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.01, "float", "learning rate"),)

    def check(self, hp):
        if not hp["lr"] > 0:
            raise ValueError(f"Invalid learning rate: {hp['lr']}")

    def update(self, params, grads, states, hp, ctx):
        for param, grad in zip(params, grads):
            param.add_(torch.sign(grad), alpha=-hp["lr"])


class Scale(Transform):
    """Multiply every gradient by a constant factor."""

    name = "scale"
    stage = "grad"
    hyperparameters = (Hyper("factor", 1.0, "float", "gradient multiplier"),)

    def update(self, params, grads, states, hp, ctx):
        for i, (param, grad) in enumerate(zip(params, grads)):
            grads[i] = torch.mul(grad, hp["factor"], out=ctx.buffer(param))


@hookimpl
def register_optimizers(register):
    register(SignSGD)
    register("adam+clip_norm:max_norm=1", name="clipped_adam")


@hookimpl
def register_transforms(register):
    register(Scale)
'''



def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def names(kind):
    return {c.name for c in gdzoo.components(kind)}


def info(name):
    return gdzoo.registry().plugins.infos[name]


def quadratic_steps(spec, x0, steps=3, **hp):
    """``steps`` steps of ``spec`` on f(x) = ½‖x‖² (so grad = x) from ``x0``, in float64."""
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = gdzoo.optimizer(spec, [x], **hp)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (x * x).sum()).backward()
        opt.step()
    return x.detach()


def torch_reference(x0, make_opt, grad_fn, steps=3):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = make_opt([x])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (x * x).sum()).backward()
        grad_fn(x)
        opt.step()
    return x.detach()


# --- a good third-party plugin --------------------------------------------------------------

def test_fake_plugin_components_are_registered(install_plugin):
    install_plugin(GOOD_PLUGIN)
    assert info("fake").ok, info("fake").errors
    assert not info("fake").builtin
    assert info("fake").distribution == "gdzoo-fake-plugin"
    assert info("fake").version == "1.2.3"
    assert info("fake").hooks == ["register_optimizers", "register_transforms"]
    signsgd = gdzoo.get("optimizer", "signsgd")
    assert signsgd.plugin == "fake"
    assert signsgd.description == "Sign SGD: param -= lr * sign(grad)."
    assert signsgd.defaults == {"lr": 0.01}
    assert gdzoo.get("transform", "scale").plugin == "fake"
    assert gdzoo.get("transform", "scale").defaults == {"factor": 1.0}
    # built-ins still come first and are untouched
    assert BUILTIN_OPTIMIZERS <= names("optimizer")
    assert BUILTIN_TRANSFORMS <= names("transform")
    assert gdzoo.get("optimizer", "adam").plugin == "adam"


def test_plugin_optimizer_composes_with_builtin_transform(install_plugin):
    install_plugin(GOOD_PLUGIN)
    x0 = [3.0, -4.0, 0.5]
    x = quadratic_steps("signsgd:lr=0.1+clip_norm:max_norm=1", x0, steps=1)
    # clip_norm rescales by a positive factor, which sign() ignores: x - lr * sign(x)
    torch.testing.assert_close(x, torch.tensor([2.9, -3.9, 0.4], dtype=torch.float64), rtol=0, atol=1e-12)
    # three steps; the last moves 0.4 -> 0.3 -> 0.2
    x = quadratic_steps("signsgd:lr=0.1+clip_norm:max_norm=1", x0, steps=3)
    torch.testing.assert_close(x, torch.tensor([2.7, -3.7, 0.2], dtype=torch.float64), rtol=0, atol=1e-12)


def test_plugin_transform_runs_before_plugin_optimizer(install_plugin):
    install_plugin(GOOD_PLUGIN)
    # a negative factor flips the gradient's sign, so signsgd climbs instead of descending
    x = quadratic_steps("signsgd:lr=0.1+scale:factor=-1", [1.0, -2.0], steps=2)
    torch.testing.assert_close(x, torch.tensor([1.2, -2.2], dtype=torch.float64), rtol=0, atol=1e-12)


def test_plugin_transform_composes_with_builtin_optimizer(install_plugin):
    install_plugin(GOOD_PLUGIN)
    x0 = [1.0, -2.0, 0.25]
    # eps=1 makes Adam sensitive to the gradient's scale, so the factor must show in the result
    got = quadratic_steps("adam:lr=0.1,eps=1+scale:factor=0.5", x0)
    expected = torch_reference(x0, lambda p: torch.optim.Adam(p, lr=0.1, eps=1, foreach=False),
                               lambda x: x.grad.mul_(0.5))
    unscaled = torch_reference(x0, lambda p: torch.optim.Adam(p, lr=0.1, eps=1, foreach=False), lambda x: None)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, unscaled, rtol=0, atol=1e-6)
    # the default spelling too
    got = quadratic_steps("adam+scale:factor=0.5", x0)
    expected = torch_reference(x0, lambda p: torch.optim.Adam(p, foreach=False), lambda x: x.grad.mul_(0.5))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_plugin_transform_leaves_p_grad_alone(install_plugin):
    install_plugin(GOOD_PLUGIN)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = gdzoo.optimizer("sgd:lr=0.1+scale:factor=0.5", [x])
    (0.5 * (x * x).sum()).backward()
    opt.step()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(x.detach(), torch.tensor([0.95, -1.9], dtype=torch.float64), rtol=0, atol=1e-12)
    # keyword hyperparameters reach the plugin transform (bare and qualified) and param_groups
    opt = gdzoo.optimizer("sgd+scale", [x], lr=0.1, factor=0.25)
    assert opt.param_groups[0]["scale.factor"] == 0.25
    opt = gdzoo.optimizer("sgd+scale", [x], **{"scale.factor": 2})
    assert opt.param_groups[0]["scale.factor"] == 2.0


def test_plugin_optimizer_checks_its_hyperparameters(install_plugin):
    install_plugin(GOOD_PLUGIN)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        gdzoo.optimizer("signsgd:lr=-1", [torch.zeros(2, requires_grad=True)])


def test_named_chain_optimizer(install_plugin):
    install_plugin(GOOD_PLUGIN)
    comp = gdzoo.get("optimizer", "clipped_adam")
    assert comp.plugin == "fake"
    assert comp.chain == "adam+clip_norm:max_norm=1"
    assert comp.description == "chain: adam+clip_norm:max_norm=1"
    assert comp.defaults == gdzoo.get("optimizer", "adam").defaults
    assert comp.as_dict()["stage"] == "chain"

    def clipped(x):
        torch.nn.utils.clip_grad_norm_([x], max_norm=1.0)

    x0 = [3.0, -4.0]  # ‖grad‖ = 5 at the start, so the clip matters
    got = quadratic_steps("clipped_adam:lr=1", x0)
    expected = torch_reference(x0, lambda p: torch.optim.Adam(p, lr=1.0, foreach=False), clipped)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    unclipped = torch_reference(x0, lambda p: torch.optim.Adam(p, lr=1.0, foreach=False), lambda x: None)
    assert not torch.allclose(got, unclipped, rtol=0, atol=1e-3)
    torch.testing.assert_close(got, quadratic_steps("adam:lr=1+clip_norm:max_norm=1", x0), rtol=0, atol=0)
    # the chain's optimizer takes keyword hyperparameters under torch's names
    torch.testing.assert_close(quadratic_steps("clipped_adam", x0, lr=1), got, rtol=0, atol=0)


def test_gdzoo_list_shows_plugin_components(install_plugin):
    install_plugin(GOOD_PLUGIN)
    result = invoke("list", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.output)}
    assert rows["optimizer", "signsgd"]["plugin"] == "fake"
    assert rows["optimizer", "signsgd"]["stage"] == "update"
    assert rows["optimizer", "signsgd"]["hyperparameters"]["lr"]["default"] == 0.01
    assert rows["optimizer", "clipped_adam"]["chain"] == "adam+clip_norm:max_norm=1"
    assert rows["transform", "scale"]["plugin"] == "fake"
    assert rows["transform", "scale"]["stage"] == "grad"
    assert rows["optimizer", "adam"]["plugin"] == "adam"

    result = invoke("list", "optimizers")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.split()[:1] == ["signsgd"])
    assert "lr=0.01" in line and "Sign SGD" in line and line.split()[-1] == "fake"
    result = invoke("list", "transform")
    line = next(line for line in result.output.splitlines() if line.split()[:1] == ["scale"])
    assert "factor=1" in line and line.split()[-1] == "fake"


def test_gdzoo_plugins_shows_the_distribution(install_plugin):
    install_plugin(GOOD_PLUGIN)
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("fake "))
    assert "gdzoo-fake-plugin 1.2.3" in line
    assert "gdzoo_fake_plugin" in line
    assert "register_optimizers, register_transforms" in line
    assert line.rstrip().endswith("ok")
    assert not any(line.startswith(("sgd ", "adam ", "clipping ")) for line in result.output.splitlines())

    data = json.loads(invoke("plugins", "--format", "json").output)
    assert data == [{"name": "fake", "builtin": False, "module": "gdzoo_fake_plugin",
                     "distribution": "gdzoo-fake-plugin", "version": "1.2.3",
                     "hooks": ["register_optimizers", "register_transforms"], "errors": [],
                     "in_process": False}]


def test_gdzoo_plugins_without_third_party_plugins():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert "No third-party plugins installed" in result.output
    assert json.loads(invoke("plugins", "--format", "json").output) == []


# --- broken plugins ------------------------------------------------------------------------

BROKEN_AT_IMPORT = '''
raise ImportError("gdzoo-fake-plugin needs the frobnicator package")
'''


def test_broken_plugin_is_reported_not_fatal(install_plugin):
    registry = install_plugin(BROKEN_AT_IMPORT).registry
    fake = registry.plugins.infos["fake"]
    assert not fake.ok
    assert len(fake.errors) == 1
    assert fake.errors[0].startswith("failed to load: ImportError: gdzoo-fake-plugin needs the frobnicator package")
    assert "gdzoo_fake_plugin.py" in fake.errors[0]  # where it was raised
    assert fake in registry.plugins.failures()
    assert BUILTIN_OPTIMIZERS <= names("optimizer")
    assert BUILTIN_TRANSFORMS <= names("transform")

    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("fake "))
    assert "gdzoo-fake-plugin 1.2.3" in line
    assert "FAILED: failed to load: ImportError: gdzoo-fake-plugin needs the frobnicator package" in line

    result = invoke("list")
    assert result.exit_code == 0, result.output
    listed = {line.split()[1] for line in result.output.splitlines()[2:] if line.strip()}
    assert BUILTIN_OPTIMIZERS | BUILTIN_TRANSFORMS <= listed


def test_broken_plugin_is_fatal_in_strict_mode(install_plugin, strict_plugins):
    with pytest.raises(gdzoo.PluginError, match="frobnicator") as excinfo:
        install_plugin(BROKEN_AT_IMPORT)
    assert FAKE_WHO in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, ImportError)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["list"], ["plugins"], ["--help"]], ids=["list", "plugins", "--help"])
def test_strict_mode_cli_exits_1_with_one_line(install_plugin, strict_plugins, command):
    fake = install_plugin(BROKEN_AT_IMPORT, load=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDZOO_")}
    env["PYTHONPATH"] = os.pathsep.join([str(fake.root)] + [p for p in [env.get("PYTHONPATH")] if p])
    strict = subprocess.run([sys.executable, "-m", "gdzoo", *command], capture_output=True, text=True,
                            env={**env, **strict_plugins}, cwd=fake.root, timeout=120)
    assert strict.returncode == 1, strict
    assert "Traceback" not in strict.stdout + strict.stderr
    assert strict.stdout == ""
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1, strict.stderr
    assert lines[0].startswith("Error: ")
    assert "frobnicator" in lines[0] and FAKE_WHO in lines[0]
    # the same command without strict mode reports the plugin (gdzoo plugins) and carries on
    relaxed = subprocess.run([sys.executable, "-m", "gdzoo", *command], capture_output=True, text=True,
                             env=env, cwd=fake.root, timeout=120)
    assert relaxed.returncode == 0, relaxed
    assert "Traceback" not in relaxed.stdout + relaxed.stderr
    expected = {"list": "clip_norm", "plugins": "FAILED: failed to load: ImportError", "--help": "plugins"}
    assert expected[command[0]] in relaxed.stdout


RAISING_HOOK = '''
import torch

from gdzoo import Hyper, Transform, hookimpl


class SignSGD(Transform):
    name = "signsgd"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.01),)

    def update(self, params, grads, states, hp, ctx):
        for param, grad in zip(params, grads):
            param.add_(torch.sign(grad), alpha=-hp["lr"])


class Scale(Transform):
    name = "scale"
    hyperparameters = (Hyper("factor", 1.0),)

    def update(self, params, grads, states, hp, ctx):
        for i, grad in enumerate(grads):
            grads[i] = grad * hp["factor"]


@hookimpl
def register_optimizers(register):
    register(SignSGD)
    raise RuntimeError("boom in register_optimizers")


@hookimpl
def register_transforms(register):
    register(Scale)
'''


def test_register_hook_that_raises_is_reported(install_plugin):
    before = {i.name: i.errors for i in gdzoo.registry().plugins.infos.values()}
    components_before = {(c.kind, c.name) for c in gdzoo.components()}
    registry = install_plugin(RAISING_HOOK).registry
    fake = registry.plugins.infos["fake"]
    assert fake.errors == ["register_optimizers failed: RuntimeError: boom in register_optimizers"]
    # the failing hook registers nothing, the plugin's other hook still counts
    assert "signsgd" not in names("optimizer")
    assert gdzoo.get("transform", "scale").plugin == "fake"
    # every other plugin is intact
    assert {i.name: i.errors for i in registry.plugins.infos.values() if i.name != "fake"} == before
    assert {(c.kind, c.name) for c in gdzoo.components()} == components_before | {("transform", "scale")}
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "FAILED: register_optimizers failed: RuntimeError: boom" in result.output


def test_register_hook_that_raises_is_fatal_in_strict_mode(install_plugin, strict_plugins):
    with pytest.raises(gdzoo.PluginError, match="register_optimizers failed: RuntimeError: boom") as excinfo:
        install_plugin(RAISING_HOOK)
    assert FAKE_WHO in str(excinfo.value)


MISSPELT_HOOK = GOOD_PLUGIN.replace("def register_optimizers(", "def register_optimisers(")


def test_misspelt_hook_is_reported(install_plugin):
    assert "register_optimisers" in MISSPELT_HOOK
    registry = install_plugin(MISSPELT_HOOK).registry
    fake = registry.plugins.infos["fake"]
    assert len(fake.errors) == 1
    assert "unknown hook(s) register_optimisers" in fake.errors[0]
    assert "register_optimizers" in fake.errors[0]  # the known hooks are listed
    assert registry.plugins.pm.get_plugin("fake") is None  # unregistered altogether
    assert "scale" not in names("transform")
    assert "signsgd" not in names("optimizer")
    assert BUILTIN_OPTIMIZERS <= names("optimizer")
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "FAILED: unknown hook(s) register_optimisers" in result.output


def test_misspelt_hook_is_fatal_in_strict_mode(install_plugin, strict_plugins):
    with pytest.raises(gdzoo.PluginError, match="register_optimisers"):
        install_plugin(MISSPELT_HOOK)


WRONG_HOOK_ARGUMENT = '''
from gdzoo import hookimpl

@hookimpl
def register_optimizers(reg):
    pass
'''


def test_hook_with_wrong_argument_is_reported(install_plugin):
    registry = install_plugin(WRONG_HOOK_ARGUMENT).registry
    fake = registry.plugins.infos["fake"]
    assert len(fake.errors) == 1 and fake.errors[0].startswith("failed to load: PluginValidationError")
    assert "reg" in fake.errors[0]
    assert BUILTIN_OPTIMIZERS <= names("optimizer")


DUPLICATE_ADAM = GOOD_PLUGIN.replace("    register(SignSGD)\n",
                                     "    register(SignSGD)\n    register(SignSGD, name='adam')\n")


def test_duplicate_component_name_keeps_the_first(install_plugin):
    assert "name='adam'" in DUPLICATE_ADAM
    registry = install_plugin(DUPLICATE_ADAM).registry
    fake = registry.plugins.infos["fake"]
    assert len(fake.errors) == 1, fake.errors
    assert fake.errors[0] == (f"optimizer 'adam' is registered by both 'adam' (built-in) and {FAKE_WHO}; "
                              f"the one from 'adam' (built-in) is kept")
    adam = gdzoo.get("optimizer", "adam")
    assert adam.plugin == "adam"
    assert adam.obj.__module__ == "gdzoo.default_plugins.adam"
    assert adam.obj.__name__ == "Adam"
    # the plugin's other components are still there
    assert gdzoo.get("optimizer", "signsgd").plugin == "fake"
    assert "scale" in names("transform")
    # and "adam" is still Adam
    torch.testing.assert_close(quadratic_steps("adam:lr=0.1", [1.0, -2.0]),
                               torch.tensor([0.7015862745, -1.7006233928], dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_plugin_name_taken_by_a_builtin(install_plugin):
    registry = install_plugin(GOOD_PLUGIN, name="sgd").registry
    clash = registry.plugins.infos["sgd (gdzoo-fake-plugin)"]
    assert clash.errors == ["plugin name 'sgd' is already taken by 'sgd' (built-in); rename the entry point"]
    assert registry.plugins.infos["sgd"].builtin
    assert "signsgd" not in names("optimizer")
    assert gdzoo.get("optimizer", "sgd").plugin == "sgd"


# --- environment switches ------------------------------------------------------------------

def test_disable_a_builtin_plugin(monkeypatch):
    assert "rmsprop" in names("optimizer")
    monkeypatch.setenv("GDZOO_DISABLE_PLUGINS", "rmsprop")
    registry = gdzoo.registry(reload=True)
    assert "rmsprop" not in names("optimizer")
    assert "rmsprop" not in registry.plugins.infos
    assert BUILTIN_OPTIMIZERS - {"rmsprop"} <= names("optimizer")
    with pytest.raises(gdzoo.SpecError, match="unknown optimizer or transform 'rmsprop'"):
        gdzoo.optimizer("rmsprop", [torch.zeros(1, requires_grad=True)])
    assert "rmsprop" not in invoke("list", "optimizer").output


def test_disable_several_plugins(monkeypatch):
    monkeypatch.setenv("GDZOO_DISABLE_PLUGINS", " rmsprop , clipping,")
    gdzoo.registry(reload=True)
    assert "rmsprop" not in names("optimizer")
    assert not {"clip_norm", "clip_value"} & names("transform")
    assert "adam" in names("optimizer") and "l2" in names("transform")


@pytest.mark.parametrize("blocked", ["fake", "gdzoo-fake-plugin"])
def test_disable_a_third_party_plugin(install_plugin, monkeypatch, blocked):
    monkeypatch.setenv("GDZOO_DISABLE_PLUGINS", blocked)
    registry = install_plugin(GOOD_PLUGIN).registry
    assert "fake" not in registry.plugins.infos
    assert "signsgd" not in names("optimizer")
    assert "scale" not in names("transform")
    assert BUILTIN_OPTIMIZERS <= names("optimizer")


def test_disable_list_also_skips_a_broken_plugin(install_plugin, monkeypatch):
    monkeypatch.setenv("GDZOO_DISABLE_PLUGINS", "fake")
    registry = install_plugin(BROKEN_AT_IMPORT).registry
    assert "fake" not in registry.plugins.infos
    assert "gdzoo_fake_plugin" not in sys.modules  # never imported


def test_empty_load_list_loads_no_third_party_plugin(install_plugin, monkeypatch):
    monkeypatch.setenv("GDZOO_LOAD_PLUGINS", "")
    registry = install_plugin(GOOD_PLUGIN).registry
    assert "fake" not in registry.plugins.infos
    assert "signsgd" not in names("optimizer")
    assert BUILTIN_OPTIMIZERS <= names("optimizer")
    assert BUILTIN_TRANSFORMS <= names("transform")
    assert {i.name for i in registry.plugins.infos.values() if i.builtin} == set(BUILTIN_PLUGINS)


@pytest.mark.parametrize("allowed", ["fake", "gdzoo-fake-plugin", "other, fake"])
def test_load_list_allows_a_plugin(install_plugin, monkeypatch, allowed):
    monkeypatch.setenv("GDZOO_LOAD_PLUGINS", allowed)
    registry = install_plugin(GOOD_PLUGIN).registry
    assert registry.plugins.infos["fake"].ok
    assert gdzoo.get("optimizer", "signsgd").plugin == "fake"
    assert BUILTIN_OPTIMIZERS <= names("optimizer")


def test_load_list_without_the_plugin(install_plugin, monkeypatch):
    monkeypatch.setenv("GDZOO_LOAD_PLUGINS", "someone-else")
    registry = install_plugin(GOOD_PLUGIN).registry
    assert "fake" not in registry.plugins.infos
    assert "signsgd" not in names("optimizer")


def test_plugin_gone_after_uninstall(install_plugin):
    """A sanity check of the fixture: the registry reflects sys.path when it is rebuilt."""
    fake = install_plugin(GOOD_PLUGIN)
    assert "signsgd" in names("optimizer")
    sys.path.remove(str(fake.root))
    try:
        gdzoo.registry(reload=True)
        assert "signsgd" not in names("optimizer")
        assert "fake" not in gdzoo.registry().plugins.infos
    finally:
        sys.path.insert(0, str(fake.root))


# --- the registry API ----------------------------------------------------------------------

def test_builtin_plugins_load_cleanly():
    registry = gdzoo.registry()
    builtins = [i for i in registry.plugins.infos.values() if i.builtin]
    assert [i.name for i in builtins] == list(BUILTIN_PLUGINS)
    for i in builtins:
        assert i.ok, (i.name, i.errors)
        assert i.distribution == "gdzoo" and i.module == f"gdzoo.default_plugins.{i.name}"
        assert i.hooks and all(hasattr(hookspecs, h) for h in i.hooks)


def test_components_api():
    optimizers = gdzoo.components("optimizer")
    assert [c.name for c in optimizers][:len(BUILTIN_OPTIMIZERS)] == \
        ["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"]
    assert all(c.kind == "optimizer" and c.description for c in optimizers)
    by_name = {c.name: c for c in optimizers}
    adam = by_name["adam"]
    assert adam.plugin == "adam"
    assert [h.name for h in adam.hyperparameters] == ["lr", "betas", "eps", "weight_decay", "amsgrad",
                                                      "maximize", "decoupled_weight_decay"]
    assert adam.defaults["lr"] == 1e-3 and adam.defaults["betas"] == (0.9, 0.999)
    assert by_name["adamw"].defaults["weight_decay"] == 1e-2
    assert by_name["adamw"].defaults["decoupled_weight_decay"] is True
    assert by_name["adamw"].description == "Adam with decoupled weight decay (torch.optim.AdamW)"
    assert by_name["momentum"].defaults["momentum"] == 0.9 and by_name["momentum"].plugin == "sgd"
    assert by_name["sgd"].signature().startswith("sgd:lr=0.001,momentum=0")
    clip = gdzoo.get("transform", "clip_norm")
    assert clip.plugin == "clipping" and clip.defaults == {"max_norm": 1.0, "norm_type": 2.0}
    assert {c.kind for c in gdzoo.components()} <= set(gdzoo.KINDS)
    assert len(gdzoo.components()) == sum(len(gdzoo.components(k)) for k in gdzoo.KINDS)


def test_get_unknown_component_suggests_a_close_match():
    with pytest.raises(gdzoo.UnknownComponent, match="did you mean clip_norm") as excinfo:
        gdzoo.get("transform", "clip_nrm")
    assert isinstance(excinfo.value, KeyError) and isinstance(excinfo.value, gdzoo.GdzooError)
    assert str(excinfo.value).startswith("unknown transform 'clip_nrm'")
    with pytest.raises(gdzoo.UnknownComponent, match="unknown kind 'optimiser'.*did you mean optimizer"):
        gdzoo.get("optimiser", "adam")


# --- the CLI ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["simple", "github", "json", "csv"])
@pytest.mark.parametrize("kind", [None, *gdzoo.KINDS])
def test_gdzoo_list_every_kind_and_format(kind, fmt):
    args = ["list"] + ([kind] if kind else []) + ["--format", fmt]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    expected = {c.name for c in gdzoo.components(kind)}
    if fmt == "json":
        rows = json.loads(result.output)
        assert {r["name"] for r in rows} == expected
        assert all(r["kind"] == kind for r in rows) if kind else {r["kind"] for r in rows} <= set(gdzoo.KINDS)
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.output)))
        assert {r["name"] for r in rows} == expected
        if rows:
            assert ("kind" in rows[0]) == (kind is None)
            assert ("stage" in rows[0]) == (kind in (None, "optimizer", "transform"))
    else:
        text = result.output
        assert all(re.search(rf"(^|[\s|]){re.escape(n)}[\s|]", text, re.M) for n in expected)
        if fmt == "github" and expected:
            assert text.startswith("|")


def test_gdzoo_list_plural_kind():
    assert invoke("list", "optimizers", "--format", "json").output == \
        invoke("list", "optimizer", "--format", "json").output
    losses = json.loads(invoke("list", "losses", "--format", "json").output)
    assert losses and {r["kind"] for r in losses} == {"loss"}


def test_gdzoo_list_bogus_kind():
    result = CliRunner().invoke(cli, ["list", "bogus"])
    assert result.exit_code == 2
    assert "'bogus' is not one of" in result.output
    for kind in gdzoo.KINDS:
        assert f"'{kind}'" in result.output


def test_gdzoo_plugins_all_lists_builtins():
    result = invoke("plugins", "--all", "--format", "json")
    assert result.exit_code == 0, result.output
    data = {d["name"]: d for d in json.loads(result.output)}
    assert set(BUILTIN_PLUGINS) <= set(data)
    assert data["sgd"]["builtin"] is True
    assert data["sgd"]["hooks"] == ["register_optimizers"]
    assert data["sgd"]["module"] == "gdzoo.default_plugins.sgd"
    assert data["sgd"]["distribution"] == "gdzoo"
    assert data["clipping"]["hooks"] == ["register_transforms"]
    assert data["regularization"]["hooks"] == ["register_transforms"]
    assert data["losses"]["hooks"] == ["register_losses"]
    result = invoke("plugins", "--all")
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("clipping "))
    assert "gdzoo.default_plugins.clipping" in line and "register_transforms" in line


def test_gdzoo_plugins_all_with_third_party(install_plugin):
    install_plugin(GOOD_PLUGIN)
    data = json.loads(invoke("plugins", "--all", "--format", "json").output)
    names_in_order = [d["name"] for d in data]
    assert names_in_order[:len(BUILTIN_PLUGINS)] == list(BUILTIN_PLUGINS)  # built-ins first
    assert names_in_order[len(BUILTIN_PLUGINS):] == ["fake"]


# --- documentation -------------------------------------------------------------------------

def _hook_signatures():
    specs = [(name, fn) for name, fn in vars(hookspecs).items()
             if inspect.isfunction(fn) and hasattr(fn, "gdzoo_spec")]
    assert len(specs) >= 6
    return [f"{name}({', '.join(inspect.signature(fn).parameters)})" for name, fn in specs]


def _hook_reference_section(text):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"(#+)\s*Hook reference\b", line, re.I)
        if match:
            level = len(match.group(1))
            section = []
            for following in lines[i + 1:]:
                head = re.match(r"(#+)\s", following)
                if head and len(head.group(1)) <= level:
                    break
                section.append(following)
            return "\n".join(section)
    return None


@pytest.mark.parametrize("signature", _hook_signatures())
def test_every_hook_is_documented_in_readme(signature):
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing"
    section = _hook_reference_section(readme.read_text(encoding="utf-8"))
    assert section is not None, "README.md has no 'Hook reference' heading"
    assert signature in section, f"README's Hook reference does not document {signature}"
