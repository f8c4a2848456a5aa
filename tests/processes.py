"""The environment of the subprocesses that the end-to-end tests start."""

from __future__ import annotations

DEVICE_COUNT = "--xla_force_host_platform_device_count"


def xla_flags(flags: str, devices: int | None = None) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the fake device count replaced by ``devices``
    (``None``: no fake devices, one CPU device as on a laptop). The suite's other flags, its
    compile settings (tests/conftest.py), stay, so a subprocess compiles as the tests do."""
    kept = [f for f in flags.split() if not f.startswith(DEVICE_COUNT)]
    if devices is not None:
        kept.append(f"{DEVICE_COUNT}={devices}")
    return " ".join(kept)
