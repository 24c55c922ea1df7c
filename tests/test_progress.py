"""Progress on stderr: count, share, ETA; nothing for short work; one line per interval when piped."""

import io

import torch

import gdzoo
from gdzoo.show.progress import Progress, duration
from gdzoo.train import loop


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_piped_progress_writes_a_line_per_interval_with_count_share_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(100, "comparing", stream=out, after=1, every=10, clock=clock)
    p.update(5)  # within the first second: nothing
    assert out.getvalue() == ""
    clock.now = 2
    p.update(5)  # 10 of 100 in 2 s: 18 s to go
    clock.now = 5
    p.update(10)  # within 10 s of the last line: nothing
    clock.now = 12.5
    p.update(5, failed=1)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "comparing: 10/100 runs, 10%, ETA 18 s, 2 s elapsed"
    assert lines[1] == "comparing: 25/100 runs, 25%, 1 failed, ETA 38 s, 12 s elapsed"
    assert len(lines) == 3 and lines[2].startswith("comparing: 25/100 runs")


def test_short_work_shows_nothing():
    clock, out = Clock(), io.StringIO()
    p = Progress(3, "sweeping", stream=out, clock=clock)
    p.update(3)
    p.close()
    assert out.getvalue() == ""


def test_unknown_total_has_no_share_and_no_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(float("inf"), "training", unit="steps", stream=out, after=0, clock=clock)
    clock.now = 3
    p.update(1500)
    assert out.getvalue() == "training: 1,500 steps, 3 s elapsed\n"


def test_durations():
    assert [duration(s) for s in (0.4, 59, 65, 7380)] == ["0 s", "59 s", "1 min 05 s", "2 h 03 min"]


def test_a_long_single_run_reports_its_steps_against_its_planned_total():
    out = io.StringIO()
    progress = Progress(0, "training", unit="steps", stream=out, after=0, every=0)
    registry = gdzoo.registry()
    s = loop.setup("linear:n=40", seed=0, dtype=torch.float32, registry=registry)
    loop.train("sgd:lr=0.01", s, loop.Budget(epochs=3, batch_size=10), recorders=[loop.StepProgress(progress)])
    lines = out.getvalue().splitlines()
    assert progress.total == 12 and len(lines) == 13  # every step, then the closing line
    assert lines[0].startswith("training: 1/12 steps, 8%") and lines[-1].startswith("training: 12/12 steps, 100%")
