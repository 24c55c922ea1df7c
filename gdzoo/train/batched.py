"""K configurations trained as one batched problem.

Configurations that share a problem, a model family, a chain and batching differ only in their
numbers (learning rate, momentum...) and seeds.  Their parameters are stacked along a leading
dimension of size K (``torch.func.stack_module_state``), the loss of all K is computed in one
vectorised pass, and the chain steps all K at once with per-configuration hyperparameters as [K]
tensors (``Chain(batch=K)``).  The vectorised pass, fastest first: a linear model with a loss
that has a closed-form gradient needs no autograd (:func:`linear_with_grad`); linear layers and
MLPs run a stacked forward with GEMMs (:func:`stacked_forward`); any other module goes through
``torch.func.vmap``.  Each configuration keeps its own stop rules: one that converges, reaches
its target or diverges is frozen at that step (its parameters are kept aside) and never disturbs
the others.  Every configuration's result equals its separate run.
"""

from __future__ import annotations

import copy
import functools
from itertools import repeat
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .loop import Budget, Loop, RunResult, Setup, _squeeze, epoch_batches, evaluate
from ..optim.ops import Scratch
from ..optim.transform import declares
from ..plugins.registry import Registry
from ..optim.spec import Hyper


def batch_key(spec: str, overrides: dict[str, Any], registry: Registry) -> tuple:
    """Trials with equal keys can share a batch: same chain, same flags, same zero/non-zero numbers."""
    parts = []
    for name, value in sorted(overrides.items()):
        hyper = _hyper(registry, spec, name)
        if hyper is not None and hyper.kind in ("float", "floats"):
            try:
                coerced = hyper.coerce(value)
            except ValueError:
                return (spec, "unbatchable", id(value))
            numbers = coerced if isinstance(coerced, tuple) else (coerced,)
            parts.append((name, tuple(n == 0 for n in numbers)))
        else:
            parts.append((name, repr(value)))
    return (spec, tuple(parts))


@functools.lru_cache(maxsize=256)
def _hyper(registry: Registry, spec: str, name: str) -> Hyper | None:
    """The declaration of hyperparameter ``name`` (a keyword of ``registry.optimizer``) in ``spec``."""
    probe = registry.optimizer(spec, [torch.zeros(1, requires_grad=True)])
    for link in probe.links:
        for hyper_name, key in link.keys:
            if name in (key, hyper_name):
                return next(h for h in type(link.transform).hyperparameters if h.name == hyper_name)
    return None


def why_separate(spec: str, setups: Sequence[Setup], registry: Registry) -> str | None:
    """Why these configurations cannot train as one batched problem with the numbers of their
    separate runs (None: they can): every component must declare ``batched``, or be one whose
    batched form gdzoo knows (linear layers and MLPs, by the stacked forward pass)."""
    first = setups[0]
    undeclared = registry.undeclared(spec, "batched")
    if undeclared:
        return f"{', '.join(undeclared)} {'does' if len(undeclared) == 1 else 'do'} not declare batched support"
    if first.objective is not None:
        if not declares(first.problem, "batched"):
            return f"problem {first.problem_name!r} does not declare batched support"
        return None
    if not declares(first.loss_fn, "batched"):
        name = getattr(first.loss_fn, "name", "") or type(first.loss_fn).__name__
        return f"loss {name!r} does not declare batched support"
    if not all(p.requires_grad for p in first.module.parameters()):
        return "the model has frozen parameters"
    if stacked_forward(first.module) is None and not declares(first.model_component, "batched"):
        name = getattr(first.model_component, "name", "") or type(first.module).__name__
        return f"model {name!r} does not declare batched support"
    return None


def can_batch(setups: Sequence[Setup]) -> bool:
    """Batching needs in-memory data (or a function problem) and modules of one shape."""
    first = setups[0]
    if first.loader is not None:
        return False
    shapes = [tuple((n, p.shape, p.dtype) for n, p in s.module.named_parameters()) for s in setups]
    return all(shape == shapes[0] for shape in shapes)


class _Live:
    """The configurations still training: their stacked parameters, optimizer and generators.

    When enough configurations have stopped, :meth:`compact` drops them, so that finished (or
    diverged, or underflowing) configurations cost nothing more.
    """

    def __init__(self, spec, setups, seeds, overrides, registry):
        self.spec, self.overrides, self.registry = spec, overrides, registry
        self.ids = list(range(len(setups)))
        self.params, self.buffers = stack_module_state([s.module for s in setups])
        self.names = list(self.params)
        self.gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.opt = self._optimizer()

    @property
    def trainable(self) -> list[torch.Tensor]:
        return [self.params[n] for n in self.names]

    def _optimizer(self):
        configs = [self.overrides[i] for i in self.ids]
        keys = sorted({k for o in configs for k in o})
        return self.registry.optimizer(self.spec, self.trainable, batch=len(self.ids),
                                       **{k: [o[k] for o in configs] for k in keys})

    def compact(self, keep: list[int]) -> None:
        """Keep only the batch positions ``keep`` (parameters, buffers, optimizer state, generators)."""
        index = torch.tensor(keep)
        old_params = self.trainable
        self.params = {n: p.detach()[index].clone().requires_grad_(p.requires_grad) for n, p in self.params.items()}
        self.buffers = {n: b[index].clone() for n, b in self.buffers.items()}
        self.ids = [self.ids[i] for i in keep]
        self.gens = [self.gens[i] for i in keep]
        width = len(old_params[0]) if old_params else 0
        old_state = self.opt.state
        self.opt = self._optimizer()
        for old, new in zip(old_params, self.trainable):
            if old in old_state:
                self.opt.state[new] = _take(old_state[old], index, width)


def _take(state: Any, index: torch.Tensor, width: int) -> Any:
    """Optimizer state restricted to some configurations: per-configuration tensors are indexed."""
    if isinstance(state, dict):
        return {k: _take(v, index, width) for k, v in state.items()}
    if isinstance(state, torch.Tensor) and state.dim() > 0 and state.shape[0] == width:
        return state[index].clone()
    return state.clone() if isinstance(state, torch.Tensor) else state


class StackedRunner:
    """K configurations as one batched problem, for :class:`gdzoo.train.loop.Loop`: the stacked
    parameters and optimizer (:class:`_Live`), the vectorised losses and gradients, each
    configuration's own data order, and the exact per-configuration evaluations."""

    def __init__(self, spec: str, setups: Sequence[Setup], seeds: Sequence[int],
                 overrides: Sequence[dict[str, Any]], budget: Budget, registry: Registry):
        self.setups, self.budget = setups, budget
        first = self.first = setups[0]
        self.live = live = _Live(spec, setups, seeds, overrides, registry)
        self.full_batch = first.data is None or budget.batch_size is None or budget.batch_size >= len(first.data)
        self.batches_per_epoch = 1 if self.full_batch else -(-len(first.data) // budget.batch_size)
        self.shared = self.full_batch or len(set(seeds)) == 1
        self.frozen: dict[int, list[torch.Tensor]] = {}
        self.closed = None  # the losses with their gradients in closed form, without autograd, where possible
        if first.objective is not None:
            objective = first.objective
            forward = vmap(lambda x: objective(x))
            self.loss_of = lambda batch: forward(live.params["x"])  # noqa: E731
        else:
            loss_fn = first.loss_fn
            stacked = stacked_forward(first.module)
            if stacked is not None and hasattr(loss_fn, "batched"):
                self.loss_of = lambda batch: loss_fn.batched(_squeeze_k(stacked(live.params, batch[0])), batch[1])  # noqa: E731
                self.closed = linear_with_grad(first.module, loss_fn)
            else:
                base = copy.deepcopy(first.module).to("meta")

                def one(p, b, X, y):
                    return loss_fn(_squeeze(functional_call(base, (p, b), (X,))), y)

                forward = vmap(one, in_dims=(0, 0, None, None) if self.shared else (0, 0, 0, 0))
                self.loss_of = lambda batch: forward(live.params, live.buffers, *batch)  # noqa: E731

    @property
    def ids(self) -> list[int]:
        return self.live.ids

    def batches(self):
        return _batches(self.first, self.budget.batch_size, self.live.gens, self.shared)

    def step(self, batch) -> list[float]:
        """The losses of one batch (one per batch position), after every position's step."""
        live = self.live
        losses = None
        if self.closed is not None:
            losses = self.closed(live.params, *batch)
            if losses is None:
                self.closed = None  # this loss has no closed-form gradient: autograd from now on
        if losses is None:
            for p in live.params.values():
                p.grad = None
            losses = self.loss_of(batch)
            losses.sum().backward()
            losses = losses.detach()
        with torch.no_grad():
            live.opt.apply()
        return losses.double().tolist()

    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """Each position's full-objective loss, as its separate run computes it: its own forward
        pass (the module's, on its own parameters) and loss, bit for bit."""
        first, live = self.first, self.live
        names = live.names
        values = []
        for pos in range(len(live.ids)):
            own = {n: live.params[n][pos] for n in names}
            own.update({n: b[pos] for n, b in live.buffers.items()})
            if first.objective is not None:
                values.append(float(first.objective(own["x"])))
            else:
                pred = _squeeze(functional_call(first.module, own, (first.data.X,)))
                values.append(float(first.loss_fn(pred, first.data.y)))
        return values

    def freeze(self, pos: int) -> None:
        k = self.live.ids[pos]
        if k not in self.frozen:
            self.frozen[k] = [p[pos].detach().clone() for p in self.live.trainable]

    def compact(self, keep: list[int]) -> None:
        if keep:
            self.live.compact(keep)
        else:  # every configuration stopped (each one frozen)
            self.live.ids = []

    def flat(self, pos: int) -> list[float]:
        return torch.cat([p[pos].detach().reshape(-1) for p in self.live.trainable]).tolist()

    def state(self) -> dict[str, Any]:
        return {"parameters": {n: p.detach().clone() for n, p in self.live.params.items()},
                "optimizer": [self.live.opt.state_dict()]}

    def setup_of(self, k: int) -> Setup:
        """Configuration k's final parameters, in its module (configurations of one seed share one)."""
        with torch.no_grad():
            for param, value in zip(self.setups[k].module.parameters(), self.frozen[k]):
                param.copy_(value)
        return self.setups[k]

    def finite(self, k: int) -> bool:
        return all(bool(v.isfinite().all()) for v in self.frozen[k])

    def evaluated(self) -> list[tuple[float, dict]] | None:
        return _final_evaluation(self.setups, self.setup_of)


def train_batched(spec: str, setups: Sequence[Setup], seeds: Sequence[int],
                  overrides: Sequence[dict[str, Any]], budget: Budget, registry: Registry,
                  recorders: Sequence = ()) -> list[RunResult]:
    """Train K prepared setups as one batched problem, with the same loop as one run
    (:class:`gdzoo.train.loop.Loop`); one RunResult per configuration.

    Configurations of one seed start from the same module and may share one Setup: its module
    only holds each one's final parameters in turn, while its result is made."""
    loop = Loop(StackedRunner(spec, setups, seeds, overrides, budget, registry), budget, recorders).run()
    results = loop.results(spec, budget, seeds)
    for result in results:
        result.config["batched"] = len(setups)
    return results


def _final_evaluation(setups: Sequence[Setup], load) -> list[tuple[float, dict]] | None:
    """Every configuration's final loss and task metrics, as its separate run computes them: its
    own forward pass and loss (bit for bit), the metrics of all K at once
    (``Problem.metrics_rows``).  None without a problem's data: each run then evaluates alone.
    ``load(k)`` puts configuration k's final parameters in its module and returns its Setup."""
    first = setups[0]
    if first.problem is None or first.data is None or first.objective is not None:
        return None
    finals, predictions = zip(*(evaluate(load(k)) for k in range(len(setups))))
    if any(p is None or p.shape != predictions[0].shape for p in predictions):
        return None
    return list(zip(finals, first.problem.metrics_rows(torch.stack(predictions), first.data)))


_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity)


def _plain(module: nn.Module, types: tuple[type, ...]) -> bool:
    """Exactly one of torch's own module types (a subclass may compute anything in forward), with
    no hooks and every parameter trained: what the stacked forward pass reproduces."""
    return type(module) in types and not (module._forward_hooks or module._forward_pre_hooks
                                          or module._backward_hooks) \
        and all(p.requires_grad for p in module.parameters(recurse=False))


def stacked_forward(module: nn.Module):
    """A forward pass over stacked parameters for linear layers and MLPs, without vmap's overhead.

    Returns ``f(params, X) -> [K, n, out]`` (X shared [n, d] or per configuration [K, n, d]),
    or None for modules of other shapes (which then go through vmap).
    """
    if _plain(module, (nn.Linear,)):
        layers = [("", module)]
    elif _plain(module, (nn.Sequential,)) and all(_plain(m, (nn.Linear,) + _ELEMENTWISE) for m in module):
        layers = [(f"{name}.", m) for name, m in module.named_children()]
    else:
        return None

    def forward(params, X):
        h = X
        for prefix, layer in layers:
            if isinstance(layer, nn.Linear):
                W = params[prefix + "weight"]  # [K, out, in]
                if h.dim() == 2:  # shared input: one GEMM against all K weight matrices side by side
                    K, out, d = W.shape
                    if out == 1:  # [K, n] laid out row by row: what the loss's row-wise kernels want
                        h = torch.mm(W.reshape(K, d), h.t()).unsqueeze(-1)
                    else:
                        h = torch.mm(h, W.reshape(K * out, d).t()).view(h.shape[0], K, out).transpose(0, 1)
                else:
                    h = torch.matmul(h, W.transpose(-1, -2))
                if layer.bias is not None:
                    h = h + params[prefix + "bias"].unsqueeze(-2)
            else:
                h = layer(h)
        return h

    return forward


def linear_with_grad(module: nn.Module, loss_fn):
    """Batched training of one linear layer with one output, by hand: ``f(params, X, y)`` computes
    the K losses and sets the weight's and bias's ``.grad`` from the loss's closed-form gradient
    (``Loss.batched_with_grad``), with no autograd graph and the [K, n] temporaries in scratch
    tensors kept from step to step.  f returns None if the loss has no closed form;
    linear_with_grad returns None for other models.

    Forward and gradients are autograd's own, per configuration: ``nn.Linear``'s forward
    (``addmm(b, X, w.t())``), ``grad_weight = g.t() @ X`` and ``grad_bias = g.sum()``.  A sum
    inside a BLAS call is added in the order that the kernel picked for the call's shapes takes
    (MKL adds one configuration's g.t() @ x as a single chain of fused multiply-adds, the same
    sums for K stacked configurations in another order, which depends on K and on the CPU), so
    every product that sums is made as the separate run makes it: the same call, once per
    configuration.  One GEMM serves all K where nothing is summed (one feature and no bias:
    every output is a single product), and where the configurations share data with several
    features (full-batch purchase, one seed's mini-batches): there the stacked GEMMs sum in
    their own order, a few ulp from the separate runs (PURCHASE_TOL in the tests), for speed."""
    closed_form = getattr(loss_fn, "batched_with_grad", None)
    if not (_plain(module, (nn.Linear,)) and module.out_features == 1) or closed_form is None:
        return None
    scratch = Scratch()
    column_major: list = [None, None]  # shared data and its column-major copy: g @ X runs 2-3x faster

    def step(params, X, y):
        weight, bias = params["weight"], params.get("bias")
        K, _, d = weight.shape
        n = X.shape[-2]
        shared = X.dim() == 2
        stacked = shared and d > 1  # one GEMM for all K, in MKL's order (the documented exception)
        w = weight.detach()
        b = bias.detach().view(K, 1) if bias is not None else None
        with torch.no_grad():
            z = scratch("z", (K, n), X.dtype)  # [K, n] row by row: what the loss's row-wise kernels want
            if stacked or (d == 1 and b is None):
                if shared:
                    torch.mm(w.view(K, d), X.t(), out=z)
                else:
                    torch.bmm(X, w.transpose(1, 2), out=z.view(K, n, 1))
                if b is not None:
                    z.add_(b)
            else:  # nn.Linear's forward of each configuration: X @ w.t() (+ b), [n, d] x [d, 1]
                rows = zip(repeat(X) if shared else X.unbind(0), w.transpose(1, 2).unbind(0),
                           z.view(K, n, 1).unbind(0))
                if b is None:
                    for Xk, wk, out in rows:
                        torch.mm(Xk, wk, out=out)
                else:
                    for (Xk, wk, out), bk in zip(rows, b.unbind(0)):
                        torch.addmm(bk, Xk, wk, out=out)
            pair = closed_form(z, y, scratch)
            if pair is None:
                return None
            losses, g = pair
            if stacked:
                if column_major[0] is not X:
                    column_major[:] = [X, X.t().contiguous().t()]
                weight.grad = torch.mm(g, column_major[1]).view_as(weight)
            else:  # autograd's grad_weight of each configuration: g.t() @ X, [1, n] x [n, d]
                grad = torch.empty_like(w)
                for gk, Xk, out in zip(g.view(K, n, 1).transpose(1, 2).unbind(0),
                                       repeat(X) if shared else X.unbind(0), grad.unbind(0)):
                    torch.mm(gk, Xk, out=out)
                weight.grad = grad
            if bias is not None:
                bias.grad = _row_sums(g).view_as(bias)
        return losses

    return step


_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: from this many elements torch splits an op across threads


def _row_sums(g: torch.Tensor) -> torch.Tensor:
    """The sum of each row of g [K, n], exactly as autograd's bias gradient (``sum_to_size`` of that
    row alone) computes it: one reduction over the stack reduces every row in one thread, in a 1-D
    row's order, but a row that alone reaches torch's grain size is reduced by several threads
    (in parts, then combined), so such rows are reduced one by one."""
    if g.shape[1] < _GRAIN_SIZE or torch.get_num_threads() == 1:
        return g.sum(1)
    return torch.stack([row.sum() for row in g])


def _squeeze_k(pred: torch.Tensor) -> torch.Tensor:
    return pred.squeeze(-1) if pred.dim() == 3 and pred.shape[-1] == 1 else pred


def _batches(first: Setup, batch_size: int | None, gens: list[torch.Generator], shared: bool):
    """One epoch of batches: shared by all configurations (one seed), or each configuration's own
    shuffle stacked along dim 0 — the same order as its separate run."""
    data = first.data
    if data is None:
        return [None]
    n = len(data)
    if shared or batch_size is None or batch_size >= n:
        batches = epoch_batches(data, batch_size, gens[0])
        if batch_size is not None and batch_size < n:
            for g in gens[1:]:  # keep every generator in step, as its own run would
                torch.randperm(n, generator=g)
        return batches
    idx = torch.stack([torch.randperm(n, generator=g) for g in gens])
    X, y = data.X[idx], data.y[idx]
    return [(X[:, i:i + batch_size], y[:, i:i + batch_size]) for i in range(0, n, batch_size)]
