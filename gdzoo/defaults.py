"""The defaults that the Python API and the command line share (the README states them).

This module imports nothing heavy: the CLI reads it for ``--help`` without importing torch.
"""

# compare and sweep: the problem, the seeds per configuration and the tolerance stop
COMPARE_DEFAULTS = {"problem": "purchase", "seeds": 3, "tol": 1e-6}
SWEEP_DEFAULTS = {"problem": "doubling", "seeds": 1, "tol": 1e-6}
MAX_RUNS = 10_000  # runs a study may plan unless the caller raises the limit (max_runs=, --max-runs)
DTYPE_NAMES = ("float32", "float64")
DEFAULT_DTYPE = "float32"
BLOWUP = 1e6  # a run whose loss exceeds BLOWUP x its start has diverged
STATUSES = ("converged", "target", "budget", "stalled", "diverged", "interrupted")
SMALL_MODEL = 8  # models with at most this many parameters have them shown in progress lines
