"""A persistent pool of worker processes that are killed when late.

For CPU-heavy or hang-prone verifiers (sympy, running code). Each worker is started once with
"forkserver" (or "spawn"), never "fork": forking a process that has initialised JAX copies its
threads' locks in whatever state they were in. A worker imports the modules that define the
rewards and looks each function up by its registered name, so a reward used here must be
registered at module level of an importable module (not inside a function, and not under
``if __name__ == "__main__":``). A call that runs past its time limit gets its worker killed
(SIGKILL) and replaced; a worker that dies mid-call scores that call as raised and is replaced.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

from giftjax.rewards import registry
from giftjax.rewards.call import RAISED, Call, Outcome, call_reward, failure

START_METHODS = ("forkserver", "spawn")
START_TIMEOUT_S = 120.0  # a worker that is not ready by then (imports hang) is an error
_STOP_TIMEOUT_S = 2.0  # how long a stopping worker gets to exit, and a killed one to be reaped


def default_start_method() -> str:
    """Returns "forkserver" where the platform has it, else "spawn"."""
    available = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in available else "spawn"


def _main_module_name(qualified: str) -> str:
    """Maps the name a script's functions get in a worker (``__mp_main__``) to ``__main__``."""
    prefix = "__mp_main__."
    return "__main__." + qualified[len(prefix) :] if qualified.startswith(prefix) else qualified


def _load_rewards(modules: list[str], expected: Mapping[str, str]) -> dict[str, Any]:
    """Imports ``modules`` and returns name -> function, checked against ``expected``."""
    for module in modules:
        importlib.import_module(module)
    fns = {}
    for name, qualified in expected.items():
        try:
            fn = registry.get(name)
        except ValueError:
            raise ValueError(
                f"reward {name!r} ({qualified}) is not registered in a worker process after "
                f"importing {modules}: with executor='process' a reward must be registered at "
                "module level of an importable module"
            ) from None
        found = _main_module_name(registry.qualified_name(fn))
        if found != qualified:
            raise ValueError(
                f"reward {name!r} is {qualified} in the main process but {found} in a worker"
            )
        fns[name] = fn
    return fns


def _process_main(conn: Connection, modules: list[str], expected: dict[str, str]) -> None:
    """Worker loop: load the rewards, say "ready", then run calls until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        fns = _load_rewards(modules, expected)
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            call = conn.recv()
        except EOFError:  # the main process went away
            return
        if call is None:
            return
        conn.send(("done", call.task_id, call_reward(fns[call.reward], call)))


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process of the chosen context
    conn: Connection
    started: float  # time.monotonic() at start
    state: str = "starting"  # "starting" -> "idle" <-> "busy"
    task_id: int = -1  # the call in progress when busy


class ProcessPool:
    """``size`` worker processes; each runs one call at a time, sent to it by `submit`.

    The constructor returns once every worker has imported the rewards (or raises).

    Args:
      fns: registered name -> function, for every name a call may use.
      size: number of worker processes (the parallelism).
      start_method: "forkserver" or "spawn"; None picks `default_start_method`.

    Raises:
      ValueError: on an unknown start method.
      RuntimeError: if a worker fails to start (its traceback is in the message), e.g. a
        reward that is not registered at import of its module.
    """

    def __init__(self, fns: Mapping[str, Any], size: int, start_method: str | None = None):
        start_method = start_method or default_start_method()
        if start_method not in START_METHODS:
            raise ValueError(
                f"start_method must be one of {START_METHODS} (never 'fork': the main process "
                f"may have initialised JAX), got {start_method!r}"
            )
        self._ctx = multiprocessing.get_context(start_method)
        self._expected = {n: _main_module_name(registry.qualified_name(f)) for n, f in fns.items()}
        self._modules = sorted({f.__module__ for f in fns.values()})
        self._workers: dict[int, _Worker] = {}
        self._ids = itertools.count()
        self._immediate: list[tuple[int, Outcome]] = []  # calls that failed in submit()
        try:
            for _ in range(size):
                self._start_worker()
            while any(w.state == "starting" for w in self._workers.values()):
                self.wait(1.0)
        except BaseException:
            self.close()
            raise

    def _start_worker(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_process_main,
            args=(child_conn, self._modules, self._expected),
            name="giftjax-reward-worker",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self._workers[next(self._ids)] = _Worker(process, parent_conn, time.monotonic())

    def _stop_worker(self, worker: int) -> None:
        """Kills ``worker`` (SIGKILL), reaps it and forgets it."""
        w = self._workers.pop(worker)
        w.process.kill()
        w.process.join(_STOP_TIMEOUT_S)  # bounded: a process stuck in the kernel is left behind
        w.conn.close()

    def pids(self) -> list[int]:
        """Returns the process ids of the live workers."""
        return [w.process.pid for w in self._workers.values()]

    def idle_workers(self) -> list[int]:
        """Returns the ids of started workers with no call in progress."""
        return [i for i, w in self._workers.items() if w.state == "idle"]

    def submit(self, worker: int, call: Call) -> None:
        """Starts ``call`` on the idle ``worker``; a call whose data cannot be sent fails."""
        w = self._workers[worker]
        try:
            w.conn.send(call)  # pickles fully before writing: a pickling error sends nothing
        except Exception as e:
            self._immediate.append((call.task_id, failure(RAISED, f"cannot send the call: {e!r}")))
            return
        w.state, w.task_id = "busy", call.task_id

    def wait(self, timeout: float) -> list[tuple[int, Outcome]]:
        """Waits up to ``timeout`` seconds for results; returns ``(task_id, outcome)`` pairs.

        Raises:
          RuntimeError: if a worker fails to start, or is not ready after START_TIMEOUT_S.
        """
        if self._immediate:
            finished, self._immediate = self._immediate, []
            return finished
        finished = []
        waiting = {w.conn: i for i, w in self._workers.items() if w.state != "idle"}
        ready = wait_connections(list(waiting), max(timeout, 0.0)) if waiting else []
        for conn in ready:
            worker = waiting[conn]
            w = self._workers[worker]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                w.process.join(1.0)
                code = w.process.exitcode
                if w.state == "starting":
                    raise RuntimeError(
                        f"a reward worker process exited at start (code {code})"
                    ) from None
                error = f"the worker process running the call died (exit code {code})"
                finished.append((w.task_id, failure(RAISED, error)))
                self.replace(worker)
                continue
            if message[0] == "failed":
                raise RuntimeError(f"a reward worker process failed to start:\n{message[1]}")
            if message[0] == "done":
                finished.append((message[1], message[2]))
            w.state = "idle"
        now = time.monotonic()
        for w in self._workers.values():
            if w.state == "starting" and now - w.started > START_TIMEOUT_S:
                raise RuntimeError(
                    f"a reward worker process was not ready after {START_TIMEOUT_S} s"
                )
        return finished

    def replace(self, worker: int) -> None:
        """Kills ``worker`` and starts a fresh one (ready after its imports)."""
        self._stop_worker(worker)
        self._start_worker()

    def close(self) -> None:
        """Stops every worker: asks them to exit, then kills those still running."""
        for w in self._workers.values():
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for worker in list(self._workers):
            w = self._workers[worker]
            if w.state != "busy":
                w.process.join(max(deadline - time.monotonic(), 0.0))
            self._stop_worker(worker)
