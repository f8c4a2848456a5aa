"""The synthetic tasks' tokenizer: fixed ids, exact round trips, chat template, save/load."""

import pytest
from transformers import AutoTokenizer

from giftjax.data import SYNTHETIC_VOCAB_SIZE, SyntheticTask, build_tokenizer
from giftjax.data.synthetic_tokenizer import VOCAB


def ids_of(pieces):
    return [VOCAB.index(p) for p in pieces]


def test_vocabulary_size_and_special_tokens():
    tok = build_tokenizer()
    assert len(tok) == len(VOCAB) <= SYNTHETIC_VOCAB_SIZE
    assert SYNTHETIC_VOCAB_SIZE % 8 == 0
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<eos>", 1)
    assert (tok.unk_token, tok.bos_token) == ("<unk>", "<bos>")
    assert tok.padding_side == "left"


def test_encoding_is_fixed_and_adds_nothing():
    text = "reverse 305 ="
    expected = ids_of(["reverse", " ", "3", "0", "5", " ", "="])
    assert build_tokenizer()(text)["input_ids"] == expected
    assert build_tokenizer()(text)["input_ids"] == expected  # a second build: same ids
    assert build_tokenizer().encode("add 12+7 =") == ids_of(
        ["add", " ", "1", "2", "+", "7", " ", "="]
    )


@pytest.mark.parametrize("kind", ["reverse", "add"])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_task_texts_round_trip_without_unknown_pieces(kind, split):
    tok = build_tokenizer()
    for item in SyntheticTask(kind=kind, split=split, size=50, seed=3):
        for text in (item["prompt"], item["answer"]):
            ids = tok.encode(text)
            assert tok.unk_token_id not in ids, text
            assert tok.decode(ids) == text


def test_unknown_text_becomes_unk():
    tok = build_tokenizer()
    unk = tok.unk_token_id
    assert tok.encode("add zebra") == [VOCAB.index("add"), VOCAB.index(" "), unk]
    assert tok.encode("A") == [unk]


def test_chat_template_renders_roles_and_generation_prompt():
    tok = build_tokenizer()
    messages = [{"role": "system", "content": "answer"}, {"role": "user", "content": "add 1+2 ="}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>answer\n<|user|>add 1+2 =\n<|assistant|>"
    ids = tok.encode(text)
    assert ids[0] == VOCAB.index("<|system|>") and ids[-1] == VOCAB.index("<|assistant|>")
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "answer\nadd 1+2 =\n"
    done = [*messages, {"role": "assistant", "content": "3"}]
    assert tok.apply_chat_template(done, tokenize=False).endswith("<|assistant|>3<eos>")


def test_save_and_load_round_trip(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "reverse 98765 = what is the sum of 3+4?\n"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(tok.encode(text)) == text
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    messages = [{"role": "user", "content": "add 1+2 ="}]
    assert loaded.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    ) == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert len(loaded) == len(tok)


def test_chat_template_rejects_unknown_roles():
    tok = build_tokenizer()
    with pytest.raises(Exception, match="unknown chat role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "1"}], tokenize=False)
