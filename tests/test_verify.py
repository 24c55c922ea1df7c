"""The conformance kit (gdzoo.verify, ``gdzoo verify``): every built-in passes every check, in the
pytest form a plugin author uses; deliberately wrong third-party plugins, installed through real
entry points, fail the check that names their mistake; declared expected failures are xfail.
"""

from __future__ import annotations

import json
import unittest

import pytest
from click.testing import CliRunner

import gdzoo
from gdzoo import verify
from gdzoo.cli import cli
from gdzoo.verify import CHECKS, parametrize_with_checks, run_checks

BUILTINS = [c.name for c in gdzoo.components("optimizer")] + [c.name for c in gdzoo.components("transform")]

pytestmark = pytest.mark.usefixtures("clean_env")


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), prog_name="gdzoo")
    assert "Traceback" not in result.output
    if not isinstance(result.exception, (SystemExit, type(None))):
        raise AssertionError(f"gdzoo {' '.join(args)} raised {result.exception!r}") from result.exception
    return result


def statuses(results):
    return {r.check: r.status for r in results}


def failed(results):
    return {r.check for r in results if r.status == "failed"}


# --- every built-in passes every check (and this is the test of the pytest form) ----------------

def test_the_builtins_are_all_here():
    assert {"sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"} <= set(BUILTINS)
    assert {"clip_norm", "clip_value", "l2", "weight_decay", "l1"} <= set(BUILTINS)


@parametrize_with_checks(BUILTINS)
def test_builtin_passes_check(subject, check):
    check(subject)


def test_the_issue_checks_are_all_there():
    assert {"loss_decreases_quadratic", "loss_decreases_rosenbrock", "dtype_float64", "dtype_float32",
            "dtype_bfloat16", "param_groups", "missing_and_zero_grads", "state_dict_round_trip", "deepcopy",
            "pickle", "lr_scheduler", "grad_untouched", "bad_hyperparameters", "deterministic",
            "batched_equals_separate", "fused_equals_eager", "complex", "sparse"} <= set(CHECKS)


def test_a_subject_builds_optimizers_as_the_issue_says():
    assert verify.subject("adam").spec == "adam"
    assert verify.subject("clip_norm").spec == "sgd:lr=0.01+clip_norm"
    assert verify.subject("clip_norm").spec_with(max_norm=0.5) == "sgd:lr=0.01+clip_norm:max_norm=0.5"
    with pytest.raises(gdzoo.UnknownComponent, match="adma.*did you mean adam"):
        verify.subject("adma")


def test_parametrize_with_checks_marks_expected_failures_strictly():
    mark = parametrize_with_checks(["adam", "l1"], expected_failures={("adam", "pickle"): "no reason"},
                                   checks=["pickle", "sparse"])
    argnames, params = mark.args
    assert argnames == "subject,check"
    by_id = {p.id: p for p in params}
    assert set(by_id) == {"adam-pickle", "adam-sparse", "l1-pickle", "l1-sparse"}
    (xfail,) = by_id["adam-pickle"].marks
    assert xfail.name == "xfail" and xfail.kwargs == {"reason": "no reason", "strict": True}
    assert not by_id["adam-sparse"].marks and not by_id["l1-pickle"].marks
    subject, check = by_id["l1-sparse"].values
    assert subject.name == "l1" and check is CHECKS["sparse"]


@pytest.mark.parametrize("expected, message", [
    ({"adam": "why"}, "pairs"),
    ({("sgd", "pickle"): "why"}, "not among"),
    ({("adam", "pikle"): "why"}, "unknown check 'pikle'"),
])
def test_parametrize_with_checks_refuses_bad_declarations(expected, message):
    with pytest.raises(ValueError, match=message):
        parametrize_with_checks(["adam"], expected_failures=expected)


def test_skip_check_is_a_unittest_skip():
    """So that pytest reports a check that does not apply as skipped, not failed."""
    assert issubclass(verify.SkipCheck, unittest.SkipTest)


# --- the command line ---------------------------------------------------------------------------

def test_cli_verify_builtins_exits_0_and_lists_every_check():
    result = invoke("verify", "adam", "clip_norm", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["component"], r["check"]) for r in rows] == \
        [(name, check) for name in ("adam", "clip_norm") for check in CHECKS]
    assert {r["result"] for r in rows} == {"passed"}
    assert all(set(r) == {"component", "check", "result", "reason"} for r in rows)
    assert f"adam: {len(CHECKS)} passed" in result.stderr and f"clip_norm: {len(CHECKS)} passed" in result.stderr


def test_cli_verify_table_and_check_selection():
    result = invoke("verify", "sgd", "--check", "pickle,deepcopy", "--check", "sparse")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["component", "check", "result", "reason"]
    assert [line.split()[:3] for line in lines[2:]] == [["sgd", "pickle", "passed"], ["sgd", "deepcopy", "passed"],
                                                         ["sgd", "sparse", "passed"]]


def test_cli_verify_list_checks():
    result = invoke("verify", "--list-checks", "--format", "csv")
    assert result.exit_code == 0
    assert [line.split(",")[0] for line in result.stdout.strip().splitlines()[1:]] == list(CHECKS)


@pytest.mark.parametrize("args, words", [
    (["verify", "adma"], ["adma", "did you mean adam"]),
    (["verify", "zzzzzz"], ["zzzzzz", "adam", "clip_norm", "sgd"]),
    (["verify", "adam", "--check", "pikle"], ["pikle", "state_dict_round_trip"]),
    (["verify"], ["name one or more"]),
])
def test_cli_verify_usage_errors_exit_2(args, words):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output


# --- deliberately wrong third-party plugins -------------------------------------------------------

OUTSIDE_STATE = '''
"""An optimizer that keeps its momentum outside optimizer.state, in a dict keyed by id(param)."""

from gdzoo import Hyper, Transform, checks, hookimpl


class LeakyMomentum(Transform):
    name = "leaky_momentum"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.01, "float", "learning rate"),
                       Hyper("momentum", 0.9, "float", "momentum factor"))

    def __init__(self):
        self._m = {}

    def check(self, hp):
        checks.learning_rate(hp["lr"])
        checks.below_one("momentum", hp["momentum"])

    def update(self, params, grads, states, hp, ctx):
        for p, g in zip(params, grads):
            buf = self._m.get(id(p))
            if buf is None:
                buf = self._m[id(p)] = g.clone()
            else:
                buf.mul_(hp["momentum"]).add_(g)
            p.add_(buf, alpha=-hp["lr"])


class DeclaredLeaky(LeakyMomentum):
    name = "declared_leaky"
    expected_failures = {
        "state_dict_round_trip": "momentum kept in self._m, not in optimizer.state",
        "deepcopy": "copies keep the buffers under the old parameters' ids",
        "pickle": "copies keep the buffers under the old parameters' ids",
    }


@hookimpl
def register_optimizers(register):
    register(LeakyMomentum)
    register(DeclaredLeaky)
'''

GRAD_WRITER = '''
"""An optimizer and a transform that write into p.grad, and a plain SGD without lr checks."""

import torch

from gdzoo import Hyper, Transform, checks, hookimpl


class InPlaceSGD(Transform):
    name = "inplace_sgd"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.01, "float", "learning rate"),)

    def check(self, hp):
        checks.learning_rate(hp["lr"])

    def update(self, params, grads, states, hp, ctx):
        for p, g in zip(params, grads):
            g.mul_(hp["lr"])  # the mistake: scales p.grad itself
            p.sub_(g)


class HalveGrad(Transform):
    name = "halve_grad"
    stage = "grad"
    supports = ("batched", "complex")

    def update(self, params, grads, states, hp, ctx):
        for i, g in enumerate(grads):
            grads[i] = g.mul_(0.5)  # the mistake: in place, into p.grad


class Unbroadcast(Transform):
    """Declares batched, but multiplies by a [K] factor without gdzoo.ops.per: wrong axis."""

    name = "unbroadcast"
    stage = "grad"
    hyperparameters = (Hyper("factor", 0.5, "float", "gradient multiplier"),)
    supports = ("batched",)

    def check(self, hp):
        checks.positive("factor", hp["factor"])

    def update(self, params, grads, states, hp, ctx):
        for i, g in enumerate(grads):
            grads[i] = torch.mul(g, hp["factor"])


class ExcusedSGD(InPlaceSGD):
    name = "excused_sgd"
    expected_failures = {"grad_untouched": "scales p.grad in place to save memory (documented)"}


class StaleExcuse(Transform):
    name = "stale_excuse"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.01, "float", "learning rate"),)
    expected_failures = {"pickle": "once failed", "picklee": "a typo"}

    def check(self, hp):
        checks.learning_rate(hp["lr"])

    def update(self, params, grads, states, hp, ctx):
        for p, g in zip(params, grads):
            p.add_(g, alpha=-hp["lr"])


class Unchecked(Transform):
    name = "unchecked"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.01, "float", "learning rate"),)

    def update(self, params, grads, states, hp, ctx):
        for p, g in zip(params, grads):
            p.add_(g, alpha=-hp["lr"])


class SignDescent(Transform):
    name = "sign_descent"
    stage = "update"

    def update(self, params, grads, states, hp, ctx):
        for p, g in zip(params, grads):
            p.add_(torch.sign(g), alpha=-0.01)


@hookimpl
def register_optimizers(register):
    for cls in (InPlaceSGD, ExcusedSGD, StaleExcuse, Unchecked, SignDescent):
        register(cls)


@hookimpl
def register_transforms(register):
    register(HalveGrad)
    register(Unbroadcast)
'''


@pytest.fixture
def wrong_plugins(install_plugin):
    install_plugin(OUTSIDE_STATE, module="gdzoo_leaky", distribution="gdzoo-leaky", name="leaky")
    fake = install_plugin(GRAD_WRITER, module="gdzoo_grad_writer", distribution="gdzoo-grad-writer",
                          name="grad_writer")
    assert not fake.registry.plugins.failures()
    return fake.registry


def test_state_outside_optimizer_state_fails_round_trip_deepcopy_and_pickle(wrong_plugins):
    results = run_checks("leaky_momentum")
    assert failed(results) == {"state_dict_round_trip", "deepcopy", "pickle"}
    reasons = {r.check: r.reason for r in results}
    assert "after loading its state_dict" in reasons["state_dict_round_trip"]
    assert statuses(results)["batched_equals_separate"] == "skipped"
    assert "not declared" in reasons["batched_equals_separate"]

    result = invoke("verify", "leaky_momentum")
    assert result.exit_code == 1
    failing = [line.split()[1] for line in result.stdout.splitlines() if " failed " in line]
    assert failing == ["state_dict_round_trip", "deepcopy", "pickle"]
    assert "3 check(s) failed" in result.stderr


def test_writing_into_p_grad_fails_grad_untouched(wrong_plugins):
    results = run_checks("inplace_sgd")
    assert failed(results) == {"grad_untouched"}
    reason = next(r.reason for r in results if r.check == "grad_untouched")
    assert "wrote into p.grad" in reason

    result = invoke("verify", "inplace_sgd", "adam", "--format", "csv")
    assert result.exit_code == 1
    assert "inplace_sgd,grad_untouched,failed," in result.stdout
    assert "adam,grad_untouched,passed," in result.stdout


def test_a_transform_writing_into_p_grad_fails_behind_sgd(wrong_plugins):
    results = run_checks("halve_grad")
    assert "grad_untouched" in failed(results)
    assert next(r.reason for r in results if r.check == "grad_untouched").startswith("sgd:lr=0.01+halve_grad")


def test_declared_expected_failures_are_xfail_and_exit_0(wrong_plugins):
    results = run_checks("declared_leaky")
    assert {c for c, s in statuses(results).items() if s == "xfail"} == {"state_dict_round_trip", "deepcopy", "pickle"}
    assert not failed(results)
    assert "momentum kept in self._m" in next(r.reason for r in results if r.check == "state_dict_round_trip")

    result = invoke("verify", "declared_leaky", "excused_sgd")
    assert result.exit_code == 0, result.output
    assert [line.split()[:3] for line in result.stdout.splitlines() if " xfail " in line] == [
        ["declared_leaky", "state_dict_round_trip", "xfail"], ["declared_leaky", "deepcopy", "xfail"],
        ["declared_leaky", "pickle", "xfail"], ["excused_sgd", "grad_untouched", "xfail"]]


def test_expected_failures_given_to_run_checks(wrong_plugins):
    results = run_checks("inplace_sgd", expected_failures={"grad_untouched": "known"}, checks=["grad_untouched"])
    assert [(r.check, r.status) for r in results] == [("grad_untouched", "xfail")]
    results = run_checks("inplace_sgd", expected_failures={("other", "grad_untouched"): "not this one"},
                         checks=["grad_untouched"])
    assert [(r.check, r.status) for r in results] == [("grad_untouched", "failed")]


def test_a_stale_or_misspelt_declaration_fails(wrong_plugins):
    results = run_checks("stale_excuse")
    by_check = {r.check: r for r in results}
    assert failed(results) == {"expected_failures", "pickle"}
    assert "'picklee'" in by_check["expected_failures"].reason
    assert "but passed" in by_check["pickle"].reason
    with pytest.raises(ValueError, match="picklee"):
        parametrize_with_checks(["stale_excuse"])


def test_unchecked_hyperparameters_fail_naming_them(wrong_plugins):
    results = run_checks("unchecked", checks=["bad_hyperparameters"])
    (result,) = results
    assert result.status == "failed"
    assert "lr=-1 in a spec: accepted" in result.reason  # (nan is refused by gdzoo.Hyper for everyone)


def test_checks_that_do_not_apply_are_skipped_with_why(wrong_plugins):
    results = {r.check: r for r in run_checks("sign_descent")}
    assert results["lr_scheduler"].status == "skipped" and results["lr_scheduler"].reason == "no lr hyperparameter"
    assert results["bad_hyperparameters"].status == "skipped"
    assert results["batched_equals_separate"].status == "skipped"
    assert not {c for c, r in results.items() if r.status == "failed"}


def test_a_transform_declaring_batched_wrongly_fails_batched_equals_separate(wrong_plugins):
    results = run_checks("unbroadcast")
    assert failed(results) == {"batched_equals_separate"}
    assert "configuration 0 of 3" in next(r.reason for r in results if r.check == "batched_equals_separate")


LYING_CAPABILITIES = '''
"""Transforms that declare a capability their math does not have."""

import torch

from gdzoo import Hyper, Transform, checks, hookimpl
from gdzoo.ops import per


class FirstConfigScale(Transform):
    """g *= a * b, but a batched b is read from configuration 0 alone (b is neither lr nor the
    first other float: the two the check once varied)."""

    name = "first_config_scale"
    stage = "grad"
    hyperparameters = (Hyper("a", 1.0, "float", "factor"), Hyper("b", 1.0, "float", "second factor"))
    supports = ("batched",)

    def check(self, hp):
        checks.positive("a", hp["a"])
        checks.positive("b", hp["b"])

    def update(self, params, grads, states, hp, ctx):
        b = hp["b"]
        if isinstance(b, torch.Tensor):
            b = b[0].item()  # the mistake: one value for the whole batch
        for i, (p, g) in enumerate(zip(params, grads)):
            grads[i] = g * per(hp["a"], p) * b


class FirstConfigBetas(Transform):
    """g *= beta1 * beta2, but a batched beta2 is read from configuration 0 alone."""

    name = "first_config_betas"
    stage = "grad"
    hyperparameters = (Hyper("betas", (0.9, 0.999), "floats", "two factors", length=2),)
    supports = ("batched",)

    def check(self, hp):
        checks.betas(hp["betas"])

    def update(self, params, grads, states, hp, ctx):
        beta1, beta2 = hp["betas"]
        if isinstance(beta2, torch.Tensor):
            beta2 = beta2[0].item()  # the mistake
        for i, (p, g) in enumerate(zip(params, grads)):
            grads[i] = g * per(beta1, p) * beta2


class CentralizeLast(Transform):
    """Gradient centralization over the last dimension, declaring complex: on a complex
    parameter's real view the last dimension is (real, imaginary), so it mixes the two."""

    name = "centralize_last"
    stage = "grad"
    supports = ("complex",)

    def update(self, params, grads, states, hp, ctx):
        for i, g in enumerate(grads):
            if g.dim() > 1:
                grads[i] = g - g.mean(dim=-1, keepdim=True)


@hookimpl
def register_transforms(register):
    for cls in (FirstConfigScale, FirstConfigBetas, CentralizeLast):
        register(cls)
'''


@pytest.fixture
def lying_plugins(install_plugin):
    fake = install_plugin(LYING_CAPABILITIES, module="gdzoo_lying", distribution="gdzoo-lying", name="lying")
    assert not fake.registry.plugins.failures()
    return fake.registry


def test_a_batched_hyperparameter_read_from_configuration_0_fails_batched_equals_separate(lying_plugins):
    """Every float of the chain is varied, not only lr and the first other one (here a, which the
    transform handles right): b, read from configuration 0 alone, fails."""
    results = run_checks("first_config_scale")
    assert failed(results) == {"batched_equals_separate"}
    reason = next(r.reason for r in results if r.check == "batched_equals_separate")
    assert "first_config_scale.b=1.0 | 0.5 | 2.0: configuration 1 of 3" in reason

    (result,) = run_checks("first_config_betas", checks=["batched_equals_separate"])
    assert result.status == "failed"
    assert "first_config_betas.betas=" in result.reason and "configuration 1 of 3" in result.reason


def test_batched_equals_separate_varies_every_float_of_the_chain():
    """The subject's own floats first, then the host SGD's; a float that no other value fits is named."""
    reasons = {name: run_checks(name, checks=["batched_equals_separate"])[0] for name in ("adam", "l2", "nesterov")}
    assert {r.status for r in reasons.values()} == {"passed"}
    assert reasons["adam"].reason == "varied alone and together: lr, betas, eps, weight_decay"
    assert reasons["l2"].reason == "varied alone and together: l2.weight, lr, momentum, dampening, weight_decay"
    assert reasons["nesterov"].reason.endswith("not varied (fewer than 2 accepted values): dampening")


def test_a_transform_declaring_complex_that_mixes_real_and_imaginary_fails_complex(lying_plugins):
    """Complex parameters are compared with their real and imaginary parts trained as separate real
    parameters (not with the view_as_real tensors the chain itself hands on, which always agree)."""
    results = run_checks("centralize_last")
    assert failed(results) == {"complex"}
    reason = next(r.reason for r in results if r.check == "complex")
    assert "complex64 parameters vs their real and imaginary parts as two float32 parameters" in reason


def test_complex_compares_clip_norm_1_and_inf_norms_with_clip_grad_norm_and_refuses_undeclared():
    (clip,) = run_checks("clip_norm", checks=["complex"])
    assert clip.status == "passed" and "torch.nn.utils.clip_grad_norm_" in clip.reason
    assert "norm_type=1.0" in clip.reason and "norm_type=inf" in clip.reason
    (l1,) = run_checks("l1", checks=["complex"])
    assert l1.status == "passed" and l1.reason == "not declared by l1: refused clearly"
