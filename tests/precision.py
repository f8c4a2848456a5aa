"""Tolerances from precision arguments, for tests that compare two DIFFERENT float32 programs.

Two programs that compute the same value but sum in different orders (sharded vs unsharded,
KV cache vs full forward, a blockwise kernel vs the plain formula, giftjax vs PyTorch) do not
give the same bits, and how they differ depends on the CPU: XLA sums float32 in one order on an
AVX2 machine and in another on an AVX-512/AMX one. A tolerance therefore comes from a bound,
never from what one machine printed:

- A float32 sum of n terms in any order is within `n * u * sum|terms|` of the exact sum, with
  `u = eps / 2 = 2**-24` the unit roundoff (Higham, "Accuracy and Stability of Numerical
  Algorithms", 2002, the gamma_n bound of section 3.1). Two programs are each within that of the
  exact value, so they differ by at most `eps * n * sum|terms|`.
- Along a chain of reductions (a decoder's matmuls, norms and softmaxes), the relative errors add
  up: the bound uses the total length of the reductions along the chain, times the magnitude of
  the result. The RMSNorm before each projection and the softmax rescale their inputs, so an
  error does not grow with the activations' size between them, only with the logits' scale.

Bit-identity stays the test for two runs of the SAME program (determinism, resume).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from giftjax import sampling

F32_EPS = float(np.finfo(np.float32).eps)  # 2**-23 ~ 1.19e-7


def reorder_atol(magnitude: float, depth: int) -> float:
    """Bound on |a - b| for two float32 programs that sum in different orders.

    `eps * depth * magnitude`: each program is within `depth * u * magnitude` of the exact value
    (u = eps / 2), for reductions of total length `depth` along the computation over terms whose
    absolute values sum to about `magnitude`.

    Args:
      magnitude: the scale of the compared values (e.g. the largest |logit|), > 0.
      depth: the total length of the reductions along the computation, >= 1.
    """
    if not magnitude > 0 or depth < 1:
        raise ValueError(f"magnitude={magnitude!r} must be > 0 and depth={depth!r} >= 1.")
    return F32_EPS * depth * float(magnitude)


def decoder_depth(config, kv_len: int) -> int:
    """Total length of the reductions along one giftjax decoder forward, input to logits.

    Per layer: RMSNorm (D), the q/k/v projections (D), q/k norm (H), the attention scores (H),
    the softmax's sum and the weighted values (kv_len each), the output projection (N*H), the
    second RMSNorm (D), gate/up (D) and down (F) projections; then the final norm (D) and the LM
    head (D). q/k norm is counted whether or not the model has it (an upper bound).

    Args:
      config: a `giftjax.models.ModelConfig`.
      kv_len: the number of key positions attended (cache slots or sequence length).
    """
    d, h, f = config.hidden_size, config.head_dim, config.intermediate_size
    per_layer = d + d + h + h + 2 * kv_len + config.num_heads * h + d + d + f
    return config.num_layers * per_layer + 2 * d


def stable_draws(logits: np.ndarray, key: jax.Array, delta: float, **sampling_kw) -> np.ndarray:
    """Which draws of `sampling.sample_logits(logits, key)` no perturbation of size delta changes.

    The sampler draws by inverse CDF over the vocabulary in index order (greedy is an argmax).
    Changing every logit by at most `delta` moves each CDF boundary the furthest when the
    entries before it move one way and those after it the other way, so the draw is stable iff
    none of the 2 (V - 1) "step" perturbations `+-delta * (1 for i <= k, -1 for i > k)` changes
    the token. A draw that fails this sits within delta of a boundary: two programs whose logits
    differ by rounding may legitimately pick different tokens there.

    Args:
      logits: [B, V] float32, the reference logits of one decode step.
      key: the PRNG key that step uses.
      delta: the largest difference between the compared programs' logits.
      **sampling_kw: temperature, top_k, top_p as given to the sampler.

    Returns:
      (tokens [B] int32 drawn from `logits`, stable [B] bool).
    """
    v = logits.shape[-1]
    steps = np.where(np.arange(v)[None, :] <= np.arange(v - 1)[:, None], 1.0, -1.0)  # [V-1, V]
    perturb = np.concatenate([steps, -steps]).astype(np.float32) * np.float32(delta)
    logits = np.asarray(logits, np.float32)
    kw = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **sampling_kw}
    tokens, moved = _draws(logits, perturb, key, **kw)  # [B], [2(V-1), B]
    tokens, moved = np.asarray(tokens), np.asarray(moved)
    return tokens, np.all(moved == tokens[None], axis=0)


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p"))
def _draws(logits, perturb, key, *, temperature, top_k, top_p):
    """The sampler's tokens for logits [B, V] and for each perturbed copy [P, B, V] (one
    compile per shape and setting, whatever the key)."""
    kw = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    draw = lambda x: sampling.sample_logits(x, key, **kw)[0]
    return draw(logits), jax.vmap(draw)(logits[None] + perturb[:, None, :])


def logits_atol(config, reference: np.ndarray, kv_len: int) -> float:
    """`reorder_atol` for a decoder's logits: the reference logits' largest |value| times the
    decoder's chain of reductions (`decoder_depth`). Use it to compare two programs' logits
    (sharded vs unsharded, cached vs full, giftjax vs transformers)."""
    return reorder_atol(float(np.abs(reference).max()), decoder_depth(config, kv_len))


def assert_same_generation(model, ids, mask, ref, out, *, key, **sampling_kw) -> int:
    """Asserts two generations agree row by row up to each row's first unstable draw.

    `ref` and `out` come from two different programs (sharded vs not, other shapes or
    settings) that draw with the same step keys `fold_in(key, n)`. Their logits differ by at
    most the reordering bound `logits_atol`, so token n must agree wherever tokens 0..n-1 did
    and draw n is stable (`stable_draws`); the log-probs of agreeing tokens differ by at most
    two logit errors (z_token and the logsumexp), divided by the temperature. The reference
    tokens must also be what `sample_logits` draws from a full forward's logits (the
    documented step: a wrong key schedule or logits fail here).

    Args:
      model: the decoder both generations used.
      ids, mask: [B, T] the left-padded prompt of each ROW (repeat prompts by num_samples).
      ref, out: (tokens, mask, logps) [B, N] each, `ref` the reference run.
      key: the PRNG key given to `generate`.
      **sampling_kw: temperature, top_k, top_p of the reference run.

    Returns:
      [B] the number of leading response tokens compared in each row: up to the first
      unstable draw and within the reference's response mask (callers check that this is
      not vacuous).
    """
    ref_tokens, ref_mask, ref_logps = (np.asarray(x) for x in ref)
    out_tokens, out_logps = np.asarray(out[0]), np.asarray(out[2])
    b, n_new = ref_tokens.shape
    t = ids.shape[1]
    tokens = np.concatenate([np.asarray(ids), ref_tokens], axis=1)
    full_mask = np.concatenate([np.asarray(mask), ref_mask], axis=1)
    logits = np.asarray(model(tokens, full_mask))[:, t - 1 : -1]  # [B, N, V]: n predicts n
    delta = logits_atol(model.config, logits, t + n_new)
    n_ok = np.full(b, n_new)  # per row: the draws before the first unstable one
    for n in range(n_new):
        drawn, stable = stable_draws(logits[:, n], jax.random.fold_in(key, n), delta, **sampling_kw)
        live = (n < n_ok) & (ref_mask[:, n] == 1)
        np.testing.assert_array_equal(
            ref_tokens[live & stable, n], drawn[live & stable], err_msg=f"reference, step {n}"
        )
        n_ok = np.where(live & ~stable, n, n_ok)
    temperature = sampling_kw.get("temperature", 1.0) or 1.0
    compared = np.minimum(n_ok, ref_mask.sum(axis=1))
    for row, n in enumerate(compared):
        np.testing.assert_array_equal(out_tokens[row, :n], ref_tokens[row, :n], f"row {row}")
        np.testing.assert_allclose(
            out_logps[row, :n],
            ref_logps[row, :n],
            atol=2 * delta / temperature,
            err_msg=f"row {row}",
        )
    return compared
