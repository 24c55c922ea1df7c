"""gdzoo optimizers inside the torch ecosystem's training clients: DDP, torch.amp's GradScaler,
swa_utils, and every lr scheduler torch ships, each against the same client driving torch.optim."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S

import gdzoo

SPECS = [("sgd:lr=0.05,momentum=0.9", torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
         ("adam:lr=0.01", torch.optim.Adam, dict(lr=0.01))]


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    X = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randn(32, generator=g, dtype=torch.float64)
    return model, X, y


def loss_of(model, X, y):
    return ((model(X).squeeze(-1) - y) ** 2).mean()


# --- every lr scheduler ---------------------------------------------------------------------------

SCHEDULERS = {
    "LambdaLR": lambda o: S.LambdaLR(o, lambda e: 0.9 ** e),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda e: 0.95),
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=4),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.2, total_iters=5),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=8, power=2.0),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=6),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=0.001, max_lr=0.05, step_size_up=3),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=12),
    "SequentialLR": lambda o: S.SequentialLR(o, [S.ConstantLR(o, factor=0.5, total_iters=3),
                                                 S.ExponentialLR(o, gamma=0.9)], milestones=[3]),
    "ChainedScheduler": lambda o: S.ChainedScheduler([S.ConstantLR(o, factor=0.5, total_iters=3),
                                                      S.ExponentialLR(o, gamma=0.9)]),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, patience=1, factor=0.5),
}


def drive(opt, model, X, y, make, steps=12):
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(model, X, y)
        loss.backward()
        opt.step()
        sched.step(loss.item() * 0 + 1.0) if isinstance(sched, S.ReduceLROnPlateau) else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        if "momentum" in opt.param_groups[0]:
            lrs.append(opt.param_groups[0]["momentum"])
    return lrs


@pytest.mark.parametrize("spec,torch_cls,hp", SPECS, ids=[s for s, _, _ in SPECS])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_lr_scheduler_drives_gdzoo_as_torch_optim(name, spec, torch_cls, hp):
    """Every scheduler torch ships (cyclic momentum and OneCycle's betas included) changes a
    gdzoo optimizer's hyperparameters exactly as torch.optim's, and the parameters follow."""
    ours, X, y = problem()
    theirs = copy.deepcopy(ours)
    ours_lrs = drive(gdzoo.optimizer(spec, ours.parameters()), ours, X, y, SCHEDULERS[name])
    theirs_lrs = drive(torch_cls(theirs.parameters(), foreach=False, **hp), theirs, X, y, SCHEDULERS[name])
    assert ours_lrs == theirs_lrs
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --- torch.amp and swa_utils ----------------------------------------------------------------------

def test_grad_scaler_and_swa_drive_gdzoo_as_torch_optim():
    """torch.amp.GradScaler unscales into p.grad and skips steps on inf; SWALR and AveragedModel
    read param_groups: the same as with torch.optim.Adam."""
    results = []
    for make in (lambda ps: gdzoo.optimizer("adam:lr=0.01", ps), lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False)):
        model, X, y = problem()
        opt = make(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        swa = torch.optim.swa_utils.AveragedModel(model)
        swa_sched = torch.optim.swa_utils.SWALR(opt, swa_lr=0.005, anneal_epochs=3)
        for step in range(10):
            opt.zero_grad()
            loss = loss_of(model, X, y)
            if step == 4:
                loss = loss * float("inf")  # a step the scaler must skip
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            swa.update_parameters(model)
            swa_sched.step()
        results.append((list(model.parameters()), list(swa.parameters()), opt.param_groups[0]["lr"], scaler.get_scale()))
    (ours, ours_swa, ours_lr, ours_scale), (theirs, theirs_swa, theirs_lr, theirs_scale) = results
    assert (ours_lr, ours_scale) == (theirs_lr, theirs_scale)
    for a, b in zip(ours + ours_swa, theirs + theirs_swa):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# --- DDP -------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
import gdzoo
sys.path.insert(0, sys.argv[4])
from test_clients import loss_of, problem

def worker(rank, world, port, spec, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model, X, y = problem()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = gdzoo.optimizer(spec, ddp.parameters())
    shard = slice(rank * 16, (rank + 1) * 16)
    for _ in range(5):
        opt.zero_grad()
        loss_of(ddp, X[shard], y[shard]).backward()  # DDP averages the two halves' gradients
        opt.step()
    torch.save([p.detach() for p in model.parameters()], f"{out}/rank{rank}.pt")
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(2, int(sys.argv[1]), sys.argv[2], sys.argv[3]), nprocs=2)
"""


@pytest.mark.slow
def test_ddp_two_processes_equal_one_full_batch_process(tmp_path):
    """Two DDP ranks on half the batch each (gradients averaged by all-reduce) end with the
    parameters of one process on the whole batch, with clip_norm global as it should be."""
    import subprocess
    import sys
    from pathlib import Path

    spec = "adam:lr=0.01+clip_norm:max_norm=0.05"
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, str(script), str(_free_port()), spec, str(tmp_path),
                    str(Path(__file__).parent)], check=True, timeout=300)
    model, X, y = problem()
    opt = gdzoo.optimizer(spec, model.parameters())
    for _ in range(5):
        opt.zero_grad()
        loss_of(model, X, y).backward()
        opt.step()
    for rank in (0, 1):
        for a, b in zip(torch.load(tmp_path / f"rank{rank}.pt"), model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)
