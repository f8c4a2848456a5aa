"""Per-token log-probabilities through the LM head, without the [BT, V] logits.

For each token n with final hidden state ``h_n`` (a row of ``hidden``), LM head
``W: [D, V]``, target id ``t_n`` and temperature ``tau``:

```
z_n     = (h_n / tau) @ W                    # logits, [V]
lse_n   = log sum_v exp(z_nv)                # log Z
logp_n  = z_n[t_n] - lse_n                   # log softmax, gathered
H_n     = lse_n - sum_v softmax(z_n)_v z_nv  # entropy = log Z - E_p[z]
```

The ``[BT, V]`` logits of a long batch and a large vocabulary (16k tokens x 152k
Qwen2.5 ids = 10 GB in float32) are the usual out-of-memory point of RL
fine-tuning. The ``xla`` and ``pallas`` implementations block over the
vocabulary with an online logsumexp (Milakov & Gimelshein, 2018, "Online
normalizer calculation for softmax", arXiv 1805.02867) and recompute each block
of logits in the backward pass, so only ``[BT]`` statistics are saved.

Shape letters: ``BT`` flattened tokens (every leading axis of ``hidden``, e.g. B rows x T
positions), ``D`` model width, ``V`` vocabulary; ``tau`` is the temperature.

Implementations (``impl``):
  * ``"reference"``: the plain formula in float32 (for tests).
  * ``"xla"``: blockwise over the vocabulary in plain JAX with a ``custom_vjp``
    (``_logprobs_xla``); the default off TPU.
  * ``"pallas"``: a Mosaic TPU kernel over token x vocabulary blocks
    (``_logprobs_pallas``); the default on TPU, interpret mode elsewhere.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from giftjax.kernels import _dispatch, _logprobs_vjp

__all__ = ["check_logprobs_inputs", "token_logprobs", "token_logprobs_reference"]


def check_logprobs_inputs(
    hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, temperature: float
) -> None:
    """Trace-time checks shared by every implementation (messages name the argument)."""
    if hidden.ndim < 1:
        raise ValueError(f"hidden must have shape [..., D], got a scalar of shape {hidden.shape}.")
    if lm_head.ndim != 2:
        raise ValueError(f"lm_head must have shape [D, V], got shape {tuple(lm_head.shape)}.")
    if hidden.shape[-1] != lm_head.shape[0]:
        raise ValueError(
            f"hidden [..., D] and lm_head [D, V] disagree on D: hidden has shape "
            f"{tuple(hidden.shape)}, lm_head has shape {tuple(lm_head.shape)}."
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, "
            f"got {tuple(targets.shape)}."
        )
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must be integer token ids, got dtype {targets.dtype}.")
    for name, x in (("hidden", hidden), ("lm_head", lm_head)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point (bf16 or f32), got dtype {x.dtype}.")
    if hidden.dtype != lm_head.dtype:
        raise TypeError(
            f"hidden ({hidden.dtype}) and lm_head ({lm_head.dtype}) must share a dtype; "
            "cast hidden to the LM head's dtype (accumulation is float32 either way)."
        )
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise TypeError(f"temperature must be a finite Python float, got {temperature!r}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")


def token_logprobs_reference(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The plain formula: ``log_softmax(hidden / tau @ W)`` gathered, in float32.

    Materialises the ``[..., V]`` logits; for tests and small problems.
    """
    check_logprobs_inputs(hidden, lm_head, targets, temperature)
    h = hidden.astype(jnp.float32) / temperature  # [..., D]
    logits = h @ lm_head.astype(jnp.float32)  # [..., V]
    logz = jax.nn.logsumexp(logits, axis=-1)  # [...]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    logps = target_logit[..., 0] - logz
    if not with_entropy:
        return logps
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = logz - jnp.sum(probs * logits, axis=-1)
    return logps, entropy


def token_logprobs(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    impl: str = "auto",
    block_v: int | None = None,
    block_n: int | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Log-probability of each target token under ``softmax(hidden / tau @ lm_head)``.

    ``logp[...] = z[..., t] - logsumexp(z)`` with ``z = (hidden / tau) @ lm_head``,
    and optionally the entropy ``H = logsumexp(z) - sum_v softmax(z)_v z_v``, without
    materialising the ``[..., V]`` logits (except with ``impl="reference"``).

    Args:
      hidden: ``[..., D]`` final hidden states, bf16 or f32.
      lm_head: ``[D, V]`` output projection, same dtype as ``hidden``.
      targets: ``[...]`` integer token ids in ``[0, V)``.
      temperature: ``tau > 0``, a static Python float; logits are ``hidden / tau @ W``.
      with_entropy: also return the per-token entropy of the tempered softmax.
      impl: ``"auto"`` (pallas on TPU, xla elsewhere), ``"pallas"``, ``"xla"``
        or ``"reference"``.
      block_v: vocabulary block (columns of ``lm_head`` per step); ``None`` picks
        one from the problem size. A multiple of 128 for ``"pallas"``.
      block_n: token block for ``"pallas"`` (a multiple of 8); ignored by ``"xla"``.

    Returns:
      ``logps [...]`` float32, or ``(logps, entropy)`` when ``with_entropy``.
      Gradients flow to ``hidden`` and ``lm_head`` (and through the entropy) by a
      ``custom_vjp`` that recomputes the logits block by block.
    """
    check_logprobs_inputs(hidden, lm_head, targets, temperature)
    impl = _dispatch.resolve_impl(impl, available=_IMPLS, kernel="token_logprobs")
    if impl == "reference":
        return token_logprobs_reference(
            hidden, lm_head, targets, temperature=temperature, with_entropy=with_entropy
        )
    batch_shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])  # [BT, D]
    t = targets.reshape(-1).astype(jnp.int32)  # [BT]
    cfg = _logprobs_vjp.make_config(
        impl,
        num_tokens=h.shape[0],
        dim=h.shape[1],
        vocab=lm_head.shape[1],
        itemsize=jnp.dtype(h.dtype).itemsize,
        temperature=temperature,
        with_entropy=with_entropy,
        block_n=block_n,
        block_v=block_v,
    )
    out = _logprobs_vjp.fused_logprobs(cfg, h, lm_head, t)
    if with_entropy:
        return out[0].reshape(batch_shape), out[1].reshape(batch_shape)
    return out.reshape(batch_shape)


# Names resolve_impl accepts; "auto" picks "pallas" on TPU and "xla" elsewhere.
_IMPLS = dict.fromkeys(("reference", "xla", "pallas"))
