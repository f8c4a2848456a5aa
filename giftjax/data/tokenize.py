"""Host-side tokenisation: prompts to left-padded id arrays, demonstrations, decoding.

These run in NumPy on each host before its rows become part of a global array (the data
flow in docs/development/architecture.md). Prompts are LEFT-padded so that every row ends at the
last column, which is what `giftjax.sampling.generate` expects; responses are RIGHT-padded after
an appended EOS.

Texts are encoded with `add_special_tokens=False` by default: the prompt template (see
`giftjax.data.templates`) renders every special token itself. Pass `add_special_tokens=True`
for a tokenizer that should add its BOS to plain prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from giftjax.sampling.buckets import left_pad

__all__ = ["decode_responses", "encode_demonstrations", "encode_prompts"]


def _check_texts(name: str, texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings; received one str.")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str; received {type(t).__name__}.")
    return texts


def _check_len(name: str, value: int) -> None:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}={value!r}; expected an int >= 1.")


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} has no pad token; set "
            "`tokenizer.pad_token` (e.g. to its EOS token) before encoding."
        )
    return int(tokenizer.pad_token_id)


def _encode(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def _pad_prompt_rows(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """[P, T] ids and mask of prompts, each row's tokens at the right end (an empty prompt
    gives an all-zero mask row); a longer row is an error naming `max_prompt_len`."""
    return left_pad(
        rows, pad_id=pad_id, length=length, allow_empty=True, what="prompts row",
        length_name="max_prompt_len",
    )  # fmt: skip


def encode_prompts(
    tokenizer, texts: Sequence[str], *, max_prompt_len: int, add_special_tokens: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises prompts and LEFT-pads them to `max_prompt_len` columns.

    Args:
      tokenizer: a Hugging Face tokenizer with a pad token.
      texts: P prompt strings (already rendered by a template).
      max_prompt_len: T, the number of columns; a longer prompt is an error naming its row.
      add_special_tokens: let the tokenizer add its BOS/EOS (default False, see module doc).

    Returns:
      (ids [P, T] int32, mask [P, T] int32): row p is `pad ... pad tok_1 ... tok_n` with mask
      `0 ... 0 1 ... 1`. A prompt that encodes to no token gives an all-zero mask row.
    """
    texts = _check_texts("texts", texts)
    _check_len("max_prompt_len", max_prompt_len)
    pad_id = _pad_token_id(tokenizer)
    rows = _encode(tokenizer, texts, add_special_tokens)
    return _pad_prompt_rows(rows, int(max_prompt_len), pad_id)


def encode_demonstrations(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_prompt_len: int,
    max_response_len: int,
    add_special_tokens: bool = False,
) -> dict[str, np.ndarray]:
    """Tokenises (prompt, response) pairs for teacher-forced SFT.

    The model reads `concat(prompt_ids, response_ids)` and is trained to predict each response
    token (EOS included) from what precedes it; `response_mask` marks those tokens.

    Args:
      tokenizer: a Hugging Face tokenizer with pad and EOS tokens.
      prompts: P prompt strings (already rendered by a template).
      responses: P response strings (the demonstrations).
      max_prompt_len: Tp; a longer prompt is an error naming its row.
      max_response_len: Tr; a response longer than Tr - 1 tokens (EOS appended) is an error
        naming its row.
      add_special_tokens: passed to the tokenizer for the prompts (responses never get any).

    Returns:
      A dict of int32 arrays: `prompt_ids`, `prompt_mask` [P, Tp] LEFT-padded;
      `response_ids`, `response_mask` [P, Tr] RIGHT-padded, each response followed by EOS.
    """
    prompts = _check_texts("prompts", prompts)
    responses = _check_texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(
            f"{len(prompts)} prompts but {len(responses)} responses; expected one each."
        )
    _check_len("max_prompt_len", max_prompt_len)
    _check_len("max_response_len", max_response_len)
    pad_id = _pad_token_id(tokenizer)
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} has no EOS token; set "
            "`tokenizer.eos_token` so responses can be terminated."
        )
    eos_id = int(tokenizer.eos_token_id)
    prompt_ids, prompt_mask = _pad_prompt_rows(
        _encode(tokenizer, prompts, add_special_tokens), int(max_prompt_len), pad_id
    )
    tr = int(max_response_len)
    response_ids = np.full((len(responses), tr), pad_id, np.int32)
    response_mask = np.zeros((len(responses), tr), np.int32)
    for i, row in enumerate(_encode(tokenizer, responses, False)):
        row = [*row, eos_id]
        if len(row) > tr:
            raise ValueError(
                f"responses row {i} has {len(row)} tokens with EOS, more than "
                f"max_response_len={tr}; raise max_response_len or shorten the response."
            )
        response_ids[i, : len(row)] = row
        response_mask[i, : len(row)] = 1
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "response_ids": response_ids,
        "response_mask": response_mask,
    }


def decode_responses(tokenizer, tokens, mask) -> list[str]:
    """Decodes sampled responses: the masked tokens of each row, up to its first EOS.

    Args:
      tokens: [B, M] int token ids (NumPy or a fully addressable jax.Array).
      mask: [B, M] 1 for response tokens (the EOS included), 0 after it.

    Returns:
      B strings, decoded with `skip_special_tokens=True` (EOS and other special tokens
      dropped).
    """
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens and mask must both be [B, M]; received {tokens.shape} and {mask.shape}."
        )
    eos_id = tokenizer.eos_token_id
    rows = []
    for tok_row, mask_row in zip(tokens, mask, strict=True):
        row = tok_row[mask_row.astype(bool)].tolist()
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        rows.append(row)
    if not rows:
        return []
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
