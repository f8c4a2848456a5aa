"""One matmul helper for the kernels: float32 accumulation, precision from the dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def dot_f32(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    """``a`` x ``b`` contracting axis ``contract[0]`` of ``a`` with ``contract[1]`` of ``b``.

    2-D operands, float32 result. Half-precision operands use the default precision
    (their products are exact in float32, and Mosaic refuses an fp32 contract
    precision on bf16 operands, which ``jax_default_matmul_precision="highest"``
    would otherwise request); float32 operands follow the global precision setting.
    """
    precision = lax.Precision.DEFAULT if jnp.dtype(a.dtype).itemsize < 4 else None
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)
