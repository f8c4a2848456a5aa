"""Choosing a kernel implementation: ``impl="auto"`` and explicit requests."""

from __future__ import annotations

from collections.abc import Mapping

import jax

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
