"""gdzoo.optimizer as a torch.optim.Optimizer: resume, schedulers, the Optimizer API, keywords,
L1 sparsity, hyperparameter checks, spec errors, the registry, and user-defined transforms."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdzoo
from gdzoo import Hyper, Link, Transform


BUILTIN_SPECS = [
    "sgd:lr=0.05",
    "momentum",
    "nesterov:lr=0.02,weight_decay=0.01",
    "adam:lr=0.01,amsgrad=true",
    "adamw:lr=0.01",
    "adagrad:lr=0.05,lr_decay=0.01",
    "rmsprop:lr=0.005,centered=true,momentum=0.5",
]
CHAIN_SPECS = [
    "adam:lr=0.01+clip_norm:max_norm=0.5+l1:weight=1e-3,mode=prox",
    "sgd:lr=0.05,momentum=0.9+clip_value:clip_value=0.05+l2:weight=1e-3+weight_decay:weight=0.01",
]


def make_problem(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    X = torch.randn(64, 4, generator=gen, dtype=dtype)
    y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(64, 1, generator=gen, dtype=dtype)
    return model, X, y


def groups_of(model, lr):
    return [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": lr * 0.5}]


def loss_fn(model, X, y, t):
    rows = slice((t * 16) % 64, (t * 16) % 64 + 32)
    return F.mse_loss(model(X[rows]), y[rows])


def train(model, X, y, opt, steps, start=0, scheduler=None, record=None):
    for t in range(start, start + steps):
        opt.zero_grad()
        loss_fn(model, X, y, t).backward()
        opt.step()
        if record is not None:
            record.append([{k: g[k] for k in ("lr", "momentum", "betas") if k in g} for g in opt.param_groups])
        if scheduler is not None:
            scheduler.step()


def lr_of(spec):
    m = re.search(r"lr=([0-9.e-]+)", spec)
    return float(m.group(1)) if m else 0.01


def assert_same_params(a, b, exact=True):
    for pa, pb in zip(a.parameters(), b.parameters()):
        if exact:
            assert torch.equal(pa, pb)
        else:
            torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


# --- (a) resume -------------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["memory", "file"])
@pytest.mark.parametrize("spec", BUILTIN_SPECS + CHAIN_SPECS)
def test_resume_equals_uninterrupted(spec, via, tmp_path):
    lr = lr_of(spec)
    full, X, y = make_problem()
    first = copy.deepcopy(full)
    opt_full = gdzoo.optimizer(spec, groups_of(full, lr))
    train(full, X, y, opt_full, 20)

    opt_first = gdzoo.optimizer(spec, groups_of(first, lr))
    train(first, X, y, opt_first, 10)
    saved = opt_first.state_dict()
    if via == "file":
        torch.save({"model": first.state_dict(), "optimizer": saved}, tmp_path / "ckpt.pt")
        ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    else:
        ckpt = {"model": copy.deepcopy(first.state_dict()), "optimizer": copy.deepcopy(saved)}
    del opt_first

    resumed, _, _ = make_problem(seed=1)  # different initial weights, overwritten by the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt = gdzoo.optimizer(spec, groups_of(resumed, 123.0))  # wrong lr: load_state_dict must restore it
    opt.load_state_dict(ckpt["optimizer"])
    assert opt.param_groups[1]["lr"] == pytest.approx(lr * 0.5)
    train(resumed, X, y, opt, 10, start=10)

    assert_same_params(resumed, full)
    sd_a, sd_b = opt.state_dict(), opt_full.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    assert sd_a["state"].keys() == sd_b["state"].keys()
    for i, state in sd_b["state"].items():
        assert state.keys() == sd_a["state"][i].keys()
        for key, value in state.items():
            assert torch.equal(value, sd_a["state"][i][key]) if torch.is_tensor(value) else value == sd_a["state"][i][key]
    if spec != "sgd:lr=0.05":
        assert sd_b["state"], f"{spec} should keep optimizer state"


@pytest.mark.parametrize("name,torch_cls,hp", [
    ("adam", torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
    ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 0.005, "centered": True, "momentum": 0.5}),
])
def test_state_dict_interchanges_with_torch(name, torch_cls, hp):
    """A torch.optim checkpoint resumes in gdzoo and vice versa: same state keys and layout."""
    ref, X, y = make_problem()
    a, b = copy.deepcopy(ref), copy.deepcopy(ref)
    opt_ref = torch_cls(ref.parameters(), foreach=False, **hp)
    train(ref, X, y, opt_ref, 20)

    # torch for 10 steps, then gdzoo
    opt_t = torch_cls(a.parameters(), foreach=False, **hp)
    train(a, X, y, opt_t, 10)
    opt_g = gdzoo.optimizer(name, a.parameters(), **hp)
    opt_g.load_state_dict(opt_t.state_dict())
    train(a, X, y, opt_g, 10, start=10)
    assert_same_params(a, ref)

    # gdzoo for 10 steps, then torch
    opt_g = gdzoo.optimizer(name, b.parameters(), **hp)
    train(b, X, y, opt_g, 10)
    opt_t = torch_cls(b.parameters(), foreach=False, **hp)
    opt_t.load_state_dict(opt_g.state_dict())
    train(b, X, y, opt_t, 10, start=10)
    assert_same_params(b, ref)


# --- (b) lr schedulers ------------------------------------------------------------------------

SCHEDULERS = [
    pytest.param("adam:lr=0.05", torch.optim.Adam, {"lr": 0.05},
                 lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5), id="StepLR-adam"),
    pytest.param("sgd:lr=0.05,momentum=0.9", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9},
                 lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=30,
                                                               cycle_momentum=True), id="OneCycleLR-sgd"),
    pytest.param("adam:lr=0.05", torch.optim.Adam, {"lr": 0.05},
                 lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=30,
                                                               cycle_momentum=True), id="OneCycleLR-adam"),
    pytest.param("rmsprop:lr=0.01", torch.optim.RMSprop, {"lr": 0.01},
                 lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
                 id="CosineAnnealingLR-rmsprop"),
]


@pytest.mark.parametrize("spec,torch_cls,hp,make_scheduler", SCHEDULERS)
def test_lr_scheduler_drives_gdzoo_like_torch(spec, torch_cls, hp, make_scheduler):
    model_a, X, y = make_problem()
    model_b = copy.deepcopy(model_a)
    opt_a = gdzoo.optimizer(spec, groups_of(model_a, hp["lr"]))
    opt_b = torch_cls(groups_of(model_b, hp["lr"]), foreach=False, **hp)
    sched_a, sched_b = make_scheduler(opt_a), make_scheduler(opt_b)
    rec_a, rec_b = [], []
    train(model_a, X, y, opt_a, 30, scheduler=sched_a, record=rec_a)
    train(model_b, X, y, opt_b, 30, scheduler=sched_b, record=rec_b)

    assert rec_a == rec_b
    lrs = [r[0]["lr"] for r in rec_a]
    assert len(set(lrs)) > 2, "the scheduler did not change the learning rate"
    if isinstance(sched_a, torch.optim.lr_scheduler.OneCycleLR):
        key = "momentum" if "momentum" in rec_a[0][0] else "betas"
        assert len({r[0][key] for r in rec_a}) > 2, f"cycle_momentum did not change {key}"
    assert sched_a.get_last_lr() == sched_b.get_last_lr()
    assert_same_params(model_a, model_b, exact=False)


# --- (c) the Optimizer API --------------------------------------------------------------------

def test_add_param_group_like_torch():
    model_a, X, y = make_problem()
    model_b = copy.deepcopy(model_a)
    opt_a = gdzoo.optimizer("adam:lr=0.01,betas=(0.8,0.99)", model_a[0].parameters())
    opt_b = torch.optim.Adam(model_b[0].parameters(), lr=0.01, betas=(0.8, 0.99), foreach=False)
    train(model_a, X, y, opt_a, 5)
    train(model_b, X, y, opt_b, 5)
    opt_a.add_param_group({"params": list(model_a[2].parameters()), "lr": 0.002})
    opt_b.add_param_group({"params": list(model_b[2].parameters()), "lr": 0.002})
    group = opt_a.param_groups[1]
    assert group["lr"] == 0.002 and group["betas"] == (0.8, 0.99) and group["amsgrad"] is False
    train(model_a, X, y, opt_a, 10, start=5)
    train(model_b, X, y, opt_b, 10, start=5)
    assert_same_params(model_a, model_b)
    assert opt_a.state[model_a[2].weight]["step"].item() == 10
    assert opt_a.state[model_a[0].weight]["step"].item() == 15

    extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="unknown hyperparameter.*'lrr'"):
        opt_a.add_param_group({"params": [extra], "lrr": 0.1})
    # a rejected group is not left behind in the optimizer
    with pytest.raises(ValueError, match=re.escape("Invalid learning rate: -1")):
        opt_a.add_param_group({"params": [extra], "lr": -1})
    assert len(opt_a.param_groups) == 2
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.5"):
        opt_a.add_param_group({"params": [extra], "betas": (0.9, 1.5)})
    with pytest.raises(ValueError, match="amsgrad expects bool"):
        opt_a.add_param_group({"params": [extra], "amsgrad": "maybe"})
    assert len(opt_a.param_groups) == 2
    with pytest.raises(ValueError):  # torch's own check: a parameter may not be in two groups
        opt_a.add_param_group({"params": [model_a[0].weight]})
    assert len(opt_a.param_groups) == 2
    # a value given as text is coerced as in a spec
    opt_a.add_param_group({"params": [extra], "lr": "0.5", "amsgrad": "true"})
    assert opt_a.param_groups[-1]["lr"] == 0.5 and opt_a.param_groups[-1]["amsgrad"] is True


def test_zero_grad():
    model, X, y = make_problem()
    opt = gdzoo.optimizer("sgd:lr=0.1", model.parameters())
    loss_fn(model, X, y, 0).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    loss_fn(model, X, y, 0).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_closure():
    model_a, X, y = make_problem()
    model_b = copy.deepcopy(model_a)
    opt_a = gdzoo.optimizer("rmsprop:lr=0.01,momentum=0.9", model_a.parameters())
    opt_b = torch.optim.RMSprop(model_b.parameters(), lr=0.01, momentum=0.9, foreach=False)
    calls = []

    def closure_for(model, opt):
        def closure():
            calls.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = F.mse_loss(model(X), y)
            loss.backward()
            return loss
        return closure

    losses_a = [opt_a.step(closure_for(model_a, opt_a)) for _ in range(5)]
    losses_b = [opt_b.step(closure_for(model_b, opt_b)) for _ in range(5)]
    assert all(calls), "the closure must run with gradients enabled"
    assert len(calls) == 10
    assert all(torch.is_tensor(l) for l in losses_a)
    assert [l.item() for l in losses_a] == [l.item() for l in losses_b]
    assert losses_a[-1].item() < losses_a[0].item()
    assert_same_params(model_a, model_b)
    # no closure: returns None
    assert opt_a.step() is None


def test_step_hooks():
    model, X, y = make_problem()
    opt = gdzoo.optimizer("adam:lr=0.01", model.parameters())
    events = []
    w = model[0].weight

    def pre(optimizer, args, kwargs):
        events.append(("pre", optimizer is opt, w.detach().clone()))

    def post(optimizer, args, kwargs):
        events.append(("post", optimizer is opt, w.detach().clone()))

    h_pre = opt.register_step_pre_hook(pre)
    h_post = opt.register_step_post_hook(post)
    train(model, X, y, opt, 2)
    assert [e[0] for e in events] == ["pre", "post", "pre", "post"]
    assert all(e[1] for e in events)
    assert not torch.equal(events[0][2], events[1][2]), "the post hook runs after the update"
    assert torch.equal(events[1][2], events[2][2])
    h_pre.remove()
    h_post.remove()
    train(model, X, y, opt, 1)
    assert len(events) == 4


def test_parameters_without_grad_are_skipped():
    model, X, y = make_problem()
    unused = nn.Parameter(torch.ones(5))
    frozen = nn.Parameter(torch.ones(5), requires_grad=False)
    for spec in ["sgd:lr=0.1,momentum=0.9,weight_decay=0.1", "adam:lr=0.1+weight_decay:weight=0.5",
                 "adamw:lr=0.1", "adagrad", "rmsprop:centered=true", "sgd+l1:weight=0.1,mode=prox"]:
        opt = gdzoo.optimizer(spec, [{"params": list(model.parameters()) + [unused, frozen]}])
        train(model, X, y, opt, 3)
        assert torch.equal(unused, torch.ones(5)) and torch.equal(frozen, torch.ones(5)), spec
        assert unused not in opt.state and frozen not in opt.state, spec
        # a step where nothing has a gradient is a no-op and still returns the closure's loss
        opt.zero_grad()
        before = [p.detach().clone() for p in model.parameters()]
        assert opt.step(lambda: torch.tensor(3.0)).item() == 3.0
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_repr_and_type():
    p = nn.Parameter(torch.zeros(2))
    opt = gdzoo.optimizer("adam+clip_norm", [p])
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, gdzoo.Chain)
    assert "adam+clip_norm" in repr(opt)


def test_sparse_gradients_are_refused_where_torch_refuses_them():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = gdzoo.optimizer("adam:lr=0.1", emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="adam does not support sparse gradients"):
        opt.step()


# --- (d) keywords -----------------------------------------------------------------------------

def test_keywords_read_like_torch():
    p = nn.Parameter(torch.zeros(3))
    opt = gdzoo.optimizer("adam", [p], lr=1e-3, betas=(0.9, 0.99))
    g = opt.param_groups[0]
    assert g["lr"] == 1e-3 and g["betas"] == (0.9, 0.99) and g["eps"] == 1e-8
    assert opt.defaults["betas"] == (0.9, 0.99)
    # keywords override the spec
    assert gdzoo.optimizer("adam:lr=0.5", [p], lr=0.25).param_groups[0]["lr"] == 0.25


def test_transform_keywords_bare_and_qualified():
    for kwargs in ({"max_norm": 0.5}, {"clip_norm.max_norm": 0.5}):
        p = nn.Parameter(torch.zeros(3))
        opt = gdzoo.optimizer("sgd+clip_norm", [p], lr=1.0, **kwargs)
        assert opt.param_groups[0]["clip_norm.max_norm"] == 0.5
        p.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5, clipped to 0.5
        opt.step()
        torch.testing.assert_close(p.detach(), -torch.tensor([0.3, 0.4, 0.0]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.grad, torch.tensor([3.0, 4.0, 0.0]))  # p.grad untouched


def test_keyword_errors():
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"has no hyperparameter 'lrr' \(did you mean lr\?\)"):
        gdzoo.optimizer("adam", [p], lrr=0.1)
    # 'weight' belongs to two transforms: it must be qualified
    with pytest.raises(ValueError, match=r"l2\.weight.*weight_decay\.weight"):
        gdzoo.optimizer("sgd+l2+weight_decay", [p], weight=0.1)
    opt = gdzoo.optimizer("sgd+l2+weight_decay", [p], **{"l2.weight": 0.1, "weight_decay.weight": 0.2})
    assert opt.param_groups[0]["l2.weight"] == 0.1 and opt.param_groups[0]["weight_decay.weight"] == 0.2
    with pytest.raises(ValueError, match="betas expects"):
        gdzoo.optimizer("adam", [p], betas=(0.9,))


def test_param_group_overrides_qualified_transform_keys():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = gdzoo.optimizer("sgd:lr=0.1+l2:weight=1", [{"params": [a]}, {"params": [b], "l2.weight": 0.0}])
    a.grad, b.grad = torch.zeros(2), torch.zeros(2)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.9))
    torch.testing.assert_close(b.detach(), torch.ones(2))


# --- (e) L1: proximal gives exact zeros, subgradient does not --------------------------------

def _sparse_regression(mode):
    gen = torch.Generator().manual_seed(0)
    n, d, k = 200, 50, 5
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w_true = torch.zeros(d, dtype=torch.float64)
    w_true[:k] = torch.tensor([2.0, -1.5, 1.0, -2.5, 1.8], dtype=torch.float64)
    y = X @ w_true + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    w = (0.01 * torch.randn(d, generator=gen, dtype=torch.float64)).requires_grad_()
    opt = gdzoo.optimizer(f"sgd:lr=0.05+l1:weight=0.05,mode={mode}", [w])
    for _ in range(400):
        opt.zero_grad()
        (0.5 * ((X @ w - y) ** 2).mean()).backward()
        opt.step()
    return w.detach(), w_true, k


def test_l1_prox_gives_exact_zeros():
    w, w_true, k = _sparse_regression("prox")
    assert int((w[k:] == 0.0).sum()) >= 40, "most uninformative coefficients should be exactly 0"
    assert bool((w[:k] != 0).all())
    # close to the truth, shrunk towards zero by the penalty
    assert torch.allclose(w[:k], w_true[:k], atol=0.2)
    assert bool((w[:k].abs() < w_true[:k].abs()).all())


def test_l1_subgradient_does_not_give_exact_zeros():
    w, w_true, k = _sparse_regression("subgradient")
    assert int((w == 0.0).sum()) == 0
    assert torch.allclose(w[:k], w_true[:k], atol=0.2)
    assert float(w[k:].abs().max()) < 0.05  # small, just never exactly zero


def test_l1_prox_is_soft_thresholding():
    p = nn.Parameter(torch.tensor([1.0, -0.05, 0.02, -2.0]))
    opt = gdzoo.optimizer("sgd:lr=0.5+l1:weight=0.2,mode=prox", [p])
    p.grad = torch.zeros(4)
    opt.step()  # threshold lr * weight = 0.1
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 0.0, 0.0, -1.9]))


# --- (f) bad hyperparameters ------------------------------------------------------------------

BAD_HYPERPARAMETERS = [
    # (spec, keyword form: (spec, kwargs), message)
    ("sgd:lr=-1", ("sgd", {"lr": -1}), "Invalid learning rate: -1"),
    ("adam:lr=-1", ("adam", {"lr": -1}), "Invalid learning rate: -1"),
    ("adam:betas=(1.0,0.999)", ("adam", {"betas": (1.0, 0.999)}), "Invalid beta parameter at index 0: 1.0"),
    ("adamw:betas=(0.9,1.0)", ("adamw", {"betas": (0.9, 1.0)}), "Invalid beta parameter at index 1: 1.0"),
    ("sgd:lr=0.1,nesterov=true", ("sgd", {"lr": 0.1, "nesterov": True}),
     "Nesterov momentum requires a momentum and zero dampening"),
    ("sgd:momentum=0.9,dampening=0.5,nesterov=true", ("sgd", {"momentum": 0.9, "dampening": 0.5, "nesterov": True}),
     "Nesterov momentum requires a momentum and zero dampening"),
    ("nesterov:dampening=0.1", ("nesterov", {"dampening": 0.1}),
     "Nesterov momentum requires a momentum and zero dampening"),
    ("sgd:momentum=1.0", ("sgd", {"momentum": 1.0}), "Invalid momentum value: 1.0"),
    ("sgd:momentum=-0.5", ("sgd", {"momentum": -0.5}), "Invalid momentum value: -0.5"),
    ("rmsprop:momentum=1.0", ("rmsprop", {"momentum": 1.0}), "Invalid momentum value: 1.0"),
    ("sgd:momentum=0.9,dampening=1.5", ("sgd", {"momentum": 0.9, "dampening": 1.5}), "Invalid dampening value: 1.5"),
    ("rmsprop:alpha=1.5", ("rmsprop", {"alpha": 1.5}), "Invalid alpha value: 1.5"),
    ("adam+clip_norm:max_norm=0", ("adam+clip_norm", {"max_norm": 0}), "Invalid max_norm value: 0"),
    ("sgd+clip_value:clip_value=-1", ("sgd+clip_value", {"clip_value": -1}), "Invalid clip_value value: -1"),
    ("adam:eps=-1", ("adam", {"eps": -1}), "Invalid epsilon value: -1"),
    ("rmsprop:eps=-1", ("rmsprop", {"eps": -1}), "Invalid epsilon value: -1"),
    ("adagrad:eps=-1", ("adagrad", {"eps": -1}), "Invalid epsilon value: -1"),
    ("adagrad:lr_decay=-1", ("adagrad", {"lr_decay": -1}), "Invalid lr_decay value: -1"),
    ("adam:weight_decay=-0.1", ("adam", {"weight_decay": -0.1}), "Invalid weight_decay value: -0.1"),
    ("sgd+l2:weight=-1", ("sgd+l2", {"weight": -1}), "Invalid weight value: -1"),
]


GROUP_KEY = {"max_norm": "clip_norm.max_norm", "clip_value": "clip_value.clip_value", "weight": "l2.weight"}


@pytest.mark.parametrize("spec,keyword,message", BAD_HYPERPARAMETERS, ids=[b[0] for b in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters_fail_at_construction(spec, keyword, message):
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(gdzoo.SpecError, match=re.escape(message)) as info:
        gdzoo.optimizer(spec, [p])
    assert "^" in str(info.value)
    kw_spec, kwargs = keyword
    with pytest.raises(ValueError, match=re.escape(message)):
        gdzoo.optimizer(kw_spec, [p], **kwargs)
    # and in a param group dict, under the param_groups key names
    group = {GROUP_KEY.get(k, k): v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=re.escape(message)):
        gdzoo.optimizer(kw_spec, [{"params": [p], **group}])


@pytest.mark.parametrize("torch_call,spec", [
    (lambda p: torch.optim.SGD([p], lr=-1), "sgd:lr=-1"),
    (lambda p: torch.optim.Adam([p], betas=(1.0, 0.999)), "adam:betas=(1.0,0.999)"),
    (lambda p: torch.optim.SGD([p], lr=0.1, nesterov=True), "sgd:lr=0.1,nesterov=true"),
    (lambda p: torch.optim.Adam([p], eps=-1), "adam:eps=-1"),
    (lambda p: torch.optim.RMSprop([p], momentum=-1), "rmsprop:momentum=-1"),
    (lambda p: torch.optim.Adagrad([p], initial_accumulator_value=-1), "adagrad:initial_accumulator_value=-1"),
])
def test_messages_contain_torchs_own_wording(torch_call, spec):
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError) as torch_info:
        torch_call(p)
    with pytest.raises(gdzoo.SpecError) as gdzoo_info:
        gdzoo.optimizer(spec, [p])
    assert str(torch_info.value) in str(gdzoo_info.value)


# --- (g) malformed specs ----------------------------------------------------------------------

MALFORMED = [
    # (spec, text the caret must cover, words the message must contain)
    ("adam:lr=abc", "abc", ["lr expects float"]),
    ("adam:lr=", "lr=", ["no value"]),
    ("adma", "adma", ["did you mean adam"]),
    ("adam+", None, ["empty"]),
    ("adam:foo=1", "foo=1", ["no option 'foo'", "valid options", "lr", "betas", "amsgrad"]),
    ("adam:lrr=0.1", "lrr", ["did you mean lr"]),
    ("clip_norm", "clip_norm", ["optimizer"]),
    ("clip_norm:max_norm=1+l2", "clip_norm", ["optimizer"]),
    ("adam+sgd", "sgd", ["one optimizer"]),
    ("adam+clip_norm+momentum", "momentum", ["one optimizer"]),
    ("adam:betas=(0.9)", "(0.9)", ["betas", "2 values"]),
    ("adam:betas=(0.9,0.99", "(0.9,0.99", ["unbalanced"]),
    ("adam+clip_norm+clip_norm:max_norm=2", "clip_norm:max_norm=2", ["twice"]),
    ("adam:amsgrad=maybe", "maybe", ["amsgrad expects bool"]),
    ("sgd+l1:mode=lasso", "lasso", ["subgradient", "prox"]),
    ("adam:lr=0.1,lr=0.2", "lr=0.2", ["twice"]),
    ("adam+clip_nrom", "clip_nrom", ["did you mean clip_norm"]),
    ("adam:3e-4,(0.9,0.99),1e-8,0,false,false,false,7", "7", ["at most 7 unnamed"]),
]


@pytest.mark.parametrize("spec,caret,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_specs(spec, caret, words):
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(gdzoo.SpecError) as info:
        gdzoo.optimizer(spec, [p])
    err = info.value
    message = str(err)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    lines = message.splitlines()
    assert lines[-2].strip() == spec.strip(), "the message quotes the whole spec"
    caret_line = lines[-1]
    assert set(caret_line.strip()) == {"^"}
    # the carets sit under the offending part
    start = caret_line.index("^") - (len(lines[-2]) - len(lines[-2].lstrip()))
    end = start + caret_line.count("^")
    assert err.start == start and err.text == spec
    if caret is None:
        assert start == len(spec) or spec[start:end].strip() == ""
    else:
        assert caret in spec[start:end] or spec[start:end] in caret, (spec[start:end], caret)
    assert isinstance(err, ValueError) and isinstance(err, gdzoo.GdzooError)


@pytest.mark.parametrize("spec,expect", [
    ("adam:lr=1e+3", {"lr": 1000.0}),
    ("adam:lr=1e-3+clip_norm", {"lr": 1e-3, "clip_norm.max_norm": 1.0}),
    ("adam:lr=1E+3+clip_norm:max_norm=2e+0", {"lr": 1000.0, "clip_norm.max_norm": 2.0}),
    ("adam:lr=3e-4,betas=0.8/0.9", {"lr": 3e-4, "betas": (0.8, 0.9)}),
    ("adam:3e-4,(0.5,0.6)", {"lr": 3e-4, "betas": (0.5, 0.6)}),
    (" adam : lr = 0.1 , amsgrad = yes + clip_norm : norm_type = inf ",
     {"lr": 0.1, "amsgrad": True, "clip_norm.norm_type": float("inf")}),
    ("l1:mode=prox+sgd:lr=0.1", {"lr": 0.1, "l1.mode": "prox"}),
])
def test_good_specs_parse(spec, expect):
    opt = gdzoo.optimizer(spec, [nn.Parameter(torch.zeros(2))])
    for key, value in expect.items():
        assert opt.param_groups[0][key] == value, key


def test_spec_order_does_not_matter_for_transforms_and_optimizer():
    """adam+clip_norm and clip_norm+adam are the same optimizer (the clip always acts first)."""
    results = []
    for spec in ["adam:lr=0.1+clip_norm:max_norm=0.1", "clip_norm:max_norm=0.1+adam:lr=0.1"]:
        model, X, y = make_problem()
        opt = gdzoo.optimizer(spec, model.parameters())
        train(model, X, y, opt, 10)
        results.append(model)
    assert_same_params(*results)


# --- (h) the registry -------------------------------------------------------------------------

def test_unknown_component():
    with pytest.raises(gdzoo.UnknownComponent) as info:
        gdzoo.get("optimizer", "adma")
    assert "adam" in str(info.value) and "did you mean" in str(info.value)
    assert isinstance(info.value, KeyError)
    with pytest.raises(gdzoo.UnknownComponent, match="clip_norm"):
        gdzoo.get("transform", "clipnorm")
    with pytest.raises(gdzoo.UnknownComponent):
        gdzoo.get("gizmo", "adam")


def test_components_describe_themselves():
    optimizers = {c.name: c for c in gdzoo.components("optimizer")}
    assert {"sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"} <= set(optimizers)
    transforms = {c.name: c for c in gdzoo.components("transform")}
    assert {"clip_norm", "clip_value", "l2", "weight_decay", "l1"} <= set(transforms)
    for comp in list(optimizers.values()) + list(transforms.values()):
        assert comp.description, comp.name
        assert comp.hyperparameters, comp.name
        assert all(h.help for h in comp.hyperparameters), comp.name
        assert comp.plugin
    adam = optimizers["adam"]
    assert adam.defaults["betas"] == (0.9, 0.999)
    assert adam.defaults["lr"] == 1e-3 and adam.defaults["eps"] == 1e-8
    assert adam.as_dict()["hyperparameters"]["betas"]["default"] == (0.9, 0.999)
    assert adam.as_dict()["stage"] == "update"
    assert optimizers["adamw"].defaults["weight_decay"] == 1e-2
    assert optimizers["adamw"].defaults["decoupled_weight_decay"] is True
    assert optimizers["momentum"].defaults["momentum"] == 0.9 and optimizers["momentum"].defaults["lr"] == 0.01
    assert optimizers["nesterov"].defaults["nesterov"] is True
    assert transforms["clip_norm"].defaults == {"max_norm": 1.0, "norm_type": 2.0}
    assert transforms["l1"].as_dict()["stage"] == "grad+post"
    assert gdzoo.get("optimizer", "adam") is adam
    assert adam.signature().startswith("adam:lr=0.001,betas=(0.9,0.999)")
    # the signature is itself a valid spec
    opt = gdzoo.optimizer(adam.signature(), [nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_defaults_match_torch():
    """Each built-in's defaults are torch.optim's (where torch has the option)."""
    import inspect
    for name, cls in [("adam", torch.optim.Adam), ("adagrad", torch.optim.Adagrad),
                      ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)]:
        sig = inspect.signature(cls.__init__).parameters
        for key, value in gdzoo.get("optimizer", name).defaults.items():
            if key in sig and sig[key].default is not inspect.Parameter.empty:
                assert sig[key].default == value, (name, key)


# --- (i) user-defined transforms --------------------------------------------------------------

class GradScale(Transform):
    """Multiply every gradient by a factor."""

    name = "grad_scale"
    stage = "grad"
    hyperparameters = (Hyper("factor", 0.5, "float", "the factor"),)

    def check(self, hp):
        gdzoo.checks.positive("factor", hp["factor"])

    def update(self, params, grads, states, hp, ctx):
        for i, (p, g) in enumerate(zip(params, grads)):
            grads[i] = torch.mul(g, hp["factor"], out=ctx.buffer(p))


class GradCentralization(Transform):
    """Subtract from each multi-dimensional gradient its mean over all but the first dimension."""

    name = "gc"
    stage = "grad"

    def update(self, params, grads, states, hp, ctx):
        for i, (p, g) in enumerate(zip(params, grads)):
            if g.dim() > 1:
                mean = g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
                grads[i] = torch.sub(g, mean, out=ctx.buffer(p))


class GradEMA(Transform):
    """A stateful grad transform: replace the gradient by its exponential moving average."""

    name = "grad_ema"
    stage = "grad"
    stateful = True
    hyperparameters = (Hyper("beta", 0.5, "float", "decay"),)

    def update(self, params, grads, states, hp, ctx):
        for i, (p, g, state) in enumerate(zip(params, grads, states)):
            if "ema" not in state:
                state["ema"] = torch.zeros_like(p)
                state["count"] = torch.tensor(0.0)
            state["ema"].mul_(hp["beta"]).add_(g, alpha=1 - hp["beta"])
            state["count"] += 1
            grads[i] = state["ema"]


def manual_chain(transforms, optimizer="adam", params=(), **overrides):
    """Build a gdzoo.Chain by hand from transform classes and a registered optimizer."""
    comp = gdzoo.get("optimizer", optimizer)
    update = comp.obj()
    update.name = comp.name
    links = [Link(update, tuple((h.name, h.name) for h in comp.hyperparameters))]
    defaults = dict(comp.defaults)
    for cls in transforms:
        t = cls()
        links.append(Link(t, tuple((h.name, f"{t.name}.{h.name}") for h in cls.hyperparameters)))
        defaults.update({f"{t.name}.{h.name}": h.default for h in cls.hyperparameters})
    defaults.update(overrides)
    return gdzoo.Chain(params, links, defaults, spec="+".join([optimizer] + [c.name for c in transforms]))


def _reference_with(model, X, y, steps, grad_fn, **adam_hp):
    opt = torch.optim.Adam(model.parameters(), foreach=False, **adam_hp)
    for t in range(steps):
        opt.zero_grad()
        loss_fn(model, X, y, t).backward()
        for p in model.parameters():
            p.grad = grad_fn(p.grad)
        opt.step()


def test_user_transform_in_a_hand_built_chain():
    model_a, X, y = make_problem()
    model_b = copy.deepcopy(model_a)
    opt = manual_chain([GradCentralization, GradScale], "adam", model_a.parameters(), lr=0.01,
                       **{"grad_scale.factor": 0.25})
    assert opt.param_groups[0]["grad_scale.factor"] == 0.25
    train(model_a, X, y, opt, 20)

    def gc_then_scale(g):
        if g.dim() > 1:
            g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
        return g * 0.25

    _reference_with(model_b, X, y, 20, gc_then_scale, lr=0.01)
    assert_same_params(model_a, model_b, exact=False)


class MyPlugin:
    @gdzoo.hookimpl
    def register_transforms(self, register):
        register(GradScale)
        register(GradEMA)
        register(GradCentralization, name="grad_center", description="gradient centralisation")

    @gdzoo.hookimpl
    def register_optimizers(self, register):
        register("adam:lr=0.01+grad_scale:factor=0.5", name="half_adam")
        register("clip_norm", name="no_update")  # a bad chain: reported, not fatal


class MyGoodPlugin(MyPlugin):
    @gdzoo.hookimpl
    def register_optimizers(self, register):
        register("adam:lr=0.01+grad_scale:factor=0.5", name="half_adam")


@pytest.fixture
def registry():
    """The default registry with MyGoodPlugin registered in-process (the public call)."""
    gdzoo.register_plugin(MyGoodPlugin(), name="mine")
    yield gdzoo.registry()
    gdzoo.unregister_plugin("mine")


def test_a_plugin_with_a_bad_chain_is_refused_whole():
    """register_plugin raises for a plugin whose hooks register something broken, and registers
    nothing of it."""
    with pytest.raises(gdzoo.PluginError, match="no_update.*bad chain"):
        gdzoo.register_plugin(MyPlugin(), name="mine")
    assert "grad_scale" not in gdzoo.registry().names("transform")


def test_registered_user_transform(registry):
    assert registry.get("transform", "grad_scale").plugin == "mine"
    assert registry.get("transform", "grad_center").description == "gradient centralisation"
    assert registry.plugins.infos["mine"].in_process and registry.plugins.infos["mine"].ok

    model_a, X, y = make_problem()
    model_b, model_c = copy.deepcopy(model_a), copy.deepcopy(model_a)
    opt = registry.optimizer("grad_scale:factor=0.5+grad_center+adam:lr=0.01", model_a.parameters())
    train(model_a, X, y, opt, 20)

    def center_then_half(g):  # grad transforms run in spec order
        g = g * 0.5
        if g.dim() > 1:
            g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
        return g

    _reference_with(model_b, X, y, 20, center_then_half, lr=0.01)
    assert_same_params(model_a, model_b, exact=False)

    # a named chain built on the user's transform, with its own defaults
    opt = registry.optimizer("half_adam", model_c.parameters())
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["grad_scale.factor"] == 0.5
    with pytest.raises(gdzoo.SpecError, match="Invalid factor value: 0"):
        registry.optimizer("adam+grad_scale:factor=0", model_c.parameters())


def test_stateful_user_transform_state_and_resume(registry, tmp_path):
    spec = "sgd:lr=0.05,momentum=0.9+grad_ema:beta=0.7+clip_norm:max_norm=0.5"
    full, X, y = make_problem()
    half, ref = copy.deepcopy(full), copy.deepcopy(full)
    opt_full = registry.optimizer(spec, full.parameters())
    train(full, X, y, opt_full, 20)
    st = opt_full.state[full[0].weight]
    assert set(st) == {"momentum_buffer", "grad_ema"}
    assert st["grad_ema"]["count"].item() == 20

    # reference: EMA of the raw gradient, then clip, then torch SGD
    emas = {p: torch.zeros_like(p) for p in ref.parameters()}
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, foreach=False)
    for t in range(20):
        opt_ref.zero_grad()
        loss_fn(ref, X, y, t).backward()
        for p in ref.parameters():
            emas[p].mul_(0.7).add_(p.grad, alpha=0.3)
            p.grad = emas[p].clone()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5, foreach=False)
        opt_ref.step()
    assert_same_params(full, ref, exact=False)

    opt = registry.optimizer(spec, half.parameters())
    train(half, X, y, opt, 10)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    opt = registry.optimizer(spec, half.parameters())
    opt.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert opt.state[half[0].weight]["grad_ema"]["count"].item() == 10
    train(half, X, y, opt, 10, start=10)
    assert_same_params(half, full)


def test_chain_rejects_bad_structure():
    comp = gdzoo.get("optimizer", "adam")
    adam = comp.obj()
    keys = tuple((h.name, h.name) for h in comp.hyperparameters)
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="exactly one optimizer"):
        gdzoo.Chain(p, [Link(GradScale(), (("factor", "grad_scale.factor"),))], {"grad_scale.factor": 0.5})

    class Weird(GradScale):
        name = "weird"
        stage = "sideways"

    with pytest.raises(ValueError, match="stages are"):
        gdzoo.Chain(p, [Link(adam, keys), Link(Weird(), ())], dict(comp.defaults))
