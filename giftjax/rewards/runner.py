"""RewardRunner: weighted reward functions on a batch, each call sandboxed per row."""

from __future__ import annotations

import itertools
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from giftjax.rewards import registry
from giftjax.rewards.call import Call
from giftjax.rewards.error_log import append_records, error_record
from giftjax.rewards.pool import run_calls
from giftjax.rewards.processes import START_METHODS, ProcessPool
from giftjax.rewards.threads import ThreadPool

EXECUTORS = ("thread", "process")
_RESERVED_COLUMNS = ("prompts", "completions")


class RewardResult(NamedTuple):
    """Rewards of one batch of B completions."""

    total: np.ndarray  # [B] float32: sum_name weight[name] * per_fn[name]
    per_fn: dict[str, np.ndarray]  # name -> [B] float32 (0 where that call failed)
    errors: int  # failed calls in this batch (raised / timed out / non-finite / bad output)


class RewardRunner:
    """Scores completions with a weighted sum of registered reward functions.

    ``total_i = sum_n w_n * r_n(prompt_i, completion_i, columns_i)``, where each ``r_n`` is
    called once per row (lists of length 1), so a failure costs only that row. Calls run in
    parallel on ``workers`` workers, each under ``time_limit`` seconds. A call that raises, runs
    late, returns other than one value, a non-number or a non-finite number scores 0, is
    counted in ``errors`` and, if ``error_log`` is set, appended to it as one JSON line; the
    batch always completes, in at most about ``ceil(B * len(weights) / workers) * time_limit``.

    Executors:
      - ``"thread"``: calls run on threads of this process. A late call cannot be killed: it is
        abandoned (its daemon thread runs on, its result ignored) and a fresh thread replaces it.
      - ``"process"``: calls run in a persistent pool of worker processes (started with
        "forkserver" or "spawn", never "fork"); a late worker is killed and replaced. Workers
        look functions up by registered name, so every reward must be registered at module
        level of an importable module (the workers import it). As with any multiprocessing
        code, a script must guard its entry point with ``if __name__ == "__main__":``: the
        workers import the main module (once per worker with "spawn", once in all with
        "forkserver"), which is most of their start-up time when it imports JAX.

    Examples:

        ```
        from giftjax import rewards

        @rewards.register("has_answer")  # in an importable module, e.g. my_project/rewards.py
        def has_answer(prompts, completions, *, answer, **unused_columns):
            return [float(str(a) in c) for c, a in zip(completions, answer)]

        with rewards.RewardRunner({"has_answer": 1.0, "length": 0.1}, time_limit=5.0) as run:
            result = run(["1+1="], ["2"], {"answer": ["2"]}, step=0)
        result.total  # array([0.9999], dtype=float32): 1.0 * 1.0 + 0.1 * (-1 / 1000)
        ```

    Not thread-safe: call it from one thread at a time.

    Args:
      weights: registered reward name -> finite weight.
      time_limit: seconds each call may run (> 0).
      workers: number of parallel workers (>= 1).
      executor: "thread" or "process".
      error_log: path of a JSON-lines file that failed calls are appended to; None: no log.
      start_method: process start method for executor="process", "forkserver" or "spawn";
        None: forkserver where available.

    Raises:
      ValueError: on an unknown reward name (listing the known ones), a non-finite weight, or
        any other invalid argument.
      RuntimeError: if a worker process fails to start.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        time_limit: float = 10.0,
        workers: int = 4,
        executor: str = "thread",
        error_log: str | os.PathLike | None = None,
        start_method: str | None = None,
    ):
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"weights must be a non-empty mapping name -> float, got {weights!r}")
        fns = {name: registry.get(name) for name in weights}
        for name, weight in weights.items():
            if not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"weights[{name!r}] must be a finite number, got {weight!r}")
        if not isinstance(time_limit, numbers.Real) or not 0 < time_limit < math.inf:
            raise ValueError(f"time_limit must be a finite number > 0 s, got {time_limit!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
        process_start = executor == "process" and start_method in START_METHODS
        if start_method is not None and not process_start:
            raise ValueError(
                f"start_method applies to executor='process' only and must be one of "
                f"{START_METHODS}, got start_method={start_method!r} with executor={executor!r}"
            )
        self.weights = {name: float(w) for name, w in weights.items()}
        self.time_limit = float(time_limit)
        self.error_log = error_log
        self._task_ids = itertools.count()
        if executor == "thread":
            self._pool: ThreadPool | ProcessPool | None = ThreadPool(fns, workers)
        else:
            self._pool = ProcessPool(fns, workers, start_method)

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Sequence[Any]] | None = None,
        *,
        step: int = 0,
    ) -> RewardResult:
        """Scores a batch.

        Args:
          prompts: [B] prompts, one per completion (repeat a prompt for each of its G samples).
          completions: [B] decoded completions.
          columns: the data set's other fields, name -> [B] values (e.g. ``answer``).
          step: the training step, written to the error log.

        Returns:
          A [`RewardResult`][giftjax.rewards.RewardResult].

        Raises:
          ValueError: if the lengths differ, an entry is not a string, or a column is named
            ``prompts`` or ``completions``.
          RuntimeError: if the runner is closed.
        """
        if self._pool is None:
            raise RuntimeError("RewardRunner is closed")
        columns = dict(columns or {})
        batch = len(completions)
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for {batch} completions")
        for key, values in columns.items():
            if key in _RESERVED_COLUMNS:
                raise ValueError(f"column name {key!r} is reserved: rename it")
            if len(values) != batch:
                raise ValueError(f"column {key!r} has {len(values)} values for {batch} completions")
        for field, texts in (("prompts", prompts), ("completions", completions)):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"{field}[{i}] must be a str, got {type(text).__name__}")
        calls = [
            Call(
                next(self._task_ids),
                row,
                name,
                prompts[row],
                completions[row],
                {key: values[row] for key, values in columns.items()},
            )
            for row in range(batch)
            for name in self.weights
        ]
        outcomes = run_calls(self._pool, calls, self.time_limit)
        per_fn = {name: np.zeros(batch, np.float32) for name in self.weights}
        failed = []
        for call in calls:
            outcome = outcomes[call.task_id]
            per_fn[call.reward][call.row] = outcome.value
            if outcome.kind is not None:
                failed.append(error_record(step, call, outcome))
        total = np.zeros(batch, np.float64)
        for name, weight in self.weights.items():
            total += weight * per_fn[name].astype(np.float64)
        if self.error_log is not None:
            append_records(self.error_log, failed)
        return RewardResult(total.astype(np.float32), per_fn, len(failed))

    def close(self) -> None:
        """Stops the workers (abandoned threads are left to finish). Safe to call twice."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
