"""Runs a batch of reward calls on a worker pool, each call under its own time limit."""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import Protocol

from giftjax.rewards.call import TIMEOUT, Call, Outcome, failure

_IDLE_POLL_S = 1.0  # how long to wait when no call is running (workers still starting)


class Pool(Protocol):
    """What `run_calls` needs from a pool of workers (threads or processes)."""

    def idle_workers(self) -> list[int]: ...

    def submit(self, worker: int, call: Call) -> None: ...

    def wait(self, timeout: float) -> list[tuple[int, Outcome]]: ...

    def replace(self, worker: int) -> None: ...


def run_calls(pool: Pool, calls: Sequence[Call], time_limit: float) -> dict[int, Outcome]:
    """Runs every call on ``pool``; a call still running ``time_limit`` s after it started fails.

    The late call's worker is replaced (a thread is abandoned, a process killed), so the pool
    keeps its size. With W workers and N calls the batch takes at most about
    ``ceil(N / W) * time_limit`` (plus worker start-up after a process is killed).

    Args:
      pool: the workers.
      calls: [N] calls with distinct ``task_id``.
      time_limit: seconds each call may run.

    Returns:
      task_id -> outcome, for every call.
    """
    pending = collections.deque(calls)
    running: dict[int, tuple[int, float]] = {}  # task_id -> (worker, deadline)
    outcomes: dict[int, Outcome] = {}
    while pending or running:
        for worker in pool.idle_workers():
            if not pending:
                break
            call = pending.popleft()
            running[call.task_id] = (worker, time.monotonic() + time_limit)
            pool.submit(worker, call)
        now = time.monotonic()
        timeout = min((d for _, d in running.values()), default=now + _IDLE_POLL_S) - now
        for task_id, outcome in pool.wait(timeout):
            if running.pop(task_id, None) is not None:
                outcomes[task_id] = outcome
        now = time.monotonic()
        for task_id, (worker, deadline) in list(running.items()):
            if now >= deadline:
                del running[task_id]
                outcomes[task_id] = failure(TIMEOUT, f"TimeoutError('ran past {time_limit} s')")
                pool.replace(worker)
    return outcomes
