"""A pool of worker threads that can be abandoned.

A thread cannot be killed, so a call that runs past its time limit is left running on its
(daemon) thread, which exits once the call returns; its result is ignored, and a fresh thread
takes its place in the pool so later calls keep the full parallelism. A call that never returns
keeps its thread (and whatever CPU it burns) until the process exits: use the process executor
for rewards that may spin.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Mapping

from giftjax.rewards.call import Call, Outcome, call_reward
from giftjax.rewards.registry import RewardFn


def _thread_main(
    worker: int,
    fns: Mapping[str, RewardFn],
    inbox: queue.SimpleQueue,
    results: queue.SimpleQueue,
) -> None:
    """Runs calls from ``inbox`` until it receives None; posts ``(worker, task_id, outcome)``."""
    while True:
        call = inbox.get()
        if call is None:
            return
        results.put((worker, call.task_id, call_reward(fns[call.reward], call)))


class ThreadPool:
    """``size`` worker threads; each runs one call at a time, sent to it by `submit`.

    Args:
      fns: registered name -> function, for every name a call may use.
      size: number of worker threads (the parallelism).
    """

    def __init__(self, fns: Mapping[str, RewardFn], size: int):
        self._fns = dict(fns)
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._inboxes: dict[int, queue.SimpleQueue] = {}  # live workers only
        self._busy: set[int] = set()
        self._ids = itertools.count()
        for _ in range(size):
            self._start_worker()

    def _start_worker(self) -> None:
        worker = next(self._ids)
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(
            target=_thread_main,
            args=(worker, self._fns, inbox, self._results),
            name=f"giftjax-reward-{worker}",
            daemon=True,
        )
        thread.start()
        self._inboxes[worker] = inbox

    def idle_workers(self) -> list[int]:
        """Returns the ids of live workers with no call in progress."""
        return [w for w in self._inboxes if w not in self._busy]

    def submit(self, worker: int, call: Call) -> None:
        """Starts ``call`` on the idle ``worker``."""
        self._busy.add(worker)
        self._inboxes[worker].put(call)

    def wait(self, timeout: float) -> list[tuple[int, Outcome]]:
        """Waits up to ``timeout`` seconds for results; returns ``(task_id, outcome)`` pairs.

        Results of abandoned workers are dropped.
        """
        finished = []
        try:
            item = self._results.get(timeout=max(timeout, 0.0))
            while True:
                worker, task_id, outcome = item
                if worker in self._inboxes:
                    self._busy.discard(worker)
                    finished.append((task_id, outcome))
                item = self._results.get_nowait()
        except queue.Empty:
            pass
        return finished

    def replace(self, worker: int) -> None:
        """Abandons ``worker`` (it exits when its call returns) and starts a fresh one."""
        self._inboxes.pop(worker).put(None)
        self._busy.discard(worker)
        self._start_worker()

    def close(self) -> None:
        """Asks every live worker to exit; abandoned calls are left to finish on their own."""
        for inbox in self._inboxes.values():
            inbox.put(None)
        self._inboxes.clear()
        self._busy.clear()
