"""Many experiments at once: a local process pool (local.py) or Ray tasks (ray_backend.py).

Both take the Tasks of plan.collect() and return a plan.BatchReport; every run
goes through run_experiment (directly, or as `fastzhang run` in a child process),
so locks, completion checks and atomic files make retries and duplicates harmless.
"""

from fastzhang.batch.plan import BatchOptions, BatchReport, RunResult, Task, collect

__all__ = ["BatchOptions", "BatchReport", "RunResult", "Task", "collect"]
