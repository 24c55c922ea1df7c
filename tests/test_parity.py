"""Parity of gdzoo's built-in optimizers (and simple compositions) with torch.optim.

Every case trains the same small model twice, once with gdzoo and once with the torch.optim
reference (``foreach=False``), and compares parameters and every optimizer state tensor.
The setup is deliberately awkward: two parameter groups with different learning rates (and
weight decays), a frozen parameter that never gets a gradient, and one step at which one
parameter's gradient is missing (``None``) in both runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdzoo
from gdzoo.optim.spec import format_value


STEPS = 100
MISSING_GRAD_STEP = 37  # at this step model[0].bias has no gradient (in both runs)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]

TORCH = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}
BASE_LR = {"sgd": 0.05, "momentum": 0.02, "nesterov": 0.02, "adam": 0.01, "adamw": 0.01,
           "adagrad": 0.05, "rmsprop": 0.005}
# What torch needs to reproduce a named preset's own defaults.
PRESET = {"momentum": {"momentum": 0.9}, "nesterov": {"momentum": 0.9, "nesterov": True}}


# --- setup ----------------------------------------------------------------------------------

def make_problem(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    frozen = nn.Parameter(torch.randn(3, generator=gen, dtype=dtype), requires_grad=False)
    X = torch.randn(64, 4, generator=gen, dtype=dtype)
    y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(64, 1, generator=gen, dtype=dtype)
    return model, frozen, X, y


def param_groups(model, frozen, lr, weight_decay=None):
    """Two groups: [layer 0 + frozen] at the default lr, [layer 2] at half of it (and 2x the decay)."""
    second = {"params": [model[2].weight, model[2].bias], "lr": lr * 0.5}
    if weight_decay:
        second["weight_decay"] = 2 * weight_decay
    return [{"params": [model[0].weight, model[0].bias, frozen]}, second]


def all_params(model, frozen):
    return [model[0].weight, model[0].bias, frozen, model[2].weight, model[2].bias]


def train(model, X, y, opt, steps=STEPS, before_step=None, check_grads=False):
    """Full-ish batch training with mini-batches cycling over the fixed data."""
    for t in range(steps):
        opt.zero_grad()
        rows = slice((t * 16) % 64, (t * 16) % 64 + 32)
        loss = F.mse_loss(model(X[rows]), y[rows])
        loss.backward()
        if t == MISSING_GRAD_STEP:
            model[0].bias.grad = None
        if before_step is not None:
            before_step(t)
        if check_grads:
            grads = {p: p.grad.clone() for p in model.parameters() if p.grad is not None}
            ids = {p: p.grad.data_ptr() for p in grads}
        opt.step()
        if check_grads:
            for p, g in grads.items():
                assert p.grad.data_ptr() == ids[p], "gdzoo replaced p.grad"
                assert torch.equal(p.grad, g), f"gdzoo modified p.grad during step {t}"
    return model


def spec_for(name, hp):
    opts = ",".join(f"{k}={format_value(v)}" for k, v in hp.items())
    return f"{name}:{opts}" if opts else name


def assert_params_equal(pa, pb, dtype):
    for i, (a, b) in enumerate(zip(pa, pb)):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL[dtype], msg=lambda m: f"param {i}: {m}")


def assert_states_equal(gz, ref, pa, pb, dtype, eager_ref_state=False):
    """Every state tensor gdzoo keeps equals torch's; torch keeps nothing more (but eager Adagrad)."""
    compared = 0
    for i, (a, b) in enumerate(zip(pa, pb)):
        sa, sb = gz.state.get(a, {}), ref.state.get(b, {})
        if not sa:
            if eager_ref_state and sb:
                # torch's Adagrad creates state for every param in __init__: it must be untouched.
                assert sb["step"].item() == 0, f"param {i}: torch stepped a param gdzoo never saw"
                init = ref.param_groups[0]["initial_accumulator_value"]
                assert torch.all(sb["sum"] == init)
            else:
                assert not sb, f"param {i}: torch has state {sorted(sb)}, gdzoo none"
            continue
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} != torch's {sorted(sb)}"
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], **TOL[dtype],
                                       msg=lambda m: f"param {i} state {key!r}: {m}")
            compared += 1
    return compared


# --- the hyperparameter grid -----------------------------------------------------------------

GRID = [
    # sgd: momentum 0/0.9, dampening 0/0.3, nesterov, weight_decay 0/0.1, maximize
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("sgd", {"weight_decay": 0.1}),
    ("sgd", {"maximize": True}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1, "maximize": True}),
    ("momentum", {}),
    ("nesterov", {"weight_decay": 0.1}),
    # adam / adamw: amsgrad, maximize, weight_decay
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adam", {"maximize": True}),
    ("adam", {"weight_decay": 0.1}),
    ("adam", {"amsgrad": True, "maximize": True, "weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adam", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.1, "amsgrad": True}),
    ("adamw", {"weight_decay": 0.0, "maximize": True}),
    ("adamw", {"weight_decay": 0.05, "amsgrad": True, "maximize": True}),
    # adagrad: lr_decay, initial_accumulator_value, weight_decay, maximize
    ("adagrad", {}),
    ("adagrad", {"lr_decay": 0.1}),
    ("adagrad", {"initial_accumulator_value": 0.5}),
    ("adagrad", {"weight_decay": 0.1}),
    ("adagrad", {"maximize": True}),
    ("adagrad", {"lr_decay": 0.05, "initial_accumulator_value": 0.1, "weight_decay": 0.1, "maximize": True,
                 "eps": 1e-6}),
    # rmsprop: centered, momentum, weight_decay, maximize, alpha
    ("rmsprop", {}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"weight_decay": 0.1}),
    ("rmsprop", {"maximize": True}),
    ("rmsprop", {"alpha": 0.9}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "maximize": True, "alpha": 0.95}),
]


def _case_id(case):
    name, hp = case
    return spec_for(name, hp).replace(" ", "")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GRID, ids=[_case_id(c) for c in GRID])
def test_builtin_matches_torch(case, dtype):
    name, hp = case
    lr = BASE_LR[name]
    model_a, frozen_a, X, y = make_problem(dtype)
    model_b, frozen_b = copy.deepcopy(model_a), copy.deepcopy(frozen_a)
    wd = hp.get("weight_decay")

    gz = gdzoo.optimizer(spec_for(name, {"lr": lr, **hp}), param_groups(model_a, frozen_a, lr, wd))
    assert isinstance(gz, torch.optim.Optimizer)
    ref_hp = {**PRESET.get(name, {}), **hp, "lr": lr}
    ref = TORCH[name](param_groups(model_b, frozen_b, lr, wd), foreach=False, **ref_hp)

    train(model_a, X, y, gz, check_grads=True)
    train(model_b, X, y, ref)

    pa, pb = all_params(model_a, frozen_a), all_params(model_b, frozen_b)
    # the frozen parameter never moves, and training did move the others
    assert torch.equal(frozen_a, make_problem(dtype)[1])
    assert not torch.equal(model_a[0].weight, make_problem(dtype)[0][0].weight)
    assert_params_equal(pa, pb, dtype)
    compared = assert_states_equal(gz, ref, pa, pb, dtype, eager_ref_state=(name == "adagrad"))
    stateless = name == "sgd" and not hp.get("momentum")
    assert compared == 0 if stateless else compared > 0
    # the parameter that missed one gradient was stepped one time less than the others
    if "step" in gz.state.get(model_a[0].bias, {}):
        assert gz.state[model_a[0].bias]["step"].item() == STEPS - 1
        assert gz.state[model_a[0].weight]["step"].item() == STEPS
    # the group hyperparameters are stored under torch's names
    assert gz.param_groups[1]["lr"] == pytest.approx(lr * 0.5)
    if wd:
        assert gz.param_groups[1]["weight_decay"] == pytest.approx(2 * wd)


# --- compositions that torch expresses differently --------------------------------------------

def _clip_norm(norm_type, max_norm):
    def before(model):
        def hook(t):
            params = [p for p in model.parameters() if p.grad is not None]
            total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type, foreach=False)
            CLIPPED.append(bool(total > max_norm))
        return hook
    return before


def _clip_value(value):
    def before(model):
        def hook(t):
            params = [p for p in model.parameters() if p.grad is not None]
            CLIPPED.append(any(bool((p.grad.abs() > value).any()) for p in params))
            torch.nn.utils.clip_grad_value_(params, value, foreach=False)
        return hook
    return before


CLIPPED: list[bool] = []

COMPOSED = [
    # (gdzoo spec, gdzoo group-1 extras, torch class, torch kwargs, torch group-1 extras, grad hook)
    pytest.param("adam:lr=0.01+clip_norm:max_norm=0.1", {}, torch.optim.Adam, {"lr": 0.01}, {},
                 _clip_norm(2.0, 0.1), id="adam+clip_norm(2)"),
    pytest.param("adam:lr=0.01+clip_norm:max_norm=0.1,norm_type=1", {}, torch.optim.Adam, {"lr": 0.01}, {},
                 _clip_norm(1.0, 0.1), id="adam+clip_norm(1)"),
    pytest.param("clip_norm:max_norm=0.05,norm_type=inf+adam:lr=0.01,amsgrad=true", {}, torch.optim.Adam,
                 {"lr": 0.01, "amsgrad": True}, {}, _clip_norm(float("inf"), 0.05), id="clip_norm(inf)+adam"),
    pytest.param("sgd:lr=0.05,momentum=0.9+clip_value:clip_value=0.02", {}, torch.optim.SGD,
                 {"lr": 0.05, "momentum": 0.9}, {}, _clip_value(0.02), id="sgd+clip_value"),
    pytest.param("sgd:lr=0.05,momentum=0.9+l2:weight=0.1", {"l2.weight": 0.2}, torch.optim.SGD,
                 {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}, {"weight_decay": 0.2}, None,
                 id="sgd+l2"),
    pytest.param("adam:lr=0.01+weight_decay:weight=0.1", {"weight_decay.weight": 0.3}, torch.optim.AdamW,
                 {"lr": 0.01, "weight_decay": 0.1}, {"weight_decay": 0.3}, None, id="adam+weight_decay"),
    pytest.param("adam:lr=0.01,amsgrad=true+weight_decay:weight=0.1+clip_norm:max_norm=0.1", {},
                 torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}, {},
                 _clip_norm(2.0, 0.1), id="adam+weight_decay+clip_norm"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec,gz_extra,torch_cls,torch_hp,torch_extra,grad_hook", COMPOSED)
def test_composition_matches_torch(spec, gz_extra, torch_cls, torch_hp, torch_extra, grad_hook, dtype):
    lr = torch_hp["lr"]
    model_a, frozen_a, X, y = make_problem(dtype)
    model_b, frozen_b = copy.deepcopy(model_a), copy.deepcopy(frozen_a)
    groups_a = param_groups(model_a, frozen_a, lr)
    groups_a[1].update(gz_extra)
    groups_b = param_groups(model_b, frozen_b, lr)
    groups_b[1].update(torch_extra)

    gz = gdzoo.optimizer(spec, groups_a)
    ref = torch_cls(groups_b, foreach=False, **torch_hp)
    for key, value in gz_extra.items():
        assert gz.param_groups[1][key] == value and gz.param_groups[0][key] != value

    train(model_a, X, y, gz, check_grads=True)
    CLIPPED.clear()
    train(model_b, X, y, ref, before_step=grad_hook(model_b) if grad_hook else None)
    if grad_hook:
        # the comparison is only meaningful if clipping actually changed some gradients
        assert sum(CLIPPED) >= 10, "clipping (almost) never happened"

    pa, pb = all_params(model_a, frozen_a), all_params(model_b, frozen_b)
    assert_params_equal(pa, pb, dtype)
    assert assert_states_equal(gz, ref, pa, pb, dtype) > 0


def test_order_of_grad_transforms_in_spec_is_applied_left_to_right():
    """clip_value then l2 differs from l2 then clip_value; each equals the manual computation."""
    dtype = torch.float64
    for spec, order in [("sgd:lr=0.1+clip_value:clip_value=0.01+l2:weight=0.5", "clip-first"),
                        ("sgd:lr=0.1+l2:weight=0.5+clip_value:clip_value=0.01", "l2-first")]:
        model_a, frozen_a, X, y = make_problem(dtype)
        model_b, frozen_b = copy.deepcopy(model_a), copy.deepcopy(frozen_a)
        gz = gdzoo.optimizer(spec, model_a.parameters())
        ref = torch.optim.SGD(model_b.parameters(), lr=0.1, foreach=False)

        def hook(t, model=model_b, order=order):
            for p in model.parameters():
                if p.grad is None:
                    continue
                if order == "clip-first":
                    p.grad = p.grad.clamp(-0.01, 0.01) + 0.5 * p.detach()
                else:
                    p.grad = (p.grad + 0.5 * p.detach()).clamp(-0.01, 0.01)

        train(model_a, X, y, gz, steps=30, check_grads=True)
        train(model_b, X, y, ref, steps=30, before_step=hook)
        assert_params_equal(list(model_a.parameters()), list(model_b.parameters()), dtype)


@pytest.mark.parametrize("name,hp", [("adam", {"amsgrad": True}), ("adagrad", {}), ("rmsprop", {"centered": True})])
def test_step_counter_dtype_follows_default_dtype_like_torch(name, hp):
    """torch stores ``step`` as a float64 tensor when the default dtype is float64: so does gdzoo."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model_a, frozen_a, X, y = make_problem(torch.float64)
        model_b = copy.deepcopy(model_a)
        gz = gdzoo.optimizer(name, model_a.parameters(), lr=0.01, **hp)
        ref = TORCH[name](model_b.parameters(), lr=0.01, foreach=False, **hp)
        train(model_a, X, y, gz, steps=3)
        train(model_b, X, y, ref, steps=3)
    finally:
        torch.set_default_dtype(old)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert gz.state[pa]["step"].dtype == ref.state[pb]["step"].dtype == torch.float64
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
