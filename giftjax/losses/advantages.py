"""Group-relative advantages: GRPO, Dr.GRPO and RLOO baselines with optional std scaling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax import kernels
from giftjax.losses import common

Array = jax.Array

ADVANTAGE_METHODS = ("grpo", "dr_grpo", "rloo")
ADVANTAGE_SCALES = ("group", "batch", "none")

# Dr.GRPO removes the std scaling (Liu et al. 2025, Sec. 3.2).
_METHOD_PRESETS = {"grpo": {}, "dr_grpo": {"scale": "none"}, "rloo": {}}


def group_advantages(
    rewards: Array,
    *,
    group_size: int,
    method: str = "grpo",
    scale: str = "group",
    eps: float = 1e-6,
    ddof: int = 1,
) -> Array:
    """Advantages of ``B = P * G`` responses from the rewards of their group.

    With group ``g`` of ``G`` contiguous rows, ``mean_g`` its mean reward and ``std_g``
    its std (``sqrt(sum (r - mean_g)^2 / max(G - ddof, 1))``):

    ```
    grpo:     A_i = r_i - mean_g
    dr_grpo:  A_i = r_i - mean_g                     (never scaled)
    rloo:     A_i = r_i - (sum_{j in g, j != i} r_j) / (G - 1) = G/(G-1) (r_i - mean_g)
    ```

    then scaled by ``1 / (std_g + eps)`` (``scale="group"``, GRPO), ``1 / (std_B + eps)``
    with ``std_B`` the std of all rewards of the batch (``"batch"``: group mean, batch std,
    as in LitePPO), or not at all (``"none"``). ``G = 1`` gives ``A = 0``.

    Args:
      rewards: ``[B]`` float rewards, ``B = P * G``, each prompt's group contiguous.
      group_size: ``G``.
      method: ``"grpo"``, ``"dr_grpo"`` or ``"rloo"``.
      scale: ``"group"``, ``"batch"`` or ``"none"``. ``method="dr_grpo"`` implies
        ``"none"`` and refuses ``"batch"``.
      eps: added to the std.
      ddof: 1 (sample std, as torch.std) or 0.

    Returns:
      ``[B]`` float32 advantages (constants: no gradient flows to the rewards' stats).

    References:
      Shao et al., [DeepSeekMath](https://arxiv.org/abs/2402.03300), 2024 (GRPO).
      Liu et al., [Understanding R1-Zero-Like Training](https://arxiv.org/abs/2503.20783),
      2025 (Dr.GRPO). Ahmadian et al., [Back to Basics](https://arxiv.org/abs/2402.14740),
      2024 (RLOO).
    """
    common.check_choice("method", method, ADVANTAGE_METHODS)
    common.check_choice("scale", scale, ADVANTAGE_SCALES)
    common.check_float("rewards", rewards, 1, shape_doc="[B]")
    common.check_group_size(group_size, rewards.shape[0])
    scale = common.apply_preset(
        group_advantages, method, _METHOD_PRESETS, {"scale": scale}, arg="method"
    )["scale"]
    rewards = jax.lax.stop_gradient(rewards.astype(jnp.float32))
    z, mean, _ = kernels.group_normalize(rewards, group_size=group_size, eps=eps, ddof=ddof)
    loo = group_size / max(group_size - 1, 1) if method == "rloo" else 1.0  # RLOO's G/(G-1)
    if scale == "group":
        return z * loo
    centered = (rewards - jnp.repeat(mean, group_size)) * loo  # [B]
    if scale == "none":
        return centered
    _, _, batch_std = kernels.group_normalize(
        rewards, group_size=rewards.shape[0], eps=eps, ddof=ddof
    )  # batch_std: [1]
    return centered / (batch_std + eps)
