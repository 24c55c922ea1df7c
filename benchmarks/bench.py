"""gdzoo's performance benchmark: every target as a ratio against a reference timed in the same run.

    python benchmarks/bench.py            # full run (about a minute)
    python benchmarks/bench.py --quick    # about half a minute

Timings are medians of repeats; machines are shared and noisy (memory bandwidth here swings
2x from one moment to the next), so only the ratios mean anything, and times compared closely
are taken in turn.  Sections:
  1. big parameters: one 10M-element float32 parameter, fused chain step (torch's native fused
     kernel or torch.compile) vs the memory-traffic floor (bytes that must move at the in-place
     bandwidth probed in turn with it), vs torch's fused kernels where they exist, vs
     torch.optim's default CPU path;
  2. eager path: gdzoo without fusion vs torch.optim's default, on 1x10M, 1000x10k and 2x1;
  3. engine overhead: a `gdzoo run` step vs the tutorial-style loop with torch.optim;
  4. batched studies: 100-value learning-rate sweeps, batched vs 100 separate runs, in float64
     and float32;
  5. scaling: time against parameter count, number of tensors and configurations.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings

# Set before torch is imported: Inductor reads them once.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
# No pool of compile workers idling beside the measurements (they start with the first compile)
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tabulate import tabulate  # noqa: E402

import gdzoo  # noqa: E402
from gdzoo.train import loop as engine  # noqa: E402
from gdzoo.study import execute as study  # noqa: E402

warnings.filterwarnings("ignore")

# spec -> (torch constructor for the same configuration or None, extra bytes/element beyond grad+param,
#          torch fused kernel available)
BIG = {
    "sgd": (lambda ps, **k: torch.optim.SGD(ps, lr=1e-3, **k), 0, True),
    "momentum": (lambda ps, **k: torch.optim.SGD(ps, lr=0.01, momentum=0.9, **k), 8, True),
    "nesterov": (lambda ps, **k: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, **k), 8, True),
    "adam": (lambda ps, **k: torch.optim.Adam(ps, **k), 16, True),
    "adamw": (lambda ps, **k: torch.optim.AdamW(ps, **k), 16, True),
    "adagrad": (lambda ps, **k: torch.optim.Adagrad(ps, **k), 8, True),
    "rmsprop": (lambda ps, **k: torch.optim.RMSprop(ps, **k), 8, False),
    "adam+clip_norm+l2": (None, 16 + 4, False),  # the global norm needs one more read of the grads
    "rmsprop:centered=true,momentum=0.9": (lambda ps, **k: torch.optim.RMSprop(ps, centered=True, momentum=0.9, **k),
                                           24, False),
    "sgd:momentum=0.9+l1": (None, 8, False),
}


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved_times(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median times of the functions ``fns`` run in turn, so that all see the same machine state
    (drift between back-to-back medians is of the size of the differences measured here)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, own in zip(fns, times):
            t = time.perf_counter()
            fn()
            own.append(time.perf_counter() - t)
    return [statistics.median(own) for own in times]


def fmt(x: float, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}{unit}"


def param_with_grad(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g).requires_grad_(True)
    p.grad = torch.randn(shape, generator=g) * 1e-2
    return p


# --- 1. big parameters ------------------------------------------------------------------------
def big_parameters(n: int, repeats: int) -> list[dict]:
    a, b = torch.randn(n), torch.randn(n)

    def probe():  # in-place bandwidth: a += 1e-3 b reads a and b and writes a, 12 bytes an element
        a.add_(b, alpha=1e-3)

    rows, bandwidths = [], []
    for spec, (make_torch, extra, has_fused) in BIG.items():
        p = param_with_grad(n)
        opt = gdzoo.optimizer(spec, [p], fused=True)
        opt.step()  # state
        t = time.perf_counter()
        opt.step()  # compile
        compile_s = time.perf_counter() - t
        # The step, the probe and torch's fused step timed in turn: measured in the same moments
        steps = [opt.step, probe]
        if has_fused:
            steps.append(make_torch([param_with_grad(n)], fused=True).step)
        fused, t_probe, *others = interleaved_times(steps, repeats)
        torch_fused = others[0] if others else None
        bandwidths.append(12 * n / t_probe)
        floor = t_probe * (12 + extra) / 12  # read grad, read+write param, read+write state
        eager = median_time(gdzoo.optimizer(spec, [param_with_grad(n)]).step, repeats)
        torch_default = None
        if make_torch is not None:
            torch_default = median_time(make_torch([param_with_grad(n)], foreach=False).step, repeats)
        rows.append({
            "spec": spec,
            "floor ms": fmt(floor * 1e3),
            "fused ms": fmt(fused * 1e3),
            "fused / floor": fmt(fused / floor),
            "torch fused ms": fmt(torch_fused * 1e3 if torch_fused else None),
            "fused / torch fused": fmt(fused / torch_fused if torch_fused else None),
            "torch default ms": fmt(torch_default * 1e3 if torch_default else None),
            "torch default / fused": fmt(torch_default / fused if torch_default else None),
            "gdzoo eager ms": fmt(eager * 1e3),
            "compile s": fmt(compile_s),
        })
    print(f"\n1. Big parameters: one {n:,}-element float32 parameter; floor = bytes that must move at the "
          f"in-place bandwidth, probed in turn with each fused step and torch's ({min(bandwidths) / 1e9:.0f}-"
          f"{max(bandwidths) / 1e9:.0f} GB/s)")
    return rows


# --- 2. eager path ----------------------------------------------------------------------------
EAGER = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3, foreach=False),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, foreach=False),
    "nesterov": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, foreach=False),
    "adam": lambda ps: torch.optim.Adam(ps, foreach=False),
    "adam:amsgrad=true": lambda ps: torch.optim.Adam(ps, amsgrad=True, foreach=False),
    "adamw": lambda ps: torch.optim.AdamW(ps, foreach=False),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, foreach=False),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, foreach=False),
    "rmsprop:centered=true,momentum=0.9": lambda ps: torch.optim.RMSprop(ps, centered=True, momentum=0.9,
                                                                         foreach=False),
}


def eager_path(shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    rows = []
    for spec, make_torch in EAGER.items():
        row = {"spec": spec}
        for count, size in shapes:
            ours = gdzoo.optimizer(spec, [param_with_grad(size, i) for i in range(count)])
            theirs = make_torch([param_with_grad(size, i) for i in range(count)])
            t_ours, t_theirs = interleaved_times([ours.step, theirs.step], repeats if count * size > 100 else 50 * repeats)
            row[f"{count}x{size:,} torch/gdzoo"] = fmt(t_theirs / t_ours)
        rows.append(row)
    print("\n2. Eager path: torch.optim's default CPU step time / gdzoo's eager step time (>= 1: gdzoo no slower; "
          "the two timed alternately)")
    return rows


# --- 3. engine overhead -------------------------------------------------------------------------
def tutorial_loop(problem: str, steps: int, batch_size: int | None) -> float:
    """Seconds per step of the loop the tutorials write, with torch.optim, for the same work."""
    registry = gdzoo.registry()
    prob, _ = engine.build_problem(problem, registry)
    if prob.task == "function":
        x = prob.init().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.01)
        t = time.perf_counter()
        for _ in range(steps):
            loss = prob.objective(x)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return (time.perf_counter() - t) / steps
    data = prob.data().to(torch.float32)
    X, y = data.X, data.y
    if problem == "doubling":  # the seed's loop, literally: w * x and a hand-written MSE
        w = torch.tensor(0.0, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.01)
        x1 = X.reshape(-1)
        t = time.perf_counter()
        for _ in range(steps):
            loss = ((w * x1 - y) ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            loss.item()
        return (time.perf_counter() - t) / steps
    model = nn.Linear(X.shape[1], 1)
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    n = len(X)
    done = 0
    t = time.perf_counter()
    while done < steps:
        order = torch.randperm(n) if batch_size else None
        for i in range(0, n, batch_size or n):
            idx = order[i:i + batch_size] if batch_size else slice(None)
            loss = loss_fn(model(X[idx]).squeeze(-1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            done += 1
            if done >= steps:
                break
    return (time.perf_counter() - t) / steps


def engine_overhead(steps: int, repeats: int) -> list[dict]:
    cases = [("doubling", "sgd:lr=0.01", None), ("purchase", "sgd:lr=0.1", None),
             ("purchase", "sgd:lr=0.1", 32), ("rosenbrock", "adam:lr=0.01", None)]
    rows = []
    for problem, spec, batch in cases:
        ours = statistics.median(
            gdzoo.run(spec, problem, steps=steps, batch_size=batch).wall_time / steps for _ in range(repeats))
        theirs = statistics.median(tutorial_loop(problem, steps, batch) for _ in range(repeats))
        rows.append({"problem": problem, "spec": spec, "batch": batch or "full",
                     "gdzoo µs/step": fmt(ours * 1e6), "tutorial loop µs/step": fmt(theirs * 1e6),
                     "gdzoo / tutorial": fmt(ours / theirs)})
    print("\n3. Engine overhead: a `gdzoo run` step vs the tutorial-style torch.optim loop (<= 1: no costlier)")
    return rows


# --- 4. batched studies -------------------------------------------------------------------------
def lr_values(count: int) -> list[str]:
    return [repr(float(f"{v:.6g}")) for v in torch.logspace(-3, 0.5, count).tolist()]


def batched_studies(count: int, epochs: int, repeats: int) -> list[dict]:
    rows = []
    for dtype in ("float64", "float32"):
        for problem in ("doubling", "purchase"):
            for spec in ("sgd", "adam"):
                kwargs = dict(epochs=epochs, tol=None, dtype=dtype)

                def sweep(batched):
                    return study.sweep(spec, {"lr": lr_values(count)}, problem, batched=batched, **kwargs)

                together = sweep(True)  # warm-up, and the results compared below
                t_batched = median_time(lambda: sweep(True), repeats, warmup=0)
                apart = sweep(False)
                t_separate = median_time(lambda: sweep(False), max(1, repeats // 3), warmup=0)
                worst = 0.0
                for a, b in zip(together.runs, apart.runs):
                    for x, y in zip(a.history + [a.final_loss], b.history + [b.final_loss]):
                        if math.isfinite(y):
                            worst = max(worst, abs(x - y) / max(abs(y), 1e-300))
                rows.append({"sweep": f"{spec} lr x{count} on {problem}", "dtype": dtype, "epochs": epochs,
                             "separate s": fmt(t_separate), "batched s": fmt(t_batched),
                             "speed-up": fmt(t_separate / t_batched), "max rel. difference": f"{worst:.1e}"})
    print(f"\n4. Batched studies: {count}-value learning-rate sweeps, fixed budget, default set-up otherwise "
          f"(speed-up = separate / batched, medians; difference: every loss and final loss)")
    return rows


# --- 5. scaling -----------------------------------------------------------------------------
def scaling(sizes: list[int], tensors: list[int], configs: list[int], repeats: int) -> list[list[dict]]:
    by_size = []
    for n in sizes:
        p = param_with_grad(n)
        eager = median_time(gdzoo.optimizer("adam", [p]).step, repeats)
        fused_opt = gdzoo.optimizer("adam", [param_with_grad(n)], fused=True)
        fused_opt.step()
        fused = median_time(fused_opt.step, repeats)
        ref = median_time(torch.optim.Adam([param_with_grad(n)], foreach=False).step, repeats)
        by_size.append({"parameters": f"{n:,}", "gdzoo eager ms": fmt(eager * 1e3), "gdzoo fused ms": fmt(fused * 1e3),
                        "torch default ms": fmt(ref * 1e3), "ns/element (eager)": fmt(eager / n * 1e9)})
    by_count = []
    total = 1_000_000
    for count in tensors:
        ps = [param_with_grad(total // count, i) for i in range(count)]
        eager = median_time(gdzoo.optimizer("adam", ps).step, repeats)
        ref = median_time(torch.optim.Adam([param_with_grad(total // count, i) for i in range(count)],
                                           foreach=False).step, repeats)
        by_count.append({"tensors (1M elements in all)": count, "gdzoo eager ms": fmt(eager * 1e3),
                         "torch default ms": fmt(ref * 1e3), "µs per tensor (eager)": fmt(eager / count * 1e6)})
    by_configs = []
    for k in configs:
        t = time.perf_counter()
        study.sweep("adam", {"lr": lr_values(k)}, "doubling", epochs=100, tol=None)
        elapsed = time.perf_counter() - t
        by_configs.append({"configurations (adam, doubling, 100 epochs)": k, "batched s": fmt(elapsed),
                           "ms per configuration": fmt(elapsed / k * 1e3)})
    print("\n5. Scaling (adam)")
    return [by_size, by_count, by_configs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, sizes and epochs: about half a minute")
    parser.add_argument("--only", choices=["big", "eager", "engine", "batched", "scaling"], action="append",
                        help="run only these sections")
    parser.add_argument("--format", default="github", help="tabulate format of the tables")
    args = parser.parse_args(argv)
    quick = args.quick
    only = set(args.only or ["big", "eager", "engine", "batched", "scaling"])
    print(f"gdzoo benchmark: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, python {platform.python_version()}{' (quick)' if quick else ''}")
    gdzoo.optimizer("sgd", [torch.zeros(1, requires_grad=True)])  # one-time imports off the clock

    def show(rows):
        print(tabulate(rows, headers="keys", tablefmt=args.format))

    if "big" in only:
        show(big_parameters(10_000_000, 5 if quick else 15))
    if "eager" in only:
        shapes = [(1, 10_000_000), (1000, 10_000), (2, 1)]
        show(eager_path(shapes, 3 if quick else 11))
    if "engine" in only:
        show(engine_overhead(200 if quick else 1000, 3 if quick else 5))
    if "batched" in only:
        show(batched_studies(100, 50 if quick else 200, 1 if quick else 5))
    if "scaling" in only:
        sizes = [1_000, 100_000, 10_000_000] if quick else [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
        tables = scaling(sizes, [1, 10, 100] if quick else [1, 10, 100, 1000],
                         [1, 10, 100] if quick else [1, 10, 100, 1000], 3 if quick else 7)
        for rows in tables:
            show(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
