"""The one training loop: 1 or K configurations, its rules, its recorders."""

import math

import pytest
import torch

import gdzoo
from gdzoo.train import batched, loop


def test_one_loop_drives_a_single_run_and_a_batched_study(monkeypatch):
    """The separate and the batched path are the same Loop with different runners."""
    runners = []
    real_run = loop.Loop.run

    def spy(self):
        runners.append(type(self.runner).__name__)
        return real_run(self)

    monkeypatch.setattr(loop.Loop, "run", spy)
    gdzoo.run("sgd:lr=0.1", "doubling", epochs=3)
    gdzoo.sweep("sgd", {"lr": [0.01, 0.1]}, "doubling", epochs=3)
    gdzoo.sweep("sgd", {"lr": [0.01, 0.1]}, "doubling", epochs=3, batched=False)
    assert runners == ["SingleRunner", "StackedRunner", "SingleRunner", "SingleRunner"]


def test_best_loss_on_mini_batches_is_the_best_full_objective_never_below_the_optimum():
    """Found on 0.1: the smallest single mini-batch loss (0.14 on purchase, optimum 0.4891)."""
    optimum = gdzoo.get("problem", "purchase").obj().known_optimum().loss
    study = gdzoo.compare(["sgd:lr=0.1", "adam:lr=0.1"], "purchase", batch_size=32, epochs=5, seeds=2)
    for run in study.runs:
        assert min(run.history) < optimum  # some mini-batch is easier than the whole data
        assert run.best_loss >= optimum - 1e-6
        assert run.best_loss == min(run.evaluations + [run.final_loss])
        assert len(run.evaluations) == run.epochs + 1


def test_full_batch_best_loss_is_the_best_step_loss_or_the_final_one():
    run = gdzoo.run("sgd:lr=0.01", "doubling", epochs=10)
    assert run.evaluations == []  # full batch: the step losses are the full objective
    assert run.best_loss == min(run.history + [run.final_loss]) == run.final_loss


def test_mini_batch_stop_rules_use_the_full_objective():
    run = gdzoo.run("sgd:lr=0.05", "linear:n=40", batch_size=10, epochs=200, target=0.6)
    assert run.status == "target"
    assert run.evaluations[-1] <= 0.6 and all(v > 0.6 for v in run.evaluations[:-1])
    assert run.target_at == run.steps == 4 * run.epochs


def test_no_progress_on_mini_batches_is_stalled():
    run = gdzoo.run("sgd:lr=0", "linear:n=40", batch_size=10, epochs=50, tol=1e-9)
    assert run.status == "stalled" and run.epochs == 1


def test_batched_mini_batches_equal_separate_runs_with_evaluations():
    """Each configuration's epoch-end evaluation is its own forward pass: bit for bit its run's."""
    study = gdzoo.sweep("sgd", {"lr": [0.01, 0.05, 0.1]}, "linear:n=40", batch_size=10, epochs=6, seeds=2,
                        tol=1e-4)
    assert all(r.config.get("batched") == 6 for r in study.runs)
    for trial, run in zip(study.trials, study.runs):
        alone = gdzoo.run("sgd", "linear:n=40", seed=trial.seed, batch_size=10, epochs=6, tol=1e-4,
                          lr=float(dict(trial.overrides)["lr"]))
        assert run.evaluations == alone.evaluations and run.history == alone.history
        assert (run.status, run.steps, run.best_loss) == (alone.status, alone.steps, alone.best_loss)


def test_trajectory_recorder_records_the_path_of_a_small_model():
    problem = gdzoo.get("problem", "rosenbrock").obj()
    setup = loop.setup(problem, seed=0, dtype=torch.float64, registry=gdzoo.registry())
    start = setup.module.x.detach().tolist()
    path = loop.Trajectory()
    result = loop.train("adam:lr=0.01", setup, loop.Budget(steps=25), recorders=[path])
    assert len(path.paths[0]) == 26 and path.paths[0][0] == start
    assert path.paths[0][-1] == setup.module.x.detach().tolist() == result.params["x"]


def test_trajectory_recorder_in_a_batched_run_gives_each_configuration_its_own_path():
    registry = gdzoo.registry()
    problem = gdzoo.get("problem", "rosenbrock").obj()
    setups = [loop.setup(problem, seed=0, dtype=torch.float64, registry=registry) for _ in range(2)]
    path = loop.Trajectory()
    batched.train_batched("sgd", setups, [0, 0], [{"lr": 1e-3}, {"lr": 1e-4}], loop.Budget(steps=10), registry,
                          recorders=[path])
    alone = loop.Trajectory()
    loop.train("sgd", loop.setup(problem, seed=0, dtype=torch.float64, registry=registry), loop.Budget(steps=10),
               overrides={"lr": 1e-4}, recorders=[alone])
    assert path.paths[1] == alone.paths[0] and path.paths[0] != path.paths[1]


def test_a_large_model_records_no_trajectory():
    registry = gdzoo.registry()
    setup = loop.setup("purchase", seed=0, dtype=torch.float32, registry=registry)  # 4 parameters
    path = loop.Trajectory(max_parameters=3)
    loop.train("sgd:lr=0.1", setup, loop.Budget(steps=3), recorders=[path])
    assert path.paths == {}


def test_checkpoint_recorder_saves_a_state_that_resumes_to_the_same_parameters(tmp_path):
    registry = gdzoo.registry()
    target = tmp_path / "ckpt.pt"
    s = loop.setup("linear:n=40", seed=0, dtype=torch.float64, registry=registry)
    ckpt = loop.Checkpoint(str(target), every=2)
    loop.train("adam:lr=0.05", s, loop.Budget(epochs=5, batch_size=10), recorders=[ckpt])
    assert ckpt.saved == 3  # epochs 2 and 4, and the end
    state = torch.load(target, weights_only=False)
    assert (state["epoch"], state["step"]) == (5, 20)
    assert all(torch.equal(state["model"][0][k], v) for k, v in s.module.state_dict().items())
    opt = gdzoo.optimizer("adam:lr=0.05", s.module.parameters())
    opt.load_state_dict(state["optimizer"][0])  # a real optimizer state_dict
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_bad_checkpoint_interval_is_an_error():
    with pytest.raises(gdzoo.GdzooError, match="every must be >= 1"):
        loop.Checkpoint("x.pt", every=0)


def test_recorders_do_not_change_the_numbers(tmp_path):
    registry = gdzoo.registry()
    plain = loop.train("adam:lr=0.05", loop.setup("linear:n=40", seed=1, dtype=torch.float64, registry=registry),
                       loop.Budget(epochs=4, batch_size=8), seed=1)
    watched = loop.train("adam:lr=0.05", loop.setup("linear:n=40", seed=1, dtype=torch.float64, registry=registry),
                         loop.Budget(epochs=4, batch_size=8), seed=1,
                         recorders=[loop.Trajectory(), loop.Checkpoint(str(tmp_path / "c.pt"))])
    assert plain.history == watched.history and plain.final_loss == watched.final_loss
    assert math.isfinite(plain.final_loss)
