"""A graceful stop: SIGTERM / SIGINT become a flag the training loop polls."""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["StopSignal"]


class StopSignal:
    """SIGTERM / SIGINT -> a flag the training loop polls (then saves once and exits 0).

    Use as a context manager around the loop; the previous handlers come back on exit:

    ```
    with StopSignal() as stop:
        for step in ...:
            ...
            if stop.requested:
                checkpointer.save(step, state, force=True)
                break
    ```

    A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` (press Ctrl-C twice to
    stop at once). Python handles signals only in the main thread: entered from another thread,
    it installs nothing, warns, and ``requested`` stays False.

    Args:
      signals: the signals to catch.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: int | None = None  # the first signal caught
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived since entering."""
        return self.received is not None

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "StopSignal entered outside the main thread: signal handlers can only be "
                "installed from the main thread, so SIGTERM/SIGINT will not request a graceful "
                "stop (requested stays False).",
                RuntimeWarning,
                stacklevel=2,
            )
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
