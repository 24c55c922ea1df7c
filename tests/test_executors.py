"""Executors: serial, a process pool and Ray give the same outcomes; dead workers and failures."""

import os
import signal

import pytest

from gdzoo.errors import GdzooError
from gdzoo.study.executors import execute_units, threads_per_worker


def square(unit):
    return {"value": unit["x"] ** 2, "pid": os.getpid()}


def die_once(unit):
    """Kills its own process the first time it sees a unit (a marker file remembers)."""
    marker = unit["marker"]
    if unit.get("die") and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return unit["x"]


def always_raises(unit):
    if unit.get("bad"):
        raise ValueError(f"unit {unit['x']} is bad")
    return unit["x"]


def always_dies(unit):
    if unit.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    return unit["x"]


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_every_unit_runs_once_with_its_result(executor):
    units = [{"x": i} for i in range(7)]
    outcomes = list(execute_units(units, square, executor, workers=2))
    assert sorted(o.index for o in outcomes) == list(range(7))
    assert all(o.status == "done" and o.result["value"] == units[o.index]["x"] ** 2 for o in outcomes)
    if executor == "process":
        assert {o.result["pid"] for o in outcomes} - {os.getpid()}  # ran elsewhere
        assert os.getpid() not in {o.result["pid"] for o in outcomes}


def test_a_killed_workers_unit_is_retried_on_another_worker(tmp_path):
    units = [{"x": i, "marker": str(tmp_path / "died"), "die": i == 2} for i in range(5)]
    outcomes = {o.index: o for o in execute_units(units, die_once, "process", workers=2)}
    assert sorted(outcomes) == list(range(5))
    assert all(o.status == "done" and o.result == i for i, o in outcomes.items())
    assert outcomes[2].attempts == 2 and all(outcomes[i].attempts == 1 for i in (0, 1, 3, 4))


def test_a_unit_whose_worker_dies_twice_is_failed_and_the_rest_finish():
    units = [{"x": i, "die": i == 1} for i in range(4)]
    outcomes = {o.index: o for o in execute_units(units, always_dies, "process", workers=2)}
    assert outcomes[1].status == "failed" and "died twice" in outcomes[1].error and outcomes[1].attempts == 2
    assert all(outcomes[i].status == "done" for i in (0, 2, 3))


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_unit_that_raises_twice_is_failed_with_its_error(executor):
    units = [{"x": i, "bad": i == 0} for i in range(3)]
    outcomes = {o.index: o for o in execute_units(units, always_raises, executor, workers=2)}
    assert outcomes[0].status == "failed" and outcomes[0].error == "ValueError: unit 0 is bad"
    assert outcomes[0].attempts == 2
    assert [outcomes[i].result for i in (1, 2)] == [1, 2]


def test_bad_executor_and_workers_are_clear_errors():
    with pytest.raises(GdzooError, match="unknown executor 'dask'; choose serial, process, ray"):
        execute_units([{}], square, "dask")
    with pytest.raises(GdzooError, match="workers must be >= 1"):
        execute_units([{}], square, "process", workers=-1)


def test_workers_share_the_cores():
    cores = os.cpu_count()
    assert threads_per_worker(1) == cores and threads_per_worker(cores * 2) == 1


@pytest.fixture(scope="module")
def local_ray():
    """A real single-node Ray instance (Ray's local_mode no longer exists)."""
    ray = pytest.importorskip("ray")
    here = os.path.dirname(os.path.abspath(__file__))  # Ray's workers import this file's functions
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def test_ray_gives_the_outcomes_of_serial(local_ray):
    units = [{"x": i} for i in range(6)]
    serial = {o.index: o.result["value"] for o in execute_units(units, square, "serial")}
    on_ray = {o.index: o for o in execute_units(units, square, "ray", workers=2)}
    assert {i: o.result["value"] for i, o in on_ray.items()} == serial
    assert all(o.status == "done" and o.worker for o in on_ray.values())


def test_ray_retries_a_killed_workers_unit_and_fails_one_that_raises_twice(local_ray, tmp_path):
    units = [{"x": i, "marker": str(tmp_path / "died"), "die": i == 1} for i in range(3)]
    outcomes = {o.index: o for o in execute_units(units, die_once, "ray", workers=2)}
    assert [outcomes[i].result for i in range(3)] == [0, 1, 2] and outcomes[1].attempts == 2
    bad = {o.index: o for o in execute_units([{"x": 0, "bad": True}, {"x": 1}], always_raises, "ray", workers=2)}
    assert bad[0].status == "failed" and "unit 0 is bad" in bad[0].error and bad[1].result == 1
