"""render_prompt: the plain and chat templates."""

import pytest

from giftjax.data import build_tokenizer, render_prompt


def test_plain_template():
    tok = build_tokenizer()
    assert render_prompt(tok, "add 1+2 =") == "add 1+2 ="
    assert render_prompt(tok, "add 1+2", suffix=" =") == "add 1+2 ="
    assert render_prompt(tok, "add 1+2 =", system="answer") == "answer\nadd 1+2 ="


def test_chat_template_uses_the_tokenizer():
    tok = build_tokenizer()
    got = render_prompt(tok, "add 1+2", template="chat", system="answer", suffix=" =")
    assert got == "<|system|>answer\n<|user|>add 1+2 =\n<|assistant|>"
    assert render_prompt(tok, "q", template="chat") == "<|user|>q\n<|assistant|>"


def test_errors_name_data_template():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match=r"data\.template='jinja'"):
        render_prompt(tok, "q", template="jinja")
    tok.chat_template = None
    with pytest.raises(ValueError, match=r"data\.template='chat'.*no chat_template"):
        render_prompt(tok, "q", template="chat")
