"""Group normalisation: the z-score of each value within its contiguous group.

A batch of ``B = P * G`` values holds ``P`` groups of ``G`` consecutive members
(rows ``g*G .. g*G+G-1`` belong to group ``g``). For each group::

    mean_g = (1/G) sum_{i in g} x_i
    std_g  = sqrt( sum_{i in g} (x_i - mean_g)^2 / max(G - ddof, 1) )
    z_i    = (x_i - mean_g) / (max(std_g, std_floor) + eps)

This is the advantage of GRPO (Shao et al., 2024, arXiv 2402.03300) and both
normalisations of GIFT (arXiv 2510.23868). ``G = 1`` gives ``std = 0`` and ``z = 0``
(never NaN), whatever ``ddof``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax.kernels import _dispatch
from giftjax.kernels._group_norm_fused import GroupNormConfig, group_normalize_fused, safe_sqrt

__all__ = ["group_normalize", "group_normalize_reference"]


def check_group_input(x: jax.Array, group_size: int, ddof: int, eps: float) -> None:
    """Trace-time checks shared by every implementation."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
    if x.ndim != 1:
        raise ValueError(
            f"x must have shape [B] (one value per sequence), got shape {tuple(x.shape)}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}.")
    if x.shape[0] % group_size != 0:
        raise ValueError(
            f"The batch size B={x.shape[0]} must be a multiple of group_size={group_size} "
            "(B = prompts x samples per prompt, each group contiguous)."
        )
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}.")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}.")


def group_stats(x: jax.Array, group_size: int, ddof: int) -> tuple[jax.Array, jax.Array]:
    """Per-group mean and std of ``x: [B]``, each of shape ``[P]`` in float32."""
    xg = x.astype(jnp.float32).reshape(-1, group_size)  # [P, G]
    mean = jnp.mean(xg, axis=1)  # [P]
    sq = jnp.sum(jnp.square(xg - mean[:, None]), axis=1)  # [P]
    var = sq / max(group_size - ddof, 1)
    return mean, safe_sqrt(var)


def group_normalize_reference(
    x: jax.Array,
    *,
    group_size: int,
    eps: float = 1e-6,
    ddof: int = 1,
    stop_grad_stats: bool = True,
    std_floor: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The plain formula in float32 (see the module docstring).

    Args:
      x: ``[B]`` floating values, ``B = P * G``.
      group_size: ``G``.
      eps: added to the (floored) std in the denominator.
      ddof: 1 for the sample std (torch's default), 0 for the population std.
      stop_grad_stats: when True, no gradient flows through the mean and std.
      std_floor: the denominator uses ``max(std, std_floor)``; bounds ``|dz/dx|``
        by ``1 / (std_floor + eps)``.

    Returns:
      ``(z [B], mean [P], std [P])``, all float32; ``std`` is the raw std (before
      the floor).
    """
    check_group_input(x, group_size, ddof, eps)
    mean, std = group_stats(x, group_size, ddof)
    if stop_grad_stats:
        mean, std = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(std)
    denom = jnp.maximum(std, std_floor) + eps  # [P]
    xg = x.astype(jnp.float32).reshape(-1, group_size)  # [P, G]
    z = ((xg - mean[:, None]) / denom[:, None]).reshape(-1)  # [B]
    return z, mean, std


def group_normalize(
    x: jax.Array,
    *,
    group_size: int,
    eps: float = 1e-6,
    ddof: int = 1,
    stop_grad_stats: bool = True,
    std_floor: float = 0.0,
    impl: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Z-score ``x: [B]`` within contiguous groups of ``group_size``.

    ``z_i = (x_i - mean_g) / (max(std_g, std_floor) + eps)`` with
    ``std_g = sqrt(sum (x - mean_g)^2 / max(G - ddof, 1))``.

    Args:
      x: ``[B]`` floating values (``B = P * G``); bf16 is accumulated in float32.
      group_size: ``G``, members per group; groups are contiguous rows.
      eps: stabiliser added to the denominator.
      ddof: 1 (sample std) or 0 (population std).
      stop_grad_stats: stop the gradient through mean and std (GRPO, GIFT's code).
      std_floor: lower bound on the std used in the denominator (0 disables it).
      impl: ``"auto"`` (pallas on TPU, xla elsewhere), ``"pallas"``, ``"xla"`` or
        ``"reference"``. ``xla`` and ``pallas`` use a ``custom_vjp`` that saves only
        ``x`` and equals autodiff of the reference formula (both gradient modes).

    Returns:
      ``(z, mean, std)``: ``z [B]``, ``mean [P]``, ``std [P]``, float32; with
      ``stop_grad_stats=False`` the mean and std carry gradients too.
    """
    impl = _dispatch.resolve_impl(impl, available=_IMPLS, kernel="group_normalize")
    return _IMPLS[impl](
        x,
        group_size=group_size,
        eps=eps,
        ddof=ddof,
        stop_grad_stats=stop_grad_stats,
        std_floor=std_floor,
    )


# Groups per Pallas block: a multiple of the 128 TPU lanes.
_BLOCK_P = 1024


def _fused(impl: str):
    def run(x, *, group_size, eps, ddof, stop_grad_stats, std_floor):
        check_group_input(x, group_size, ddof, eps)
        if std_floor < 0:
            raise ValueError(f"std_floor must be >= 0, got {std_floor!r}.")
        cfg = GroupNormConfig(
            impl,
            group_size,
            float(eps),
            int(ddof),
            bool(stop_grad_stats),
            float(std_floor),
            _BLOCK_P,
        )
        return group_normalize_fused(cfg, x)

    return run


# "xla": the formula as one fused XLA pass with a custom_vjp that saves only x;
# "pallas": the same formula as a Mosaic TPU kernel (interpret mode off TPU).
_IMPLS = {
    "reference": group_normalize_reference,
    "xla": _fused("xla"),
    "pallas": _fused("pallas"),
}
