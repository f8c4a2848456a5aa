"""A tiny word-level Hugging Face tokenizer for the synthetic tasks, built on the fly.

No download: the vocabulary is a fixed Python list, so the ids are the same on every machine and
every call. Text is split into single digits, single spaces and newlines, lowercase words and
single punctuation marks; the decoder concatenates the pieces, so `decode(encode(text)) == text`
for any text made of vocabulary pieces. Anything else becomes `<unk>`.

Special tokens: `<pad>` (0), `<eos>` (1, also the end of a response), `<bos>` (2, never added
automatically), `<unk>` (3) and the chat-role markers `<|system|>`, `<|user|>`, `<|assistant|>`
used by the Jinja chat template:

```
<|system|>SYSTEM\\n<|user|>PROMPT\\n<|assistant|>RESPONSE<eos>
```

`SYNTHETIC_VOCAB_SIZE` (64, a multiple of 8) is the vocabulary size a model for these tasks
needs: it is at least `len(build_tokenizer())`.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["CHAT_TEMPLATE", "SYNTHETIC_VOCAB_SIZE", "VOCAB", "build_tokenizer"]

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# The order fixes the ids: never reorder, only append (and keep the total <= 64).
VOCAB: tuple[str, ...] = (
    PAD,
    EOS,
    BOS,
    UNK,
    *ROLE_TOKENS,
    " ",
    "\n",
    *"0123456789",
    *"+-*=?:.,()",
    "reverse",
    "add",
    "sort",
    "copy",
    "sum",
    "of",
    "the",
    "is",
    "what",
    "answer",
    "digits",
    "number",
    "and",
    "plus",
    "minus",
    "equals",
    "question",
)

# Vocabulary size of a model for the synthetic tasks: len(VOCAB) rounded up to a multiple of 8.
SYNTHETIC_VOCAB_SIZE = 64

# One piece per digit, space, newline, lowercase word or punctuation mark.
_PIECES = r"[0-9]| |\n|[a-z]+|[^0-9a-z\s]|\s"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role ' + message['role'] "
    "+ '; expected system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The synthetic tasks' tokenizer: word-level, `len(VOCAB)` ids, deterministic.

    Returns:
      A `transformers.PreTrainedTokenizerFast` with `pad_token="<pad>"`, `eos_token="<eos>"`,
      `bos_token="<bos>"`, `unk_token="<unk>"`, the role markers as extra special tokens, a
      Jinja `chat_template`, left padding side, and no automatically added tokens (encoding
      a text gives exactly its pieces). It round-trips through `save_pretrained` and
      `AutoTokenizer.from_pretrained`.
    """
    if len(VOCAB) > SYNTHETIC_VOCAB_SIZE or len(set(VOCAB)) != len(VOCAB):
        raise AssertionError(f"VOCAB must hold <= {SYNTHETIC_VOCAB_SIZE} distinct entries.")
    vocab = {piece: i for i, piece in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECES), behavior="isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
        model_max_length=1024,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf
