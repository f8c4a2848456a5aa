"""Helpers of the sampler: the one-token sampling step, and shape buckets for prompts.

The sampling step (`sample_logits`) turns next-token logits [B, V] into one token per row and
its log-probability; `giftjax.sampling.generate` calls it once per decode step. It is a pure
function of the logits and a PRNG key, so it is tested on crafted logits directly.

The bucket helpers run on the host (NumPy) before prompts become a global array: they left-pad
the prompt length and append dummy rows so that a training run meets only a few distinct shapes
and `generate` compiles once per bucket instead of once per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------
# The sampling step.
# --------------------------------------------------------------------------------------------


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    """Raises ValueError naming the argument unless the sampling settings are valid."""
    if not isinstance(temperature, int | float) or not temperature >= 0:
        raise ValueError(f"temperature={temperature!r}; expected a number >= 0 (0 is greedy).")
    if not isinstance(top_k, int | np.integer) or top_k < 0:
        raise ValueError(f"top_k={top_k!r}; expected an int >= 0 (0 disables top-k).")
    if not isinstance(top_p, int | float) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p!r}; expected a number in (0, 1] (1 disables top-p).")


def _block_size(v: int) -> int:
    """Block of the two-level sampler: the power of two nearest sqrt(V), at least 16."""
    return max(16, 1 << round(np.log2(max(v, 1)) / 2))


def _inverse_cdf(w: jax.Array, u: jax.Array) -> jax.Array:
    """Index k of each row with `c[k] - w[k] <= u * c[-1] < c[k]`, `c = cumsum(w)`.

    Args:
      w: [B, n] non-negative weights; zero entries are never chosen (their interval is empty).
      u: [B] uniforms in [0, 1).

    Returns:
      [B] int32. If rounding leaves `u * c[-1]` in no interval (probability ~1e-7), the entry of
      largest weight is returned, so a zero-weight entry is never chosen.
    """
    cdf = jnp.cumsum(w, axis=-1)  # [B, n]
    x = u[:, None] * cdf[:, -1:]  # [B, 1]
    hit = (cdf - w <= x) & (x < cdf) & (w > 0)  # [B, n]
    k = jnp.argmax(hit, axis=-1)
    return jnp.where(jnp.any(hit, axis=-1), k, jnp.argmax(w, axis=-1)).astype(jnp.int32)


def _two_level_sample(w: jax.Array, key: jax.Array) -> jax.Array:
    """Draws index i of each row with probability `w[i] / sum(w)`, two uniforms per row.

    The V entries are cut into blocks of about sqrt(V): a block is drawn with probability
    proportional to its total, then an entry within it (`P(i) = (W_b / W) (w_i / W_b)`).
    Only cumulative sums of about sqrt(V) entries are needed: a cumulative sum over the whole
    vocabulary lowers to a log-depth scan of slices that is slow on CPU (about 2 ms for
    [32, 4096]), and the Gumbel-max trick needs V random numbers per row (about 10 ms).

    Args:
      w: [B, V] non-negative weights with a positive sum per row (zeros are never drawn).
      key: a PRNG key.

    Returns:
      [B] int32 indices.
    """
    b, v = w.shape
    u = jax.random.uniform(key, (2, b), jnp.float32)
    blk = _block_size(v)
    if v <= 2 * blk:
        return _inverse_cdf(w, u[0])
    nb = -(-v // blk)
    wb = jnp.pad(w, ((0, 0), (0, nb * blk - v))).reshape(b, nb, blk)  # [B, nb, blk]
    block = _inverse_cdf(jnp.sum(wb, axis=-1), u[0])  # [B]
    inner = jnp.take_along_axis(wb, block[:, None, None], axis=1)[:, 0]  # [B, blk]
    return block * blk + _inverse_cdf(inner, u[1])


def _nucleus_threshold(w: jax.Array, top_p: float) -> jax.Array:
    """The smallest weight kept by top-p: the largest t with `sum(w[w >= t]) >= top_p * sum(w)`.

    Keeping `w >= t` keeps the smallest prefix of the sorted weights whose mass reaches top_p
    (plus any entries tied with its last one), without sorting: a binary search over the bit
    patterns of the non-negative float32 weights (ordered like the values), 31 masked sums of
    [B, V] instead of a sort of [B, V] (which costs about 35 ms per step on CPU for
    [8, 4096] inside a loop). The result never exceeds the largest weight, so the top token
    is always kept.

    Args:
      w: [B, V] non-negative float32 weights (unnormalised probabilities).
      top_p: in (0, 1).

    Returns:
      [B] float32 thresholds.
    """
    w = w.astype(jnp.float32)
    target = jnp.float32(top_p) * jnp.sum(w, axis=-1)  # [B]
    bits = jax.lax.bitcast_convert_type
    lo = jnp.zeros(w.shape[:1], jnp.int32)  # mass(w >= 0.0) = total >= target
    hi = bits(jnp.max(w, axis=-1), jnp.int32) + 1  # mass(w >= next float above max) = 0

    def step(_, lo_hi):
        lo, hi = lo_hi
        mid = lo + (hi - lo) // 2
        t = bits(mid, jnp.float32)
        ok = jnp.sum(jnp.where(w >= t[:, None], w, 0.0), axis=-1) >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, step, (lo, hi), unroll=True)
    return bits(lo, jnp.float32)


def sample_logits(
    logits: jax.Array,
    key: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row from next-token logits, with temperature, top-k and top-p.

    With `z = logits / temperature`, the sampling distribution is `softmax(z)` restricted to
    (1) the `top_k` largest entries when `top_k > 0`, then (2) the nucleus of what is left
    (Holtzman et al., "The Curious Case of Neural Text Degeneration", ICLR 2020,
    https://arxiv.org/abs/1904.09751): sorting the renormalised probabilities in decreasing
    order, p_(1) >= p_(2) >= ..., the entries whose preceding mass `sum_{j<i} p_(j)` is below
    `top_p`, i.e. the smallest prefix with mass >= top_p. The top token is always kept. The
    order (temperature, then top-k, then top-p) is that of transformers' and vLLM's samplers.
    `temperature == 0` is greedy (argmax; top_k and top_p are then irrelevant).

    The draw is two-level inverse-CDF sampling with two uniforms per row (exact up to float
    rounding; see `_two_level_sample`), and the nucleus is found without sorting
    (`_nucleus_threshold`); entries tied with the nucleus' smallest one are kept too.

    The returned log-probability is `log_softmax(z)[token]`: the temperature-scaled
    distribution *before* top-k/top-p filtering (what the trainer recomputes with a full
    forward pass and `temperature`, as pi_old). With temperature 0 it is
    `log_softmax(logits)[token]`.

    Args:
      logits: [B, V] float (float32 recommended).
      key: a PRNG key (typed or raw uint32).
      temperature: >= 0.
      top_k: >= 0; 0 disables.
      top_p: in (0, 1]; 1 disables.

    Returns:
      (tokens [B] int32, logps [B] float32).
    """
    check_sampling_args(temperature, top_k, top_p)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V]; received shape {logits.shape}.")
    b, v = logits.shape
    if top_k > v:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {v}.")
    logits = logits.astype(jnp.float32)
    rows = jnp.arange(b)
    if temperature == 0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        return tokens, logits[rows, tokens] - lse

    z = logits / jnp.float32(temperature)  # [B, V]
    lse = jax.nn.logsumexp(z, axis=-1)  # [B]
    if top_k > 0:
        vals, idx = jax.lax.top_k(z, top_k)  # [B, k], decreasing
    else:
        vals, idx = z, None
    w = jnp.exp(vals - jnp.max(vals, axis=-1, keepdims=True))  # unnormalised probabilities
    if top_p < 1.0:
        w = jnp.where(w >= _nucleus_threshold(w, top_p)[:, None], w, 0.0)
    j = _two_level_sample(w, key)  # [B]
    tokens = j if idx is None else jnp.take_along_axis(idx, j[:, None], axis=-1)[:, 0]
    tokens = tokens.astype(jnp.int32)
    return tokens, z[rows, tokens] - lse


# --------------------------------------------------------------------------------------------
# Shape buckets (host side).
# --------------------------------------------------------------------------------------------


def bucket_size(
    n: int, *, multiple: int | None = None, buckets: Sequence[int] | None = None, minimum: int = 1
) -> int:
    """The bucket that holds `n`: the smallest of `buckets` >= n, else the next multiple of
    `multiple`, else the next power of two (never below `minimum`).

    Raises:
      ValueError: if n exceeds the largest of `buckets`.
    """
    n = max(int(n), int(minimum), 1)
    if buckets is not None:
        fits = [b for b in sorted(buckets) if b >= n]
        if not fits:
            raise ValueError(f"size {n} exceeds the largest bucket of {sorted(buckets)}.")
        return int(fits[0])
    if multiple is not None:
        if multiple < 1:
            raise ValueError(f"multiple={multiple}; expected an int >= 1.")
        return -(-n // multiple) * multiple
    return 1 << (n - 1).bit_length()


def left_pad(sequences: Sequence[Sequence[int]], *, pad_id: int = 0, length: int | None = None):
    """Left-pads token lists into (ids [B, T] int32, mask [B, T] int32), T = longest or `length`.

    Raises:
      ValueError: if a sequence is empty or longer than `length`.
    """
    longest = max((len(s) for s in sequences), default=0)
    length = longest if length is None else length
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        if not 0 < len(s) <= length:
            raise ValueError(f"sequence {i} has {len(s)} tokens; expected 1..{length}.")
        ids[i, length - len(s) :] = s
        mask[i, length - len(s) :] = 1
    return ids, mask


def pad_prompts(
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    *,
    length: int | None = None,
    batch: int | None = None,
    pad_id: int = 0,
    length_multiple: int | None = None,
    batch_multiple: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Left-padded prompts [B, T] padded to a length bucket and a batch bucket (host side).

    Leading columns that are padding in every row are dropped first; then the prompts are
    left-padded to `length` columns (default: `bucket_size` of the longest prompt, with
    `length_multiple`) and `batch - B` dummy rows are appended (default: `bucket_size(B)` with
    `batch_multiple`). A dummy row holds one real `pad_id` token in the last column so that
    every row attends something; drop its samples with `drop_dummy_rows`. Left padding does not
    change what a row generates (RoPE positions count real tokens only).

    Args:
      prompt_ids: [B, T] int, left-padded.
      prompt_mask: [B, T] 0/1 (1 = real token).
      length, batch: explicit bucket sizes (>= the longest prompt / >= B).
      pad_id: the id written in padding positions.
      length_multiple, batch_multiple: bucket by multiples instead of powers of two.

    Returns:
      (ids [batch, length] int32, mask [batch, length] int32, B the number of real rows).
    """
    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask).astype(np.int32)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"prompt_ids {ids.shape} and prompt_mask {mask.shape} must both be [B, T]."
        )
    check_left_padded(mask)
    b = ids.shape[0]
    longest = int(mask.sum(axis=1).max())
    length = bucket_size(longest, multiple=length_multiple) if length is None else length
    batch = bucket_size(b, multiple=batch_multiple) if batch is None else batch
    if length < longest or batch < b:
        raise ValueError(
            f"buckets (batch={batch}, length={length}) are smaller than the prompts "
            f"(B={b}, longest={longest})."
        )
    ids, mask = ids[:, ids.shape[1] - longest :], mask[:, mask.shape[1] - longest :]
    out_ids = np.full((batch, length), pad_id, np.int32)
    out_mask = np.zeros((batch, length), np.int32)
    out_ids[:b, length - longest :] = np.where(mask == 1, ids, pad_id)
    out_mask[:b, length - longest :] = mask
    out_mask[b:, -1] = 1  # dummy rows: one real (pad) token
    return out_ids, out_mask, b


def drop_dummy_rows(output, num_rows: int, num_samples: int):
    """Keeps the samples of the first `num_rows` prompts (rows `0 .. num_rows*num_samples-1`)
    of a `generate` output; the dummy rows `pad_prompts` appended come last."""
    return jax.tree.map(lambda x: x[: num_rows * num_samples], output)


def check_left_padded(mask: np.ndarray) -> None:
    """Raises ValueError unless every row of the 0/1 mask [B, T] is 0...01...1 with >= 1 one."""
    mask = np.asarray(mask).astype(np.int32)
    n = mask.sum(axis=1)
    expected = np.arange(mask.shape[1])[None, :] >= mask.shape[1] - n[:, None]
    bad = np.nonzero((n == 0) | np.any(mask.astype(bool) != expected, axis=1))[0]
    if bad.size:
        raise ValueError(
            f"prompt_mask rows {bad[:8].tolist()} are not left-padded prompts with at least one "
            f"real token (expected 0...0 1...1; row {bad[0]} is {mask[bad[0]].tolist()})."
        )
