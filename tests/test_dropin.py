"""gdzoo.optimizer(spec, params) as a drop-in torch.optim.Optimizer, where a user relies on it:
copies (deepcopy, pickle, torch.save), complex parameters, sparse gradients, torch.optim
checkpoints loaded into chains, ``fused=True`` inside a training step the user compiles, the
compiled chain's fallback, optimizers without an ``lr``, and scratch buffers that never alias.

(Param groups, lr schedulers, zero_grad, closures and step hooks: test_optimizer_api.py.)
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdzoo
from gdzoo import Hyper, Link, Transform

F32, F64 = torch.float32, torch.float64


def make_problem(dtype=F64, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 4, generator=gen, dtype=dtype)
    y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(32, 1, generator=gen, dtype=dtype)
    return model, X, y


def train(model, opt, X, y, steps, clip=None):
    """``steps`` full-batch steps; ``clip``: torch's clip_grad_norm_ before the step (torch reference)."""
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(X), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip, foreach=False)
        opt.step()


def assert_equal_params(a, b):
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def assert_equal_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for key, value in sa["state"][i].items():
            assert torch.equal(value, sb["state"][i][key]) if torch.is_tensor(value) else value == sb["state"][i][key]


def chain(update_cls, transforms=(), params=(), fused=False, **values):
    """A gdzoo.Chain built by hand, as a third-party plugin's optimizer is: ``update_cls`` (a Transform
    class or a registered optimizer's name) and grad-stage transform classes (or registered names)."""
    links, defaults = [], {}
    for i, item in enumerate((update_cls, *transforms)):
        if isinstance(item, str):
            comp = gdzoo.get("optimizer" if i == 0 else "transform", item)
            t, hypers = comp.obj(), comp.hyperparameters
        else:
            t, hypers = item(), item.hyperparameters
        keys = {h.name if i == 0 else f"{t.name}.{h.name}": h for h in hypers}
        links.append(Link(t, tuple((h.name, key) for key, h in keys.items())))
        defaults.update({key: h.default for key, h in keys.items()})
    defaults.update(values)
    return gdzoo.Chain(params, links, defaults, spec="+".join(link.transform.name for link in links), fused=fused)


@pytest.fixture
def fresh_dynamo():
    """Dynamo keeps a few compiled versions per function and process (recompile_limit): each test
    that compiles starts from none."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- 1. copies ---------------------------------------------------------------------------------

def _copies(model, opt):
    """(model, optimizer) copied together, as a user copies them: deepcopy, pickle, torch.save."""
    buffer = io.BytesIO()
    torch.save((model, opt), buffer)
    buffer.seek(0)
    return {
        "deepcopy": copy.deepcopy((model, opt)),
        "pickle": pickle.loads(pickle.dumps((model, opt))),
        "torch.save": torch.load(buffer, weights_only=False),
    }


@pytest.mark.parametrize("spec,fused,dtype,path", [
    ("adam:lr=0.01,amsgrad=true", False, F64, "eager"),
    ("adam:lr=0.01", True, F32, "native"),
    ("rmsprop:lr=0.01,centered=true,momentum=0.5", True, F32, "compiled"),
    ("adam:lr=0.01+clip_norm:max_norm=0.5+l2:weight=0.01", False, F64, "eager"),
    ("adam:lr=0.01+clip_norm:max_norm=0.5+l2:weight=0.01", True, F32, "native"),  # both folded
])
def test_copies_step_bit_for_bit_like_the_original(spec, fused, dtype, path, fresh_dynamo):
    """A deepcopied, pickled or torch.save'd optimizer is a working optimizer: it used to come back
    without the attributes the chain derives at construction (AttributeError at its first step)."""
    model, X, y = make_problem(dtype)
    opt = gdzoo.optimizer(spec, model.parameters(), fused=fused)
    assert opt.path == path
    train(model, opt, X, y, 3)
    copies = _copies(model, opt)
    train(model, opt, X, y, 3)
    for via, (model_copy, opt_copy) in copies.items():
        assert isinstance(opt_copy, gdzoo.Chain) and opt_copy.path == path, via
        assert opt_copy.param_groups[0]["params"][0] is next(model_copy.parameters()), via
        train(model_copy, opt_copy, X, y, 3)
        assert_equal_params(model_copy, model)
        assert_equal_state(opt_copy, opt)


# --- 2. complex parameters ---------------------------------------------------------------------

COMPLEX = [
    ("sgd:lr=0.02,momentum=0.9,nesterov=true,weight_decay=0.01", torch.optim.SGD,
     dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01), "momentum_buffer"),
    ("sgd:lr=0.02,momentum=0.9,dampening=0.2,maximize=true", torch.optim.SGD,
     dict(lr=0.02, momentum=0.9, dampening=0.2, maximize=True), "momentum_buffer"),
    ("adam:lr=0.01,weight_decay=0.01", torch.optim.Adam, dict(lr=0.01, weight_decay=0.01), "exp_avg"),
    ("adam:lr=0.01,amsgrad=true", torch.optim.Adam, dict(lr=0.01, amsgrad=True), "max_exp_avg_sq"),
    ("adamw:lr=0.01", torch.optim.AdamW, dict(lr=0.01), "exp_avg_sq"),
    ("adagrad:lr=0.05,lr_decay=0.01,weight_decay=0.01,initial_accumulator_value=0.1", torch.optim.Adagrad,
     dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1), "sum"),
    ("rmsprop:lr=0.01,centered=true,momentum=0.5,weight_decay=0.01", torch.optim.RMSprop,
     dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01), "grad_avg"),
]
# torch.optim views complex parameters as real for most of its optimizers (SGD computes in complex):
# the same math, rounded apart by a few ulp over the steps
COMPLEX_TOL = {torch.complex64: dict(rtol=1e-5, atol=1e-6), torch.complex128: dict(rtol=1e-12, atol=1e-13)}


def _complex_problem(dtype, rows=5, steps=10):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(rows, 3, dtype=dtype, generator=gen)
    data = [(torch.randn(3, 4, dtype=dtype, generator=gen), torch.randn(rows, 4, dtype=dtype, generator=gen))
            for _ in range(steps)]
    return w, data


def _complex_train(param, opt, data, clip=None, norm_type=2.0):
    for x, target in data:
        opt.zero_grad()
        ((param @ x - target).abs().pow(2).mean() + (param.real * param.imag).mean()).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([param], clip, norm_type=norm_type, foreach=False)
        opt.step()


# fused=True: torch's fused kernel for SGD and Adam; RMSprop's compiled step once (compiling costs seconds)
NATIVE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
DTYPE_IDS = {torch.complex64: "c64", torch.complex128: "c128"}
COMPLEX_RUNS = [
    pytest.param(*case, fused, dtype, id=f"{case[0]}-{'fused' if fused else 'eager'}-{DTYPE_IDS[dtype]}")
    for case in COMPLEX for dtype in (torch.complex64, torch.complex128) for fused in (False, True)
    if not fused or case[1] in NATIVE or (case[1] is torch.optim.RMSprop and dtype is torch.complex128)]


@pytest.mark.parametrize("spec,torch_cls,hp,key,fused,dtype", COMPLEX_RUNS)
def test_complex_parameters_match_torch(spec, torch_cls, hp, key, fused, dtype):
    """Complex parameters train as torch.optim trains them (its math on the real and imaginary
    parts), and their state holds complex tensors like torch's: Adam, Adagrad and RMSprop used to
    square complex gradients as complex numbers (g * g, not |g|^2), and ``fused=True`` SGD to hand
    them to torch's fused kernel, which has no complex version."""
    w, data = _complex_problem(dtype)
    mine, ref = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    opt = gdzoo.optimizer(spec, [mine], fused=fused)
    opt_ref = torch_cls([ref], foreach=False, **hp)
    _complex_train(mine, opt, data)
    _complex_train(ref, opt_ref, data)
    torch.testing.assert_close(mine, ref, **COMPLEX_TOL[dtype])
    state, state_ref = opt.state_dict()["state"][0], opt_ref.state_dict()["state"][0]
    assert state.keys() == state_ref.keys()
    assert state[key].dtype == dtype and state[key].shape == mine.shape
    for name, value in state_ref.items():
        torch.testing.assert_close(state[name], value, **COMPLEX_TOL[dtype])


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("rows", [5, 260], ids=["small", "scratch"])  # 260 x 3 complex: scratch buffers
def test_complex_clip_norm_is_clip_grad_norm(norm_type, rows):
    """``adam+clip_norm`` on complex parameters is torch.nn.utils.clip_grad_norm_ then torch Adam;
    the clip's 1- and inf-norms used to count real and imaginary parts, not |z|, as clip_grad_norm_ does."""
    w, data = _complex_problem(torch.complex128, rows=rows, steps=6)
    mine, ref = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    opt = gdzoo.optimizer(f"adam:lr=0.01+clip_norm:max_norm=0.01,norm_type={norm_type}", [mine])  # it clips
    _complex_train(mine, opt, data)
    _complex_train(ref, torch.optim.Adam([ref], lr=0.01, foreach=False), data, clip=0.01, norm_type=norm_type)
    torch.testing.assert_close(mine, ref, **COMPLEX_TOL[torch.complex128])


class ThirdPartyClip(Transform):
    """A user's grad transform that declares no capabilities."""

    name = "third_party_clip"
    stage = "grad"

    def update(self, params, grads, states, hp, ctx):
        for i, grad in enumerate(grads):
            grads[i] = grad.clamp(-1, 1)


class ComplexReady(ThirdPartyClip):
    name = "complex_ready"
    supports = ("complex",)


def test_transforms_that_do_not_declare_complex_refuse_complex_parameters():
    """A transform whose math is not elementwise over real and imaginary parts (l1's sign,
    clip_value's clamp) used to run on complex tensors silently, or fail at the first step."""
    param = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    for spec, name in [("sgd+l1", "l1"), ("adam+clip_value", "clip_value")]:
        with pytest.raises(ValueError, match=rf"{name} does not support complex parameters"):
            gdzoo.optimizer(spec, [param])
    with pytest.raises(ValueError, match="third_party_clip does not support complex"):
        chain("adam", [ThirdPartyClip], [param])
    opt = gdzoo.optimizer("sgd+l1", [nn.Parameter(torch.zeros(3))])  # a later complex group, too
    with pytest.raises(ValueError, match="l1 does not support complex"):
        opt.add_param_group({"params": [param]})
    assert len(opt.param_groups) == 1
    opt = chain("adam", [ComplexReady], [param], lr=0.1)  # declared: accepted, and trains
    param.grad = torch.full((3,), 2 - 3j, dtype=torch.complex64)
    opt.step()
    assert torch.allclose(param, torch.full((3,), -0.1 + 0.1j, dtype=torch.complex64))


# --- 3. sparse gradients -----------------------------------------------------------------------

class SparseNet(nn.Module):
    """An embedding with sparse gradients beside a dense layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 3, sparse=True).double()
        self.out = nn.Linear(3, 1).double()


SPARSE_BATCHES = [torch.tensor(i) for i in ([1, 2, 2, 7], [0, 1, 9], [3, 3, 4], [1, 5], [2, 8, 9], [7, 7])]


def _sparse_train(make):
    """The parameters after training with ``make(parameters)``, or the exception it raised."""
    net = SparseNet()
    try:
        opt = make(net.parameters())
        for rows in SPARSE_BATCHES:
            opt.zero_grad()
            (net.out(net.emb(rows)) ** 2).sum().backward()
            opt.step()
    except Exception as exc:  # noqa: BLE001 - compared with torch's
        return exc
    return [p.detach() for p in net.parameters()]


SPARSE = [
    ("sgd:lr=0.1", torch.optim.SGD, dict(lr=0.1)),
    ("sgd:lr=0.1,momentum=0.9", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("sgd:lr=0.1,momentum=0.9,dampening=0.3", torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("sgd:lr=0.1,momentum=0.9,nesterov=true", torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd:lr=0.1,maximize=true", torch.optim.SGD, dict(lr=0.1, maximize=True)),
    ("sgd:lr=0.1,weight_decay=0.1", torch.optim.SGD, dict(lr=0.1, weight_decay=0.1)),  # torch raises
    ("adagrad:lr=0.1", torch.optim.Adagrad, dict(lr=0.1)),
    ("adagrad:lr=0.1,lr_decay=0.1,initial_accumulator_value=0.5,maximize=true", torch.optim.Adagrad,
     dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.5, maximize=True)),
    ("adagrad:lr=0.1,weight_decay=0.1", torch.optim.Adagrad, dict(lr=0.1, weight_decay=0.1)),  # torch raises
    ("adam:lr=0.1", torch.optim.Adam, dict(lr=0.1)),  # torch raises
    ("rmsprop:lr=0.1", torch.optim.RMSprop, dict(lr=0.1)),  # torch raises
]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("spec,torch_cls,hp", SPARSE, ids=[s[0] for s in SPARSE])
def test_sparse_gradients_train_where_torch_trains_and_raise_where_it_raises(spec, torch_cls, hp, fused):
    """nn.Embedding(sparse=True): SGD and Adagrad train as torch's do (SGD used to refuse every
    sparse gradient; fused=True used to hand them to torch's fused SGD kernel, which has no sparse
    version, or to torch.compile, which failed with a warning); where torch raises, gdzoo raises
    too: SGD's weight decay (torch's own error), Adagrad's weight decay, Adam and RMSprop."""
    ref = _sparse_train(lambda params: torch_cls(params, foreach=False, **hp))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no compile failure to fall back from
        mine = _sparse_train(lambda params: gdzoo.optimizer(spec, params, fused=fused))
    if isinstance(ref, Exception):
        assert isinstance(mine, RuntimeError), mine
        assert "sparse" in str(mine), mine
        if torch_cls in (torch.optim.SGD, torch.optim.Adagrad):  # torch's own wording
            assert str(mine) == str(ref)
    else:
        assert not isinstance(mine, Exception), mine
        for a, b in zip(mine, ref):
            assert torch.equal(a, b)


@pytest.mark.parametrize("spec", ["sgd:lr=0.1+clip_norm", "adagrad+clip_norm:max_norm=0.5", "sgd+l2"])
def test_sparse_gradients_are_refused_by_transforms_that_do_not_declare_them(spec):
    """A chain whose transforms do not declare ``sparse`` (clip_norm, l2) refuses sparse gradients
    with an error naming the transform, not a failure inside its math."""
    name = spec.split("+")[1].split(":")[0]
    result = _sparse_train(lambda params: gdzoo.optimizer(spec, params))
    assert isinstance(result, RuntimeError) and f"{name} does not support sparse gradients" in str(result)


# --- 4. torch.optim checkpoints ----------------------------------------------------------------

def test_torch_adam_checkpoint_resumes_in_adam_with_clip_norm():
    """A torch.optim.Adam state_dict loaded into ``adam+clip_norm:max_norm=0.5`` keeps the chain's
    clip (it used to lose ``clip_norm.max_norm``: KeyError at the next step) and steps as torch
    Adam with clip_grad_norm_(0.5) does; a gdzoo checkpoint of that chain resumes in torch Adam."""
    model, X, y = make_problem()
    torch_opt = torch.optim.Adam(model.parameters(), lr=0.01, foreach=False)
    train(model, torch_opt, X, y, 5)
    mine = copy.deepcopy(model)
    opt = gdzoo.optimizer("adam:lr=0.01+clip_norm:max_norm=0.5", mine.parameters())
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    assert opt.param_groups[0]["clip_norm.max_norm"] == 0.5
    train(mine, opt, X, y, 5)
    train(model, torch_opt, X, y, 5, clip=0.5)
    assert_equal_params(mine, model)
    assert opt.param_groups[0]["clip_norm.max_norm"] == 0.5

    # and back: the chain's checkpoint in torch Adam, clipping by hand
    back = torch.optim.Adam(mine.parameters(), lr=0.01, foreach=False)
    back.load_state_dict(opt.state_dict())
    train(mine, back, X, y, 5, clip=0.5)
    train(model, torch_opt, X, y, 5, clip=0.5)
    assert_equal_params(mine, model)


def test_torch_sgd_checkpoint_resumes_in_momentum_with_clip_norm():
    """The same for torch.optim.SGD(momentum=0.9) and gdzoo's ``momentum+clip_norm``."""
    model, X, y = make_problem()
    torch_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=False)
    train(model, torch_opt, X, y, 5)
    mine = copy.deepcopy(model)
    opt = gdzoo.optimizer("momentum:lr=0.05+clip_norm:max_norm=0.5", mine.parameters())
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    train(mine, opt, X, y, 5)
    train(model, torch_opt, X, y, 5, clip=0.5)
    assert_equal_params(mine, model)
    assert opt.param_groups[0]["clip_norm.max_norm"] == 0.5 and opt.param_groups[0]["momentum"] == 0.9


# --- 5. fused=True inside a compiled training step ---------------------------------------------

def _training_step(model, opt, X, y, compile_it=True):
    def train_step():
        loss = F.mse_loss(model(X), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return torch.compile(train_step) if compile_it else train_step


@pytest.mark.parametrize("spec,torch_make", [
    ("adam:lr=0.01", lambda p: torch.optim.Adam(p, lr=0.01, fused=True)),
    ("momentum:lr=0.01", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, fused=True)),
    ("adam:lr=0.01+clip_norm:max_norm=0.1", None),  # the clip folded into torch's fused Adam
    ("rmsprop:lr=0.01,momentum=0.5", None),  # the chain compiled: here, traced into the user's graph
], ids=["adam", "momentum", "adam+clip_norm", "rmsprop"])
def test_fused_inside_a_compiled_training_step(spec, torch_make, fresh_dynamo):
    """``torch.compile`` of forward, backward, ``opt.step()`` and ``zero_grad()`` works with
    ``fused=True`` wherever torch's own fused Adam and SGD work, with the eager run's numbers, and
    compiles once: Adam's and SGD's fused kernels used to be traced (BackendCompilerFailed: SGD's
    has no fake kernel; Adam's state, made in the graph, cannot be handed to it), and a compiled
    chain compiled a step of its own inside the user's, again at every step."""
    from torch._dynamo.utils import counters

    model, X, y = make_problem(F32)
    runs = {}
    for name, fused in (("eager", False), ("fused", True)):
        runs[name] = copy.deepcopy(model)
        step = _training_step(runs[name], gdzoo.optimizer(spec, runs[name].parameters(), fused=fused), X, y,
                              compile_it=False)
        for _ in range(5):
            step()
    compiled = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt = gdzoo.optimizer(spec, compiled.parameters(), fused=True)
        step = _training_step(compiled, opt, X, y)
        step(), step()  # the first step makes the state, the second compiles with it
        graphs = counters["stats"]["unique_graphs"]
        step(), step(), step()
    assert counters["stats"]["unique_graphs"] == graphs, "a compiled step after the second compiled again"
    assert opt._compiled is None  # the chain compiled nothing of its own inside the user's compile
    for run in runs.values():
        for a, b in zip(compiled.parameters(), run.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if torch_make is not None:  # torch's own fused optimizer compiles the same way
        theirs = copy.deepcopy(model)
        step = _training_step(theirs, torch_make(theirs.parameters()), X, y)
        for _ in range(5):
            step()
        for a, b in zip(theirs.parameters(), compiled.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# --- 6. a chain torch.compile cannot compile ---------------------------------------------------

class SkipExploding(Transform):
    """A third-party grad transform Dynamo cannot trace under fullgraph: a Python branch on data
    (``.item()``) that zeroes a gradient with an element beyond ``limit``."""

    name = "skip_exploding"
    stage = "grad"
    hyperparameters = (Hyper("limit", 1e6, "float", "largest allowed gradient element"),)

    def update(self, params, grads, states, hp, ctx):
        for i, grad in enumerate(grads):
            if grad.abs().max().item() > hp["limit"]:
                grads[i] = torch.zeros_like(grad)


def test_a_chain_torch_compile_cannot_compile_falls_back_to_the_eager_step(fresh_dynamo):
    """A fused chain whose compile fails warns once (RuntimeWarning) and runs the eager step, with
    the eager numbers: it used to compile with graph breaks, silently, every step."""
    model, X, y = make_problem(F64)
    eager = copy.deepcopy(model)
    train(eager, chain("sgd", [SkipExploding], eager.parameters(), lr=0.05, momentum=0.9), X, y, 5)
    opt = chain("sgd", [SkipExploding], model.parameters(), fused=True, lr=0.05, momentum=0.9)
    assert opt.path == "compiled"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, X, y, 5)
    failures = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(failures) == 1 and "torch.compile failed" in str(failures[0].message), [str(w.message) for w in caught]
    assert_equal_params(model, eager)


# --- 7. an optimizer without lr ----------------------------------------------------------------

class SignDescent(Transform):
    """A user's optimizer whose step size is not called lr."""

    name = "sign_descent"
    stage = "update"
    hyperparameters = (Hyper("step_size", 0.01, "float", "how far each coordinate moves"),)

    def update(self, params, grads, states, hp, ctx):
        for param, grad in zip(params, grads):
            param.add_(torch.sign(grad), alpha=-hp["step_size"])


def test_an_optimizer_without_lr_runs_fused(fresh_dynamo):
    """``fused=True`` with an optimizer that has no ``lr`` hyperparameter used to fail (KeyError
    'lr'): the compiled step gives the eager numbers."""
    model, X, y = make_problem(F64)
    eager = copy.deepcopy(model)
    train(eager, chain(SignDescent, ["clip_norm"], eager.parameters(), step_size=0.02), X, y, 4)
    opt = chain(SignDescent, ["clip_norm"], model.parameters(), fused=True, step_size=0.02)
    assert opt.path == "compiled" and "lr" not in opt.param_groups[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled, not fallen back
        train(model, opt, X, y, 4)
    assert_equal_params(model, eager)


# --- 8. scratch buffers ------------------------------------------------------------------------

class DecaySGD(Transform):
    """A user's optimizer that uses ``ctx.buffer(param)`` as a temporary, before it reads the gradient:
    p <- p - lr * (grad + decay * p)."""

    name = "decay_sgd"
    stage = "update"
    hyperparameters = (Hyper("lr", 0.1, "float", "learning rate"), Hyper("decay", 0.5, "float", "decay"))

    def update(self, params, grads, states, hp, ctx):
        for param, grad in zip(params, grads):
            decay = torch.mul(param, hp["decay"], out=ctx.buffer(param))
            param.add_(grad, alpha=-hp["lr"])
            param.add_(decay, alpha=-hp["lr"])


class PeakNormalize(Transform):
    """A user's grad transform that uses its ``ctx.buffer(param)`` twice: grad / max|grad|."""

    name = "peak_normalize"
    stage = "grad"

    def update(self, params, grads, states, hp, ctx):
        for i, (param, grad) in enumerate(zip(params, grads)):
            peak = torch.abs(grad, out=ctx.buffer(param)).max()
            grads[i] = torch.div(grad, peak, out=ctx.buffer(param))


def _scratch_problem(n):
    gen = torch.Generator().manual_seed(0)
    param = nn.Parameter(torch.randn(n, n, dtype=F64, generator=gen))
    target = torch.randn(n, n, dtype=F64, generator=gen)
    return param, target


def _loss(param, target):
    return (param - target).pow(2).sum() + param.sum()


@pytest.mark.parametrize("n", [10, 300], ids=["allocated", "scratch"])  # 300 x 300 > SCRATCH_MIN elements
@pytest.mark.parametrize("grad_stage", ["clip_norm", "l2"])
def test_an_optimizers_scratch_buffer_is_not_its_gradient(grad_stage, n):
    """A grad-stage transform (clip_norm, l2) hands the optimizer a gradient in its own scratch
    buffer; the optimizer's ``ctx.buffer(param)`` used to be that same buffer, so that its temporary
    overwrote the gradient (on parameters above the scratch threshold only)."""
    param, target = _scratch_problem(n)
    opt = chain(DecaySGD, [grad_stage], [param], lr=0.01, decay=0.5,
                **{"clip_norm.max_norm": 1.0, "l2.weight": 0.1})
    expected = param.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        _loss(param, target).backward()
        grad = param.grad.clone()
        if grad_stage == "clip_norm":
            grad *= min(1.0, 1.0 / (grad.norm().item() + 1e-6))
        else:
            grad += 0.1 * expected
        expected = expected - 0.01 * grad - 0.01 * (0.5 * expected)
        opt.step()
        torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [10, 300], ids=["allocated", "scratch"])
def test_a_transforms_scratch_buffer_is_not_the_gradient_it_reads(n):
    """l2 then a user transform that writes its buffer before reading the gradient (twice): its
    buffer used to be l2's, the gradient it reads."""
    param, target = _scratch_problem(n)
    opt = chain("sgd", ["l2", PeakNormalize], [param], lr=0.05, **{"l2.weight": 0.1})
    expected = param.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        _loss(param, target).backward()
        grad = param.grad + 0.1 * expected
        expected = expected - 0.05 * grad / grad.abs().max()
        opt.step()
        torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)


def test_parameters_that_are_views_of_one_tensor_get_buffers_of_their_own():
    """Two parameters that are views of one tensor (rows of a stacked weight) get scratch buffers of
    their own: keyed by the tensor they view, they shared one, and the clip wrote the second's
    gradient over the first's."""
    stacked = torch.randn(2, 300, 300, dtype=F64, generator=torch.Generator().manual_seed(0))
    first, second = stacked[0].requires_grad_(), stacked[1].requires_grad_()
    expected = [first.detach().clone(), second.detach().clone()]
    opt = gdzoo.optimizer("sgd:lr=0.1+clip_norm:max_norm=0.5", [first, second])
    (2 * first.sum() + 3 * second.pow(2).sum()).backward()
    grads = [first.grad.clone(), second.grad.clone()]
    coef = min(1.0, 0.5 / (torch.cat([g.flatten() for g in grads]).norm().item() + 1e-6))
    opt.step()
    for param, before, grad in zip((first, second), expected, grads):
        torch.testing.assert_close(param.detach(), before - 0.1 * coef * grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("spec, torch_cls, hp", [
    ("sgd:lr=0.1,momentum=0.9", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("sgd:lr=0.1", torch.optim.SGD, dict(lr=0.1)),
    ("adagrad:lr=0.1", torch.optim.Adagrad, dict(lr=0.1)),
])
def test_sparse_gradients_of_complex_parameters(spec, torch_cls, hp):
    """A complex parameter with a sparse gradient runs as a hybrid sparse tensor over real pairs
    and matches torch.optim on the same gradient made dense (for SGD, torch's sparse path too;
    torch's sparse Adagrad squares complex values as complex numbers, unlike its dense path)."""
    import warnings

    warnings.simplefilter("ignore", UserWarning)  # torch: sparse invariant checks disabled
    torch.manual_seed(0)
    ours = nn.Parameter(torch.randn(4, 2, dtype=torch.complex128))
    dense = nn.Parameter(ours.detach().clone())
    opt, ref = gdzoo.optimizer(spec, [ours]), torch_cls([dense], foreach=False, **hp)
    for t in range(5):
        grad = torch.sparse_coo_tensor(torch.tensor([[t % 4, (t + 2) % 4]]), torch.randn(2, 2, dtype=torch.complex128),
                                       (4, 2))
        ours.grad, dense.grad = grad.clone(), grad.to_dense()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours, dense, rtol=1e-12, atol=1e-14)


def test_copies_of_an_optimizer_with_a_scheduler_step_themselves():
    """StepLR (and trainers) wrap opt.step on the instance: a copy must not keep the original's
    wrapper (it stepped the original), and pickle must not choke on it, as with torch.optim."""
    p = nn.Parameter(torch.ones(3))
    opt = gdzoo.optimizer("sgd:lr=0.1", [p])
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    q, copy_ = copy.deepcopy((p, opt))
    q.grad = torch.ones(3)
    copy_.step()
    assert p.tolist() == [1.0, 1.0, 1.0] and q.tolist() == pytest.approx([0.9] * 3)
    p2, again = pickle.loads(pickle.dumps((p, opt)))
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    assert "differentiable" not in again.defaults  # torch's __setstate__ adds it; not a chain's


def test_batched_studies_do_not_take_look_alike_or_partly_frozen_models():
    """A subclass of nn.Linear may compute anything; a frozen bias must stay frozen: both train
    separately (the batched stacked pass would have been silently wrong)."""
    class Doubled(nn.Linear):
        def forward(self, X):
            return 2 * super().forward(X)

    X = torch.linspace(-1, 1, 16).unsqueeze(1)
    data = (X, 3 * X.squeeze(1))
    for make in (lambda: Doubled(1, 1), lambda: nn.Linear(1, 1).requires_grad_(True)):
        net = make()
        if not isinstance(net, Doubled):
            net.bias.requires_grad_(False)
        study = gdzoo.sweep("sgd", {"lr": [0.01, 0.02]}, model=net, loss="mse", data=data, epochs=5)
        alone = [gdzoo.run("sgd", model=net, loss="mse", data=data, epochs=5, lr=lr, tol=1e-6) for lr in (0.01, 0.02)]
        assert [r.final_loss for r in study.runs] == [r.final_loss for r in alone]
        assert study.notes
