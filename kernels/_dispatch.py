"""Choosing a kernel implementation: ``impl="auto"``, explicit requests, and Mosaic vs
interpret mode for the Pallas kernels."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
from jax import lax

IMPL_NAMES = ("auto", "pallas", "xla", "reference")


def resolve_impl(impl: str, *, available: Mapping[str, object], kernel: str) -> str:
    """Map ``impl`` to a concrete implementation name.

    ``"auto"`` picks ``"pallas"`` on TPU (when the kernel has one) and ``"xla"``
    elsewhere. An explicit name is honoured or refused with the list of choices.
    """
    if impl not in IMPL_NAMES:
        raise ValueError(f"{kernel}: impl must be one of {IMPL_NAMES}, got {impl!r}.")
    if impl == "auto":
        if jax.default_backend() == "tpu" and "pallas" in available:
            return "pallas"
        return "xla"
    if impl not in available:
        raise ValueError(
            f"{kernel}: impl={impl!r} is not implemented; available: {sorted(available)}."
        )
    return impl


def on_platform(fn: Callable[..., object], interpret: bool | None, *args):
    """``fn(*args, interpret=...)``: Mosaic on TPU and interpret mode elsewhere, decided when
    lowering (``lax.platform_dependent``, so an ahead-of-time TPU compile from a CPU host gets
    the Mosaic kernels), unless ``interpret`` forces one."""
    if interpret is not None:
        return fn(*args, interpret=interpret)
    return lax.platform_dependent(
        *args,
        tpu=functools.partial(fn, interpret=False),
        default=functools.partial(fn, interpret=True),
    )
