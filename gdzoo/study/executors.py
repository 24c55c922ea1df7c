"""Executors: where a study's units run (``serial``, a local ``process`` pool, ``ray``).

An executor takes the units (plain picklable data) and a module-level function that runs one,
and yields ``Outcome``s as units finish, in any order.  Only the driver writes the store.  A unit
whose worker dies (a killed process, a lost node) is retried once on another worker; a unit that
fails twice (its worker died twice, or it raised twice) comes back as ``failed`` with its error,
and the others go on.  Results are the same numbers whichever executor ran them: each unit is
trained by the same code from the same data, with torch's threads set per worker.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..errors import GdzooError

EXECUTORS = ("serial", "process", "ray")
ATTEMPTS = 2  # a unit is tried at most this many times


@dataclass
class Outcome:
    index: int  # the unit's position in the list given to the executor
    status: str  # done | failed
    result: Any = None
    error: str | None = None
    attempts: int = 1
    worker: str = ""


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def threads_per_worker(workers: int) -> int:
    """torch threads for each of ``workers`` processes, so that together they use the cores once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_serial(units: Sequence[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
    """In this process, one after another (a unit that raises is tried once more)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for index, unit in enumerate(units):
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = fn(unit)
            except (KeyboardInterrupt, GdzooError):
                raise  # Ctrl-C, or bad input (the same on every try): the caller decides
            except Exception as exc:  # noqa: BLE001 - a unit's failure is stored, the study goes on
                if attempt == ATTEMPTS:
                    yield Outcome(index, "failed", error=_error_text(exc), attempts=attempt, worker=worker)
                continue
            yield Outcome(index, "done", result, attempts=attempt, worker=worker)
            break


def _worker_main(conn, fn, threads: int) -> None:
    """A process pool worker: receive (index, unit), send back (index, ok, result or error)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    import torch

    torch.set_num_threads(threads)
    name = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, unit = message
        try:
            conn.send((index, True, fn(unit), name))
        except Exception as exc:  # noqa: BLE001
            conn.send((index, False, _error_text(exc) + "\n" + traceback.format_exc(limit=3), name))


class _Worker:
    def __init__(self, ctx, fn, threads):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, fn, threads), daemon=True)
        self.process.start()
        child.close()
        self.busy: int | None = None  # the index of the unit it runs

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def run_processes(units: Sequence[Any], fn: Callable[[Any], Any], workers: int) -> Iterator[Outcome]:
    """A local pool of ``workers`` spawned processes (spawn: safe with torch's threads)."""
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    threads = threads_per_worker(workers)
    pending = list(range(len(units)))[::-1]  # popped from the end: plan order
    attempts = [0] * len(units)
    pool = [_Worker(ctx, fn, threads) for _ in range(min(workers, len(units)))]
    remaining = len(units)

    def dispatch(worker: _Worker) -> None:
        if pending:
            index = pending.pop()
            attempts[index] += 1
            worker.busy = index
            worker.conn.send((index, units[index]))

    try:
        for worker in pool:
            dispatch(worker)
        while remaining:
            ready = wait([w.conn for w in pool if w.busy is not None] +
                         [w.process.sentinel for w in pool if w.busy is not None])
            for worker in list(pool):
                if worker.busy is None:
                    continue
                if worker.conn in ready or worker.conn.poll():
                    try:
                        index, ok, payload, name = worker.conn.recv()
                    except (EOFError, OSError):
                        ok = None  # it died while sending: treated as a dead worker below
                    else:
                        worker.busy = None
                        if ok or attempts[index] >= ATTEMPTS:
                            remaining -= 1
                            yield Outcome(index, "done" if ok else "failed", payload if ok else None,
                                          None if ok else payload.splitlines()[0], attempts[index], name)
                        else:
                            pending.append(index)  # raised: once more
                        dispatch(worker)
                        continue
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    index = worker.busy
                    code = worker.process.exitcode
                    pool.remove(worker)
                    worker.conn.close()
                    if attempts[index] >= ATTEMPTS:
                        remaining -= 1
                        yield Outcome(index, "failed", error=f"its worker died twice (exit code {code})",
                                      attempts=attempts[index])
                    else:
                        pending.append(index)  # retried on another worker
                    replacement = _Worker(ctx, fn, threads)
                    pool.append(replacement)
                    dispatch(replacement)
    finally:
        for worker in pool:
            if worker.busy is not None and worker.process.is_alive():
                worker.process.kill()
            worker.stop()


def run_ray(units: Sequence[Any], fn: Callable[[Any], Any], workers: int, address: str | None) -> Iterator[Outcome]:
    """On a Ray cluster (``address``, or RAY_ADDRESS) or a local Ray instance started here."""
    try:
        import ray
    except ImportError:
        raise GdzooError("the ray executor needs Ray: pip install 'gdzoo[ray]'") from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise GdzooError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    threads = threads_per_worker(workers)
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    attempts = [0] * len(units)
    in_flight: dict[Any, int] = {}
    pending = list(range(len(units)))[::-1]

    def submit() -> None:
        while pending and len(in_flight) < workers:
            index = pending.pop()
            attempts[index] += 1
            in_flight[remote.remote(fn, units[index], threads)] = index

    submit()
    try:
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                index = in_flight.pop(ref)
                try:
                    result, name = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the unit raised
                    error = _error_text(exc.cause) if getattr(exc, "cause", None) else str(exc).splitlines()[0]
                    if attempts[index] >= ATTEMPTS:
                        yield Outcome(index, "failed", error=error, attempts=attempts[index])
                    else:
                        pending.append(index)
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.RayError) as exc:  # its worker or node died
                    if attempts[index] >= ATTEMPTS:
                        yield Outcome(index, "failed", error=f"its worker died twice ({type(exc).__name__})",
                                      attempts=attempts[index])
                    else:
                        pending.append(index)
                else:
                    yield Outcome(index, "done", result, attempts=attempts[index], worker=name)
            submit()
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)


def _ray_task(fn, unit, threads):
    import torch

    torch.set_num_threads(threads)
    return fn(unit), f"{socket.gethostname()}:{os.getpid()}"


def execute_units(units: Sequence[Any], fn: Callable[[Any], Any], executor: str = "serial", workers: int | None = None,
                  address: str | None = None) -> Iterator[Outcome]:
    """Run ``fn(unit)`` for every unit on the chosen executor; outcomes as they finish."""
    if executor not in EXECUTORS:
        raise GdzooError(f"unknown executor {executor!r}; choose {', '.join(EXECUTORS)}")
    workers = workers or (os.cpu_count() or 1)
    if workers < 1:
        raise GdzooError(f"workers must be >= 1, got {workers}")
    if executor == "serial" or not units:
        return run_serial(units, fn)
    if executor == "process":
        return run_processes(units, fn, workers)
    return run_ray(units, fn, workers, address)
