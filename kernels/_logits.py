"""The logit math shared by the ``xla`` and ``pallas`` log-prob kernels.

Shape letters: ``BT`` flattened tokens (or a block of them), ``D`` model width, ``Vb`` a
vocabulary block; ``tau`` is the temperature. Per-token values broadcast as ``[BT, 1]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax.kernels._matmul import dot_f32


def scaled_logits(h: jax.Array, w_blk: jax.Array, inv_t: float) -> jax.Array:
    """``z = (h @ W_blk) / tau``: ``[BT, D] @ [D, Vb] -> [BT, Vb]`` float32, ``inv_t = 1 / tau``."""
    z = dot_f32(h, w_blk, (1, 0))
    return z * inv_t if inv_t != 1.0 else z


def logit_grad(
    z: jax.Array,
    hit: jax.Array,
    lse: jax.Array,
    g: jax.Array,
    mean_z: jax.Array | None,
    g_ent: jax.Array | None,
    inv_t: float,
) -> jax.Array:
    """Gradient of ``g logp + g_H H`` with respect to ``h @ W_blk`` (float32 ``[BT, Vb]``).

    With ``p_v = exp(z_v - lse)``:

    ```
    dz_v = (g (1[v = t] - p_v) - g_H p_v (z_v - E_p[z])) / tau
    ```

    (the ``1 / tau`` is the chain rule through ``z = (h @ W) / tau``).

    Args:
      z: ``[BT, Vb]`` float32 scaled logits of the block.
      hit: ``[BT, Vb]`` bool, True at the target column of each token.
      lse: ``[BT, 1]`` logsumexp over the whole vocabulary.
      g: ``[BT, 1]`` cotangent of the log-probs.
      mean_z: ``[BT, 1]`` ``E_p[z]`` (with the entropy), else None.
      g_ent: ``[BT, 1]`` cotangent of the entropy, or None (no entropy term).
      inv_t: ``1 / tau``.
    """
    p = jnp.exp(z - lse)
    dz = g * (hit.astype(jnp.float32) - p)
    if g_ent is not None:
        dz = dz - g_ent * p * (z - mean_z)
    return dz * inv_t if inv_t != 1.0 else dz
