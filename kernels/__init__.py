"""giftjax.kernels: fused kernels with pallas, xla and reference implementations.

Installed as ``giftjax.kernels`` (setup.py maps this folder). Imports only jax.
"""

from giftjax.kernels.group_norm import group_normalize, group_normalize_reference
from giftjax.kernels.sharded import token_logprobs_sharded
from giftjax.kernels.token_logprobs import token_logprobs, token_logprobs_reference

__all__ = [
    "group_normalize",
    "group_normalize_reference",
    "token_logprobs",
    "token_logprobs_reference",
    "token_logprobs_sharded",
]
