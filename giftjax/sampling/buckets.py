"""Shape buckets for prompts, on the host (NumPy) before they become a global array.

The helpers left-pad token lists (`left_pad`), pad prompts to a length bucket and append dummy
rows (`pad_prompts`, `bucket_size`) so that a training run meets only a few distinct shapes and
`giftjax.sampling.generate` compiles once per bucket instead of once per step; `drop_dummy_rows`
removes the dummy rows' samples again.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


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


def left_pad(
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    length: int | None = None,
    allow_empty: bool = False,
    what: str = "sequence",
    length_name: str = "length",
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists into (ids [B, T] int32, mask [B, T] int32), T = longest or `length`.

    Row i is `pad ... pad tok_1 ... tok_n` with mask `0 ... 0 1 ... 1`.

    Args:
      sequences: B token lists.
      pad_id: the id written in padding positions.
      length: T; default the longest sequence.
      allow_empty: let an empty sequence give an all-zero mask row (the tokenizer's prompts);
        otherwise it is an error (`generate` needs a real token in every row).
      what, length_name: how errors name a row (`"{what} {i}"`) and the length (e.g.
        `what="prompts row", length_name="max_prompt_len"` in `giftjax.data.encode_prompts`).

    Raises:
      ValueError: if a sequence is longer than `length`, or empty unless `allow_empty`.
    """
    longest = max((len(s) for s in sequences), default=0)
    length = longest if length is None else int(length)
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        if len(s) > length:
            raise ValueError(
                f"{what} {i} has {len(s)} tokens, more than {length_name}={length}; raise "
                f"{length_name} or shorten it."
            )
        if not s and not allow_empty:
            raise ValueError(f"{what} {i} has no token; expected 1..{length}.")
        if len(s):
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
