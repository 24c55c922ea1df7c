"""The plugin contract as users meet it: in-process plugins, batching only where declared,
optimizer classes for ZeroRedundancyOptimizer, and the README's example plugin run as written."""

from __future__ import annotations

import os
import re
import socket
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gdzoo
from gdzoo import Hyper, Transform, hookimpl
from gdzoo.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


class SignSGD(Transform):
    name = "signsgd_t"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.01, "float", "learning rate"),)

    def update(self, params, grads, states, hp, ctx):
        for param, grad in zip(params, grads):
            param.add_(torch.sign(grad), alpha=-hp["lr"])


class TestPlugin:
    @hookimpl
    def register_optimizers(self, register):
        register(SignSGD)

    @hookimpl
    def register_commands(self, cli):
        import click

        @cli.command(name="hello-plugin")
        def hello():
            click.echo("hello from a plugin")


# --- in-process plugins ------------------------------------------------------------------------

def test_register_plugin_takes_effect_at_once_everywhere():
    runner = CliRunner()
    assert "signsgd_t" not in gdzoo.registry().names("optimizer")
    assert gdzoo.register_plugin(TestPlugin(), name="mine") == "mine"
    assert "signsgd_t" in gdzoo.registry().names("optimizer")
    assert "signsgd_t" in gdzoo.registry(reload=True).names("optimizer")  # survives a rebuild
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, -1.0])
    gdzoo.optimizer("signsgd_t:lr=0.5", [p]).step()
    assert p.tolist() == [0.5, 1.5]
    listed = runner.invoke(cli, ["list", "optimizers"])
    assert "signsgd_t" in listed.output
    plugins = runner.invoke(cli, ["plugins"])
    assert "mine" in plugins.output and "in-process" in plugins.output
    assert runner.invoke(cli, ["hello-plugin"]).output.strip() == "hello from a plugin"

    gdzoo.unregister_plugin("mine")
    assert "signsgd_t" not in gdzoo.registry().names("optimizer")
    assert "signsgd_t" not in runner.invoke(cli, ["list", "optimizers"]).output
    assert runner.invoke(cli, ["hello-plugin"]).exit_code == 2  # the command went with it


def test_register_plugin_errors_are_clear():
    with pytest.raises(gdzoo.PluginError, match="no gdzoo hook implementations"):
        gdzoo.register_plugin(object(), name="empty")
    gdzoo.register_plugin(TestPlugin(), name="mine")
    with pytest.raises(gdzoo.PluginError, match="already registered"):
        gdzoo.register_plugin(TestPlugin(), name="mine")
    with pytest.raises(gdzoo.PluginError, match="signsgd_t.*registered by both"):
        gdzoo.register_plugin(TestPlugin(), name="again")  # the same component name twice
    assert "again" not in gdzoo.registry().plugins.infos
    with pytest.raises(gdzoo.PluginError, match="no in-process plugin named 'nope'"):
        gdzoo.unregister_plugin("nope")


# --- batching only where declared --------------------------------------------------------------

def test_undeclared_optimizer_runs_separately_with_a_note(capfd):
    """signsgd_t uses add_(alpha=...), which a batched [K] learning rate would break: it does not
    declare batching, so a sweep trains each value separately and says so on stderr."""
    gdzoo.register_plugin(TestPlugin(), name="mine")
    study = gdzoo.sweep("signsgd_t", {"lr": [0.01, 0.1, 0.2]}, "doubling", epochs=20)
    err = capfd.readouterr().err
    assert "signsgd_t does not declare batched support; its 3 runs train separately" in err
    assert study.notes and "train separately" in study.notes[0]
    alone = gdzoo.sweep("signsgd_t", {"lr": [0.01, 0.1, 0.2]}, "doubling", epochs=20, batched=False)
    assert [r.history for r in study.runs] == [r.history for r in alone.runs]
    with pytest.raises(gdzoo.SpecError, match="does not declare batched support"):
        gdzoo.registry().optimizer("signsgd_t", [torch.zeros(3, 1, requires_grad=True)], batch=3,
                                   lr=[0.1, 0.2, 0.3])


def test_undeclared_loss_and_model_run_separately(capfd):
    class Scaled(gdzoo.Loss):
        name = "scaled"

        def __call__(self, prediction, target):
            return ((prediction.squeeze(-1) - target) ** 2).mean() * 0.5

    study = gdzoo.sweep("sgd", {"lr": [0.01, 0.02]}, "doubling", epochs=5, loss=Scaled())
    assert "loss 'scaled' does not declare batched support" in capfd.readouterr().err
    assert len(study.runs) == 2

    class Odd(nn.Module):  # neither a linear layer nor an MLP: vmap would be needed
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, X):
            return X * self.w

    X = torch.arange(1.0, 5.0).unsqueeze(1)
    study = gdzoo.compare(["sgd:lr=0.01", "sgd:lr=0.02"], model=Odd(), loss="mse", data=(X, 2 * X.squeeze(1)),
                          seeds=2, epochs=5)
    assert len(study.runs) == 4


# --- optimizer classes: ZeroRedundancyOptimizer ------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optimizer_class_in_zero_redundancy_optimizer(monkeypatch):
    import pickle

    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cls = gdzoo.optimizer_class("adam+clip_norm:max_norm=0.1")
    assert issubclass(cls, torch.optim.Optimizer)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model, twin = nn.Linear(4, 2), nn.Linear(4, 2)
        twin.load_state_dict(model.state_dict())
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=0.01)
        plain = gdzoo.optimizer("adam+clip_norm:max_norm=0.1", twin.parameters(), lr=0.01)
        X = torch.randn(8, 4)
        for _ in range(5):
            for m, opt in ((model, zero), (twin, plain)):
                opt.zero_grad()
                m(X).pow(2).sum().backward()
                opt.step()
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
        zero.consolidate_state_dict()
        assert set(zero.state_dict()) == {"state", "param_groups"}
    finally:
        dist.destroy_process_group()
    # an instance of the class pickles and steps like the original
    p = nn.Parameter(torch.ones(3))
    opt = cls([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    q, copy = pickle.loads(pickle.dumps((p, opt)))
    for x, o in ((p, opt), (q, copy)):
        x.grad = torch.full((3,), 2.0)
        o.step()
    assert torch.equal(p, q) and type(copy).__name__ == "Chain[adam+clip_norm:max_norm=0.1]"


def test_optimizer_class_rejects_a_bad_spec_at_once():
    with pytest.raises(gdzoo.SpecError, match="unknown optimizer"):
        gdzoo.optimizer_class("adamm")
    with pytest.raises(gdzoo.SpecError, match="Invalid learning rate"):
        gdzoo.optimizer_class("adam", lr=-1)


# --- the README's example plugin, as written ---------------------------------------------------

def readme_plugin_source() -> str:
    text = README.read_text()
    match = re.search(r"```python\n# gdzoo_signsgd.py\n(.*?)```", text, re.S)
    assert match, "the README's example plugin (a python block starting '# gdzoo_signsgd.py') is missing"
    return match.group(1)


@pytest.mark.slow
def test_readme_example_plugin_batched_equals_separate(install_plugin):
    """Installed verbatim through a real entry point: a sweep and a multi-seed compare give the
    same numbers batched and separately (undeclared components train separately, declared ones
    batched)."""
    install_plugin(readme_plugin_source(), module="gdzoo_signsgd", distribution="gdzoo-signsgd", name="signsgd")
    kw = dict(epochs=15)
    sweeps = [gdzoo.sweep("signsgd", {"lr": [0.01, 0.1]}, "doubling", batched=b, **kw) for b in (True, False)]
    assert [r.history for r in sweeps[0].runs] == [r.history for r in sweeps[1].runs]
    specs = ["adam:lr=0.05+centralize", "signsgd_clipped", "sgd:lr=0.1+centralize"]
    compares = [gdzoo.compare(specs, "purchase", seeds=2, model="mlp", batched=b, **kw) for b in (True, False)]
    for a, b in zip(compares[0].runs, compares[1].runs):
        assert (a.spec, a.seed, a.status, a.steps) == (b.spec, b.seed, b.status, b.steps)
        if "centralize" in a.spec:  # undeclared: trains separately either way
            assert a.history == b.history and a.final_loss == b.final_loss
        else:  # batched full-batch GEMMs round differently from one run's (README, "batched studies")
            assert a.history == pytest.approx(b.history, rel=1e-6)
            assert a.final_loss == pytest.approx(b.final_loss, rel=1e-6)


def test_a_plugin_written_for_0_1_keeps_working_with_a_deprecation_warning():
    """0.1's documented `native = True` (torch's fused kernel even beside eager transforms) still
    means that, with a DeprecationWarning; 0.1's ctx was the Chain: its attributes still read."""
    adam = gdzoo.get("optimizer", "adam").obj

    class OldAdam(adam):
        name = "oldadam"
        native = True
        native_preferred = False

    class ReadsChain(Transform):
        name = "reads_chain"
        stage = "grad"

        def update(self, params, grads, states, hp, ctx):
            assert ctx.param_groups is ctx.optimizer.param_groups  # 0.1: ctx was the optimizer

    class Old:
        @hookimpl
        def register_optimizers(self, register):
            register(OldAdam)

        @hookimpl
        def register_transforms(self, register):
            register(ReadsChain)

    with pytest.warns(DeprecationWarning, match="native_preferred"):
        gdzoo.register_plugin(Old(), name="old")
    p = nn.Parameter(torch.zeros(3))
    assert gdzoo.optimizer("oldadam+clip_value", [p], fused=True).path == "native"
    opt = gdzoo.optimizer("sgd+reads_chain", [p])
    p.grad = torch.ones(3)
    with pytest.warns(DeprecationWarning, match="ctx.optimizer.param_groups"):
        opt.step()


def test_register_plugin_names_a_packaged_module_by_its_last_part(tmp_path, monkeypatch):
    (tmp_path / "myplugs").mkdir()
    (tmp_path / "myplugs" / "__init__.py").write_text("")
    (tmp_path / "myplugs" / "signs.py").write_text(textwrap.dedent("""
        import gdzoo

        @gdzoo.hookimpl
        def register_transforms(register):
            class Flip(gdzoo.Transform):
                name = "flip"
                def update(self, params, grads, states, hp, ctx):
                    for i, g in enumerate(grads):
                        grads[i] = -g
            register(Flip)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    assert gdzoo.register_plugin(importlib.import_module("myplugs.signs")) == "signs"
    assert "flip" in gdzoo.registry().names("transform")
    with pytest.raises(gdzoo.PluginError, match="already taken by 'sgd' \\(built-in\\)"):
        gdzoo.register_plugin(importlib.import_module("myplugs.signs"), name="sgd")


def test_optimizer_class_takes_lr_second_and_refuses_batch():
    cls = gdzoo.optimizer_class("adam")
    assert cls([nn.Parameter(torch.zeros(2))], 0.05).param_groups[0]["lr"] == 0.05
    assert gdzoo.optimizer_class("adam") is cls  # one class for the same arguments
    with pytest.raises(gdzoo.SpecError, match="batch"):
        gdzoo.optimizer_class("adam", batch=3)
