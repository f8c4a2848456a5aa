"""Host tokenisation: left-padded prompts, demonstrations with EOS, decoding sampled rows."""

import jax.numpy as jnp
import numpy as np
import pytest

from giftjax.data import (
    build_tokenizer,
    decode_responses,
    encode_demonstrations,
    encode_prompts,
)
from giftjax.data.synthetic_tokenizer import VOCAB

PAD, EOS = VOCAB.index("<pad>"), VOCAB.index("<eos>")


def ids_of(text_pieces):
    return [VOCAB.index(p) for p in text_pieces]


def test_encode_prompts_left_pads():
    tok = build_tokenizer()
    ids, mask = encode_prompts(tok, ["add 1+2 =", "12"], max_prompt_len=8)
    row0 = ids_of(["add", " ", "1", "+", "2", " ", "="])
    np.testing.assert_array_equal(ids[0], [PAD, *row0])
    np.testing.assert_array_equal(ids[1], [PAD] * 6 + ids_of(["1", "2"]))
    np.testing.assert_array_equal(mask, [[0] + [1] * 7, [0] * 6 + [1, 1]])
    assert ids.dtype == mask.dtype == np.int32


def test_encode_prompts_errors():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match=r"prompts row 1 has 5 tokens, more than max_prompt_len=4"):
        encode_prompts(tok, ["12", "12345"], max_prompt_len=4)
    with pytest.raises(TypeError, match="one str"):
        encode_prompts(tok, "12", max_prompt_len=4)
    with pytest.raises(ValueError, match="max_prompt_len=0"):
        encode_prompts(tok, ["1"], max_prompt_len=0)
    tok.pad_token = None
    with pytest.raises(ValueError, match=r"set `tokenizer\.pad_token`"):
        encode_prompts(tok, ["1"], max_prompt_len=4)


def test_encode_demonstrations_layout():
    tok = build_tokenizer()
    out = encode_demonstrations(
        tok, ["reverse 12 =", "reverse 345 ="], ["21", "543"], max_prompt_len=7, max_response_len=5
    )
    assert set(out) == {"prompt_ids", "prompt_mask", "response_ids", "response_mask"}
    np.testing.assert_array_equal(
        out["prompt_ids"][0], [PAD, *ids_of(["reverse", " ", "1", "2", " ", "="])]
    )
    np.testing.assert_array_equal(out["prompt_mask"][1], [1] * 7)
    np.testing.assert_array_equal(out["response_ids"][0], [*ids_of(["2", "1"]), EOS, PAD, PAD])
    np.testing.assert_array_equal(out["response_ids"][1], [*ids_of(["5", "4", "3"]), EOS, PAD])
    np.testing.assert_array_equal(out["response_mask"], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match=r"responses row 1 has 4 tokens with EOS.*=3"):
        encode_demonstrations(tok, ["a", "b"], ["1", "123"], max_prompt_len=4, max_response_len=3)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode_demonstrations(tok, ["a", "b"], ["1"], max_prompt_len=4, max_response_len=3)


def test_decode_responses_uses_mask_and_stops_at_eos():
    tok = build_tokenizer()
    d = ids_of(["1", "2", "3"])
    tokens = np.array(
        [
            [d[0], d[1], EOS, PAD],  # a normal row
            [d[2], d[2], d[2], d[2]],  # no EOS within max_new_tokens
            [EOS, PAD, PAD, PAD],  # empty response
            [d[0], EOS, d[1], d[2]],  # tokens after EOS (mask says where the response ends)
        ]
    )
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert decode_responses(tok, tokens, mask) == ["12", "3333", "", "1"]
    assert decode_responses(tok, jnp.asarray(tokens), jnp.asarray(mask))[0] == "12"
    role = VOCAB.index("<|assistant|>")
    assert decode_responses(tok, [[role, d[0], EOS]], [[1, 1, 1]]) == ["1"]  # specials skipped
    with pytest.raises(ValueError, match=r"\[B, M\]"):
        decode_responses(tok, tokens, mask[:, :2])


def test_demonstrations_decode_back():
    tok = build_tokenizer()
    responses = ["21", "54321", "7"]
    out = encode_demonstrations(tok, ["x"] * 3, responses, max_prompt_len=2, max_response_len=8)
    assert decode_responses(tok, out["response_ids"], out["response_mask"]) == responses
